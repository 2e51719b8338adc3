"""Audit throughput against the machine's raw Ed25519 verify rate (``scripts/bench-audit``).

Builds a ledger (default 20,000 transactions of every op kind from 64 clients, 100 per block,
certificates by 3 of 4 validators) or takes an existing one (``--dir`` with ``--genesis``),
then, in the same process:

1. the raw rate: two threads calling libsodium's ``crypto_sign_open`` in a loop over
   already-built ``(signature || message, key)`` pairs taken from the ledger, nothing else;
2. the audit: ``ledger.audit.audit_ledger`` over the whole ledger, every check included, and
   its rate in signatures verified per second of wall time.

Each is run ``--repeat`` times and the best run counts, for both alike. It prints both rates
and their ratio; the exit code is 0 if the ratio reaches ``--target`` (default 0.7), else 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from nacl.bindings import crypto_sign_open

from consensus.batch import Batch, Tx, commit_vote_body
from consensus.output import Certificate, Committed
from crypto.canonical import canonical_json
from crypto.signing import TAG_COMMIT, TAG_TX, Ed25519Signer
from ledger.audit import audit_ledger
from ledger.audit.pool import can_fork
from ledger.genesis import Genesis, genesis_from_document, load_genesis
from ledger.store import LedgerStore

CLIENTS = 64
VALIDATORS = 4
RAW_SAMPLE = 4_000
TARGET = 0.7


def _signer(label: str) -> Ed25519Signer:
    return Ed25519Signer(hashlib.sha256(f"phalanx-bench/{label}".encode()).digest())


def build_ledger(path: Path, txs: int, per_block: int) -> Genesis:
    """Write a ledger of ``txs`` signed transactions to ``path``; return its genesis."""
    validators = [_signer(f"validator-{i}") for i in range(VALIDATORS)]
    clients = [_signer(f"client-{i}") for i in range(CLIENTS)]
    genesis = genesis_from_document(
        {
            "chain_id": "phalanx-bench",
            "validators": [
                {"name": f"node{i}", "pubkey": v.public_key} for i, v in enumerate(validators)
            ],
            "accounts": {c.public_key: 1_000_000_000 for c in clients},
            "fee_per_byte": 1,
        }
    )
    with LedgerStore.open(path, genesis) as store:
        made, seq = 0, 0
        while made < txs:
            seq += 1
            count = min(per_block, txs - made)
            batch_txs = tuple(_tx(genesis.chain_id, clients, made + i) for i in range(count))
            made += count
            batch = Batch(genesis.chain_id, seq, 1_764_000_000_000 + seq, batch_txs)
            body = commit_vote_body(genesis.chain_id, seq, 0, batch.digest)
            votes = {v.public_key: v.sign(TAG_COMMIT, body) for v in validators[: genesis.q]}
            store.append_block(Committed(batch, Certificate(0, votes)))
    return genesis


def _tx(chain_id: str, clients: list[Ed25519Signer], i: int) -> Tx:
    client = clients[i % CLIENTS]
    kind = i % 5
    ops: list[dict[str, Any]]
    if kind == 0:
        ops = [{"op": "set", "key": f"key-{i % 2000}", "value": {"n": i, "tags": ["bench", "a"]}}]
    elif kind == 1:
        to = clients[(i + 1) % CLIENTS].public_key
        ops = [{"op": "transfer", "to": to, "amount": 1 + i % 7}]
    elif kind == 2:
        ops = [{"op": "cas", "key": f"key-{(i - 2) % 2000}", "expect": 1, "value": i}]
    elif kind == 3:
        ops = [{"op": "delete", "key": f"key-{(i + 500) % 2000}"}]
    else:
        ops = [
            {"op": "set", "key": f"acct-{i % 300}", "value": "x" * 24},
            {"op": "transfer", "to": clients[(i + 7) % CLIENTS].public_key, "amount": 2},
        ]
    body = {"chain_id": chain_id, "client": client.public_key, "nonce": i, "ops": ops}
    return Tx(
        hashlib.sha256(canonical_json(body)).hexdigest(),
        {"body": body, "sig": client.sign(TAG_TX, body)},
    )


def raw_sample(path: Path, count: int) -> list[tuple[bytes, bytes]]:
    """``(signature || signing input, public key)`` of the ledger's first ``count`` txs."""
    prefix = TAG_TX.encode("utf-8") + b"\x00"
    sample: list[tuple[bytes, bytes]] = []
    with LedgerStore.open(path, readonly=True) as store:
        for block in store.iter_blocks():
            for wire in block["txs"]:
                body = wire["body"]
                signed = bytes.fromhex(wire["sig"]) + prefix + canonical_json(body)
                sample.append((signed, bytes.fromhex(body["client"])))
                if len(sample) == count:
                    return sample
    return sample


def raw_rate(sample: list[tuple[bytes, bytes]], threads: int = 2) -> float:
    """Signatures per second that ``threads`` threads verify, doing nothing else."""

    def verify(part: list[tuple[bytes, bytes]]) -> None:
        for signed, key in part:
            crypto_sign_open(signed, key)

    workers = [threading.Thread(target=verify, args=(sample[i::threads],)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(sample) / (time.perf_counter() - start)


def audit_rate(
    path: Path, genesis: Genesis, workers: int, processes: bool | None
) -> tuple[float, int, float]:
    """(signatures per second, signatures, seconds) of one whole audit, as ``phalanx audit``
    runs it (its worker pool started within the time)."""
    start = time.perf_counter()
    report = audit_ledger(path, genesis, workers=workers, processes=processes)
    elapsed = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"bench-audit: the audit failed: {report.failures[:3]}")
    return report.signatures / elapsed, report.signatures, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=20_000, help="transactions to build")
    parser.add_argument("--per-block", type=int, default=100, help="transactions per block")
    parser.add_argument("--dir", type=Path, help="audit this ledger instead of building one")
    parser.add_argument("--genesis", type=Path, help="the genesis of --dir (default: stored)")
    parser.add_argument("--workers", type=int, default=2, help="audit workers (default 2)")
    parser.add_argument(
        "--mode",
        choices=("auto", "processes", "threads"),
        default="auto",
        help="signature workers: as phalanx audit picks them (auto), or forced",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best counts")
    parser.add_argument("--target", type=float, default=TARGET, help="ratio to reach")
    args = parser.parse_args(argv)
    scratch = None
    if args.dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="phalanx-bench-audit-"))
        path = scratch / "ledger"
        start = time.perf_counter()
        genesis = build_ledger(path, args.txs, args.per_block)
        print(
            f"ledger: {args.txs:,} txs, {args.per_block} per block, built in "
            f"{time.perf_counter() - start:.1f} s ({path})"
        )
    else:
        path = args.dir
        genesis = load_genesis(args.genesis) if args.genesis else LedgerStore.read_genesis(path)
        print(f"ledger: {path}")
    try:
        return _measure(path, genesis, args)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _measure(path: Path, genesis: Genesis, args: argparse.Namespace) -> int:
    sample = raw_sample(path, RAW_SAMPLE)
    raw_rate(sample[:500])  # warm up
    processes = {"auto": None, "processes": True, "threads": False}[args.mode]
    mode = "processes" if (can_fork() if processes is None else processes) else "threads"
    raw_best = 0.0
    audit_best: tuple[float, int, float] = (0.0, 0, 0.0)
    for _ in range(max(1, args.repeat)):  # interleaved, so that machine noise hits both alike
        raw_best = max(raw_best, raw_rate(sample))
        audit_best = max(audit_best, audit_rate(path, genesis, args.workers, processes))
    rate, signatures, elapsed = audit_best
    ratio = rate / raw_best
    print(
        f"cpus: {os.cpu_count()}, audit workers: {args.workers} {mode}, best of {args.repeat} runs"
    )
    print(f"raw Ed25519 verify, 2 threads: {raw_best:,.0f} signatures/s")
    print(
        f"audit: {signatures:,} signatures (txs + votes) in {elapsed:.2f} s = "
        f"{rate:,.0f} signatures/s, every check included"
    )
    verdict = "ok" if ratio >= args.target else "BELOW TARGET"
    print(f"ratio audit/raw: {ratio:.2f} (target {args.target:.2f}: {verdict})")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
