"""Lowercase-hex byte strings of fixed length, as they travel in Phalanx JSON."""

from __future__ import annotations

import re

KEY_HEX_LEN = 64
SIGNATURE_HEX_LEN = 128
HASH_HEX_LEN = 64

_LOWER_HEX = re.compile(r"[0-9a-f]*")


def is_hex(text: object, length: int) -> bool:
    """True if ``text`` is a str of exactly ``length`` lowercase hex characters."""
    return isinstance(text, str) and len(text) == length and _LOWER_HEX.fullmatch(text) is not None


def decode_hex(text: str, length: int, what: str) -> bytes:
    """Decode lowercase hex of the given length or raise ValueError naming ``what``."""
    if not is_hex(text, length):
        raise ValueError(f"{what} must be {length} lowercase hex characters")
    return bytes.fromhex(text)
