"""Keys for the simulator: validators' and clients' signers, and the checks that go with them.

Real Ed25519 costs ~70 us per verification in pynacl, and a simulated run verifies thousands of
messages, so most seeds use a fake but *checked* scheme: HMAC-SHA512 (64 bytes, the length of an
Ed25519 signature) keyed by a per-run secret and the signer's public name. Only the holder of a
signer object can sign for its key; the Byzantine classes get only their own signer, so a forgery
is detected by ``SimVerifier`` exactly as Ed25519 would detect it. A few seeds run real Ed25519.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consensus.batch import Tx
from crypto.canonical import canonical_json
from crypto.signing import TAG_TX, Ed25519Signer, Ed25519Verifier, Signer, Verifier, signing_input


@dataclass(frozen=True)
class SimSigner:
    """HMAC-SHA512 over the spec's signing input, keyed by the run's secret and our key."""

    public_key: str
    secret: bytes

    def sign(self, tag: str, obj: Any) -> str:
        mac_key = self.secret + bytes.fromhex(self.public_key)
        return hmac.new(mac_key, signing_input(tag, obj), hashlib.sha512).hexdigest()


@dataclass(frozen=True)
class SimVerifier:
    """Checks ``SimSigner`` signatures; False for anything malformed, like Ed25519Verifier."""

    secret: bytes

    def verify(self, public_key: str, tag: str, obj: Any, signature: str) -> bool:
        if not isinstance(signature, str) or not isinstance(public_key, str):
            return False
        try:
            expected = SimSigner(public_key, self.secret).sign(tag, obj)
        except ValueError:  # bad hex key, NUL in tag, or a value with no canonical JSON
            return False
        return hmac.compare_digest(expected, signature)


@dataclass(frozen=True)
class KeySet:
    """The run's signature scheme: one signer per validator and per client, one verifier."""

    validators: tuple[Signer, ...]
    clients: tuple[Signer, ...]
    verifier: Verifier


def make_keys(seed: int, validator_count: int, client_count: int, ed25519: bool) -> KeySet:
    """Deterministic keys for a run: the same seed gives the same keys, hence the same digests."""
    if ed25519:

        def ed(role: str, i: int) -> Signer:
            return Ed25519Signer(hashlib.sha256(f"sim/{seed}/{role}/{i}".encode()).digest())

        return KeySet(
            tuple(ed("validator", i) for i in range(validator_count)),
            tuple(ed("client", i) for i in range(client_count)),
            Ed25519Verifier(),
        )
    secret = hashlib.sha256(f"sim/{seed}/secret".encode()).digest()

    def fake(role: str, i: int) -> Signer:
        return SimSigner(hashlib.sha256(f"sim/{role}/{i}".encode()).hexdigest(), secret)

    return KeySet(
        tuple(fake("validator", i) for i in range(validator_count)),
        tuple(fake("client", i) for i in range(client_count)),
        SimVerifier(secret),
    )


def make_tx(client: Signer, nonce: int, key: str) -> Tx:
    """A client transaction signed as spec §3 says: the signature covers the body under TAG_TX."""
    body = {
        "client": client.public_key,
        "nonce": nonce,
        "ops": [{"op": "set", "key": key, "value": nonce}],
    }
    return _sized({"body": body, "sig": client.sign(TAG_TX, body)})


def forge_tx(victim: Signer, forger: Signer, nonce: int, key: str) -> Tx:
    """A transaction in ``victim``'s name signed by someone else: it must never be executed."""
    body = {
        "client": victim.public_key,
        "nonce": nonce,
        "ops": [{"op": "set", "key": key, "value": -1}],
    }
    return _sized({"body": body, "sig": forger.sign(TAG_TX, body)})


def with_bad_sig(tx: Tx, garbage: str) -> Tx:
    """The same body (hence the same tx_id and batch digest) with a signature nobody made."""
    return _sized({"body": tx.wire["body"], "sig": garbage})


def _sized(wire: dict[str, Any]) -> Tx:
    """A Tx with its size measured, as the node's pool measures it (batches are cut by bytes)."""
    tx = Tx.from_wire(wire)
    return Tx(tx.tx_id, tx.wire, len(canonical_json(wire)))


class ClientTxChecker:
    """The ``TxChecker`` the replicas get: the tx is well formed and its signature is the
    client's. It checks the wire's own signature every time (never caches by tx_id), because a
    copy of a valid body with a forged signature has the same tx_id."""

    def __init__(self, verifier: Verifier, clients: tuple[str, ...]) -> None:
        self._verifier = verifier
        self._clients = frozenset(clients)

    def __call__(self, tx: Tx) -> bool:
        wire = tx.wire
        if not isinstance(wire, Mapping) or set(wire) != {"body", "sig"}:
            return False
        body, sig = wire["body"], wire["sig"]
        if not isinstance(body, Mapping) or body.get("client") not in self._clients:
            return False
        return self._verifier.verify(str(body["client"]), TAG_TX, body, sig)
