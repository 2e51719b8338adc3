"""One chaos scenario on real node processes in network namespaces, checked at the end.

:func:`run_partition_primary` is the first of the issue-14 scenarios: four nodes, clients
writing (set, cas) and reading (plain and ``min_seq``) through every node, the primary cut off
from the others for a while, then healed. Checked afterwards: the strong operations are
linearizable and plain reads sequentially consistent per node (:mod:`.linearizability`),
every ledger reaches one head, ``phalanx audit`` passes on all of them and finds no divergence,
no evidence appears (nobody misbehaved), and how long commits took to resume.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.keys import load_private_key
from ledger.evidence import EVIDENCE_PER_VALIDATOR_MAX, EvidenceError, verify_evidence
from ledger.genesis import load_genesis
from tests.adversary.cluster import PEER_PORT, ROOT, NetCluster
from tests.adversary.history import History
from tests.adversary.kv_model import KV_MODEL
from tests.adversary.linearizability import Verdict, check_operations, check_per_node
from tests.adversary.netns import TestNet
from tests.adversary.relay import LinkShape
from tests.adversary.workload import Frontier, KvClient, run_clients

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
    evidence_ok: bool = False
    acts: int = -1  # what the Byzantine node recorded doing (-1: no Byzantine node)
    must_act: bool = False
    acked: int = 0  # transactions acknowledged committed to a client
    acked_missing: int = -1  # (node, acknowledged transaction) pairs missing from a ledger
    transfers: dict[str, int] = field(default_factory=dict)  # ok / failed / unknown
    proven_reads: int = 0  # proven reads answered and verified
    bad_proofs: int = 0  # proven reads whose proof did not verify (must be none)
    resumed_after_fault_s: float | None = None  # majority commits again after the fault began
    recovered_after_heal_s: float | None = None  # every node commits past the head at the heal
    converged_after_load_s: float | None = None  # one head everywhere once the clients stopped
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.linearizable == Verdict.OK.value
            and self.per_node == Verdict.OK.value
            and self.ledgers_equal
            and self.audit_ok
            and self.evidence_ok
            and self.acked_missing == 0
            and self.bad_proofs == 0
            and (self.acts > 0 or not self.must_act)
            and self.resumed_after_fault_s is not None
            and self.recovered_after_heal_s is not None
            and self.converged_after_load_s is not None
        )

    def line(self) -> str:
        c = self.counts
        return (
            f"{self.scenario} seed={self.seed}: {'PASS' if self.passed else 'FAIL'} "
            f"ops ok/failed/unknown {c.get('ok')}/{c.get('failed')}/{c.get('unknown')} "
            f"linearizable={self.linearizable} per_node={self.per_node} "
            f"ledgers_equal={self.ledgers_equal} audit={self.audit_ok} evidence={self.evidence} "
            f"evidence_ok={self.evidence_ok} acts={self.acts} "
            f"acked={self.acked} missing={self.acked_missing} "
            f"transfers={self.transfers.get('ok')}/{self.transfers.get('failed')}/"
            f"{self.transfers.get('unknown')} proven={self.proven_reads} "
            f"bad_proofs={self.bad_proofs} "
            f"resumed={_s(self.resumed_after_fault_s)} "
            f"recovered_after_heal={_s(self.recovered_after_heal_s)} "
            f"converged={_s(self.converged_after_load_s)}"
        )


def _s(value: float | None) -> str:
    if value is None:
        return "never"
    return "not-required" if value < 0 else f"{value:.1f}s"


def _step(client: KvClient, nodes: list[int]) -> None:
    rng = client.rng
    node = rng.choice(nodes)
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.3:
        client.write(node, key, rng.randrange(1_000_000))
    elif roll < 0.42:
        client.write(node, key, rng.randrange(1_000_000), cas=True)
    elif roll < 0.5:
        client.transfer(node, rng.choice(client.cluster.pubkeys), rng.randint(1, 1_000))
    elif roll < 0.68:
        client.read(node, key, "min_seq")
    elif roll < 0.8:
        client.read(node, key, "proven")
    else:
        client.read(node, key, "plain")


class _Watcher:
    """Seconds from start until one of ``nodes`` (``every``: each of them) executed a block
    beyond ``seq`` (polled every 0.1 s)."""

    def __init__(
        self, cluster: NetCluster, nodes: list[int], seq: int, every: bool = False
    ) -> None:
        self._cluster, self._nodes, self._seq, self._every = cluster, nodes, seq, every
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
            beyond = [h is not None and h[0] > self._seq for h in heads.values()]
            if all(beyond) if self._every else any(beyond):
                self.after_s = time.monotonic() - self._started
                return

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(10)
        return self.after_s


# Every honest node must commit past the head at the heal within this many seconds of it.
RECOVERY_BOUND_S = 20.0


@dataclass
class Ctx:
    net: TestNet
    cluster: NetCluster
    primary: int
    others: list[int]


@dataclass(frozen=True)
class Spec:
    """A scenario: what runs where, the fault applied for ``fault_s`` under load, the heal."""

    name: str
    summary: str
    fault: Callable[[Ctx], None] = lambda ctx: None
    heal: Callable[[Ctx], None] = lambda ctx: ctx.net.heal()
    byzantine: tuple[int, str] | None = None  # (node, tests.adversary.byzantine behaviour)
    byzantine_args: tuple[str, ...] = ()  # more arguments for tests.adversary.byzantine
    evidence_kind: str | None = None  # what the Byzantine node's equivocations must show as
    skew_ms: tuple[tuple[int, int], ...] = ()  # (node, wall-clock offset)
    relay: LinkShape | None = None  # every peer link through a delaying relay
    fault_s: float = 8.0
    load_s: float = 3.0
    # False where the fault plus the Byzantine node are more than f faulty (an honest node cut
    # off while the Byzantine one withholds a valid VIEW-CHANGE): safety must hold, liveness
    # only after the heal.
    resume_during_fault: bool = True
    must_act: bool = True  # the Byzantine node must record having misbehaved at least once


def run_partition_primary(
    workdir: Path, seed: int = 1, fault_s: float = 8.0, load_s: float = 3.0
) -> Report:
    return run_named("partition-primary", workdir, seed, fault_s, load_s)


def run_named(
    name: str, workdir: Path, seed: int = 1, fault_s: float = 8.0, load_s: float = 3.0
) -> Report:
    """Scenario ``name`` with shorter phases (the CI subset)."""
    spec = SCENARIOS[name]
    return run(dataclasses.replace(spec, fault_s=fault_s, load_s=load_s), workdir, seed)


def run(spec: Spec, workdir: Path, seed: int = 1) -> Report:
    report = Report(spec.name, seed)
    rng = random.Random(seed)
    record = workdir / "equivocations.jsonl"
    with TestNet(4) as net:
        cluster = NetCluster(net, workdir)
        cluster.setup(relay_port=_relay_port if spec.relay is not None else None)
        try:
            if spec.relay is not None:
                _start_relays(cluster, spec.relay, seed)
            skews = dict(spec.skew_ms)
            for i in range(4):
                wrapper: list[str] = []
                if spec.byzantine is not None and spec.byzantine[0] == i:
                    wrapper = ["-m", "tests.adversary.byzantine", "--behaviour", spec.byzantine[1]]
                    wrapper += ["--seed", str(seed), "--record", str(record)]
                    wrapper += list(spec.byzantine_args)
                elif i in skews:
                    wrapper = ["-m", "tests.adversary.clock", "--offset-ms", str(skews[i])]
                cluster.start(i, wrapper)
            cluster.wait_ready(range(4))
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
            status = cluster.status(0) or {}
            primary = cluster.pubkeys.index(status["primary"])
            ctx = Ctx(net, cluster, primary, [i for i in range(4) if i != primary])
            if primary != 0:  # the specs place their Byzantine node by view 0's primary = 0
                report.notes.append(f"view 0's primary is node{primary}, not node0")
            everyone = list(range(4))
            # What must agree, hold every acknowledged tx and recover: the honest nodes (a
            # Byzantine node may be banned by its peers and never catch up).
            honest = [i for i in everyone if spec.byzantine is None or i != spec.byzantine[0]]
            run_clients(clients, lambda c: _step(c, everyone), spec.load_s)

            spec.fault(ctx)
            watched = [i for i in ctx.others if i in honest]
            seq_at_fault = max(h[0] for h in cluster.heads(watched).values() if h is not None)
            watcher = _Watcher(cluster, watched, seq_at_fault).start()
            run_clients(clients, lambda c: _step(c, everyone), spec.fault_s)
            report.resumed_after_fault_s = watcher.stop()
            if report.resumed_after_fault_s is None:
                report.notes.append("no commit beyond the head at the fault, during the fault")
                if not spec.resume_during_fault:
                    report.resumed_after_fault_s = -1.0  # not required (see Spec)
            spec.heal(ctx)
            seq_at_heal = max(h[0] for h in cluster.heads(honest).values() if h is not None)
            recovery = _Watcher(cluster, honest, seq_at_heal, every=True).start()
            run_clients(clients, lambda c: _step(c, everyone), spec.load_s)
            # Keep a load on until every honest node commits past the heal's head, within the
            # stated bound: a node that needs a view change or a catch-up to rejoin may take
            # longer than load_s, and with no load there would be nothing left to commit.
            healed_at = time.monotonic() - spec.load_s
            while recovery.after_s is None and time.monotonic() - healed_at < RECOVERY_BOUND_S:
                run_clients(clients, lambda c: _step(c, everyone), 1.0)
            report.recovered_after_heal_s = recovery.stop()
            if report.recovered_after_heal_s is None:
                report.notes.append("some node did not commit past the head at the heal")
            report.converged_after_load_s = _converge(cluster, honest, time.monotonic())
            report.counts = history.counts()
            report.transfers = {
                k: sum(c.transfers[k] for c in clients) for k in ("ok", "failed", "unknown")
            }
            report.proven_reads = sum(
                1
                for e in history.entries
                if e.read_kind == "proven" and e.output is not None and e.output.status == "ok"
            )
            report.bad_proofs = sum(len(c.bad_proofs) for c in clients)
            for client in clients:
                for node, reasons in client.bad_proofs[:3]:
                    report.notes.append(f"{node} answered a proven read that fails: {reasons}")
            report.linearizable = check_operations(KV_MODEL, history.strong()).verdict.value
            report.per_node = check_per_node(
                KV_MODEL, history.strong(), history.plain_reads_by_node()
            ).verdict.value
            history.write_jsonl(workdir / "history.jsonl")
            _check_evidence(spec, cluster, record, report)
            report.acked = len(frontier.acked)
            report.acked_missing = _missing_acked(cluster, honest, frontier.acked)
            heads = cluster.heads(honest)
            report.ledgers_equal = len(set(heads.values())) == 1 and None not in heads.values()
        finally:
            cluster.stop_all()
        report.audit_ok = _audit(cluster, honest)
    return report


def _missing_acked(cluster: NetCluster, nodes: list[int], acked: list[str]) -> int:
    """How many (node, acknowledged tx) pairs a node does not hold as committed."""
    missing = 0
    for i in nodes:
        for tx_id in acked:
            try:
                status, body = cluster.get(i, f"/v1/tx/{tx_id}", timeout_s=5.0)
            except (OSError, ValueError):
                status, body = 0, None
            if status != 200 or not isinstance(body, dict) or body.get("status") != "committed":
                missing += 1
    return missing


def _relay_port(i: int, j: int) -> int:
    return 7200 + 10 * i + j


def _start_relays(cluster: NetCluster, shape: LinkShape, seed: int) -> None:
    """In each host i, one relay per peer j on 127.0.0.1: what node i sends to j is delayed."""
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            argv = [
                sys.executable, "-m", "tests.adversary.relay",
                "--listen", f"127.0.0.1:{_relay_port(i, j)}",
                "--target", f"{cluster.net.hosts[j].address}:{PEER_PORT}",
                "--delay-ms", str(shape.delay_ms), "--jitter-ms", str(shape.jitter_ms),
                "--stall-p", str(shape.stall_p), "--stall-ms", str(shape.stall_ms),
                "--seed", str(seed * 100 + 10 * i + j),
            ]  # fmt: skip
            relay = cluster.net.spawn(i, argv, cwd=ROOT, stdout=subprocess.PIPE)
            line = relay.stdout.readline() if relay.stdout is not None else b""
            if b"relay listening" not in line:
                raise RuntimeError(f"relay {i}->{j} did not start: {line!r}")
    cluster.net.delay_mode = "relay"


def _check_evidence(spec: Spec, cluster: NetCluster, record: Path, report: Report) -> None:
    if spec.byzantine is not None:
        report.acts = len(record.read_text().splitlines()) if record.exists() else 0
        report.must_act = spec.must_act
        if spec.must_act and report.acts == 0:
            report.notes.append("the Byzantine node never misbehaved: the scenario proves nothing")
    items = {i: cluster.get(i, "/v1/evidence")[1]["evidence"] for i in range(4)}
    report.evidence = sum(len(v) for v in items.values())
    if spec.byzantine is None:
        report.evidence_ok = report.evidence == 0
        return
    byzantine = cluster.pubkeys[spec.byzantine[0]]
    # Every piece of evidence an honest node serves must verify for a third party.
    genesis = load_genesis(cluster.dir / "genesis.json")
    for i, evidence in items.items():
        if i == spec.byzantine[0]:
            continue
        for e in evidence:
            try:
                verify_evidence(e, genesis)
            except EvidenceError as exc:
                report.evidence_ok = False
                report.notes.append(f"{cluster.names[i]} serves evidence that fails: {exc}")
                return
    accused = {e["validator"] for v in items.values() for e in v}
    if accused - {byzantine}:
        report.evidence_ok = False
        report.notes.append(f"evidence against honest validators: {sorted(accused - {byzantine})}")
        return
    if spec.evidence_kind is None:  # may or may not equivocate; never an honest one accused
        report.evidence_ok = True
        return
    byzantine = cluster.pubkeys[spec.byzantine[0]]
    lines = record.read_text().splitlines() if record.exists() else []
    # Each equivocation must be evidence on every honest node that received both statements:
    # all of them for a broadcast ("to": null), else the one it was sent to (e.g. the witness
    # of an equivocating primary; evidence is not gossiped, spec v2 §7).
    recorded = [e for e in map(json.loads, lines) if e["kind"] == spec.evidence_kind]
    slots = {(e.get("view", 0), e["seq"]) for e in recorded}
    missing = 0
    for i in range(4):
        if i == spec.byzantine[0]:
            continue
        mine = {
            (e.get("view", 0), e["seq"])
            for e in recorded
            if e.get("to") in (None, cluster.pubkeys[i])
        }
        found = {
            (e["a"]["object"].get("view", 0), e["a"]["object"]["seq"])
            for e in items[i]
            if e["kind"] == spec.evidence_kind and e["validator"] == byzantine
        }
        # Stored evidence is bounded per validator (ledger.evidence): expect the first ones.
        expected = set(sorted(mine, key=lambda s: s[1])[:EVIDENCE_PER_VALIDATOR_MAX])
        missing += len(expected - found)
    report.evidence_ok = bool(slots) and missing == 0
    if not slots:
        report.notes.append("the Byzantine node recorded no equivocation")
    elif missing:
        report.notes.append(f"{missing} recorded equivocations are not evidence on honest nodes")


def _one_way_from_primary(ctx: Ctx) -> None:
    for j in ctx.others:
        ctx.net.block(ctx.primary, j)


def _light_loss_everywhere(ctx: Ctx) -> None:
    for i in range(4):
        ctx.net.loss(i, 10)


def _isolate_node0(ctx: Ctx) -> None:
    """Cut off node0 (view 0's primary) so that a view change runs through the others."""
    ctx.net.isolate(0)


def _loss_everywhere(ctx: Ctx) -> None:
    for i in range(4):
        ctx.net.loss(i, 30)


SCENARIOS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "partition-primary",
            "the primary cut off from the other three under load, then healed",
            fault=lambda ctx: ctx.net.isolate(ctx.primary),
        ),
        Spec(
            "partition-backup",
            "one backup cut off under load, then healed (it must catch up)",
            fault=lambda ctx: ctx.net.isolate(ctx.others[-1]),
        ),
        Spec(
            "bridge",
            "two sides that each reach only one middle node, then healed",
            fault=lambda ctx: ctx.net.bridge([ctx.others[0]], ctx.primary, ctx.others[1:]),
        ),
        Spec(
            "one-way-primary",
            "nothing from the primary reaches the others (they still reach it), then healed",
            fault=_one_way_from_primary,
        ),
        Spec(
            "loss",
            "30% packet loss into every node, then healed",
            fault=_loss_everywhere,
        ),
        Spec(
            "delay-jitter",
            "every peer link through a relay: 40 ms +- 20 ms, stalls of 200 ms at 2%",
            relay=LinkShape(delay_ms=40, jitter_ms=20, stall_p=0.02, stall_ms=200),
        ),
        Spec(
            "byzantine-equivocate-commits",
            "a backup signs two COMMITs for every slot; all must become evidence",
            byzantine=(3, "equivocate-commits"),
            evidence_kind="commit",
        ),
        Spec(
            "byzantine-silent",
            "a backup sends no consensus message at all",
            byzantine=(3, "silent"),
            must_act=False,  # it records nothing: it only withholds
        ),
        Spec(
            "clock-skew",
            "one backup 4 s ahead and another 3 s behind",
            skew_ms=((2, 4_000), (3, -3_000)),
        ),
        Spec(
            "delay-loss",
            "every peer link through a relay (30 ms +- 15 ms) and 10% loss into every node",
            relay=LinkShape(delay_ms=30, jitter_ms=15, stall_p=0.0, stall_ms=0),
            fault=_light_loss_everywhere,
        ),
        Spec(
            "byzantine-equivocating-primary",
            "the primary sends two batches per slot, half the backups each (one sees both)",
            byzantine=(0, "equivocating-primary"),
            byzantine_args=("--witness",),
            evidence_kind="pre_prepare",
        ),
        Spec(
            "byzantine-equivocate-execution",
            "a backup signs two execution votes (two state roots) for every block",
            byzantine=(3, "equivocate-execution"),
            evidence_kind="execution",
        ),
        Spec(
            "byzantine-forger",
            "a backup forges signatures: its own, in others' names, on txs it serves",
            byzantine=(3, "forger"),
            fault=lambda ctx: ctx.net.isolate(2),  # node2 lags, then catches up from all
            # Half its votes carry garbage signatures and its peers ban it for them: with node2
            # cut off that is f + 1 faulty, so commits need the heal.
            resume_during_fault=False,
        ),
        Spec(
            "byzantine-forger-primary",
            "the primary proposes batches whose transactions carry forged signatures",
            byzantine=(0, "forger"),
        ),
        Spec(
            "byzantine-replayer",
            "a backup replays old messages of others; the primary is cut off meanwhile",
            byzantine=(3, "replayer"),
            fault=_isolate_node0,
        ),
        Spec(
            "byzantine-view-change-hider",
            "a backup's VIEW-CHANGEs hide its prepared certificates while the primary is cut off",
            byzantine=(2, "view-change-hider"),
            fault=_isolate_node0,
        ),
        Spec(
            "byzantine-view-change-flooder",
            "a backup floods VIEW-CHANGEs and votes for views ahead",
            byzantine=(3, "view-change-flooder"),
        ),
        Spec(
            "byzantine-new-primary",
            "the next primary sends corrupted, validly signed NEW-VIEWs (primary cut off)",
            byzantine=(1, "byzantine-new-primary"),
            fault=_isolate_node0,
            fault_s=14.0,  # two view changes: to the liar's view, then past it
        ),
        Spec(
            "byzantine-certificate-forger",
            "a backup's VIEW-CHANGEs carry forged prepared certificates and checkpoint proofs",
            byzantine=(2, "certificate-forger"),
            fault=_isolate_node0,
            resume_during_fault=False,
        ),
        Spec(
            "byzantine-rogue-proposer",
            "a backup sends PRE-PREPAREs while not primary, some far beyond the watermarks",
            byzantine=(1, "rogue-proposer"),
        ),
        Spec(
            "byzantine-block-liar",
            "a backup serves bad blocks and heads a little ahead to a node catching up",
            byzantine=(1, "block-liar"),
            fault=lambda ctx: ctx.net.isolate(3),
        ),
        Spec(
            "byzantine-lying-heads",
            "a backup announces heads far ahead to a node catching up",
            byzantine=(1, "lying-heads"),
            fault=lambda ctx: ctx.net.isolate(3),
        ),
        Spec(
            "byzantine-early-buffer-flooder",
            "a backup sends PRE-PREPAREs for future views it will lead",
            byzantine=(3, "early-buffer-flooder"),
        ),
        Spec(
            "byzantine-amplification-abuser",
            "a backup replays VIEW-CHANGEs and BATCH-REQUESTs many times (primary cut off)",
            byzantine=(3, "amplification-abuser"),
            fault=_isolate_node0,
        ),
    )
}


def _converge(
    cluster: NetCluster, nodes: list[int], since: float, limit_s: float = 60.0
) -> float | None:
    while time.monotonic() - since < limit_s:
        heads = cluster.heads(nodes)
        if None not in heads.values() and len(set(heads.values())) == 1:
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def _audit(cluster: NetCluster, nodes: list[int]) -> bool:
    dirs = [str(cluster.data_dir(i)) for i in nodes]
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
