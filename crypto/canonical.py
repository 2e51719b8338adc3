"""Canonical JSON (RFC 8785, JCS) for the values Phalanx allows.

Phalanx values never hold floats, so the number rules of JCS reduce to printing integers, which
must lie within ±(2^53 - 1) so that every JSON implementation reads them exactly. Object keys are
sorted by their UTF-16 code units, as RFC 8785 section 3.2.3 requires (not by code points: the
two orders differ for characters beyond the Basic Multilingual Plane).
"""

from __future__ import annotations

import json
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1

# Python's json escapes exactly what ECMAScript's JSON.stringify escapes when ensure_ascii is off:
# '"', '\\', and control characters below U+0020 (with \b \f \n \r \t short forms, the rest as
# lowercase \u00xx). One string encoder is reused for every string.
_encode_string = json.JSONEncoder(ensure_ascii=False).encode


class CanonicalJsonError(ValueError):
    """The value cannot be written as Phalanx canonical JSON (a float, a huge int, a bad key...)."""


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 serialisation of ``value`` as UTF-8 bytes."""
    parts: list[str] = []
    _write(value, parts, depth=0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJsonError(
            "string holds a lone UTF-16 surrogate, which is not valid UTF-8"
        ) from exc


_DEPTH_MAX = 64


def _write(value: Any, parts: list[str], depth: int) -> None:
    if depth > _DEPTH_MAX:
        raise CanonicalJsonError(f"value nests deeper than {_DEPTH_MAX} levels")
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJsonError(f"integer {value} is outside ±(2^53 - 1)")
        parts.append(str(int(value)))
    elif isinstance(value, float):
        raise CanonicalJsonError("floats are not allowed in Phalanx values; use integers")
    elif isinstance(value, str):
        parts.append(_encode_string(value))
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _write(item, parts, depth + 1)
        parts.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalJsonError(f"object key {key!r} is not a string")
        parts.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_order)):
            if i:
                parts.append(",")
            parts.append(_encode_string(key))
            parts.append(":")
            _write(value[key], parts, depth + 1)
        parts.append("}")
    else:
        raise CanonicalJsonError(f"type {type(value).__name__} has no canonical JSON form")


def _utf16_order(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def check_json_value(value: Any) -> None:
    """Raise CanonicalJsonError unless ``value`` is a JSON value Phalanx accepts."""
    canonical_json(value)


def parse_json(data: bytes | str) -> Any:
    """Parse client JSON, refusing floats, NaN/Infinity and duplicate object keys.

    Duplicate keys are refused because two parsers could keep different ones, and the signed bytes
    (recomputed by JCS) would then mean different things to different readers.
    """

    def no_float(text: str) -> Any:
        raise CanonicalJsonError(f"float {text} is not allowed in Phalanx values; use integers")

    def no_constant(text: str) -> Any:
        raise CanonicalJsonError(f"{text} is not valid JSON")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, item in pairs:
            if key in result:
                raise CanonicalJsonError(f"object key {key!r} appears twice")
            result[key] = item
        return result

    try:
        value = json.loads(
            data,
            parse_float=no_float,
            parse_constant=no_constant,
            object_pairs_hook=unique_keys,
        )
    except CanonicalJsonError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalJsonError(f"not valid JSON: {exc}") from exc
    check_json_value(value)
    return value
