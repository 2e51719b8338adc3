"""Restart from persisted records (persist-before-send). Castro & Liskov assume a correct
replica keeps its log in stable storage across a crash; these tests check that a replica
rebuilt from its records never signs conflicting messages and rejoins the right view."""

from __future__ import annotations

from typing import Any

from consensus.batch import Batch
from consensus.messages import PrePrepare, sign_message
from tests.consensus.harness import CHAIN_ID, Cluster, make_tx

TIMEOUT = 5


def _sent(cluster: Cluster, kind: str, by: int) -> list[dict[str, Any]]:
    return [
        s.message
        for i, o in cluster.outputs
        if i == by
        for s in o.sends
        if s.message["type"] == kind
    ]


def test_restarted_backup_does_not_prepare_a_second_digest() -> None:
    """A backup that prepared digest d for (v, n), crashed and restarted from its records
    refuses a different pre-prepare for (v, n): it must never sign two PREPAREs for one slot."""
    cluster = Cluster(batch_size_max=1)
    cluster.tick()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    cluster.submit([make_tx(1)])
    (first,) = _sent(cluster, "prepare", by=1)
    cluster.crash(1)
    replica = cluster.restart(1)
    assert replica.view == 0 and not replica.in_view_change
    other = Batch(CHAIN_ID, 1, cluster.now_ms, (make_tx(2),))
    conflicting = sign_message(cluster.signers[0], PrePrepare(CHAIN_ID, 0, 1, other.digest, other))
    cluster.inject(1, conflicting.to_wire())
    assert replica.dropped[(cluster.keys[0], "equivocation")] == 1
    assert [p["digest"] for p in _sent(cluster, "prepare", by=1)] == [first["digest"]]


def test_restarted_primary_does_not_reuse_a_sequence_number() -> None:
    """The primary persists each pre-prepare before sending it, so after a restart it proposes
    new batches at fresh sequence numbers, and its earlier proposal still commits."""
    cluster = Cluster(batch_size_max=1)
    cluster.tick()
    # The primary proposes seq 1 and crashes right after sending (its PRE-PREPARE is in flight).
    cluster.apply(0, cluster.replica(0).on_requests([make_tx(1)]))
    cluster.crash(0)
    cluster.restart(0)
    cluster.tick()
    cluster.submit([make_tx(2)])
    cluster.tick(2)
    proposals = _sent(cluster, "pre_prepare", by=0)
    assert [p["seq"] for p in proposals] == [1, 2]
    for i in range(4):
        assert cluster.executed(i) == 2


def test_restart_during_view_change_rejoins_the_right_view() -> None:
    """OSDI'99 §4.4: the view a replica moved to is durable; restarted mid view change it is
    still in view v + 1 waiting for NEW-VIEW, re-sends the same VIEW-CHANGE and then joins."""
    cluster = Cluster(batch_size_max=1, view_change_timeout_ticks=TIMEOUT)
    cluster.tick()
    cluster.filters.append(lambda s, r, w: s != 0 and w["type"] != "new_view")
    cluster.submit([make_tx(1)])
    cluster.run_until(lambda: cluster.replica(2).in_view_change, ticks_max=3 * TIMEOUT)
    (before,) = _sent(cluster, "view_change", by=2)
    cluster.crash(2)
    replica = cluster.restart(2)
    assert replica.view == 1 and replica.in_view_change
    cluster.filters[:] = [lambda s, r, w: s != 0]
    cluster.run_until(
        lambda: all(cluster.executed(i) == 1 for i in (1, 2, 3)), ticks_max=4 * TIMEOUT
    )
    assert replica.view == 1 and not replica.in_view_change
    assert all(vc == before for vc in _sent(cluster, "view_change", by=2) if vc["view"] == 1)
    cluster.assert_persisted_before_sent()


def test_whole_cluster_restart_after_checkpoint_continues() -> None:
    """Records below the stable checkpoint are discarded (Output.discard_below), and a cluster
    restarted from what remains, plus its ledgers, keeps ordering with the same history."""
    cluster = Cluster(batch_size_max=1, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(5)])
    cluster.tick(2)
    for i in range(4):
        cluster.crash(i)
    for i in range(4):
        replica = cluster.restart(i)
        assert replica.stable_checkpoint == 4 and replica.last_executed_seq == 5
    cluster.tick()
    cluster.submit([make_tx(i) for i in range(5, 9)])
    cluster.tick(3)
    for i in range(4):
        assert cluster.executed(i) == 9
        assert cluster.tx_order(i) == cluster.tx_order(0)
        assert cluster.replica(i).stable_checkpoint == 8


def test_restarted_new_primary_keeps_its_new_view() -> None:
    """The NEW-VIEW a primary sent is durable; after a restart it is in the new view, active,
    and never builds a second, different NEW-VIEW for it."""
    cluster = Cluster(batch_size_max=1, view_change_timeout_ticks=TIMEOUT)
    cluster.tick()
    cluster.filters.append(lambda s, r, w: s != 0)
    cluster.submit([make_tx(1)])
    cluster.run_until(lambda: cluster.executed(1) == 1, ticks_max=4 * TIMEOUT)
    cluster.crash(1)
    replica = cluster.restart(1)
    assert replica.view == 1 and replica.is_primary and not replica.in_view_change
    cluster.submit([make_tx(2)])
    cluster.tick(2)
    assert all(cluster.executed(i) == 2 for i in (1, 2, 3))
    assert len(_sent(cluster, "new_view", by=1)) == 1
    cluster.assert_persisted_before_sent()


def test_restored_votes_make_equivocation_an_invariant_violation() -> None:
    """Defence in depth: the votes a replica signed are rebuilt from its records, and signing
    a different digest for the same (view, seq, phase) raises instead of leaving the process."""
    import pytest

    from consensus.errors import InvariantViolation
    from consensus.messages import Prepare

    cluster = Cluster(batch_size_max=1)
    cluster.tick()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    cluster.submit([make_tx(1)])
    cluster.crash(2)
    replica = cluster.restart(2)
    with pytest.raises(InvariantViolation):
        replica._sign_vote(Prepare(CHAIN_ID, 0, 1, "00" * 32))
