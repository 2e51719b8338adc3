"""One chaos scenario on real node processes in network namespaces, checked at the end.

:func:`run_partition_primary` is the first of the issue-14 scenarios: four nodes, clients
writing (set, cas) and reading (plain and ``min_seq``) through every node, the primary cut off
from the others for a while, then healed. Checked afterwards: the strong operations are
linearizable and plain reads sequentially consistent per node (:mod:`chaos.linearizability`),
every ledger reaches one head, ``phalanx audit`` passes on all of them and finds no divergence,
no evidence appears (nobody misbehaved), and how long commits took to resume.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.cluster import ROOT, NetCluster
from chaos.history import History
from chaos.kv_model import KV_MODEL
from chaos.linearizability import Verdict, check_operations, check_per_node
from chaos.netns import TestNet
from chaos.workload import Frontier, KvClient, run_clients
from crypto.keys import load_private_key
from ledger.genesis import load_genesis

KEYS = ("k0", "k1", "k2")


@dataclass
class Report:
    scenario: str
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    linearizable: str = ""
    per_node: str = ""
    ledgers_equal: bool = False
    audit_ok: bool = False
    evidence: int = 0
    resumed_after_fault_s: float | None = None
    converged_after_heal_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.linearizable == Verdict.OK.value
            and self.per_node == Verdict.OK.value
            and self.ledgers_equal
            and self.audit_ok
            and self.evidence == 0
            and self.resumed_after_fault_s is not None
        )

    def line(self) -> str:
        c = self.counts
        return (
            f"{self.scenario} seed={self.seed}: {'PASS' if self.passed else 'FAIL'} "
            f"ops ok/failed/unknown {c.get('ok')}/{c.get('failed')}/{c.get('unknown')} "
            f"linearizable={self.linearizable} per_node={self.per_node} "
            f"ledgers_equal={self.ledgers_equal} audit={self.audit_ok} evidence={self.evidence} "
            f"resumed={_s(self.resumed_after_fault_s)} converged={_s(self.converged_after_heal_s)}"
        )


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def _step(client: KvClient, nodes: list[int]) -> None:
    rng = client.rng
    node = rng.choice(nodes)
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.35:
        client.write(node, key, rng.randrange(1_000_000))
    elif roll < 0.5:
        client.write(node, key, rng.randrange(1_000_000), cas=True)
    elif roll < 0.75:
        client.read(node, key, "min_seq")
    else:
        client.read(node, key, "plain")


class _Watcher:
    """Seconds from start until one of ``nodes`` executes a block beyond ``seq`` (polled)."""

    def __init__(self, cluster: NetCluster, nodes: list[int], seq: int) -> None:
        self._cluster, self._nodes, self._seq = cluster, nodes, seq
        self._stop = threading.Event()
        self._started = time.monotonic()
        self.after_s: float | None = None
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> _Watcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            heads = self._cluster.heads(self._nodes)
            if any(h is not None and h[0] > self._seq for h in heads.values()):
                self.after_s = time.monotonic() - self._started
                return

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(10)
        return self.after_s


def run_partition_primary(
    workdir: Path, seed: int = 1, fault_s: float = 8.0, load_s: float = 3.0
) -> Report:
    report = Report("partition-primary", seed)
    rng = random.Random(seed)
    with TestNet(4) as net:
        cluster = NetCluster(net, workdir)
        cluster.setup()
        try:
            for i in range(4):
                cluster.start(i)
            cluster.wait_ready(range(4))
            genesis = load_genesis(workdir / "genesis.json")
            signer = load_private_key(workdir / "client.key")
            history, frontier = History(), Frontier()
            clients = [
                KvClient(f"c{j}", cluster, signer, genesis.chain_id, history, frontier,
                         random.Random(rng.randrange(2**32)))
                for j in range(3)
            ]  # fmt: skip
            status = cluster.status(0) or {}
            primary = cluster.pubkeys.index(status["primary"])
            others = [i for i in range(4) if i != primary]
            run_clients(clients, lambda c: _step(c, list(range(4))), load_s)

            net.isolate(primary)
            seq_at_fault = max(h[0] for h in cluster.heads(others).values() if h is not None)
            watcher = _Watcher(cluster, others, seq_at_fault).start()
            run_clients(clients, lambda c: _step(c, list(range(4))), fault_s)
            report.resumed_after_fault_s = watcher.stop()
            if report.resumed_after_fault_s is None:
                report.notes.append("the majority never committed during the partition")
            net.heal()
            healed = time.monotonic()
            run_clients(clients, lambda c: _step(c, list(range(4))), load_s)
            report.converged_after_heal_s = _converge(cluster, healed)
            report.counts = history.counts()
            report.linearizable = check_operations(KV_MODEL, history.strong()).verdict.value
            report.per_node = check_per_node(
                KV_MODEL, history.strong(), history.plain_reads_by_node()
            ).verdict.value
            history.write_jsonl(workdir / "history.jsonl")
            report.evidence = sum(
                len(cluster.get(i, "/v1/evidence")[1]["evidence"]) for i in range(4)
            )
            heads = cluster.heads(range(4))
            report.ledgers_equal = len(set(heads.values())) == 1 and None not in heads.values()
        finally:
            cluster.stop_all()
        report.audit_ok = _audit(cluster)
    return report


def _converge(cluster: NetCluster, since: float, limit_s: float = 60.0) -> float | None:
    while time.monotonic() - since < limit_s:
        heads = cluster.heads(range(4))
        if None not in heads.values() and len(set(heads.values())) == 1:
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def _audit(cluster: NetCluster) -> bool:
    dirs = [str(cluster.data_dir(i)) for i in range(4)]
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", *dirs, "--genesis",
         str(cluster.dir / "genesis.json"), "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    try:
        report: Any = json.loads(done.stdout)
    except ValueError:
        return False
    return done.returncode == 0 and bool(report.get("ok")) and not report.get("divergences")
