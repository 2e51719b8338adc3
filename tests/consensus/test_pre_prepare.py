"""When a backup accepts a PRE-PREPARE (Castro & Liskov OSDI'99 §4.2), fed hand-made messages
from a Byzantine primary (the primary's own key, so signatures are valid)."""

from __future__ import annotations

from typing import Any

from consensus.batch import Batch, Tx
from consensus.messages import PrePrepare, sign_message
from tests.consensus.harness import CHAIN_ID, Cluster, make_tx


def _pre_prepare(
    cluster: Cluster,
    seq: int,
    txs: tuple[Tx, ...],
    *,
    view: int = 0,
    by: int = 0,
    time_ms: int | None = None,
) -> dict[str, Any]:
    batch = Batch(CHAIN_ID, seq, cluster.now_ms if time_ms is None else time_ms, txs)
    message = PrePrepare(CHAIN_ID, view, seq, batch.digest, batch)
    return sign_message(cluster.signers[by], message).to_wire()


def _prepares_sent(cluster: Cluster, i: int) -> list[dict[str, Any]]:
    return [
        s.message
        for j, o in cluster.outputs
        if j == i
        for s in o.sends
        if s.message["type"] == "prepare"
    ]


def _cluster() -> Cluster:
    cluster = Cluster(checkpoint_interval=4, watermark_window=8)
    cluster.tick()
    cluster.queue.clear()
    return cluster


def test_backup_accepts_valid_pre_prepare_and_multicasts_prepare() -> None:
    """OSDI'99 §4.2: a backup accepts <PRE-PREPARE, v, n, d> from the primary of view v with n
    between the watermarks and d the batch digest, logs it and multicasts <PREPARE, v, n, d, i>."""
    cluster = _cluster()
    wire = _pre_prepare(cluster, 1, (make_tx(1),))
    cluster.inject(1, wire)
    (prepare,) = _prepares_sent(cluster, 1)
    assert (prepare["view"], prepare["seq"], prepare["digest"]) == (0, 1, wire["digest"])


def test_equivocating_primary_is_refused() -> None:
    """OSDI'99 §4.2: a backup accepts a pre-prepare only if it has not accepted one for the same
    view and sequence number with a different digest; the second is dropped and counted."""
    cluster = _cluster()
    first = _pre_prepare(cluster, 1, (make_tx(1),))
    second = _pre_prepare(cluster, 1, (make_tx(2),))
    cluster.inject(1, first)
    cluster.inject(1, second)
    cluster.inject(1, first)  # a plain duplicate is ignored, not counted
    assert [p["digest"] for p in _prepares_sent(cluster, 1)] == [first["digest"]]
    assert cluster.replica(1).dropped[(cluster.keys[0], "equivocation")] == 1


def test_pre_prepare_from_a_backup_is_refused() -> None:
    """OSDI'99 §4.2: only the primary of view v (validators[v % n]) may pre-prepare in v."""
    cluster = _cluster()
    cluster.inject(1, _pre_prepare(cluster, 1, (make_tx(1),), by=2))
    assert _prepares_sent(cluster, 1) == []
    assert cluster.drops(1, "pre_prepare_not_from_primary") == 1


def test_pre_prepare_outside_watermarks_is_refused() -> None:
    """OSDI'99 §4.2: the sequence number must lie between the low watermark h and h + L."""
    cluster = _cluster()
    cluster.inject(1, _pre_prepare(cluster, 9, (make_tx(1),)))
    assert cluster.drops(1, "outside_watermarks") == 1


def test_invalid_transaction_is_refused() -> None:
    """Spec §3: honest replicas never prepare a batch holding an invalid transaction."""
    bad = make_tx(666)
    cluster = Cluster(tx_checker=lambda tx: tx.tx_id != bad.tx_id)
    cluster.tick()
    cluster.inject(1, _pre_prepare(cluster, 1, (make_tx(1), bad)))
    assert _prepares_sent(cluster, 1) == []
    assert cluster.drops(1, "invalid_tx") == 1


def test_transaction_already_ordered_is_refused() -> None:
    """Spec §3: nor one already committed, nor one already in another seq's batch in the log."""
    cluster = Cluster(batch_size_max=2)
    cluster.tick()
    committed = make_tx(1)
    cluster.submit([committed])
    cluster.tick()
    assert cluster.executed(1) == 1
    cluster.queue.clear()
    cluster.inject(1, _pre_prepare(cluster, 2, (committed,)))
    assert cluster.drops(1, "tx_already_committed") == 1
    in_log = make_tx(2)
    cluster.inject(1, _pre_prepare(cluster, 3, (in_log,)))
    cluster.inject(1, _pre_prepare(cluster, 4, (in_log,)))
    assert cluster.drops(1, "tx_in_other_batch") == 1
    cluster.inject(1, _pre_prepare(cluster, 5, (make_tx(3), make_tx(3))))
    assert cluster.drops(1, "duplicate_tx_in_batch") == 1


def test_absurd_batch_times_are_refused() -> None:
    """ARCHITECTURE point 8: backups refuse batch times far from their clock or going
    backwards relative to batches already accepted; safety never depends on the clock."""
    cluster = _cluster()
    skew = cluster.config.time_skew_max_ms
    cluster.inject(1, _pre_prepare(cluster, 1, (make_tx(1),), time_ms=cluster.now_ms + skew + 1))
    assert cluster.drops(1, "batch_time_skewed") == 1
    cluster.inject(1, _pre_prepare(cluster, 2, (make_tx(2),), time_ms=cluster.now_ms))
    cluster.inject(1, _pre_prepare(cluster, 3, (make_tx(3),), time_ms=cluster.now_ms - 5))
    assert cluster.drops(1, "batch_time_not_monotonic") == 1
    assert len(_prepares_sent(cluster, 1)) == 1


def test_pre_prepare_for_a_future_view_is_not_accepted_now() -> None:
    """OSDI'99 §4.2: a backup accepts a pre-prepare only in its current view (later views are
    held back until their NEW-VIEW is installed)."""
    cluster = _cluster()
    cluster.inject(1, _pre_prepare(cluster, 1, (make_tx(1),), view=1, by=1 % 4))
    assert _prepares_sent(cluster, 1) == []
