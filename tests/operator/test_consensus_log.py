"""node.consensus_log: the events derived from replica snapshots and polled node state, and the
peer tracker behind /v1/peers and the dashboard."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from consensus.output import Output, StateTransfer
from node.consensus_log import (
    BLOCKS,
    MESSAGE,
    TICK,
    ConsensusLog,
    PeerTracker,
    ReplicaState,
    parse_status,
)

A, B, C, D = ("aa" * 32, "bb" * 32, "cc" * 32, "dd" * 32)
NAMES = {A: "alpha", B: "bravo", C: "charlie", D: "delta"}


@dataclass
class FakeReplica:
    view: int = 0
    in_view_change: bool = False
    stable_checkpoint: int = 0
    last_executed_seq: int = 0
    validators: list[str] = field(default_factory=lambda: [A, B, C, D])

    @property
    def primary(self) -> str:
        return self.validators[self.view % 4]


class Events:
    """The records of phalanx.consensus in the test's call phase (read when asked)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        caplog.set_level(logging.DEBUG, logger="phalanx.consensus")

    def __iter__(self) -> Any:
        return iter(self._caplog.records)

    def __getitem__(self, i: int) -> logging.LogRecord:
        return self._caplog.records[i]

    def __eq__(self, other: object) -> bool:
        return self._caplog.records == other


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Events:
    return Events(caplog)


def _step(log: ConsensusLog, replica: FakeReplica, kind: str, change: dict[str, Any],
          output: Output | None = None) -> None:  # fmt: skip
    before = ReplicaState.of(replica)
    for name, value in change.items():
        setattr(replica, name, value)
    log.after_step(before, replica, kind, output or Output())


def test_view_change_reasons_and_new_view(events: Events) -> None:
    reasons: list[str] = []
    log = ConsensusLog(NAMES, on_view_change=reasons.append)
    replica = FakeReplica()
    _step(log, replica, TICK, {"view": 1, "in_view_change": True})  # request timer expired
    _step(log, replica, TICK, {"view": 2})  # no NEW-VIEW for view 1 in time
    _step(log, replica, MESSAGE, {"view": 2, "in_view_change": False})  # NEW-VIEW installed
    _step(log, replica, MESSAGE, {"view": 3, "in_view_change": True})  # f + 1 moved on
    assert reasons == ["request_timeout", "new_view_timeout", "joined_higher_view"]

    started = [r for r in events if r.getMessage() == "view_change_started"]
    assert [(r.from_view, r.to_view) for r in started] == [(0, 1), (1, 2), (2, 3)]  # type: ignore[attr-defined]
    assert started[0].old_primary == "alpha" and started[0].next_primary == "bravo"  # type: ignore[attr-defined]
    installed = [r for r in events if r.getMessage() == "new_view_installed"]
    assert len(installed) == 1 and installed[0].primary == "charlie"  # type: ignore[attr-defined]


def test_a_quiet_step_logs_nothing_and_checkpoints_and_transfers_do(
    events: Events,
) -> None:
    log = ConsensusLog(NAMES)
    replica = FakeReplica()
    _step(log, replica, TICK, {"last_executed_seq": 3})
    assert events == []
    _step(log, replica, BLOCKS, {"stable_checkpoint": 100, "last_executed_seq": 100})
    transfer = Output(state_transfer=StateTransfer(200, "ee" * 32, (B, C)))
    _step(log, replica, MESSAGE, {}, transfer)
    assert [r.getMessage() for r in events] == ["checkpoint_stable", "state_transfer_asked"]
    assert events[0].seq == 100  # type: ignore[attr-defined]
    assert events[1].vouched_by == ["bravo", "charlie"]  # type: ignore[attr-defined]


def test_peers_catch_up_and_evidence_from_polls(events: Events) -> None:
    now = [0.0]
    log = ConsensusLog(NAMES, clock=lambda: now[0])
    log.poll([B, C], False, 5, 0, 0)
    log.poll([B, C], False, 5, 0, 0)  # no change: nothing
    log.poll([C, D], True, 5, 900, 0)
    now[0] += 5
    log.poll([C, D], True, 400, 900, 395)
    log.poll([C, D], False, 900, 900, 895)
    evidence = {"kind": "commit", "validator": D, "a": {"x": 1}, "b": {"x": 2}}
    log.poll([C, D], False, 900, 900, 895, [evidence])
    log.poll([C, D], False, 900, 900, 895, [evidence])  # the same evidence once only
    got = [(r.getMessage(), getattr(r, "peer_name", None)) for r in events]
    assert got == [
        ("peer_connected", "bravo"), ("peer_connected", "charlie"),
        ("peer_connected", "delta"), ("peer_lost", "bravo"),
        ("catch_up_started", None), ("catch_up_progress", None), ("catch_up_done", None),
        ("evidence_seen", None),
    ]  # fmt: skip
    done = events[6]
    assert (done.from_seq, done.seq, done.fetched) == (5, 900, 895)  # type: ignore[attr-defined]
    assert events[-1].validator_name == "delta"  # type: ignore[attr-defined]


def test_peer_tracker_records_frames_heads_and_status() -> None:
    now = [100.0]
    drops: list[str] = []
    tracker = PeerTracker([B, C], clock=lambda: now[0], on_drop=drops.append)
    assert tracker.on_frame(B, {"type": "prepare"}) is False
    assert tracker.last_seen_ms(B) == 100_000 and tracker.last_seen_ms(C) is None
    assert tracker.on_frame(B, {"type": "sync-head", "seq": 7, "hash": "00" * 32}) is False
    assert tracker.peers[B].head_seq == 7
    status = {"type": "node-status", "view": 1, "seq": 9, "primary": B, "healthy": True,
              "peers_connected": 3, "catching_up": False}  # fmt: skip
    now[0] = 101.0
    assert tracker.on_frame(C, status) is True
    assert tracker.peers[C].status["seq"] == 9 and tracker.peers[C].status_at == 101.0
    # From a key that is no validator of ours: consumed, not kept.
    assert tracker.on_frame("ee" * 32, status) is True
    assert "ee" * 32 not in tracker.peers
    assert tracker.on_frame(B, {**status, "seq": "nine"}) is True
    assert tracker.peers[B].status == {}  # the malformed summary was not kept
    assert drops == ["status_from_unknown", "bad_node_status"]


@pytest.mark.parametrize(
    "change",
    [{"seq": -1}, {"seq": True}, {"view": "1"}, {"healthy": 1}, {"primary": "x" * 200},
     {"peers_connected": None}, {"seq": 2**63}],
)  # fmt: skip
def test_malformed_status_is_refused(change: dict[str, Any]) -> None:
    status = {"view": 1, "seq": 9, "primary": B, "healthy": True, "peers_connected": 3,
              "catching_up": False}  # fmt: skip
    assert parse_status(status) is not None
    assert parse_status({**status, **change}) is None


def test_a_view_change_while_the_primary_link_is_down_says_primary_lost(events: Events) -> None:
    reasons: list[str] = []
    log = ConsensusLog(NAMES, on_view_change=reasons.append)
    replica = FakeReplica()
    before = ReplicaState.of(replica)
    replica.view, replica.in_view_change = 1, True
    log.after_step(before, replica, TICK, Output(), lost_peers={before.primary})
    # A lost backup is no reason of its own: the request timer fired.
    before = ReplicaState.of(replica)
    replica.in_view_change = False  # view 1 installed
    log.after_step(before, replica, MESSAGE, Output())
    before = ReplicaState.of(replica)
    replica.view, replica.in_view_change = 2, True
    log.after_step(before, replica, TICK, Output(), lost_peers={"someone-else"})
    assert reasons == ["primary_lost", "request_timeout"]


def test_a_view_entered_and_installed_in_one_step_logs_both(events: Events) -> None:
    """The next primary that already holds q VIEW-CHANGEs when its own timer fires leaves its
    view and installs the next one in a single step: both are told."""
    reasons: list[str] = []
    log = ConsensusLog(NAMES, on_view_change=reasons.append)
    replica = FakeReplica()
    _step(log, replica, TICK, {"view": 1})
    assert reasons == ["request_timeout"]
    assert [r.getMessage() for r in events] == ["view_change_started", "new_view_installed"]
