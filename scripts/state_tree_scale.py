"""State tree at scale (not run by the suite): build a ledger holding N keys (default 1,000,000)
through ``LedgerStore.append_block`` (so the state tree is kept incrementally, block by block, as
a node keeps it), then measure what issue 11 bounds:

- restart: open the ledger as a node does (size check, integrity of the recent blocks) and serve
  one proven read (snapshot, tree lookup, execution certificate), verified against the genesis;
- proof length: siblings per proof, average and maximum over random present and absent keys;
- per-block cost at that size: the share of a block's write spent on the state and results roots.

Prints one JSON object on stdout; progress goes to stderr. Example:

    .venv/bin/python scripts/state_tree_scale.py --keys 1000000 --dir /tmp/big
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from consensus.batch import Batch, Tx, commit_vote_body
from consensus.output import Certificate, Committed
from crypto.signing import TAG_COMMIT, TAG_TX, Ed25519Signer
from ledger.execution import build_certificate, sign_execution_vote
from ledger.genesis import Genesis, genesis_from_document
from ledger.proven_read import verify_read
from ledger.state_tree import kv_path
from ledger.store import LedgerStore

OPS_PER_TX = 64
TXS_PER_BLOCK = 200


def _signer(label: str) -> Ed25519Signer:
    import hashlib

    return Ed25519Signer(hashlib.sha256(label.encode()).digest())


VALIDATORS = [_signer(f"scale-validator-{i}") for i in range(4)]
CLIENT = _signer("scale-client")


def make_genesis() -> Genesis:
    return genesis_from_document(
        {
            "chain_id": "phalanx-scale",
            "validators": [
                {"name": f"node{i}", "pubkey": v.public_key} for i, v in enumerate(VALIDATORS)
            ],
            "accounts": {CLIENT.public_key: 10**15},
            "fee_per_byte": 1,
        }
    )


def block_of(genesis: Genesis, seq: int, txs: list[Tx]) -> Committed:
    batch = Batch(genesis.chain_id, seq, 1_764_000_000_000 + seq, tuple(txs))
    body = commit_vote_body(genesis.chain_id, seq, 0, batch.digest)
    signatures = {v.public_key: v.sign(TAG_COMMIT, body) for v in VALIDATORS[: genesis.q]}
    return Committed(batch, Certificate(0, signatures))


def tx_of(genesis: Genesis, nonce: int, ops: list[dict[str, Any]]) -> Tx:
    body = {"chain_id": genesis.chain_id, "client": CLIENT.public_key, "nonce": nonce, "ops": ops}
    return Tx.from_wire({"body": body, "sig": CLIENT.sign(TAG_TX, body)})


def certify(store: LedgerStore, genesis: Genesis, seq: int) -> None:
    roots = store.roots(seq)
    block_hash = store.block_hash(seq)
    assert roots is not None and block_hash is not None
    votes = [
        sign_execution_vote(v, genesis.chain_id, seq, block_hash, *roots)
        for v in VALIDATORS[: genesis.q]
    ]
    store.put_executions({seq: build_certificate(votes)})


def build(path: Path, genesis: Genesis, keys: int) -> dict[str, Any]:
    started = time.perf_counter()
    nonce = 0
    seq = 0
    written = 0
    roots_s = write_s = 0.0
    with LedgerStore.open(path, genesis, map_size=1 << 30) as store:
        while written < keys:
            txs = []
            for _ in range(TXS_PER_BLOCK):
                count = min(OPS_PER_TX, keys - written)
                if count <= 0:
                    break
                ops = [
                    {"op": "set", "key": f"key-{written + i}", "value": written + i}
                    for i in range(count)
                ]
                txs.append(tx_of(genesis, nonce, ops))
                nonce += 1
                written += count
            seq += 1
            store.append_block(block_of(genesis, seq, txs))
            write_s += store.last_timing[0]
            roots_s += store.last_timing[1]
            if seq % 10 == 0:
                rate = written / (time.perf_counter() - started)
                print(f"  {written:,} keys in {seq} blocks ({rate:,.0f} keys/s)", file=sys.stderr)
        certify(store, genesis, seq)
    return {
        "keys": written,
        "blocks": seq,
        "build_s": round(time.perf_counter() - started, 1),
        "build_roots_share": round(roots_s / write_s, 3) if write_s else None,
    }


def measure(path: Path, genesis: Genesis, keys: int, samples: int) -> dict[str, Any]:
    rng = random.Random(11)
    key = f"key-{rng.randrange(keys)}"
    started = time.perf_counter()
    store = LedgerStore.open(path, genesis)  # as a node opens it: checks, no tree rebuild
    opened = time.perf_counter()
    answer = store.proven_state(key)
    answer["execution"] = store.execution(answer["seq"])
    failures = verify_read(answer, genesis)
    restart_read_s = time.perf_counter() - started
    assert not failures, failures
    with store.snapshot() as snap:
        lengths = [
            len(snap.state_lookup(kv_path(f"key-{rng.randrange(keys)}")).proof.siblings)
            for _ in range(samples)
        ]
        absent = [
            len(snap.state_lookup(kv_path(f"absent-{i}")).proof.siblings)
            for i in range(samples // 4)
        ]
    read_started = time.perf_counter()
    for _ in range(200):
        store.proven_state(f"key-{rng.randrange(keys)}")
    proven_read_ms = (time.perf_counter() - read_started) / 200 * 1000
    # One more block of single-key transactions at this size: the roots' share of its write.
    head = store.head()[0]
    txs = [
        tx_of(genesis, 10**9 + i, [{"op": "set", "key": f"key-{rng.randrange(keys)}", "value": i}])
        for i in range(TXS_PER_BLOCK)
    ]
    store.append_block(block_of(genesis, head + 1, txs))
    write_s, roots_s = store.last_timing
    store.close()
    return {
        "open_s": round(opened - started, 3),
        "restart_and_proven_read_s": round(restart_read_s, 3),
        "proven_read_ms": round(proven_read_ms, 3),
        "proof_siblings_mean": round(statistics.mean(lengths), 2),
        "proof_siblings_max": max(lengths),
        "absent_proof_siblings_mean": round(statistics.mean(absent), 2) if absent else None,
        "block_at_size": {
            "txs": TXS_PER_BLOCK,
            "write_ms": round(write_s * 1000, 1),
            "roots_ms": round(roots_s * 1000, 1),
            "roots_share": round(roots_s / write_s, 3),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, help="ledger directory (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="measure an already built --dir")
    parser.add_argument("--samples", type=int, default=2_000, help="proofs measured")
    args = parser.parse_args()
    genesis = make_genesis()
    temporary = args.dir is None
    path = Path(tempfile.mkdtemp(prefix="phalanx-scale-")) if temporary else args.dir
    try:
        report: dict[str, Any] = {}
        if not args.reuse:
            print(f"building {args.keys:,} keys in {path}", file=sys.stderr)
            report.update(build(path, genesis, args.keys))
        report.update(measure(path, genesis, args.keys, args.samples))
        print(json.dumps(report, indent=2))
    finally:
        if temporary:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
