"""Test helpers: a 4-validator genesis with real keys, signed transactions, signed certificates."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from consensus.batch import Batch, Tx, commit_vote_body
from consensus.output import Certificate, Committed
from crypto.signing import TAG_COMMIT, TAG_TX, Ed25519Signer
from ledger.genesis import Genesis, genesis_from_document

CHAIN_ID = "phalanx-test"


def signer(label: str) -> Ed25519Signer:
    """A deterministic key per label, so test runs are reproducible."""
    return Ed25519Signer(hashlib.sha256(label.encode()).digest())


VALIDATORS = [signer(f"validator-{i}") for i in range(4)]
ALICE = signer("alice")
BOB = signer("bob")
CAROL = signer("carol")


def genesis_document(
    validators: Sequence[Ed25519Signer] = VALIDATORS,
    accounts: dict[str, int] | None = None,
    chain_id: str = CHAIN_ID,
    fee_per_byte: int = 0,
) -> dict[str, Any]:
    if accounts is None:
        accounts = {ALICE.public_key: 1_000, BOB.public_key: 50}
    return {
        "chain_id": chain_id,
        "validators": [
            {"name": f"node{i}", "pubkey": v.public_key} for i, v in enumerate(validators)
        ],
        "accounts": accounts,
        "fee_per_byte": fee_per_byte,
    }


def make_genesis(**kwargs: Any) -> Genesis:
    return genesis_from_document(genesis_document(**kwargs))


def sign_tx(
    client: Ed25519Signer, nonce: int, ops: list[dict[str, Any]], chain_id: str = CHAIN_ID
) -> dict[str, Any]:
    """A v2 transaction: the body names its chain, signed under ``phalanx/tx/v2``."""
    body = {"chain_id": chain_id, "client": client.public_key, "nonce": nonce, "ops": ops}
    return {"body": body, "sig": client.sign(TAG_TX, body)}


def tx(client: Ed25519Signer, nonce: int, *ops: dict[str, Any], chain_id: str = CHAIN_ID) -> Tx:
    return Tx.from_wire(sign_tx(client, nonce, list(ops), chain_id))


def certify(
    genesis: Genesis,
    batch: Batch,
    view: int = 0,
    signers: Sequence[Ed25519Signer] | None = None,
) -> Certificate:
    """A certificate signed by ``signers`` (default: the first q validators)."""
    if signers is None:
        signers = VALIDATORS[: genesis.q]
    body = commit_vote_body(batch.chain_id, batch.seq, view, batch.digest)
    return Certificate(view, {s.public_key: s.sign(TAG_COMMIT, body) for s in signers})


def committed(
    genesis: Genesis, seq: int, txs: Sequence[Tx] = (), view: int = 0, time_ms: int | None = None
) -> Committed:
    if time_ms is None:
        time_ms = 1_764_000_000_000 + seq if txs else 0
    batch = Batch(genesis.chain_id, seq, time_ms, tuple(txs))
    return Committed(batch, certify(genesis, batch, view))


def append_signed_blocks(
    store: Any, genesis: Genesis, blocks: int, txs_per_block: int, null_every: int, views_of: int
) -> None:
    """Blocks 1..``blocks`` of ``txs_per_block`` transactions of ALICE setting keys ``k<n>``
    (every ``null_every``-th block null), certified in view ``seq // views_of``."""
    nonce = 0
    for seq in range(1, blocks + 1):
        txs = []
        if seq % null_every:
            for _ in range(txs_per_block):
                txs.append(tx(ALICE, nonce, {"op": "set", "key": f"k{nonce}", "value": nonce}))
                nonce += 1
        store.append_block(committed(genesis, seq, txs, view=seq // views_of))


def certify_execution(
    store: Any, seq: int, signers: Sequence[Ed25519Signer] | None = None
) -> dict[str, Any]:
    """Sign block ``seq``'s roots (as ``store`` computed them) by ``signers`` (default: the first
    q validators), store the execution certificate and return it."""
    from ledger.execution import build_certificate, sign_execution_vote

    genesis = store.genesis
    roots = store.roots(seq)
    block_hash_ = store.block_hash(seq)
    assert roots is not None and block_hash_ is not None, f"block {seq} is not stored"
    if signers is None:
        signers = VALIDATORS[: genesis.q]
    votes = [sign_execution_vote(s, genesis.chain_id, seq, block_hash_, *roots) for s in signers]
    certificate = build_certificate(votes)
    store.put_executions({seq: certificate})
    return certificate
