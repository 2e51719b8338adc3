"""Ed25519 signing with domain-separated inputs, and strict verification.

The signing input for an object ``o`` under tag ``T`` is ``utf8(T) || 0x00 || JCS(o)`` (spec
section 1). Tags keep a signature made for one purpose from being replayed as another.

Verification uses libsodium (through PyNaCl), which is strict in the ways the spec asks: it rejects
``S >= L``, non-canonical point encodings and small-order public keys and R values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import nacl.bindings
import nacl.exceptions
import nacl.signing

from crypto.canonical import canonical_json
from crypto.hexcodec import KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex

TAG_TX = "phalanx/tx/v2"
TAG_COMMIT = "phalanx/commit/v1"
TAG_EXECUTION = "phalanx/execution/v1"

SEED_LEN = 32


def signing_input(tag: str, obj: Any) -> bytes:
    """``utf8(tag) || 0x00 || JCS(obj)``."""
    if "\x00" in tag:
        raise ValueError("a signing tag must not contain a NUL character")
    return tag.encode("utf-8") + b"\x00" + canonical_json(obj)


class Signer(Protocol):
    """Something that signs on behalf of one validator or client key."""

    @property
    def public_key(self) -> str: ...

    def sign(self, tag: str, obj: Any) -> str: ...


class Verifier(Protocol):
    """Something that checks a signature by a given public key."""

    def verify(self, public_key: str, tag: str, obj: Any, signature: str) -> bool: ...


@dataclass(frozen=True)
class Ed25519Signer:
    """Signs with an Ed25519 private key held in memory."""

    seed: bytes = field(repr=False)
    _key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_LEN:
            raise ValueError(f"an Ed25519 seed is {SEED_LEN} bytes, got {len(self.seed)}")
        object.__setattr__(self, "_key", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> str:
        return bytes(self._key.verify_key).hex()

    def sign_bytes(self, message: bytes) -> str:
        return self._key.sign(message).signature.hex()

    def sign(self, tag: str, obj: Any) -> str:
        return self.sign_bytes(signing_input(tag, obj))


def verify_bytes(public_key: str, message: bytes, signature: str) -> bool:
    """Strict Ed25519 verification of raw bytes; False for any malformed input."""
    if not is_hex(public_key, KEY_HEX_LEN) or not is_hex(signature, SIGNATURE_HEX_LEN):
        return False
    # PyNaCl binds crypto_sign_open but not the detached form; cffi releases the GIL around the
    # call, so verification scales across a thread pool.
    try:
        nacl.bindings.crypto_sign_open(
            bytes.fromhex(signature) + message, bytes.fromhex(public_key)
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def is_valid_public_key(public_key: str) -> bool:
    """True if ``public_key`` is hex of a canonical Ed25519 point that is not of small order."""
    if not is_hex(public_key, KEY_HEX_LEN):
        return False
    raw = bytes.fromhex(public_key)
    # libsodium has no direct "is this a valid verification key" call; converting to Curve25519
    # fails for points that are not on the curve or are of small order.
    try:
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, RuntimeError, ValueError):
        return False
    return True


class Ed25519Verifier:
    """The production verifier: strict Ed25519 over the tagged signing input."""

    def verify(self, public_key: str, tag: str, obj: Any, signature: str) -> bool:
        try:
            message = signing_input(tag, obj)
        except ValueError:
            return False
        return verify_bytes(public_key, message, signature)
