"""SHA-256 helpers: ``H(x)`` of the spec is ``sha256``, ``h(x)`` is ``sha256_hex``."""

from __future__ import annotations

import hashlib
from typing import Any

from crypto.canonical import canonical_json


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_object(value: Any) -> str:
    """``h(JCS(value))``: the hex hash of an object's canonical JSON."""
    return sha256_hex(canonical_json(value))
