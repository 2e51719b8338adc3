"""Length-prefixed frames for peer links.

A frame is a 4-byte big-endian payload length followed by the payload: the canonical JSON (JCS)
bytes of one message object. A length above the receiver's ``frame_max`` or a payload that is
not a JSON object Phalanx accepts (floats, duplicate keys, integers beyond ±(2^53 - 1), nesting
deeper than 64 and invalid UTF-8 are refused) is the peer's fault: the reader raises
:class:`FrameError`, and the link disconnects that peer.

Decoding is the expensive part of a frame (a payload of a million ``{}`` took seconds through
the generic checker), so :func:`decode_payload` decides with C-level operations only: the C
parser, then re-encoding the value and comparing it with the payload. Honest senders write JCS
(:func:`encode_frame`, with that same C encoder whenever the bytes show it gave JCS), so a
payload that differs is refused as ``not_canonical`` (the one exception, keys beyond the Basic
Multilingual Plane, where Python and JCS sort differently, goes to the exact checker
:func:`crypto.canonical.parse_json`), and so is any integer beyond ±(2^53 - 1) and nesting
deeper than the canonical form allows (found by byte counting; exactly one level too deep also
goes to the exact checker). So an attacker can no longer make a frame cost more than the C
parser's time. The caller runs decoding of large frames off the event loop
(``node.p2p.peers``).
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Any

import orjson

from crypto.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    canonical_json,
    has_astral,
    orjson_sorted,
    parse_json,
)

HEADER_LEN = 4
# The largest legitimate message is a PRE-PREPARE carrying a full batch (batch_bytes_max, which
# the node derives as frame_max / 4, at most 4 MiB) or a block-sync response (2 MiB plus one
# block): 8 MiB leaves room for both with their JSON overhead. 16 MiB used to be the default.
FRAME_MAX_DEFAULT = 8 * 1024 * 1024
# A 4-byte length can express at most this; a larger configured limit would be meaningless.
FRAME_MAX_LIMIT = 2**32 - 1
CANONICAL_DEPTH_MAX = 64  # crypto.canonical refuses values nested deeper

_HEADER = struct.Struct(">I")
_LONG_NUMBER = re.compile(rb"[0-9]{16,}")
_FLOAT_NUMBER = re.compile(rb"[0-9][.eE]")  # outside strings: a fraction or an exponent
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class FrameError(Exception):
    """The remote side sent a frame we refuse. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FrameTooLarge(FrameError):
    def __init__(self, length: int, frame_max: int) -> None:
        super().__init__(
            "frame_too_large", f"frame of {length} bytes exceeds the {frame_max} limit"
        )
        self.length = length


def encode_frame(message: dict[str, Any], frame_max: int = FRAME_MAX_DEFAULT) -> bytes:
    """Header plus JCS payload. Raises :class:`FrameTooLarge` if the payload exceeds
    ``frame_max`` and ``CanonicalJsonError`` if ``message`` has no canonical form (our bug)."""
    if not isinstance(message, dict):
        raise TypeError(f"a peer message is a dict, got {type(message).__name__}")
    payload = orjson_sorted(message)
    if payload is None or not _is_plainly_canonical(payload):
        payload = canonical_json(message)  # the exact encoder decides (and refuses)
    if len(payload) > frame_max:
        raise FrameTooLarge(len(payload), frame_max)
    return _HEADER.pack(len(payload)) + payload


def _is_plainly_canonical(payload: bytes) -> bool:
    """Whether orjson's form is JCS, decided on the bytes, as :func:`_fast_decode` does: no
    float, no integer beyond 2^53 - 1, no key order Python and JCS could disagree on
    (characters beyond the Basic Multilingual Plane) and no nesting deeper than JCS allows.
    orjson writes NaN and infinities as ``null``, so a ``null`` outside strings cannot be told
    from one of them: such a message goes to the exact encoder (which refuses the floats)."""
    if has_astral(payload):
        return False
    structure = _outside_strings(payload)
    if _FLOAT_NUMBER.search(structure) or b"null" in structure:
        return False
    if any(int(n.group()) > MAX_SAFE_INTEGER for n in _LONG_NUMBER.finditer(structure)):
        return False
    return _nesting(structure, CANONICAL_DEPTH_MAX) <= CANONICAL_DEPTH_MAX


def _nesting(structure: bytes, depth_max: int) -> int:
    """How deep the brackets of ``structure`` (strings removed) nest, counted up to
    ``depth_max + 1``. Each pass removes the innermost pairs: as many passes as levels."""
    brackets = structure.translate(_CURLY_TO_SQUARE, _NOT_BRACKETS)
    depth = 0
    while brackets and depth <= depth_max:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break  # unbalanced, which the parser has already ruled out
        brackets = shorter
        depth += 1
    return depth if not brackets else depth_max + 1


def _outside_strings(payload: bytes) -> bytes:
    """The payload with every string's content removed (only C-level byte operations). In the
    canonical form a backslash always starts an escape, so once escaped backslashes and escaped
    quotes are gone, every remaining quote opens or closes a string."""
    plain = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(plain.split(b'"')[0::2])


_UNDECIDED = object()


def _fast_decode(payload: bytes) -> Any:
    """The parsed payload, or :class:`FrameError`, decided with C-level operations only; or
    ``_UNDECIDED`` for the two rare cases only the exact checker can settle."""
    try:
        value = orjson.loads(payload)
    except (orjson.JSONDecodeError, RecursionError) as exc:
        # Not JSON, invalid UTF-8 or a lone surrogate, an integer beyond 64 bits, NaN: the
        # exact checker refuses all of these too.
        raise FrameError("undecodable", str(exc)[:200]) from exc
    again = orjson_sorted(value)  # what orjson parsed, it writes
    if has_astral(payload):
        # Characters beyond the Basic Multilingual Plane (4-byte UTF-8): Python sorts keys by
        # code point, JCS by UTF-16 unit, so only the exact checker can tell.
        return _UNDECIDED
    if again != payload:
        # Otherwise Python's form is JCS: a difference means the payload is not JCS, which no
        # honest sender writes (encode_frame).
        raise FrameError("not_canonical", "the payload is not canonical JSON (JCS)")
    structure = _outside_strings(payload)
    if _FLOAT_NUMBER.search(structure):
        raise FrameError("undecodable", "a float is not allowed")
    for number in _LONG_NUMBER.finditer(structure):
        if int(number.group()) > MAX_SAFE_INTEGER:
            raise FrameError(
                "undecodable", f"integer {number.group()[:40].decode()} is beyond 2^53 - 1"
            )
    depth = _nesting(structure, CANONICAL_DEPTH_MAX + 1)
    if depth <= CANONICAL_DEPTH_MAX:
        return value  # every value is at most that deep
    if depth > CANONICAL_DEPTH_MAX + 1:
        raise FrameError("undecodable", f"the payload nests deeper than {CANONICAL_DEPTH_MAX}")
    return _UNDECIDED  # exactly one level more: allowed only if the innermost are empty


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse one frame's payload; raises :class:`FrameError` unless it is a JCS JSON object."""
    message = _fast_decode(payload)
    if message is _UNDECIDED:
        try:
            message = parse_json(payload)
        except (CanonicalJsonError, UnicodeDecodeError) as exc:
            raise FrameError("undecodable", str(exc)[:200]) from exc
        if canonical_json(message) != payload:
            raise FrameError("not_canonical", "the payload is not canonical JSON (JCS)")
    if not isinstance(message, dict):
        raise FrameError(
            "undecodable", f"payload is a JSON {type(message).__name__}, not an object"
        )
    return message


async def read_payload(reader: asyncio.StreamReader, frame_max: int = FRAME_MAX_DEFAULT) -> bytes:
    """Read one frame's raw payload (not decoded). Raises :class:`FrameTooLarge` before reading
    a payload over ``frame_max``, and ``asyncio.IncompleteReadError`` when the stream ends."""
    header = await reader.readexactly(HEADER_LEN)
    (length,) = _HEADER.unpack(header)
    # Refuse before reading, so a hostile length never makes us buffer it.
    if length > frame_max:
        raise FrameTooLarge(length, frame_max)
    return await reader.readexactly(length)


async def read_frame(
    reader: asyncio.StreamReader, frame_max: int = FRAME_MAX_DEFAULT
) -> dict[str, Any]:
    """Read and decode one frame (on the calling thread: only for small frames such as the
    link hello). Raises :class:`FrameError` for a frame we refuse, and
    ``asyncio.IncompleteReadError`` when the stream ends (cleanly between frames: ``partial`` is
    empty; mid-frame: it is not)."""
    return decode_payload(await read_payload(reader, frame_max))
