"""Length-prefixed frames: the size limit, truncated streams and garbage payloads."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import CanonicalJsonError, canonical_json, parse_json
from node.p2p.framing import FrameError, FrameTooLarge, decode_payload, encode_frame, read_frame


def read_all(data: bytes, frame_max: int = 1024, frames: int = 1) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await read_frame(reader, frame_max) for _ in range(frames)]

    return asyncio.run(go())


def test_round_trip_is_canonical_json() -> None:
    frame = encode_frame({"b": 1, "a": [True, None, "x"]})
    assert frame == struct.pack(">I", 27) + b'{"a":[true,null,"x"],"b":1}'
    assert read_all(frame + encode_frame({"k": "v"}), frames=2) == [
        {"a": [True, None, "x"], "b": 1},
        {"k": "v"},
    ]


def test_encode_refuses_oversize_and_non_canonical_values() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"x": "a" * 100}, frame_max=50)
    with pytest.raises(CanonicalJsonError):
        encode_frame({"x": 1.5})
    with pytest.raises(TypeError):
        encode_frame([1, 2])  # type: ignore[arg-type]


def test_length_over_the_limit_is_refused_before_reading_the_payload() -> None:
    # Only the header is there: a reader that tried to buffer 2^31 bytes would hit EOF instead.
    with pytest.raises(FrameTooLarge) as info:
        read_all(struct.pack(">I", 2**31), frame_max=1024)
    assert info.value.reason == "frame_too_large"


def test_exactly_the_limit_is_accepted() -> None:
    frame = encode_frame({"x": "a" * 10})
    assert read_all(frame, frame_max=len(frame) - 4) == [{"x": "a" * 10}]
    with pytest.raises(FrameTooLarge):
        read_all(frame, frame_max=len(frame) - 5)


def test_truncated_header_and_payload_end_the_stream() -> None:
    frame = encode_frame({"k": "v"})
    with pytest.raises(asyncio.IncompleteReadError):
        read_all(frame[:2])
    with pytest.raises(asyncio.IncompleteReadError) as info:
        read_all(frame[:-1])
    assert info.value.partial  # mid-frame, unlike a clean end between frames
    with pytest.raises(asyncio.IncompleteReadError) as info:
        read_all(b"")
    assert info.value.partial == b""


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xfe garbage",
        b"not json",
        b"[1,2,3]",
        b'"a string"',
        b'{"a":1.5}',
        b"NaN",
        b"",
    ],
)
def test_garbage_payloads_are_undecodable(payload: bytes) -> None:
    with pytest.raises(FrameError) as info:
        read_all(struct.pack(">I", len(payload)) + payload)
    assert info.value.reason == "undecodable"
    with pytest.raises(FrameError):
        decode_payload(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":1,"a":2}',  # a duplicate key
        b'{ "a":1}',  # whitespace
        b'{"b":1,"a":2}',  # keys out of order
        b'{"a":-0}',
        b'{"a":"\\u00e9"}',  # an escape JCS does not write
    ],
)
def test_payloads_that_are_not_jcs_are_refused(payload: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_payload(payload)
    assert info.value.reason == "not_canonical"


def _exact(payload: bytes) -> object:
    try:
        value = parse_json(payload)
    except CanonicalJsonError:
        return "refused"
    return value if isinstance(value, dict) and canonical_json(value) == payload else "refused"


def _decoded(payload: bytes) -> object:
    try:
        return decode_payload(payload)
    except FrameError:
        return "refused"


DEEP = 64  # crypto.canonical refuses values nested deeper


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":9007199254740991,"b":-9007199254740991}',
        b'{"a":9007199254740992}',
        b'{"a":-9007199254740992}',
        b'{"a":"\\ud800"}',
        b'{"k":"\\"9999999999999999"}',
        b'{"x":"]]]]["}',
        '{"\U0001f600":1,"\ufffd":2}'.encode(),  # JCS (UTF-16) order, not Python's
        '{"\ufffd":2,"\U0001f600":1}'.encode(),
        b'{"x":' + b"[" * (DEEP - 1) + b"]" * (DEEP - 1) + b"}",
        b'{"x":' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"x":' + b"[" * (DEEP + 1) + b"]" * (DEEP + 1) + b"}",
        b'{"x":' + b"[" * (DEEP - 1) + b"1" + b"]" * (DEEP - 1) + b"}",
        b'{"x":' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}",
        b'{"a":{"b":[1,"two",null,true,false,{}]},"c":"\\n\\u001f"}',
    ],
)
def test_the_fast_decoder_agrees_with_the_exact_canonical_checker(payload: bytes) -> None:
    assert _decoded(payload) == _exact(payload)


def test_a_frame_of_millions_of_empty_objects_costs_only_the_c_parser() -> None:
    canonical = b'{"a":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    started = time.thread_time()
    assert len(decode_payload(canonical)["a"]) == 1_000_000
    spaced = canonical.replace(b",", b", ")
    with pytest.raises(FrameError):
        decode_payload(spaced)
    # The exact checker alone took about 1.5 s of CPU for the first one.
    assert time.thread_time() - started < 1.5


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats()
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
)
_KEYS = st.text(max_size=3) | st.sampled_from(["\U0001f600", "\ufb33", "\ue000", "a", "\r"])
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=20,
)


def _exact_frame(message: dict[str, Any]) -> bytes | str:
    try:
        payload = canonical_json(message)
    except CanonicalJsonError:
        return "refused"
    return struct.pack(">I", len(payload)) + payload


def _frame(message: dict[str, Any]) -> bytes | str:
    try:
        return encode_frame(message, frame_max=1 << 30)
    except CanonicalJsonError:
        return "refused"


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_encoding_with_the_c_encoder_gives_exactly_jcs(message: dict[str, Any]) -> None:
    """encode_frame takes the C encoder's bytes only when they are JCS: for every value, the
    same frame as the exact encoder, or the same refusal (floats, integers past 2^53 - 1)."""
    assert _frame(message) == _exact_frame(message)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0.5])
def test_encoding_refuses_every_float_like_the_exact_encoder(value: float) -> None:
    """orjson writes NaN and infinities as null: the frame must still be refused."""
    with pytest.raises(CanonicalJsonError):
        encode_frame({"a": [None, {"b": value}]})


@pytest.mark.parametrize("depth", [DEEP - 1, DEEP, DEEP + 1])
def test_encoding_deep_values_gives_exactly_jcs(depth: int) -> None:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    assert _frame({"x": value}) == _exact_frame({"x": value})


def _payloads(message: dict[str, Any]) -> list[bytes]:
    """The canonical form if there is one, and near misses a sender could write."""
    out = []
    exact = _exact_frame(message)
    if isinstance(exact, bytes):
        out.append(exact[4:])
    for options in (
        {"sort_keys": False, "separators": (",", ":"), "ensure_ascii": False},
        {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True},
        {"sort_keys": True, "separators": (", ", ": "), "ensure_ascii": False},
    ):
        try:
            out.append(json.dumps(message, **options).encode("utf-8"))  # type: ignore[arg-type]
        except (ValueError, UnicodeError):
            continue
    return out


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_decoding_with_orjson_agrees_with_the_exact_checker(message: dict[str, Any]) -> None:
    for payload in _payloads(message):
        assert _decoded(payload) == _exact(payload)
