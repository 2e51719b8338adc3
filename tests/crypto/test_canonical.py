"""Canonical JSON (spec §1: RFC 8785 JCS, no floats, integers within ±(2^53 - 1)).

The RFC's examples are used where they fit Phalanx's value space: its number examples are all
floats, which Phalanx refuses, so only the string, literal and key-ordering examples apply."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crypto.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    canonical_json,
    check_json_value,
    parse_json,
)
from crypto.hashing import hash_object, sha256_hex
from crypto.signing import TAG_COMMIT, TAG_TX, signing_input


def test_rfc8785_section_3_2_2_without_its_numbers() -> None:
    """Section 3.2.2's example, minus the "numbers" member (all floats)."""
    text = (
        '{\n  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
        '  "literals": [null, true, false]\n}'
    )
    value = parse_json(text)
    expected = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonical_json(value).decode("utf-8")
    keys = list(json.loads(out))
    # The emoji (UTF-16 D83D DE00) sorts before U+FB33, unlike by code point.
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert out.startswith('{"\\r":"Carriage Return","1":"One","\u0080":"Control"')
    # Section 3.2.4: the UTF-8 bytes of the start of that output.
    assert canonical_json(value)[:32].hex(" ") == (
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
