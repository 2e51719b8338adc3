"""View changes (Castro & Liskov OSDI'99 §4.4, liveness §4.5.2) through four in-memory replicas."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus.batch import Batch
from consensus.messages import (
    NewView,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
)
from tests.consensus.harness import (
    CHAIN_ID,
    GENESIS_HASH,
    VIEW_CHANGE_TIMEOUT,
    Cluster,
    make_tx,
    view_change_cluster,
)


def _sent(cluster: Cluster, kind: str, by: int | None = None) -> list[dict[str, Any]]:
    return [
        s.message
        for i, o in cluster.outputs
        for s in o.sends
        if s.message["type"] == kind and (by is None or i == by)
    ]


def test_silent_primary_is_replaced() -> None:
    """OSDI'99 §4.4: a backup whose request is not executed before its timer expires moves to
    view v + 1 with VIEW-CHANGE; the primary of v + 1 sends NEW-VIEW with q VIEW-CHANGEs and
    the pending requests are then ordered in the new view."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: s != 0)  # the primary of view 0 is silent
    txs = [make_tx(i) for i in range(3)]
    cluster.submit(txs)
    cluster.run_until(
        lambda: all(cluster.executed(i) == 3 for i in (1, 2, 3)), ticks_max=4 * VIEW_CHANGE_TIMEOUT
    )
    for i in (1, 2, 3):
        replica = cluster.replica(i)
        assert replica.view == 1 and not replica.in_view_change
        assert replica.primary == cluster.keys[1]
        assert sorted(cluster.tx_order(i)) == sorted(tx.tx_id for tx in txs)
    assert len(_sent(cluster, "new_view", by=1)) == 1
    cluster.assert_persisted_before_sent()


def test_prepared_batch_is_carried_into_the_new_view() -> None:
    """OSDI'99 §4.4: VIEW-CHANGE carries a prepared certificate for every prepared seq, and the
    new primary re-proposes the same digest at the same seq, which then commits in view v + 1."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")  # prepared, never committed
    cluster.submit([make_tx(1)])
    (proposal,) = _sent(cluster, "pre_prepare", by=0)
    assert cluster.executed(1) == 0
    # Now the primary falls silent (and view-0 COMMITs stay lost, even when retransmitted).
    cluster.filters[:] = [lambda s, r, w: s != 0 and not (w["type"] == "commit" and w["view"] == 0)]
    cluster.run_until(
        lambda: all(cluster.executed(i) == 1 for i in (1, 2, 3)), ticks_max=4 * VIEW_CHANGE_TIMEOUT
    )
    for i in (1, 2, 3):
        (block,) = cluster.nodes[i].ledger
        assert block.batch.digest == proposal["digest"]
        assert block.certificate.view == 1
    view_changes = [decode_message(w) for w in _sent(cluster, "view_change")]
    assert all(isinstance(v, ViewChange) and len(v.prepared) == 1 for v in view_changes)
    cluster.assert_persisted_before_sent()


def test_gaps_are_filled_with_null_batches() -> None:
    """OSDI'99 §4.4: for a seq between min-s and max-s with no prepared certificate in the
    VIEW-CHANGEs, the new primary proposes a null request; its transactions are ordered later."""
    cluster = view_change_cluster()
    # seq 2 reaches only replica 1 (never prepares); nothing commits.
    cluster.filters.append(
        lambda s, r, w: (
            w["type"] != "commit" and not (w["type"] == "pre_prepare" and w["seq"] == 2 and r != 1)
        )
    )
    txs = [make_tx(i) for i in range(3)]
    cluster.submit(txs)
    cluster.filters[:] = [lambda s, r, w: s != 0 and not (w["type"] == "commit" and w["view"] == 0)]
    cluster.run_until(
        lambda: all(cluster.executed(i) >= 4 for i in (1, 2, 3)), ticks_max=6 * VIEW_CHANGE_TIMEOUT
    )
    for i in (1, 2, 3):
        ledger = cluster.nodes[i].ledger
        assert [b.batch.is_null for b in ledger[:3]] == [False, True, False]
        assert sorted(cluster.tx_order(i)) == sorted(tx.tx_id for tx in txs)
    cluster.assert_persisted_before_sent()


def _partial_view_change(cluster: Cluster) -> NewView:
    """Replicas 1..3 move to view 1 after seq 1 prepared; replica 2 never receives NEW-VIEW.
    Returns the genuine NEW-VIEW."""
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    cluster.submit([make_tx(1)])
    cluster.filters[:] = [
        lambda s, r, w: (
            s != 0
            and not (w["type"] == "commit" and w["view"] == 0)
            and not (r == 2 and w["type"] in {"new_view", "prepare", "commit", "pre_prepare"})
        )
    ]
    cluster.run_until(
        lambda: cluster.replica(1).view == 1 and not cluster.replica(1).in_view_change,
        ticks_max=4 * VIEW_CHANGE_TIMEOUT,
    )
    (wire,) = _sent(cluster, "new_view", by=1)
    new_view = decode_message(wire)
    assert isinstance(new_view, NewView)
    assert cluster.replica(2).in_view_change
    return new_view


def test_forged_new_view_is_recomputed_and_rejected() -> None:
    """OSDI'99 §4.4: a backup accepts NEW-VIEW only if its VIEW-CHANGEs are valid and O is what
    it computes itself from them; a primary dropping the prepared batch (null instead) or
    presenting fewer than q VIEW-CHANGEs is refused, even though it signs correctly."""
    cluster = view_change_cluster()
    genuine = _partial_view_change(cluster)
    primary = cluster.signers[1]
    null = Batch.null(CHAIN_ID, 1)
    fake_o = (sign_message(primary, PrePrepare(CHAIN_ID, 1, 1, null.digest, None)),)
    forged = sign_message(primary, dataclasses.replace(genuine, pre_prepares=fake_o, signature=""))
    cluster.inject(2, forged.to_wire())
    short = sign_message(
        primary, dataclasses.replace(genuine, view_changes=genuine.view_changes[:2], signature="")
    )
    cluster.inject(2, short.to_wire())
    replica = cluster.replica(2)
    assert replica.dropped[(cluster.keys[1], "bad_new_view:proposals_differ")] == 1
    assert replica.dropped[(cluster.keys[1], "bad_new_view:too_few_view_changes")] == 1
    assert replica.in_view_change
    cluster.inject(2, genuine.to_wire())
    assert replica.view == 1 and not replica.in_view_change


def test_join_on_f_plus_one_view_changes() -> None:
    """OSDI'99 §4.5.2: a replica that receives f + 1 valid VIEW-CHANGEs for views above its own
    sends a VIEW-CHANGE for the smallest of them, even before its timer expires."""
    cluster = view_change_cluster()
    replica = cluster.replica(3)
    for i, view in ((1, 2), (2, 3)):
        vc = sign_message(cluster.signers[i], ViewChange(CHAIN_ID, view, 0, GENESIS_HASH, (), ()))
        cluster.inject(3, vc.to_wire())
        if i == 1:
            assert replica.view == 0  # one is not enough: it could be a faulty replica
    assert replica.view == 2 and replica.in_view_change
    (own,) = _sent(cluster, "view_change", by=3)
    assert own["view"] == 2


def test_view_change_timeout_doubles() -> None:
    """OSDI'99 §4.5.2: if the timer expires before a valid NEW-VIEW arrives, the replica starts
    the view change for v + 2 and waits twice as long before moving to v + 3."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: s != 0 and w["type"] != "new_view")
    cluster.submit([make_tx(1)])
    moves: dict[int, int] = {}
    for tick in range(12 * VIEW_CHANGE_TIMEOUT):
        moves.setdefault(cluster.replica(2).view, tick)
        cluster.tick()
    assert {1, 2, 3} <= set(moves)
    assert moves[2] - moves[1] == VIEW_CHANGE_TIMEOUT
    assert moves[3] - moves[2] == 2 * VIEW_CHANGE_TIMEOUT


def test_messages_for_views_too_far_ahead_are_ignored() -> None:
    """Bounded state: a VIEW-CHANGE many views ahead is dropped, not stored."""
    cluster = view_change_cluster()
    vc = sign_message(cluster.signers[1], ViewChange(CHAIN_ID, 10_000, 0, GENESIS_HASH, (), ()))
    cluster.inject(3, vc.to_wire())
    assert cluster.replica(3).dropped[(cluster.keys[1], "view_too_far")] == 1


def test_view_change_with_bad_prepared_certificate_is_dropped() -> None:
    """OSDI'99 §4.4: P must hold a pre-prepare from the primary of its view and 2f matching
    PREPAREs; a VIEW-CHANGE claiming a prepared batch without them is discarded."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    cluster.submit([make_tx(1)])
    pre_prepare = decode_message(_sent(cluster, "pre_prepare", by=0)[0])
    assert isinstance(pre_prepare, PrePrepare)
    lonely = PreparedCert(pre_prepare.without_batch(), ())
    bad = sign_message(cluster.signers[1], ViewChange(CHAIN_ID, 1, 0, GENESIS_HASH, (), (lonely,)))
    cluster.inject(3, bad.to_wire())
    assert cluster.replica(3).dropped[(cluster.keys[1], "bad_view_change:prepared_short")] == 1


def test_missing_batch_is_fetched_by_digest_after_new_view() -> None:
    """OSDI'99 §4.4: NEW-VIEW re-proposes digests only; a backup that lacks a re-proposed batch
    must obtain it elsewhere. Batches certify themselves by digest, so BATCH-REQUEST can be
    answered by any replica holding it."""
    cluster = view_change_cluster()
    cluster.filters.append(
        lambda s, r, w: w["type"] != "commit" and not (w["type"] == "pre_prepare" and r == 3)
    )
    cluster.submit([make_tx(1)])
    (proposal,) = _sent(cluster, "pre_prepare", by=0)
    cluster.filters[:] = [lambda s, r, w: s != 0 and not (w["type"] == "commit" and w["view"] == 0)]
    cluster.run_until(lambda: cluster.executed(3) == 1, ticks_max=4 * VIEW_CHANGE_TIMEOUT)
    assert cluster.nodes[3].ledger[0].batch.digest == proposal["digest"]
    (request,) = _sent(cluster, "batch_request", by=3)
    assert request["digests"] == [proposal["digest"]]
    assert _sent(cluster, "batch_response")
    cluster.assert_persisted_before_sent()
