"""Length-prefixed frames for peer links.

A frame is a 4-byte big-endian payload length followed by the payload: the canonical JSON (JCS)
bytes of one message object. A length above the receiver's ``frame_max`` or a payload that is
not a JSON object Phalanx accepts (floats, duplicate keys and invalid UTF-8 are refused) is the
peer's fault: the reader raises :class:`FrameError`, and the link disconnects that peer.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from crypto.canonical import CanonicalJsonError, canonical_json, parse_json

HEADER_LEN = 4
FRAME_MAX_DEFAULT = 16 * 1024 * 1024  # 16 MiB
# A 4-byte length can express at most this; a larger configured limit would be meaningless.
FRAME_MAX_LIMIT = 2**32 - 1

_HEADER = struct.Struct(">I")


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
    payload = canonical_json(message)
    if len(payload) > frame_max:
        raise FrameTooLarge(len(payload), frame_max)
    return _HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse one frame's payload; raises :class:`FrameError` unless it is a JSON object."""
    try:
        message = parse_json(payload)
    except (CanonicalJsonError, UnicodeDecodeError) as exc:
        raise FrameError("undecodable", str(exc)) from exc
    if not isinstance(message, dict):
        raise FrameError(
            "undecodable", f"payload is a JSON {type(message).__name__}, not an object"
        )
    return message


async def read_frame(
    reader: asyncio.StreamReader, frame_max: int = FRAME_MAX_DEFAULT
) -> dict[str, Any]:
    """Read one frame. Raises :class:`FrameError` for a frame we refuse, and
    ``asyncio.IncompleteReadError`` when the stream ends (cleanly between frames: ``partial`` is
    empty; mid-frame: it is not)."""
    header = await reader.readexactly(HEADER_LEN)
    (length,) = _HEADER.unpack(header)
    # Refuse before reading, so a hostile length never makes us buffer it.
    if length > frame_max:
        raise FrameTooLarge(length, frame_max)
    payload = await reader.readexactly(length)
    return decode_payload(payload)
