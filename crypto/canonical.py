"""Canonical JSON (RFC 8785, JCS) for the values Phalanx allows.

Phalanx values never hold floats, so the number rules of JCS reduce to printing integers, which
must lie within ±(2^53 - 1) so that every JSON implementation reads them exactly. Object keys are
sorted by their UTF-16 code units, as RFC 8785 section 3.2.3 requires (not by code points: the
two orders differ for characters beyond the Basic Multilingual Plane).

Every signature, hash, tx id, block and receipt of the node goes through :func:`canonical_json`,
so it runs at C speed: the standard library's C encoder writes sorted, compact JSON, which is
JCS except where this module checks and, if in doubt, hands the value to the pure-Python
reference :func:`canonical_json_reference` (the oracle the tests compare with):

- object keys: the C encoder sorts by code point, JCS by UTF-16 code unit. The orders agree
  unless a key holds a character at or above U+E000 (the only range above the surrogates that a
  supplementary character could sort the other way against), so any such character anywhere
  in the text sends the value to the reference;
- the C encoder also writes what Phalanx refuses: floats, integers beyond ±(2^53 - 1), and
  int, float, bool and None object keys (as strings). A small value of unknown origin is
  walked to make sure it holds none; a larger one's text is parsed back with hooks that refuse
  floats and huge integers, and must equal the value: a non-string key comes back as a string
  and so differs (a tuple comes back as a list and also takes the reference's path, which
  accepts it);
- nesting deeper than the reference allows needs more than 64 brackets in the text; beyond
  that, a walk over the containers alone measures the depth;
- lone surrogates fail the UTF-8 encoding.

Strings are escaped by the very function the reference uses, so they come out identical.
:func:`canonical_json_parsed` skips the parse-back for values that came from :func:`parse_json`
(or the audit's ``load_json``), which can hold none of those.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1

# Python's json escapes exactly what ECMAScript's JSON.stringify escapes when ensure_ascii is off:
# '"', '\\', and control characters below U+0020 (with \b \f \n \r \t short forms, the rest as
# lowercase \u00xx). One string encoder is reused for every string.
_encode_string = json.JSONEncoder(ensure_ascii=False).encode

_DEPTH_MAX = 64
_SAFE_DIGITS_MAX = 15  # any integer of at most 15 digits lies within ±(2^53 - 1)


class CanonicalJsonError(ValueError):
    """The value cannot be written as Phalanx canonical JSON (a float, a huge int, a bad key...)."""


# ---- the reference (pure Python; the oracle and the fallback) -------------------------------


def canonical_json_reference(value: Any) -> bytes:
    """The RFC 8785 serialisation of ``value``, written out in Python one value at a time.

    :func:`canonical_json` returns the same bytes and raises the same errors, faster; this one
    is kept as its fallback and as the oracle its tests compare against."""
    parts: list[str] = []
    _write(value, parts, depth=0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalJsonError(
            "string holds a lone UTF-16 surrogate, which is not valid UTF-8"
        ) from exc


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


# ---- the fast encoder -----------------------------------------------------------------------


class _NotPlain(Exception):
    """Raised inside the fast paths: the value needs the reference's verdict."""


def _not_plain(_value: Any) -> Any:
    raise _NotPlain


def _sorted_encoder() -> Callable[[Any, int], Any]:
    """The C encoder itself, built once (``JSONEncoder.encode`` builds one per call): sorted
    keys, no spaces, NaN and Infinity refused, anything but dict/list/tuple/str/int/float/bool/
    None refused through ``default``."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator: the reference is as fast
        return lambda value, _level: [canonical_json_reference(value).decode("utf-8")]
    encode_string = json.encoder.encode_basestring  # the reference's, with ensure_ascii off
    encoder: Callable[[Any, int], Any] = make(
        None, _not_plain, encode_string, None, ":", ",", True, False, False
    )
    return encoder


_encode_sorted = _sorted_encoder()


def _check_int(text: str) -> int:
    value = int(text)
    if len(text) > _SAFE_DIGITS_MAX and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise _NotPlain
    return value


# Parses the C encoder's own output back: a float or a huge integer in it means the value held
# one (the reference then says which).
_read_back = json.JSONDecoder(parse_float=_not_plain, parse_int=_check_int).decode


def _encode_fast(value: Any, known_plain: bool) -> bytes:
    text = _try_encode(value, known_plain)
    if text is None:
        return canonical_json_reference(value)  # the same bytes, or the error saying why
    return text


def _try_encode(value: Any, known_plain: bool) -> bytes | None:
    """The C encoder's JCS of ``value``, or None where the reference must decide."""
    try:
        text: str = "".join(_encode_sorted(value, 0))
        if not text.isascii() and max(text) >= "\ue000":
            return None  # UTF-16 and code point order may differ
        if (
            len(text) > 2 * _DEPTH_MAX
            and text.count("{") + text.count("[") > _DEPTH_MAX
            and _nests_to_the_limit(value)
        ):
            return None  # the reference decides whether the innermost level is allowed
        if not known_plain and not _small_and_plain(value) and _read_back(text) != value:
            return None  # a non-string key (or a tuple, which the reference accepts)
        return text.encode("utf-8")
    except (_NotPlain, TypeError, ValueError, RecursionError):
        # ValueError also covers NaN/Infinity, circular values and lone surrogates (UTF-8)
        return None


_SMALL = 48  # a walk over this many members costs less than parsing the text back


def _small_and_plain(value: Any) -> bool:
    """True if ``value`` has at most ``_SMALL`` members in all, of exactly the types dict (with
    str keys), list, tuple, str, bool, None and int within ±(2^53 - 1): then the C encoder's text
    needs no parse-back. False means "not known", and the parse-back decides."""
    kind = type(value)
    if kind is not dict and kind is not list and kind is not tuple:
        return _is_plain_scalar(value)
    stack = [value]
    budget = _SMALL
    while stack:
        container = stack.pop()
        budget -= len(container)
        if budget < 0:
            return False
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return False
            members = container.values()
        else:
            members = container
        # Inlined (no call per member): this walk is on the path of every vote and header.
        for member in members:
            kind = type(member)
            if kind is str or kind is bool or member is None:
                continue
            if kind is int:
                if not -MAX_SAFE_INTEGER <= member <= MAX_SAFE_INTEGER:
                    return False
            elif kind is dict or kind is list or kind is tuple:
                stack.append(member)
            else:
                return False
    return True


def _is_plain_scalar(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    return kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


_CONTAINERS = (dict, list, tuple)  # what the C encoder descends into (subclasses too)


def _nests_to_the_limit(value: Any) -> bool:
    """True if ``value`` holds a container at depth 64 (the top is depth 0): the reference
    refuses it if that container is not empty. Asked only of values whose text has more than
    64 brackets; walks the containers level by level, skipping the scalars at C speed."""
    level = [value]
    for _ in range(_DEPTH_MAX):
        level = [
            item
            for container in level
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, _CONTAINERS)
        ]
        if not level:
            return False
    return True


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 serialisation of ``value`` as UTF-8 bytes.

    Raises :class:`CanonicalJsonError` for anything outside the Phalanx value space: floats,
    integers beyond ±(2^53 - 1), non-string keys, lone surrogates, more than 64 levels of
    nesting, other types. ``bool`` is never taken for an integer."""
    return _encode_fast(value, known_plain=False)


def canonical_json_parsed(value: Any) -> bytes:
    """:func:`canonical_json` for a value that came from :func:`parse_json` (or another parser
    that refuses floats and integers beyond ±(2^53 - 1)): the same bytes and errors, without
    looking for floats, huge integers and non-string keys, which such a value cannot hold."""
    return _encode_fast(value, known_plain=True)


# Sorted keys; anything but JSON's own types (dataclasses, datetimes, subclasses of str or
# int...) raises rather than being written in orjson's own way.
_ORJSON_SORTED = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_ASTRAL_LEAD = re.compile(b"[\xf0-\xf4]")  # 4-byte UTF-8 sequences start so


def orjson_sorted(value: Any) -> bytes | None:
    """``value`` as compact JSON with sorted keys, written by orjson (about ten times faster
    than the standard library's encoder), or None if orjson will not write it (a lone
    surrogate, an integer beyond 64 bits, a non-string key, another type). The bytes are JCS
    when the value holds no float (orjson writes NaN and infinities as ``null``), no integer
    beyond ±(2^53 - 1), no nesting deeper than 64 and no character beyond the Basic
    Multilingual Plane (:func:`has_astral`): callers check what they cannot rule out."""
    try:
        return orjson.dumps(value, option=_ORJSON_SORTED)
    except (TypeError, orjson.JSONEncodeError):
        return None


def has_astral(data: bytes) -> bool:
    """Whether UTF-8 ``data`` holds a character beyond the Basic Multilingual Plane: there code
    point order (Python's, orjson's) and UTF-16 order (JCS's) may sort keys differently."""
    return not data.isascii() and _ASTRAL_LEAD.search(data) is not None


def check_json_value(value: Any) -> None:
    """Raise CanonicalJsonError unless ``value`` is a JSON value Phalanx accepts."""
    canonical_json(value)


# ---- parsing --------------------------------------------------------------------------------


def parse_json(data: bytes | str) -> Any:
    """Parse client JSON, refusing floats, NaN/Infinity and duplicate object keys.

    Duplicate keys are refused because two parsers could keep different ones, and the signed bytes
    (recomputed by JCS) would then mean different things to different readers.
    """
    parsed = _try_parse(data)
    if parsed is None:
        return _parse_json_reference(data)  # the same value, or the error saying why
    canonical_json_parsed(parsed[0])  # nesting and lone surrogates, as check_json_value would
    return parsed[0]


def _try_parse(data: bytes | str) -> tuple[Any] | None:
    """``(value,)`` parsed at C speed, or None where the reference parse must decide."""
    try:
        return (_parse_plain(data),)
    except Exception:  # any doubt (bad JSON included): the reference says why
        return None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _NotPlain  # a duplicate key
    return result


_parse_plain_text = json.JSONDecoder(
    parse_float=_not_plain,
    parse_int=_check_int,
    parse_constant=_not_plain,
    object_pairs_hook=_unique_pairs,
).decode


def _parse_plain(data: bytes | str) -> Any:
    """``json.loads(data)`` with every float, NaN, Infinity, huge integer and duplicate key
    refused by ``_NotPlain``: its result is JSON Phalanx accepts, nesting and surrogates aside.
    Text is prepared as ``json.loads`` prepares it."""
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise _NotPlain
        return _parse_plain_text(data)
    if not isinstance(data, (bytes, bytearray)):
        raise _NotPlain
    return _parse_plain_text(data.decode(json.detect_encoding(data), "surrogatepass"))


def _parse_json_reference(data: bytes | str) -> Any:
    """The parse :func:`parse_json` falls back to when its fast path is in doubt: every error
    message comes from here."""

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
    canonical_json_reference(value)
    return value
