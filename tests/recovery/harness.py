"""Tools for recovery tests on a real 4-node testnet: background load that records every
acknowledged transaction, crash and freeze helpers, and offline checks of the four ledgers.

Used by the tests in this package, by scripts/soak and by scripts/bench-catchup.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.batch import block_hash
from crypto.hashing import hash_object
from ledger.store import LedgerStore
from node import testnet
from node.client import Client, ClientError, set_op, tx_id_of
from tests.e2e.cluster import Cluster, start_cluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMIT_WAIT_MS = 4_000
SUBMIT_CHUNK_MAX = 1_000  # POST /v1/txs takes at most this many


def start(dir: Path) -> Cluster:
    return start_cluster(dir)


def names(cluster: Cluster) -> list[str]:
    return [node.name for node in cluster.nodes]


def pid_of(cluster: Cluster, name: str) -> int:
    pid = testnet.Testnet.load(cluster.dir).node(name).pid
    assert pid is not None, f"{name} is not running"
    return pid


def freeze(cluster: Cluster, name: str) -> None:
    os.killpg(pid_of(cluster, name), signal.SIGSTOP)


def thaw(cluster: Cluster, name: str) -> None:
    os.killpg(pid_of(cluster, name), signal.SIGCONT)


def data_dir(cluster: Cluster, name: str) -> Path:
    return Path(testnet.Testnet.load(cluster.dir).node(name).data_dir)


def wipe(cluster: Cluster, name: str) -> None:
    """Empty a (stopped) node's data directory, as a replaced disk would leave it."""
    path = data_dir(cluster, name)
    shutil.rmtree(path)
    path.mkdir(mode=0o700)


def statuses(cluster: Cluster) -> dict[str, dict[str, Any] | None]:
    return {name: cluster.status(name) for name in names(cluster)}


def commit_one(cluster: Cluster, via: str, key: str, timeout_ms: int = 20_000) -> dict[str, Any]:
    """Submit one transaction through ``via`` and wait for its verified receipt."""
    tx = cluster.tx([set_op(key, key)])
    answer = Client(cluster.url(via)).submit(tx, wait=True, timeout_ms=timeout_ms)
    assert answer["status"] == "committed", f"{key} not committed through {via}: {answer}"
    receipt: dict[str, Any] = answer["receipt"]
    Client.verify_receipt(receipt, cluster.genesis, tx_id_of(tx))
    return receipt


def submit_bulk(cluster: Cluster, via: str, count: int, prefix: str) -> list[str]:
    """Submit ``count`` transactions through POST /v1/txs in chunks of 1,000; their tx_ids."""
    client = Client(cluster.url(via), timeout_s=60)
    tx_ids: list[str] = []
    for start in range(0, count, SUBMIT_CHUNK_MAX):
        txs = [
            cluster.tx([set_op(f"{prefix}/{i}", i)], nonce=i)
            for i in range(start, min(count, start + SUBMIT_CHUNK_MAX))
        ]
        for _ in range(100):
            answers = client.submit_many(txs)
            refused = [a for a in answers if "status" not in a]
            if not refused:
                break
            assert all(a["error"] == "pool_full" for a in refused), refused[:3]
            time.sleep(0.2)  # the pool is full: let some commit (POST /v1/txs is idempotent)
        else:
            raise AssertionError(f"{via} kept refusing transactions: {refused[:3]}")
        tx_ids.extend(tx_id_of(tx) for tx in txs)
    return tx_ids


def wait_committed(cluster: Cluster, via: str, tx_id: str, timeout_s: float = 60) -> dict[str, Any]:
    return Client(cluster.url(via)).wait_for_receipt(tx_id, timeout_s=timeout_s)


# ---- background load -------------------------------------------------------------------------


@dataclass
class Load:
    """Client threads submitting transactions with ``wait=commit`` to random running nodes.

    ``acked`` holds every transaction a node acknowledged as committed, with its receipt
    (verified against the genesis): the promise the ledgers must keep, whatever crashes later.
    """

    cluster: Cluster
    workers: int = 4
    prefix: str = "load"
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitted: int = 0
    errors: int = 0
    _down: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        urls = {name: self.cluster.url(name) for name in names(self.cluster)}
        for worker in range(self.workers):
            thread = threading.Thread(
                target=self._work, args=(worker, urls), name=f"load-{worker}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=COMMIT_WAIT_MS / 1000 + 35)
        self._threads = []

    def mark_down(self, name: str) -> None:
        with self._lock:
            self._down.add(name)

    def mark_up(self, name: str) -> None:
        with self._lock:
            self._down.discard(name)

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _work(self, worker: int, urls: Mapping[str, str]) -> None:
        rng = random.Random()
        for i in itertools.count():
            if self._stop.is_set():
                return
            with self._lock:
                up = [name for name in urls if name not in self._down]
            if not up:
                time.sleep(0.05)
                continue
            name = rng.choice(up)
            tx = self.cluster.tx([set_op(f"{self.prefix}/{worker}/{i}", i)], nonce=None)
            try:
                answer = Client(urls[name], timeout_s=5).submit(
                    tx, wait=True, timeout_ms=COMMIT_WAIT_MS
                )
            except ClientError:
                with self._lock:
                    self.errors += 1
                time.sleep(0.05)  # the node is down or overloaded
                continue
            with self._lock:
                self.submitted += 1
            if answer.get("status") == "committed":
                receipt = answer["receipt"]
                Client.verify_receipt(receipt, self.cluster.genesis, tx_id_of(tx))
                with self._lock:
                    self.acked[tx_id_of(tx)] = receipt


# ---- checks ------------------------------------------------------------------------------------


@dataclass
class LedgerReport:
    head_seq: int
    head_hash: str
    tx_count: int
    acked_checked: int


def check_ledgers(
    cluster: Cluster,
    acked: Mapping[str, Mapping[str, Any]] = {},
    names_: Iterable[str] | None = None,
) -> LedgerReport:
    """Offline checks of the nodes' ledgers (read-only, also while they run): each one's hash
    chain recomputes from the genesis; all hold the same blocks up to the shortest head (and the
    same head, when they are stopped and converged); every acknowledged transaction is in every
    ledger at the position its receipt names. Then ``phalanx audit`` over them all."""
    chosen = list(names_) if names_ is not None else names(cluster)
    chains: dict[str, list[str]] = {}
    tx_count = 0
    for name in chosen:
        with LedgerStore.open(data_dir(cluster, name), readonly=True) as store:
            chains[name] = _verified_chain(store, cluster.genesis.genesis_hash)
            for tx_id, receipt in acked.items():
                location = store.tx_location(tx_id)
                assert location == (receipt["seq"], receipt["index"]), (
                    f"{name}: acknowledged tx {tx_id} is at {location}, its receipt says "
                    f"({receipt['seq']}, {receipt['index']})"
                )
            with store.snapshot() as snapshot:
                tx_count = sum(1 for _ in snapshot.iter_tx_locations())
    shortest = min(len(chain) for chain in chains.values())
    reference = next(iter(chains.values()))[:shortest]
    for name, chain in chains.items():
        assert chain[:shortest] == reference, f"{name}'s ledger forks from the others"
    heads = {name: len(chain) for name, chain in chains.items()}
    assert len(set(heads.values())) == 1, f"heads differ: {heads}"
    run_audit(cluster, chosen)
    return LedgerReport(shortest, reference[-1] if reference else "", tx_count, len(acked))


def _verified_chain(store: LedgerStore, genesis_hash: str) -> list[str]:
    hashes: list[str] = []
    prev = genesis_hash
    for block in store.iter_blocks():
        seq = block["seq"]
        assert block["prev_hash"] == prev, f"block {seq} does not link to block {seq - 1}"
        expected = block_hash(seq, prev, hash_object(block["batch"]))
        assert block["hash"] == expected, f"block {seq}: stored hash is not its block_hash"
        hashes.append(expected)
        prev = expected
    return hashes


def run_audit(cluster: Cluster, chosen: list[str]) -> None:
    """``phalanx audit DATA_DIR... --genesis FILE`` must exit 0."""
    dirs = [str(data_dir(cluster, name)) for name in chosen]
    command = [sys.executable, "-m", "node.cli", "audit", *dirs]
    command += ["--genesis", str(cluster.dir / "genesis.json")]
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"phalanx audit failed:\n{done.stdout}\n{done.stderr}"


def wait_caught_up(cluster: Cluster, timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    """Under load: wait until every node reached the highest seq any node has now. Returns the
    statuses then.

    Views are not required to agree: a replica that timed out alone into a view change for
    v + 1 (say, while the primary of v was restarting) stays there, following the ledger by
    block sync, until f + 1 others ask for a view above v too (PBFT never lets it return to v).
    """
    target = max(s["seq"] for s in statuses(cluster).values() if s is not None)
    now: dict[str, dict[str, Any]] = {}

    def caught_up() -> bool:
        nonlocal now
        answers = statuses(cluster)
        now = {name: s for name, s in answers.items() if s is not None}
        return len(now) == len(answers) and all(s["seq"] >= target for s in now.values())

    wait_until(caught_up, timeout_s, f"every node to reach seq {target}")
    return now


def wait_until(condition: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def log_tails(cluster: Cluster, lines: int = 25) -> str:
    parts = []
    for name in names(cluster):
        with contextlib.suppress(OSError):
            parts.append(f"--- {name} ---\n{cluster.log_tail(name, lines)}")
    return "\n".join(parts)


__all__ = [
    "Cluster",
    "Load",
    "check_ledgers",
    "commit_one",
    "start",
    "submit_bulk",
]
