"""The audit decodes stored bytes (load_json) and writes JCS with the project's one encoder
(``canonical_bytes`` is ``crypto.canonical.canonical_json_parsed``): byte-for-byte the reference,
errors included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, canonical_json_reference
from ledger.audit.codec import NotJsonError, canonical_bytes, is_canonical, load_json

# Characters that stress the fast path: controls, escapes, non-ASCII, the U+E000+ range whose
# UTF-16 order differs from code point order against supplementary characters, and those.
tricky_text = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\x1f", '"', "\\", "\u2028", "\ue000", "\uffff", "\U0001f600"]),
    ),
    max_size=12,
)
ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
values = st.recursive(
    st.none() | st.booleans() | ints | tricky_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(tricky_text, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_fast_jcs_equals_canonical_json(value: Any) -> None:
    assert canonical_bytes(value) == canonical_json_reference(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_load_json_round_trips_what_the_store_writes(value: Any) -> None:
    data = canonical_json_reference(value)
    loaded = load_json(data)
    assert loaded == value and is_canonical(data, loaded)
    assert load_json(json.dumps(value, ensure_ascii=False).encode()) == value


def test_utf16_ordering_takes_the_slow_path() -> None:
    value = {"\ufb33": 1, "\U0001f600": 2, "a": 3}
    assert list(json.loads(canonical_bytes(value))) == ["a", "\U0001f600", "\ufb33"]
    assert canonical_bytes(value) == canonical_json_reference(value)


def test_deep_nesting_and_surrogates_raise_like_canonical_json() -> None:
    deep: Any = 0
    for _ in range(65):
        deep = [deep]
    with pytest.raises(CanonicalJsonError, match="deeper"):
        canonical_bytes(deep)
    almost: Any = []
    for _ in range(64):
        almost = [almost]
    assert canonical_bytes(almost) == canonical_json_reference(almost)
    with pytest.raises(CanonicalJsonError, match="surrogate"):
        canonical_bytes({"k": "\ud800"})
    assert not is_canonical(b'"x"', "\udfff")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"1.5", "float"),
        (b'{"a": 1e3}', "float"),
        (b"[NaN]", "NaN"),
        (b"-Infinity", "Infinity"),
        (b"9007199254740992", "beyond"),
        (b"-9007199254740992", "beyond"),
        (b'{"a": 1', "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_load_json_refuses_what_phalanx_never_stores(data: bytes, reason: str) -> None:
    with pytest.raises(NotJsonError, match=reason):
        load_json(data)


def test_is_canonical() -> None:
    assert is_canonical(b'{"a":1,"b":[true,null]}', {"b": [True, None], "a": 1})
    assert not is_canonical(b'{"b":[true,null],"a":1}', {"b": [True, None], "a": 1})
    assert not is_canonical(b'{"a": 1}', {"a": 1})
    assert load_json(b"9007199254740991") == MAX_SAFE_INTEGER
