"""Canonical JSON (spec §1: RFC 8785 JCS, no floats, integers within ±(2^53 - 1)).

The RFC's examples are used where they fit Phalanx's value space: its number examples are all
floats, which Phalanx refuses, so only the string, literal and key-ordering examples apply.
There is no JCS vector set in ../shared/vectors, so the RFC's short normative examples (sections
3.2.2 to 3.2.4) are written here. Each runs through the fast encoder (``canonical_json``), its
variant for parsed values and the pure-Python reference it must equal."""

from __future__ import annotations

import collections
import enum
import json
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    canonical_json,
    canonical_json_parsed,
    canonical_json_reference,
    check_json_value,
    parse_json,
)
from crypto.canonical import _parse_json_reference as _parse_json_reference
from crypto.hashing import hash_object, sha256_hex
from crypto.signing import TAG_COMMIT, TAG_TX, signing_input

ENCODERS = pytest.mark.parametrize(
    "encode", [canonical_json, canonical_json_parsed, canonical_json_reference]
)


@ENCODERS
def test_rfc8785_section_3_2_2_without_its_numbers(encode: Callable[[Any], bytes]) -> None:
    """Section 3.2.2's example, minus the "numbers" member (all floats)."""
    text = (
        '{\n  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
        '  "literals": [null, true, false]\n}'
    )
    value = parse_json(text)
    expected = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert encode(value) == expected.encode("utf-8")


@ENCODERS
def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units(
    encode: Callable[[Any], bytes],
) -> None:
    # The section's input, as the RFC writes it (the emoji as a surrogate pair escape).
    text = (
        '{"\\u20ac": "Euro Sign", "\\r": "Carriage Return",'
        ' "\\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",'
        ' "\\ud83d\\ude00": "Emoji: Grinning Face", "\\u0080": "Control",'
        ' "\\u00f6": "Latin Small Letter O With Diaeresis"}'
    )
    value = parse_json(text)
    assert "\U0001f600" in value
    out = encode(value).decode("utf-8")
    # The RFC's expected order of the values: the emoji (UTF-16 D83D DE00) sorts before U+FB33,
    # unlike by code point.
    assert list(json.loads(out).values()) == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]
    assert out == (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    # Section 3.2.4: the UTF-8 bytes of the start of that output.
    assert encode(value)[:32].hex(" ") == (
        "7b 22 5c 72 22 3a 22 43 61 72 72 69 61 67 65 20 52 65 74 75 72 6e 22 2c 22 31 22 3a 22 4f"
        " 6e 65"
    )


def test_rfc8785_nested_and_whitespace_free() -> None:
    value = parse_json(b' { "b" : [ 1 , { "d" : true , "c" : null } ] , "a" : "x" } ')
    assert canonical_json(value) == b'{"a":"x","b":[1,{"c":null,"d":true}]}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-1, "-1"),
        (MAX_SAFE_INTEGER, "9007199254740991"),
        (-MAX_SAFE_INTEGER, "-9007199254740991"),
        ("", '""'),
        ("\u2028\u2029", '"\u2028\u2029"'),  # JCS leaves them raw, unlike JavaScript sources
        ("\x00\x1f\x7f", '"\\u0000\\u001f\x7f"'),
        ("\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
        ([], "[]"),
        ({}, "{}"),
        ({"a": {}}, '{"a":{}}'),
    ],
)
def test_scalars_and_escapes(value: Any, text: str) -> None:
    assert canonical_json(value) == text.encode("utf-8")


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        float("nan"),
        float("inf"),
        {"a": [1, 2.5]},
        MAX_SAFE_INTEGER + 1,
        -MAX_SAFE_INTEGER - 1,
        {1: "non-string key"},
        "\ud800",  # a lone surrogate has no UTF-8 form
        b"bytes",
        {"a": {1, 2}},
    ],
)
def test_values_outside_the_phalanx_space_are_refused(value: Any) -> None:
    with pytest.raises(CanonicalJsonError):
        canonical_json(value)
    with pytest.raises(CanonicalJsonError):
        check_json_value(value)


def test_nesting_is_bounded() -> None:
    deep: Any = 1
    for _ in range(64):
        deep = [deep]
    assert canonical_json(deep).startswith(b"[[[")
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_json([deep])


@pytest.mark.parametrize(
    "text",
    [
        "1.0",
        "1e3",
        '{"a": -0.0}',
        "NaN",
        "Infinity",
        "-Infinity",
        '{"a": 1, "a": 2}',
        "9007199254740992",
        "[1,]",
        "",
    ],
)
def test_parse_json_refuses_floats_duplicates_and_junk(text: str) -> None:
    with pytest.raises(CanonicalJsonError):
        parse_json(text)


def test_signing_input_and_hashes() -> None:
    body = {"b": 1, "a": [True, None]}
    assert signing_input(TAG_TX, body) == b'phalanx/tx/v2\x00{"a":[true,null],"b":1}'
    assert signing_input(TAG_COMMIT, {}) == b"phalanx/commit/v1\x00{}"
    assert hash_object(body) == sha256_hex(b'{"a":[true,null],"b":1}')
    with pytest.raises(ValueError):
        signing_input("bad\x00tag", body)


# ---- the fast encoder against the reference -------------------------------------------------

# Characters that stress the fast path: controls and escapes, non-ASCII, the U+E000+ range whose
# UTF-16 order differs from code point order against supplementary characters, supplementary
# characters themselves, and lone surrogates (no UTF-8 form).
_tricky_char = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(
        ["\x00", "\x1f", '"', "\\", "/", "\u2028", "\ue000", "\uffff", "\ufb33", "\U0001f600"]
    ),
    st.sampled_from(["\U00010000", "\U0010ffff", "\ud800", "\udfff"]),
)
_text = st.text(_tricky_char, max_size=8)
_edge_ints = st.sampled_from(
    [0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1]
)
_ints = st.one_of(st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), st.integers(), _edge_ints)
# Mostly JSON, with what Phalanx refuses mixed in: floats, huge ints, non-string keys (which
# Python's encoder would quietly turn into strings), bytes, sets.
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    _ints,
    _text,
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(b"x"),
)
_key = st.one_of(_text, _text, _text, st.integers(), st.booleans(), st.none(), st.floats())
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_key, inner, max_size=5),
        st.dictionaries(_text, inner, max_size=5),
    ),
    max_leaves=30,
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | _text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=30,
)


def _nest(value: Any, levels: int, kind: int) -> Any:
    for i in range(levels):
        value = [value] if (kind >> (i % 8)) & 1 else {"k": value}
    return value


_deep_values = st.builds(
    _nest,
    st.one_of(_json_values, st.just([]), st.just({})),
    st.integers(55, 70),
    st.integers(0, 255),
)


def _outcome(encode: Callable[[Any], bytes], value: Any) -> tuple[str, Any]:
    try:
        return "ok", encode(value)
    except CanonicalJsonError as exc:
        return "refused", str(exc)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_fast_encoder_equals_the_reference_bytes_and_errors(value: Any) -> None:
    assert _outcome(canonical_json, value) == _outcome(canonical_json_reference, value)
    # A small value is walked, a big one parsed back: both ways must be exact.
    padded = [list(range(60)), value]
    assert _outcome(canonical_json, padded) == _outcome(canonical_json_reference, padded)


@settings(max_examples=300, deadline=None)
@given(_deep_values)
def test_fast_encoder_equals_the_reference_near_the_depth_limit(value: Any) -> None:
    assert _outcome(canonical_json, value) == _outcome(canonical_json_reference, value)
    assert _outcome(canonical_json_parsed, value) == _outcome(canonical_json_reference, value)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_parsed_values_take_the_short_path_to_the_same_bytes(value: Any) -> None:
    """Whatever parse_json returns, canonical_json_parsed serialises as the reference does."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        parsed = parse_json(text.encode("utf-8", "surrogatepass"))
    except CanonicalJsonError:
        with pytest.raises(CanonicalJsonError):
            canonical_json_reference(value)
        return
    assert _outcome(canonical_json_parsed, parsed) == _outcome(canonical_json_reference, value)


@pytest.mark.parametrize(
    "value",
    [
        {1: "x"},  # the C encoder alone writes {"1":"x"}
        {True: 1},  # ... {"true":1}
        {None: 1},  # ... {"null":1}
        {1.5: 1},  # ... {"1.5":1}
        [1.0],  # ... [1.0]
        {"a": [2**53]},  # ... the digits
        [-(2**53)],
        [10**400],
    ],
)
@pytest.mark.parametrize("padding", [0, 100])  # walked, or parsed back
def test_what_the_c_encoder_would_write_is_refused(value: Any, padding: int) -> None:
    value = [[0] * padding, value]
    assert json.dumps(value, sort_keys=True) is not None  # Python's encoder has a form for it
    with pytest.raises(CanonicalJsonError) as fast:
        canonical_json(value)
    with pytest.raises(CanonicalJsonError) as reference:
        canonical_json_reference(value)
    assert str(fast.value) == str(reference.value)


class _Level(enum.IntEnum):
    HIGH = 7


class _Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"t": True, "f": False, "one": 1, "zero": 0}, '{"f":false,"one":1,"t":true,"zero":0}'),
        ([True, 1, False, 0], "[true,1,false,0]"),  # bool is never taken for an int
        ({"level": _Level.HIGH}, '{"level":7}'),  # an int subclass is its integer
        ({_Name("b"): _Name("x"), "a": 1}, '{"a":1,"b":"x"}'),
        (collections.OrderedDict([("b", 1), ("a", 2)]), '{"a":2,"b":1}'),
        (("a", (1, 2)), '["a",[1,2]]'),  # tuples are arrays
        ({"\ue000": 1, "\U0001f600": 2}, '{"\U0001f600":2,"\ue000":1}'),
    ],
)
def test_python_values_not_from_a_parser(value: Any, text: str) -> None:
    assert canonical_json(value) == canonical_json_reference(value) == text.encode("utf-8")


def test_other_mappings_and_cycles_are_refused_like_the_reference() -> None:
    proxy = types.MappingProxyType({"a": 1})
    with pytest.raises(CanonicalJsonError, match="mappingproxy"):
        canonical_json(proxy)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_json(cycle)


def test_depth_limit_in_a_wide_value() -> None:
    """Many brackets but shallow (a block of transactions) stays exact; the innermost allowed
    level may hold an empty container but nothing else."""
    wide = [{"body": {"ops": [{"k": [1, 2]}]}, "sig": "x"} for _ in range(200)]
    assert canonical_json(wide) == canonical_json_reference(wide)
    allowed = _nest([], 64, 0xFF)  # 65 lists: the innermost at depth 64, empty
    assert canonical_json(allowed) == canonical_json_reference(allowed)
    for refused in (_nest([0], 64, 0xFF), _nest({}, 65, 0)):
        with pytest.raises(CanonicalJsonError, match="deeper"):
            canonical_json(refused)
    many_then_deep = [wide, _nest(1, 64, 0x0F)]
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_json(many_then_deep)
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_json_parsed(many_then_deep)


# ---- parse_json's fast path against its reference -------------------------------------------

_json_texts = st.one_of(
    _json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    _json_values.map(lambda v: json.dumps(v, indent=1)),  # whitespace, \\u escapes
    _deep_values.map(json.dumps),
    st.sampled_from(
        [
            '{"a": 1, "a": 2}',
            '{"a": {"b": 1, "b": 1}}',
            "[1.0]",
            "[1e5]",
            "-0",
            "[NaN]",
            "[9007199254740991, -9007199254740991]",
            "[9007199254740992]",
            "[-9007199254740992]",
            '["\\ud800"]',
            '{"\\udfff": 1}',
            "\ufeff[]",
            "[] x",
            "",
            "[",
            '{"a" 1}',
        ]
    ),
    st.text(st.sampled_from('[]{}",:0123456789.-eE tfrunl\\a'), max_size=20),
)


def _parse_outcome(parse: Callable[[bytes | str], Any], data: bytes | str) -> tuple[str, Any]:
    try:
        value = parse(data)
    except CanonicalJsonError as exc:
        return "refused", str(exc)
    return "ok", (value, canonical_json_reference(value))


@settings(max_examples=300, deadline=None)
@given(_json_texts, st.booleans())
def test_parse_json_equals_its_reference(text: str, as_bytes: bool) -> None:
    data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert _parse_outcome(parse_json, data) == _parse_outcome(_parse_json_reference, data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1, "a": 2}', "object key 'a' appears twice"),
        (b"[9007199254740992]", "integer 9007199254740992 is outside ±(2^53 - 1)"),
        (b"[2.5]", "float 2.5 is not allowed in Phalanx values; use integers"),
        (b'["\\ud800"]', "string holds a lone UTF-16 surrogate, which is not valid UTF-8"),
        (b"[NaN]", "NaN is not valid JSON"),
        ("[" * 65 + "1" + "]" * 65, "value nests deeper than 64 levels"),
    ],
)
def test_parse_json_messages(data: bytes | str, message: str) -> None:
    with pytest.raises(CanonicalJsonError) as info:
        parse_json(data)
    assert str(info.value) == message


def test_has_astral_finds_four_byte_characters_only() -> None:
    from crypto.canonical import has_astral

    assert not has_astral(b'{"a":"plain"}')
    assert not has_astral('{"a":"é€\uffff"}'.encode())
    for char in ("\U00010000", "\U0001f600", "\U0010ffff"):
        assert has_astral(f'{{"a":"x{char}y"}}'.encode())
