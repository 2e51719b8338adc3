"""What consensus does, told in the node's log with validator names, and what the operator
endpoints know about the peers.

The replica (``consensus/``) is pure and logs nothing. The runtime takes a :class:`ReplicaState`
snapshot before each replica step and hands it with the step's output to
:meth:`ConsensusLog.after_step`, which derives the events from the difference:

=========================  ===================================================================
event                      when
=========================  ===================================================================
``view_change_started``    the replica left its view (``reason``: ``primary_lost`` requests
                           waited and the link to the primary was down, ``request_timeout`` a
                           request waited a whole timeout with no progress under the primary,
                           ``new_view_timeout`` the next primary sent no valid NEW-VIEW in
                           time, ``joined_higher_view`` f + 1 validators had already moved on)
``new_view_installed``     the replica is active again in a later view (``primary`` named)
``checkpoint_stable``      the stable checkpoint moved (``seq``)
``state_transfer_asked``   the replica asked for blocks it cannot replay
``catch_up_started``       the block fetcher began fetching (``from_seq``, ``target``)
``catch_up_progress``      every few seconds while it fetches (``seq``, ``target``)
``catch_up_done``          the fetcher stopped (``seq``, ``fetched``)
``evidence_seen``          a misbehaviour evidence object appeared (``kind``, ``validator``)
``peer_connected``         an authenticated link to a validator came up (``peer_name``)
``peer_lost``              ... went down
=========================  ===================================================================

:meth:`ConsensusLog.poll` (called about twice a second by the runtime) finds the last four.

:class:`PeerTracker` records, per other validator, when we last received a frame from it and
the head it last announced (``sync-head``), and the small ``node-status`` summary each node
broadcasts every second (view, seq, health, peers): that is how the dashboard served by one node
shows every validator's view without the browser talking to the other nodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consensus.output import Output

STATUS_MESSAGE = "node-status"  # peer message: {"type", "view", "primary", "seq", "healthy", ...}
HEAD_MESSAGE = "sync-head"  # node.p2p.block_sync.HEAD, announced every second
CATCH_UP_PROGRESS_S = 3.0
STATUS_FIELDS = {
    "view": int,
    "seq": int,
    "primary": str,
    "healthy": bool,
    "peers_connected": int,
    "catching_up": bool,
}
EVIDENCE_REMEMBERED_MAX = 4_096

_log = logging.getLogger("phalanx.consensus")


class ReplicaLike(Protocol):
    @property
    def view(self) -> int: ...

    @property
    def primary(self) -> str: ...

    @property
    def in_view_change(self) -> bool: ...

    @property
    def stable_checkpoint(self) -> int: ...

    @property
    def last_executed_seq(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReplicaState:
    view: int
    primary: str
    active: bool
    stable_checkpoint: int
    seq: int

    @classmethod
    def of(cls, replica: ReplicaLike) -> ReplicaState:
        return cls(
            view=replica.view,
            primary=replica.primary,
            active=not replica.in_view_change,
            stable_checkpoint=replica.stable_checkpoint,
            seq=replica.last_executed_seq,
        )


# The kinds of replica input, as the runtime names them to after_step.
TICK = "tick"
MESSAGE = "message"
REQUESTS = "requests"
BLOCKS = "blocks"


def view_change_reason(before: ReplicaState, event_kind: str, primary_lost: bool = False) -> str:
    """Why a step that moved the replica into a view change did so (see the module table);
    ``primary_lost``: the tick reported the primary's link down."""
    if event_kind == TICK:
        if not before.active:
            return "new_view_timeout"
        return "primary_lost" if primary_lost else "request_timeout"
    return "joined_higher_view"


class ConsensusLog:
    """Derives consensus log events from replica snapshots and polled node state."""

    def __init__(
        self,
        names: Mapping[str, str],
        on_view_change: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = _log,
    ) -> None:
        self._names = dict(names)
        self._on_view_change = on_view_change
        self._clock = clock
        self._log = log
        self._connected: set[str] = set()
        self._catching_up = False
        self._catch_up_from = 0
        self._catch_up_fetched = 0
        self._last_progress = 0.0
        self._evidence_seen: set[str] = set()

    def name(self, pubkey: str) -> str:
        return self._names.get(pubkey, pubkey[:16])

    # ---- after each replica step ------------------------------------------------------------

    def after_step(
        self,
        before: ReplicaState,
        replica: ReplicaLike,
        event_kind: str,
        output: Output,
        lost_peers: Collection[str] = (),
    ) -> None:
        """``lost_peers``: for a tick, the validators whose links it reported down."""
        after = ReplicaState.of(replica)
        # Left a view: into a view change, or on to a later one, or straight into a later view
        # installed in the same step (the new primary that already held q VIEW-CHANGEs).
        if after.view > before.view or (before.active and not after.active):
            reason = view_change_reason(before, event_kind, before.primary in lost_peers)
            self._on_view_change(reason)
            self._log.warning(
                "view_change_started",
                extra={
                    "from_view": before.view,
                    "to_view": after.view,
                    "reason": reason,
                    "old_primary": self.name(before.primary),
                    "next_primary": self.name(after.primary),
                    "seq": after.seq,
                },
            )
        if after.active and (not before.active or after.view > before.view):
            self._log.info(
                "new_view_installed",
                extra={"view": after.view, "primary": self.name(after.primary), "seq": after.seq},
            )
        if after.stable_checkpoint > before.stable_checkpoint:
            self._log.info("checkpoint_stable", extra={"seq": after.stable_checkpoint})
        transfer = output.state_transfer
        if transfer is not None:
            self._log.info(
                "state_transfer_asked",
                extra={
                    "seq": transfer.seq,
                    "from_seq": after.seq,
                    "vouched_by": [self.name(p) for p in transfer.peers],
                },
            )

    # ---- polled -----------------------------------------------------------------------------

    def poll(
        self,
        connected: Sequence[str],
        catching_up: bool,
        seq: int,
        target: int,
        fetched: int,
        evidence: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        now_connected = set(connected)
        for peer in sorted(now_connected - self._connected):
            self._log.info("peer_connected", extra={"peer_name": self.name(peer), "peer": peer})
        for peer in sorted(self._connected - now_connected):
            self._log.warning("peer_lost", extra={"peer_name": self.name(peer), "peer": peer})
        self._connected = now_connected
        self._poll_catch_up(catching_up, seq, target, fetched)
        for item in evidence:
            self._evidence(item)

    def _poll_catch_up(self, catching_up: bool, seq: int, target: int, fetched: int) -> None:
        now = self._clock()
        if catching_up and not self._catching_up:
            self._catching_up = True
            self._catch_up_from, self._catch_up_fetched = seq, fetched
            self._last_progress = now
            self._log.info("catch_up_started", extra={"from_seq": seq, "target": target})
        elif catching_up and now - self._last_progress >= CATCH_UP_PROGRESS_S:
            self._last_progress = now
            self._log.info(
                "catch_up_progress",
                extra={"seq": seq, "target": target, "fetched": fetched - self._catch_up_fetched},
            )
        elif not catching_up and self._catching_up:
            self._catching_up = False
            self._log.info(
                "catch_up_done",
                extra={
                    "from_seq": self._catch_up_from,
                    "seq": seq,
                    "fetched": fetched - self._catch_up_fetched,
                },
            )

    def _evidence(self, item: Mapping[str, Any]) -> None:
        a, b = item.get("a"), item.get("b")
        key = repr((item.get("kind"), item.get("validator"), a, b))
        if key in self._evidence_seen or len(self._evidence_seen) >= EVIDENCE_REMEMBERED_MAX:
            return
        self._evidence_seen.add(key)
        validator = item.get("validator")
        self._log.warning(
            "evidence_seen",
            extra={
                "kind": item.get("kind"),
                "validator_name": self.name(validator) if isinstance(validator, str) else None,
                "validator": validator,
            },
        )


@dataclass
class PeerInfo:
    last_seen: float | None = None  # wall clock (s) of the last frame from it
    head_seq: int | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_at: float | None = None


class PeerTracker:
    """Per other validator: last frame received, announced head, last ``node-status``."""

    def __init__(
        self,
        peers: Sequence[str],
        clock: Callable[[], float] = time.time,
        on_drop: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._clock = clock
        self._on_drop = on_drop  # counts refused node-status messages (metrics, by reason)
        self.peers: dict[str, PeerInfo] = {p: PeerInfo() for p in peers}

    def on_frame(self, sender: str, wire: Mapping[str, Any]) -> bool:
        """Note a frame from ``sender``; True if it was a ``node-status`` (consumed here)."""
        info = self.peers.get(sender)
        if info is None:
            if wire.get("type") == STATUS_MESSAGE:
                self._on_drop("status_from_unknown")
                return True
            return False
        now = self._clock()
        info.last_seen = now
        kind = wire.get("type")
        if kind == HEAD_MESSAGE:
            seq = wire.get("seq")
            if type(seq) is int and seq >= 0:
                info.head_seq = seq
        elif kind == STATUS_MESSAGE:
            status = parse_status(wire)
            if status is None:
                self._on_drop("bad_node_status")
            else:
                info.status, info.status_at = status, now
                info.head_seq = max(info.head_seq or 0, status["seq"])
            return True
        return False

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def last_seen_ms(self, pubkey: str) -> int | None:
        info = self.peers.get(pubkey)
        if info is None or info.last_seen is None:
            return None
        return int(info.last_seen * 1000)


def parse_status(wire: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields of a ``node-status`` message if each has its type, else None (dropped)."""
    status: dict[str, Any] = {}
    for name, kind in STATUS_FIELDS.items():
        value: Any = wire.get(name)
        if type(value) is not kind:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < 2**63:
            return None
        if isinstance(value, str) and len(value) > 128:
            return None
        status[name] = value
    return status
