"""Decoding stored ledger bytes for the audit, at C speed.

The audit re-derives every hash of a ledger, so it computes JCS (RFC 8785) of every transaction
body and block header. :func:`load_json` parses stored bytes with the C scanner and refuses what
Phalanx values never hold (floats, NaN, integers beyond ±(2^53 - 1)); :func:`canonical_bytes`
is the project's one JCS encoder, :func:`crypto.canonical.canonical_json_parsed`, which may skip
looking for floats, huge integers and non-string keys because such a value holds none.
"""

from __future__ import annotations

import json
from typing import Any

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError
from crypto.canonical import canonical_json_parsed as canonical_bytes

_SAFE_DIGITS_MAX = 15  # any integer of at most 15 digits lies within ±(2^53 - 1)


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
