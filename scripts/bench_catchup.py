"""Catch-up benchmark (scripts/bench-catchup): how fast a node with a wiped disk gets back.

A fresh 4-node testnet commits --txs transactions (POST /v1/txs, 1,000 at a time: full blocks)
or, with --load-s, whatever 8 clients waiting for each commit get through in that time (small
blocks); the load then stops. node3 is killed, its data directory emptied, and it is started
again. The clock runs from the moment node3 answers /v1/status (process start-up excluded, shown
apart) until its head equals the others'. Everything it fetched was verified before being
applied: every transaction signature, the header against the transactions, the commit
certificate, the hash chain. Prints blocks/s and transactions/s, and the one-core Ed25519
verify rate for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crypto.signing import Ed25519Signer, verify_bytes
from ledger.store import LedgerStore
from tests.e2e.cluster import Cluster
from tests.recovery import harness


def verify_rate(samples: int = 2000) -> float:
    signer = Ed25519Signer.generate()
    message = b"x" * 200
    signature = signer.sign_bytes(message)
    start = time.perf_counter()
    for _ in range(samples):
        verify_bytes(signer.public_key, message, signature)
    return samples / (time.perf_counter() - start)


def _profile(cluster: Cluster, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling node3 (and its subprocesses) until interrupted."""
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy), "record", "--subprocesses", "-f", "raw", "-o", str(out)]
    command += ["-p", str(harness.pid_of(cluster, "node3"))]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class CpuSeconds:
    """CPU time (user + system) of a node: its main thread (event loop: the replica, executing
    blocks), its other threads, and its child processes (the verify workers)."""

    main: float
    threads: float
    children: float

    def __sub__(self, other: CpuSeconds) -> CpuSeconds:
        return CpuSeconds(
            self.main - other.main, self.threads - other.threads, self.children - other.children
        )


def _cpu_of_stat(path: Path) -> float:
    # /proc/.../stat: utime and stime are fields 14 and 15, after the ")" closing the name.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> CpuSeconds:
    """Linux only: read from /proc."""
    main = _cpu_of_stat(Path(f"/proc/{pid}/task/{pid}/stat"))
    total = _cpu_of_stat(Path(f"/proc/{pid}/stat"))
    children = 0.0
    pending = [pid]
    while pending:  # every descendant (the forkserver, and the workers it forks)
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                pending.append(int(child))
                with contextlib.suppress(OSError):
                    children += _cpu_of_stat(Path(f"/proc/{child}/stat"))
    return CpuSeconds(main, total - main, children)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=50_000, help="transactions (default 50,000)")
    parser.add_argument(
        "--load-s",
        type=float,
        default=None,
        help="instead of --txs in bulk (full blocks of 500), drive 8 clients that each wait for "
        "their commit, for this many seconds: many small blocks",
    )
    parser.add_argument("--dir", type=Path, default=None, help="testnet dir (default: temp)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record node3's catch-up with py-spy (its worker processes too) into this file "
        "(py-spy raw format: folded stacks)",
    )
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="phalanx-bench-catchup-"))
    cluster = harness.start(base / "testnet")
    names = harness.names(cluster)
    try:
        started = time.monotonic()
        if args.load_s is None:
            tx_ids = harness.submit_bulk(cluster, "node0", args.txs, f"bench-{time.time_ns()}")
            for tx_id in tx_ids[-1::-997]:
                harness.wait_committed(cluster, "node0", tx_id, timeout_s=600)
        else:
            load = harness.Load(cluster, workers=8, prefix=f"bench-{time.time_ns()}").start()
            time.sleep(args.load_s)
            load.stop()
        head = cluster.wait_same_head(names, min_seq=1, timeout_s=120)
        print(
            f"bench-catchup: transactions committed in {head} blocks "
            f"({time.monotonic() - started:.1f} s)",
            flush=True,
        )
        cluster.kill("node3")
        harness.wipe(cluster, "node3")
        spawned = time.monotonic()
        cluster.start("node3")
        ready = time.monotonic()
        pid = harness.pid_of(cluster, "node3")
        cpu_before = cpu_seconds(pid)
        profiler = None if args.profile is None else _profile(cluster, args.profile)
        while (cluster.status("node3") or {}).get("seq", 0) < head:
            time.sleep(0.02)
        done = time.monotonic()
        cpu = cpu_seconds(pid) - cpu_before
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            profiler.wait(timeout=60)
        cluster.wait_same_head(names, min_seq=head, timeout_s=30)
    finally:
        cluster.down()
    path = harness.data_dir(cluster, "node3")
    with LedgerStore.open(path, readonly=True) as store, store.snapshot() as snapshot:
        txs = sum(1 for _ in snapshot.iter_tx_locations())
    seconds = done - ready
    print(
        f"bench-catchup: node3 (wiped) fetched and verified {head} blocks, {txs} transactions "
        f"in {seconds:.2f} s after start-up ({ready - spawned:.2f} s): "
        f"{head / seconds:.0f} blocks/s, {txs / seconds:.0f} tx/s verified and applied"
    )
    rate = verify_rate()
    print(
        f"bench-catchup: for scale, one core verifies {rate:.0f} Ed25519 sig/s; "
        f"catch-up / verify rate = {txs / seconds / rate:.2f}"
    )
    per_tx = 1e6 / max(1, txs)
    print(
        f"bench-catchup: node3 CPU while catching up: main thread {cpu.main:.2f} s "
        f"({cpu.main * per_tx:.0f} us/tx), other threads {cpu.threads:.2f} s "
        f"({cpu.threads * per_tx:.0f} us/tx), worker processes {cpu.children:.2f} s "
        f"({cpu.children * per_tx:.0f} us/tx); one verify costs {1e6 / rate:.0f} us"
    )
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
