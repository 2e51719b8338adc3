"""The simulation loop: one seed, one run, one verdict.

Each tick: start the faults planned for it (heal at the end of the fault window), let clients
submit, tick every host, then deliver packets in rounds until none is due (a packet with no delay
is delivered within the same tick, so a round trip costs no virtual time). The safety checkers
run after every tick; the run stops at the first violation, or once every valid transaction is
executed everywhere after the heal, or at the liveness deadline.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from consensus.config import ReplicaConfig
from consensus.sim.adversaries import ALL_KINDS, SkewedClockHost
from consensus.sim.checkers import LivenessChecker, SafetyChecker
from consensus.sim.clients import Workload
from consensus.sim.faults import (
    Clog,
    Crash,
    EndPartition,
    Fault,
    Partition,
    Restart,
    Unclog,
    plan_faults,
    twin_sides,
)
from consensus.sim.hosts import Envelope, HonestHost
from consensus.sim.keys import ClientTxChecker, make_keys
from consensus.sim.lone_certificate import LoneCertificate
from consensus.sim.lost_links import LostLinks
from consensus.sim.network import IN_FLIGHT_MAX, ConsensusWire, Network, Payload
from consensus.sim.scenario import TWIN, Scenario, scenario_for_seed

CHAIN_ID = "phalanx-sim"
GENESIS_HASH = hashlib.sha256(b"phalanx-sim genesis").hexdigest()
START_MS = 1_764_000_000_000
TICK_MS = 10
DELIVERY_ROUNDS_MAX = 64  # per tick; what is left is delivered next tick
CLIENT_RETRY_TIMEOUTS = 3  # clients multicast again after this many view-change timeouts


@dataclass
class SimResult:
    seed: int
    scenario: str
    violations: list[str] = field(default_factory=list)
    liveness_failures: list[str] = field(default_factory=list)
    ticks: int = 0
    blocks: int = 0  # the longest honest ledger
    views: tuple[int, ...] = ()  # final view of each host running honest code
    packets: int = 0
    repeats: int = 0  # tx_ids committed again (recorded as duplicates, not executed)
    recovery_ticks: int = -1  # from max(heal, last submission) until all executed; -1: never
    recovery_bound: int = 0  # what the liveness bound allowed for it
    view_change_restarts: int = 0  # honest replicas killed and restarted during a view change
    lost_link_lies: int = 0  # live primaries reported lost to a replica (lost_links.py)
    lone_certificates: int = 0  # lone-certificate schedules that reached their reveal phase
    # NEW-VIEWs (sent or installed by honest hosts) whose VIEW-CHANGEs hold, for one seq,
    # certificates for different digests from different views: where the plan's choice matters
    split_new_views: int = 0
    fingerprint: str = ""  # a hash of the outcome: equal for two runs of one seed

    @property
    def ok(self) -> bool:
        return not self.violations and not self.liveness_failures


class Simulation:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        master = random.Random(scenario.seed)
        # Separate streams, so that e.g. a Byzantine host's coin flips do not shift the network's.
        net_rng, fault_rng, client_rng = (random.Random(master.getrandbits(64)) for _ in range(3))
        keys = make_keys(scenario.seed, scenario.n, scenario.clients, scenario.ed25519)
        validators = tuple(s.public_key for s in keys.validators)
        self.config = ReplicaConfig(CHAIN_ID, GENESIS_HASH, validators, **scenario.params)
        self.verifier = keys.verifier
        self.clients = keys.clients
        self.tx_checker = ClientTxChecker(keys.verifier, tuple(c.public_key for c in keys.clients))
        self.hosts: list[HonestHost] = []
        for i, signer in enumerate(keys.validators):
            kind = scenario.byzantine.get(i)
            host: HonestHost
            if kind is None and i in scenario.clock_skews:
                host = SkewedClockHost(
                    i,
                    self.config,
                    signer,
                    keys.verifier,
                    self.tx_checker,
                    clock_offset_ms=scenario.clock_skews[i],
                )
            elif kind is None or kind == TWIN:
                host = HonestHost(
                    i, self.config, signer, keys.verifier, self.tx_checker, twin=kind == TWIN
                )
            else:
                host_rng = random.Random(master.getrandbits(64))
                host = ALL_KINDS[kind](
                    i, self.config, signer, keys.verifier, self.tx_checker, host_rng, keys.clients
                )
            self.hosts.append(host)
        twin_pairs = []
        for i in scenario.twins:  # the second instance of each twinned key
            twin = HonestHost(
                len(self.hosts),
                self.config,
                keys.validators[i],
                keys.verifier,
                self.tx_checker,
                twin=True,
            )
            twin_pairs.append((i, twin.index))
            self.hosts.append(twin)
        self.network = Network(net_rng, len(self.hosts))
        if twin_pairs:
            others = [h.index for h in self.hosts if not h.twin]
            side_a, side_b = twin_sides(fault_rng, twin_pairs, others)
            self.network.pin_partition(side_a, side_b)
        self.faults: dict[int, list[Fault]] = plan_faults(
            fault_rng,
            len(self.hosts),
            [h.index for h in self.hosts if h.honest and not h.twin],
            scenario.fault_window_ticks,
            scenario.partitions,
            scenario.clogs,
            scenario.crashes,
        )
        self.workload = Workload(
            client_rng,
            keys.clients,
            scenario.tx_total,
            scenario.forged_total,
            scenario.submit_until_tick,
            CLIENT_RETRY_TIMEOUTS * scenario.timeout_ticks,
            self.config.f + 1,
        )
        self.safety = SafetyChecker(
            self.config,
            keys.verifier,
            self.tx_checker,
            self.workload.forged,
            self.hosts,
            clock_skew_max_ms=max(map(abs, scenario.clock_skews.values()), default=0),
        )
        self._vc_crash = set(scenario.view_change_crash)
        self.lone: LoneCertificate | None = None
        if scenario.lone_certificate_tick:
            self.lone = LoneCertificate(
                self.config, self.hosts, scenario.lone_certificate_tick, scenario.timeout_ticks
            )
            self.network.drop_rule = self.lone.drops
        self.view_change_restarts = 0
        self.lost_links: LostLinks | None = None
        if scenario.lost_links:
            self.lost_links = LostLinks(
                scenario.seed, self.hosts, scenario.lost_link_lie_p, scenario.heal_tick
            )
        self.liveness = LivenessChecker(self.hosts)
        self._by_key: dict[str, list[int]] = {}
        for host in self.hosts:
            self._by_key.setdefault(host.key, []).append(host.index)
        self.tick = 0
        self._doing = ""

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        s = self.scenario
        result = SimResult(s.seed, s.describe())
        deadline = s.liveness_deadline(self.workload.last_submit_tick)
        recovery_start = max(s.heal_tick, self.workload.last_submit_tick)
        result.recovery_bound = deadline - recovery_start
        self._set_conditions(faulty=True)
        while self.tick < deadline:
            self.tick += 1
            error = self._step()
            if error is not None:
                result.violations.append(f"tick {self.tick}: {error}")
                break
            if self.safety.check(self.tick, START_MS + self.tick * TICK_MS):
                break
            if self.tick > s.heal_tick and self.workload.done_submitting and self._all_executed():
                result.recovery_ticks = self.tick - recovery_start
                break
        result.violations = [*result.violations, *self.safety.violations]
        if not result.violations:
            result.violations.extend(self.safety.check_prefixes())
        if not result.violations and not s.negative_control:
            result.liveness_failures.extend(self._liveness_report(deadline))
        self._summarize(result)
        return result

    def _step(self) -> str | None:
        """One tick; returns what went wrong if host code raised (a bug) or messages storm."""
        try:
            self._step_hosts()
        except Exception as exc:  # anything out of a replica (or our host code) is a bug
            return f"{self._doing} raised {type(exc).__name__}: {exc}"
        if self.network.in_flight > IN_FLIGHT_MAX:
            return f"message storm: {self.network.in_flight} packets in flight"
        return None

    def _step_hosts(self) -> None:
        now_ms = START_MS + self.tick * TICK_MS
        for fault in self.faults.pop(self.tick, []):
            self._apply(fault)
        if self.tick == self.scenario.heal_tick:
            self._heal()
        elif self.lone is not None:
            self.lone.step(self.tick)
        self._crash_in_view_change()
        for sub in self.workload.submissions(self.tick, len(self.hosts), self._replies):
            for i in range(len(self.hosts)) if sub.to is None else [sub.to]:
                self._route(i, self._host(i, "client txs").on_client_txs(sub.txs))
        if self.lost_links is not None:
            self.lost_links.step(self.tick)
        for host in self.hosts:
            self._route(host.index, self._host(host.index, "tick").on_tick(now_ms))
        for _ in range(DELIVERY_ROUNDS_MAX):
            packets = self.network.due(self.tick)
            if not packets:
                break
            for p in packets:
                self._deliver(p.src, p.dst, p.payload)

    def _deliver(self, src: int, dst: int, payload: Payload) -> None:
        host = self._host(dst, "packet")
        replica = host.replica
        before = None if replica is None else (replica.view, replica.in_view_change)
        self._route(dst, host.on_packet(src, payload))
        # An honest host that enters a view on a NEW-VIEW must have accepted valid evidence.
        if (
            host.honest
            and replica is not None
            and isinstance(payload, ConsensusWire)
            and payload.wire.get("type") == "new_view"
            and payload.wire.get("view") == replica.view
            and not replica.in_view_change
            and before != (replica.view, False)
        ):
            self.safety.check_installed(dst, payload.wire, self.tick)

    def _host(self, index: int, what: str) -> HonestHost:
        """The host about to run, remembered so that an exception can name it."""
        host = self.hosts[index]
        self._doing = f"host {index} ({host.kind}) on {what}"
        return host

    def _route(self, src: int, envelopes: list[Envelope]) -> None:
        src_key = self.hosts[src].key
        for envelope in envelopes:
            to = envelope.to
            if to is None:  # every other validator key (a twin does not talk to its own key)
                targets = [h.index for h in self.hosts if h.key != src_key]
            elif isinstance(to, int):
                targets = [to]
            else:
                targets = [i for i in self._by_key.get(to, []) if i != src]
            if isinstance(envelope.payload, ConsensusWire):
                self.safety.observe(envelope.payload.wire)
                if self.lone is not None:
                    self.lone.observe(src, envelope.payload.wire)
                if self.hosts[src].honest:
                    self.safety.check_sent(src, envelope.payload.wire, self.tick)
            for dst in targets:
                self.network.send(src, dst, envelope.payload, self.tick)

    # --- faults ------------------------------------------------------------------------------

    def _set_conditions(self, faulty: bool) -> None:
        c, s = self.network.conditions, self.scenario
        c.loss_p = s.loss_p if faulty else 0.0
        c.duplicate_p = s.duplicate_p
        c.delay_ticks_max = s.delay_ticks_max if faulty else min(s.delay_ticks_max, 2)
        c.delay_p = s.delay_p

    def _apply(self, fault: Fault) -> None:
        net = self.network
        match fault:
            case Partition(side_a, side_b, one_way):
                net.clear_partitions()
                net.partition(side_a, side_b, one_way)
            case EndPartition():
                net.clear_partitions()
            case Clog(link):
                net.clog(link)
            case Unclog(link):
                net.unclog(link, self.tick)
            case Crash(host, torn):
                self.hosts[host].crash(torn)
            case Restart(host):
                if not self.hosts[host].up:
                    self.hosts[host].restart()

    def _crash_in_view_change(self) -> None:
        """Restart during a view change: the first time (after the arming tick, inside the
        fault window) an honest replica is seen changing views, the chosen honest replicas (one,
        several or all of them) are killed together, and restarted from their records and
        ledgers a few ticks later (each its own delay)."""
        s = self.scenario
        if not self._vc_crash or not s.view_change_crash_tick <= self.tick < s.heal_tick:
            return
        changing = any(
            h.replica is not None and h.replica.in_view_change
            for h in self.hosts
            if h.honest and not h.twin
        )
        if not changing:
            return
        for offset, index in enumerate(sorted(self._vc_crash)):
            if not self.hosts[index].up:
                continue
            self.hosts[index].crash()
            self.view_change_restarts += 1
            delay = max(1, s.view_change_down_ticks - offset)
            restart = min(self.tick + delay, s.heal_tick - 1)
            self.faults.setdefault(max(restart, self.tick + 1), []).append(Restart(index))
        self._vc_crash = set()

    def _heal(self) -> None:
        self.network.heal(self.tick)
        if self.lone is not None:
            self.lone.stop()
        self._set_conditions(faulty=False)
        for host in self.hosts:
            if not host.up:
                host.restart()

    # --- observations ------------------------------------------------------------------------

    def _replies(self, tx_id: str) -> int:
        return sum(1 for h in self.hosts if tx_id in h.committed_ids)

    def _all_executed(self) -> bool:
        return not self.liveness.missing(self.workload.valid)

    def _liveness_report(self, deadline: int) -> list[str]:
        missing = self.liveness.missing(self.workload.valid)
        if not missing:
            return []
        report = []
        for index, tx_ids in sorted(missing.items()):
            host = self.hosts[index]
            state = "down"
            if host.replica is not None:
                r = host.replica
                state = (
                    f"view {r.view}{' (changing)' if r.in_view_change else ''}, "
                    f"executed {r.last_executed_seq}, stable {r.stable_checkpoint}, "
                    f"pending {r.pending_count}"
                )
            report.append(
                f"host {index} lacks {len(tx_ids)} of {len(self.workload.valid)} txs at the "
                f"deadline (tick {deadline}); {state}"
            )
        return report

    def _summarize(self, result: SimResult) -> None:
        result.ticks = self.tick
        honest = [h for h in self.hosts if h.honest]
        result.blocks = max((len(h.ledger) for h in honest), default=0)
        result.views = tuple(h.replica.view if h.replica else -1 for h in honest)
        result.packets = self.network.stats.sent
        result.repeats = self.safety.repeats
        result.view_change_restarts = self.view_change_restarts
        result.lost_link_lies = 0 if self.lost_links is None else self.lost_links.lies
        result.lone_certificates = 0 if self.lone is None else self.lone.revealed
        result.split_new_views = self.safety.split_new_views
        digest = hashlib.sha256()
        for host in self.hosts:
            digest.update(f"{host.index}:{len(host.ledger)}:".encode())
            for block in host.ledger:
                digest.update(bytes.fromhex(block.batch.digest))
        digest.update(
            repr((result.ticks, result.views, result.packets, result.violations)).encode()
        )
        result.fingerprint = digest.hexdigest()


def run_seed(seed: int, ed25519: bool = False) -> SimResult:
    return Simulation(scenario_for_seed(seed, ed25519)).run()
