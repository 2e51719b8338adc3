"""Decoding and re-encoding for the audit, at C speed where that is provably exact.

The audit re-derives every hash of a ledger, so it computes JCS (RFC 8785) of every transaction
body and block header. :func:`crypto.canonical.canonical_json` is written in Python and costs
about 15 us for a small body. :func:`load_json` parses stored bytes with the C scanner and
refuses what Phalanx values never hold (floats, NaN, integers beyond ±(2^53 - 1)); for such a
value :func:`canonical_bytes` asks the C encoder for sorted, compact JSON, which is JCS except:

- object keys: Python sorts by code point, JCS by UTF-16 code unit. The orders agree unless a
  key holds a character at or above U+E000 (the only range above the surrogates that a
  supplementary character could sort the other way against), so any such character anywhere
  in the text sends the value to ``canonical_json``;
- nesting deeper than ``canonical_json`` allows needs more than 64 brackets in total;
- lone surrogates fail the UTF-8 encoding.

Strings are escaped by the very function ``canonical_json`` uses, so they come out identical.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json

_BRACKETS_MAX = 64
_SAFE_DIGITS_MAX = 15  # any integer of at most 15 digits lies within ±(2^53 - 1)


def _no_default(value: Any) -> Any:
    raise TypeError(f"type {type(value).__name__} has no JSON form")


def _sorted_encoder() -> Any:
    """The C encoder itself, built once: ``JSONEncoder.encode`` builds one per call."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
        return lambda value, _level: [encode(value)]
    encode_string = json.encoder.encode_basestring  # what canonical_json uses, ensure_ascii off
    return make(None, _no_default, encode_string, None, ":", ",", True, False, False)


_encode_sorted = _sorted_encoder()


def canonical_bytes(value: Any) -> bytes:
    """``canonical_json(value)`` (same bytes, same errors) for a value from :func:`load_json`,
    about five times faster. Other values must hold no floats and only integers within
    ±(2^53 - 1): this function does not look for them."""
    try:
        text = "".join(_encode_sorted(value, 0))
    except (TypeError, ValueError, RecursionError):
        return canonical_json(value)  # raises CanonicalJsonError with the reason
    if not text.isascii() and max(text) >= "\ue000":
        return canonical_json(value)
    if len(text) > 2 * _BRACKETS_MAX and text.count("{") + text.count("[") > _BRACKETS_MAX:
        return canonical_json(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return canonical_json(value)


class NotJsonError(ValueError):
    """Stored bytes are not JSON Phalanx could have written (invalid, a float, NaN...)."""


def _refuse_float(text: str) -> Any:
    raise NotJsonError(f"holds the float {text}; Phalanx values have no floats")


def _refuse_constant(text: str) -> Any:
    raise NotJsonError(f"holds {text}, which is not JSON")


def _parse_int(text: str) -> int:
    value = int(text)
    if len(text) > _SAFE_DIGITS_MAX and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise NotJsonError(f"holds the integer {text}, beyond ±(2^53 - 1)")
    return value


# The C scanner calls these hooks only for numbers and NaN/Infinity, so parsing stays fast.
_decoder = json.JSONDecoder(
    parse_float=_refuse_float, parse_int=_parse_int, parse_constant=_refuse_constant
)


def load_json(data: bytes) -> Any:
    """Parse stored UTF-8 JSON, refusing floats, NaN, Infinity and integers beyond
    ±(2^53 - 1); raises :class:`NotJsonError` saying why."""
    try:
        return _decoder.decode(data.decode("utf-8"))
    except NotJsonError:
        raise
    except UnicodeDecodeError as exc:
        raise NotJsonError(f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise NotJsonError(f"is not valid JSON ({exc.msg} at character {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:
        raise NotJsonError(f"is not valid JSON ({exc})") from exc


def is_canonical(data: bytes, value: Any) -> bool:
    """True if ``data`` is exactly the JCS encoding of ``value`` (its parse)."""
    try:
        return canonical_bytes(value) == data
    except CanonicalJsonError:
        return False


__all__ = ["CanonicalJsonError", "NotJsonError", "canonical_bytes", "is_canonical", "load_json"]
