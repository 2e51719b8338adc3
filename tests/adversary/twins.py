"""Twins on real processes (dev/test only): two node processes holding one validator key, one on
each side of a partition, under client load.

Four validators node0..node3 on hosts 0..3; each twinned validator ``t`` gets a second process
on host ``4 + k`` with the same key, its own data directory and addresses, and the same peer
list (honest nodes accept a validator's link from any address, so whichever twin reaches them
first is "the" validator for them). The partitions change during the run so that an honest node
changes sides:

* phase 1: all honest nodes but the last + first twins | the last + second twins;
* phase 2: the first honest node + first twins | the other honest nodes + second twins;
* heal: the second twins stop, everyone else reconnects.

With one validator twinned (n = 4, f = 1) no side ever holds a quorum of distinct honest-or-one
keys twice over, so the honest ledgers must never fork. With two validators twinned (f + 1
faulty) both sides of phase 1 can reach a quorum: the fork check must report the fork (the
negative control: it shows the check can fail).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from crypto.keys import load_private_key
from ledger.genesis import load_genesis
from tests.adversary.cluster import API_PORT, PEER_PORT, NetCluster
from tests.adversary.history import History
from tests.adversary.kv_model import KV_MODEL
from tests.adversary.linearizability import check_operations
from tests.adversary.netns import TestNet
from tests.adversary.workload import Frontier, KvClient, run_clients

VALIDATORS = 4


@dataclass
class TwinsReport:
    twinned: tuple[int, ...]
    counts: dict[str, int] = field(default_factory=dict)
    linearizable: str = ""
    heads: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    fork: str | None = None  # "nodeA and nodeB hold different blocks at seq S", or None
    evidence_against: list[str] = field(default_factory=list)  # validator names accused

    def line(self) -> str:
        c = self.counts
        twins = ",".join(f"node{t}" for t in self.twinned)
        return (
            f"twins[{twins}]: ops ok/failed/unknown {c.get('ok')}/{c.get('failed')}/"
            f"{c.get('unknown')} linearizable={self.linearizable} fork={self.fork or 'none'} "
            f"heads={ {k: v[0] if v else None for k, v in self.heads.items()} } "
            f"evidence_against={self.evidence_against}"
        )


def _twin_dir(cluster: NetCluster, original: int, host: int, twin_hosts: dict[int, int]) -> str:
    """A second site for validator ``original``: its key, its own data and host, its peers (the
    other second twins at their twins' hosts: the twins of one side must reach each other)."""
    name = f"{cluster.names[original]}-twin"
    site = cluster.dir / name
    site.mkdir()
    shutil.copy(cluster.dir / cluster.names[original] / "node.key", site / "node.key")
    config = json.loads((cluster.dir / cluster.names[original] / "node.json").read_text())
    address = cluster.net.hosts[host].address
    for other, other_host in twin_hosts.items():
        if other != original:
            peer = cluster.net.hosts[other_host].address
            config["peers"][cluster.pubkeys[other]] = f"{peer}:{PEER_PORT}"
    config.update(
        key_file=str(site / "node.key"),
        data_dir=str(site / "data"),
        peer_listen=f"{address}:{PEER_PORT}",
        http_listen=f"{address}:{API_PORT}",
    )
    (site / "node.json").write_text(json.dumps(config, indent=2))
    return name


def find_fork(cluster: NetCluster, nodes: list[int]) -> str | None:
    """Two of ``nodes`` holding different blocks at one seq (blocks chain by hash, so comparing
    at the lowest head suffices), or None."""
    heads = {i: h for i, h in cluster.heads(nodes).items() if h is not None}
    if len(heads) < 2:
        return None
    low = min(h[0] for h in heads.values())
    if low == 0:
        return None
    hashes: dict[int, str] = {}
    for i in heads:
        status, body = cluster.get(i, f"/v1/blocks/{low}", timeout_s=5.0)
        if status == 200 and isinstance(body, dict):
            hashes[i] = str(body.get("hash") or body.get("block_hash"))
    first = next(iter(hashes))
    other = next((i for i in hashes if hashes[i] != hashes[first]), None)
    if other is None:
        return None
    return f"{cluster.names[first]} and {cluster.names[other]} hold different blocks at seq {low}"


def run_twins(
    workdir: Path, twinned: tuple[int, ...] = (3,), seed: int = 1, phase_s: float = 6.0
) -> TwinsReport:
    report = TwinsReport(twinned)
    rng = random.Random(seed)
    with TestNet(VALIDATORS + len(twinned)) as net:
        cluster = NetCluster(net, workdir)
        cluster.names = cluster.names[:VALIDATORS]  # the validators; twins appended below
        cluster.setup()
        twins = [VALIDATORS + k for k in range(len(twinned))]
        twin_hosts = dict(zip(twinned, twins, strict=True))
        for original, host in twin_hosts.items():
            cluster.names.append(_twin_dir(cluster, original, host, twin_hosts))
        # Side A holds the first twins (on the validators' own hosts), side B the second ones;
        # in phase 2 one more honest node goes over to side B.
        honest = [i for i in range(VALIDATORS) if i not in twinned]
        phase1 = [[*honest[:-1], *twinned], [*honest[-1:], *twins]]
        phase2 = [[*honest[:1], *twinned], [*honest[1:], *twins]]
        net.partition(phase1)  # before anything starts: each twin meets only its side
        try:
            for i in range(VALIDATORS + len(twins)):
                cluster.start(i)
            genesis = load_genesis(workdir / "genesis.json")
            signer = load_private_key(workdir / "client.key")
            history, frontier = History(), Frontier()
            clients = [
                KvClient(f"c{j}", cluster, signer, genesis.chain_id, history, frontier,
                         random.Random(rng.randrange(2**32)))
                for j in range(3)
            ]  # fmt: skip
            for client in clients:
                client.genesis = genesis

            def step(client: KvClient) -> None:
                node = client.rng.choice(honest)
                key = client.rng.choice(("k0", "k1", "k2"))
                if client.rng.random() < 0.6:
                    client.write(node, key, client.rng.randrange(1_000_000))
                else:
                    client.read(node, key, "min_seq")

            _wait_up(cluster, range(VALIDATORS + len(twins)))
            run_clients(clients, step, phase_s)
            net.partition(phase2)
            run_clients(clients, step, phase_s)
            for host in twins:
                cluster.stop(host)
            net.heal()
            run_clients(clients, step, phase_s)
            report.counts = history.counts()
            report.linearizable = check_operations(KV_MODEL, history.strong()).verdict.value
            history.write_jsonl(workdir / "history.jsonl")
            report.heads = {cluster.names[i]: h for i, h in cluster.heads(range(4)).items()}
            report.fork = find_fork(cluster, honest)
            accused: set[str] = set()
            for i in honest:
                status, body = cluster.get(i, "/v1/evidence")
                if status == 200 and isinstance(body, dict):
                    accused |= {e["validator"] for e in body.get("evidence", [])}
            report.evidence_against = sorted(
                cluster.names[cluster.pubkeys.index(k)] for k in accused if k in cluster.pubkeys
            )
        finally:
            cluster.stop_all()
    return report


def _wait_up(cluster: NetCluster, nodes: range, timeout_s: float = 90.0) -> None:
    """Until every process answers /v1/status (a partitioned node is not "healthy")."""
    deadline = time.monotonic() + timeout_s
    for i in nodes:
        while cluster.status(i) is None:
            process = cluster.processes.get(i)
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{cluster.names[i]} exited: {cluster.log_tail(i)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cluster.names[i]} did not answer within {timeout_s} s")
            time.sleep(0.3)
