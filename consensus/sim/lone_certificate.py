"""The lone certificate: a scripted network schedule that makes one seq carry prepared
certificates for different batches from different views inside one view change.

OSDI'99 §4.4 re-proposes, for each seq, the digest of the certificate of the *highest* view among
the q VIEW-CHANGEs. A plan that took another one (the lowest view, the first found) agrees with
the rule whenever every certificate of a seq has the same digest, which is all that random loss
and partitions produce in practice. Two digests need a batch prepared at one honest replica only,
hidden from the next view change, replaced by another batch in the new view, and the lone holder
back for the view change after that. The network adversary can arrange this (PBFT must stay safe
whatever the network delivers), so the simulator does, as four phases driven by what the
replicas do:

1. **armed** (from the scenario's tick): wait for a view ``v`` whose next two primaries run
   honest code; the lone holder ``A`` is the primary of ``v + 2``.
2. **lone**: the next PRE-PREPARE of ``v``'s primary names the seq ``s``; every PREPARE for
   ``(v, s)`` is delivered to ``A`` only, so ``A`` alone prepares it (certificate ``(v, D1)``).
3. **hidden**: ``A`` is cut off (nothing to or from it). The others time out, change to a view
   ``w > v`` without ``A``'s certificate and prepare another batch (or the null batch) ``D2`` at
   ``s``. COMMITs for ``s`` in views above ``v`` are lost, so ``s`` cannot commit (nor a
   checkpoint pass it) and the others must change views again.
4. **reveal**: once an honest replica other than ``A`` moves past ``w``, ``A`` is back (but the
   NEW-VIEWs of views up to ``w`` never reach it, so it keeps ``(v, D1)``). It joins the next view
   change with its certificate beside the others' ``(w, D2)``; if that view is ``v + 2``, ``A``
   leads it and its own VIEW-CHANGE is in the NEW-VIEW. The checkers recompute the plan.

Each phase has a deadline (a few view-change timeouts); a schedule that stalls (a faulty replica
needed for a quorum stays silent, ``A`` crashes...) is abandoned, and tried again a few times.
The network's heal at the end of the fault window ends it for good.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.config import ReplicaConfig
from consensus.messages import PreparedCert
from consensus.replica import Replica
from consensus.sim.hosts import HonestHost
from consensus.sim.network import ConsensusWire, Payload

ATTEMPTS_MAX = 3  # schedules started per run (one abandoned is tried again)
PHASE_TIMEOUTS = 12  # view-change timeouts a phase may take before it is abandoned


@dataclass(frozen=True, slots=True)
class Target:
    view: int  # v: the view in which A alone prepares
    holder: int  # A: host index, the primary of v + 2
    seq: int | None = None  # s: chosen from v's next PRE-PREPARE
    digest: str | None = None  # D1, once A prepared it


class LoneCertificate:
    def __init__(
        self,
        config: ReplicaConfig,
        hosts: Sequence[HonestHost],
        arm_tick: int,
        timeout_ticks: int,
    ) -> None:
        self._config = config
        self._hosts = hosts
        self._arm_tick = arm_tick
        self._phase_ticks = PHASE_TIMEOUTS * timeout_ticks
        self.phase = "waiting"
        self._target: Target | None = None
        self._w = -1  # the view of the others' certificate for s (phase reveal)
        self._deadline = 0
        self.attempts = 0
        self.revealed = 0  # schedules that reached phase reveal

    # --- what the network asks -------------------------------------------------------------

    def drops(self, src: int, dst: int, payload: Payload) -> bool:
        """Whether the scripted network loses this packet."""
        t = self._target
        if t is None or self.phase in ("waiting", "armed", "done"):
            return False
        if self.phase == "hidden" and t.holder in (src, dst):
            return True
        if not isinstance(payload, ConsensusWire):
            return False
        wire = payload.wire
        kind, view, seq = wire.get("type"), wire.get("view"), wire.get("seq")
        if not isinstance(view, int):
            return False
        if kind == "prepare" and (view, seq) == (t.view, t.seq) and dst != t.holder:
            return True  # phase lone, and after: retransmissions of v must not prepare others
        if kind == "commit" and seq == t.seq and view > t.view:
            return True  # phases hidden and reveal: s must not commit before A is back
        # Phase reveal: A must not install a view the others left (it would adopt their
        # certificate for s before the view change that should see both).
        return self.phase == "reveal" and kind == "new_view" and dst == t.holder and view <= self._w

    def observe(self, src: int, wire: dict[str, object]) -> None:
        """A consensus message leaves host ``src`` (before the network has it): in phase lone,
        the first PRE-PREPARE or PREPARE of v for a seq nobody executed names s (whoever sends
        it: from then on no PREPARE for it reaches anyone but A)."""
        t = self._target
        if self.phase != "lone" or t is None or t.seq is not None:
            return
        seq = wire.get("seq")
        if (
            wire.get("type") in ("pre_prepare", "prepare")
            and wire.get("view") == t.view
            and isinstance(seq, int)
            and seq > self._executed()
        ):
            self._target = Target(t.view, t.holder, seq)

    # --- the schedule, once per tick -------------------------------------------------------

    def step(self, tick: int) -> None:
        if self.phase == "waiting" and tick >= self._arm_tick:
            self.phase = "armed"
        if self.phase in ("lone", "hidden", "reveal") and tick >= self._deadline:
            self._abandon()
        if self.phase == "armed":
            self._arm(tick)
        elif self.phase == "lone":
            self._lone(tick)
        elif self.phase == "hidden":
            self._hidden(tick)
        elif self.phase == "reveal":
            self._reveal()

    def stop(self) -> None:
        """The fault window is over: the network delivers again."""
        self.phase = "done"
        self._target = None

    def _abandon(self) -> None:
        self._target = None
        self.phase = "armed" if self.attempts < ATTEMPTS_MAX else "done"

    def _arm(self, tick: int) -> None:
        views = [r.view for r in self._replicas() if not r.in_view_change]
        if not views:
            return
        view = max(views)
        n = self._config.n
        holder, next_primary = (view + 2) % n, (view + 1) % n
        if not (self._runs_honest_code(holder) and self._runs_honest_code(next_primary)):
            return
        self.attempts += 1
        self._target = Target(view, holder)
        self.phase = "lone"
        self._deadline = tick + self._phase_ticks

    def _lone(self, tick: int) -> None:
        t = self._target
        if t is None:
            return
        if any(r.view > t.view for r in self._replicas()) or (
            t.seq is not None and self._executed() >= t.seq
        ):
            self._abandon()  # v is over (or s executed) before A alone prepared s
            return
        if t.seq is None:
            return
        cert = self._cert(t.holder, t.seq)
        if cert is not None and cert.view == t.view:
            self._target = Target(t.view, t.holder, t.seq, cert.digest)
            self.phase = "hidden"
            self._deadline = tick + self._phase_ticks

    def _hidden(self, tick: int) -> None:
        t = self._target
        if t is None or t.seq is None:
            return
        later = [
            cert.view
            for i in self._others(t.holder)
            if (cert := self._cert(i, t.seq)) is not None and cert.view > t.view
        ]
        if not later:
            return
        w = max(later)
        moved_on = any(
            (r := self._hosts[i].replica) is not None and r.view > w for i in self._others(t.holder)
        )
        if moved_on:
            self._w = w
            self.phase = "reveal"
            self.revealed += 1
            self._deadline = tick + self._phase_ticks

    def _reveal(self) -> None:
        # Done once some honest replica installed a view above w: the view change that could see
        # both certificates is over (the checkers judged its NEW-VIEW).
        if any(r.view > self._w and not r.in_view_change for r in self._replicas()):
            self.phase = "done" if self.attempts >= ATTEMPTS_MAX else "armed"
            self._target = None

    # --- reading the hosts (read only) -----------------------------------------------------

    def _runs_honest_code(self, index: int) -> bool:
        host = self._hosts[index]
        return host.honest and not host.twin and host.up

    def _executed(self) -> int:
        return max((r.last_executed_seq for r in self._replicas()), default=0)

    def _replicas(self) -> list[Replica]:
        return [h.replica for h in self._hosts if h.honest and not h.twin and h.replica is not None]

    def _others(self, holder: int) -> list[int]:
        return [h.index for h in self._hosts if h.honest and not h.twin and h.index != holder]

    def _cert(self, index: int, seq: int) -> PreparedCert | None:
        replica = self._hosts[index].replica
        # The replica's highest-view prepared certificate for seq, read only.
        return None if replica is None else replica._prepared_certs.get(seq)
