"""Checkpoints, garbage collection, watermarks and state transfer (Castro & Liskov OSDI'99 §4.3)."""

from __future__ import annotations

import dataclasses

from consensus.output import Certificate
from tests.consensus.harness import Cluster, make_tx, record_seq


def _cluster() -> Cluster:
    cluster = Cluster(batch_size_max=1, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    return cluster


def test_checkpoint_becomes_stable_and_log_is_discarded() -> None:
    """OSDI'99 §4.3: every K requests a replica multicasts <CHECKPOINT, n, d, i>; with q matching
    ones from distinct replicas the checkpoint is stable and the log up to n is discarded."""
    cluster = _cluster()
    cluster.submit([make_tx(i) for i in range(5)])
    cluster.tick(2)
    for i, node in enumerate(cluster.nodes):
        assert cluster.executed(i) == 5
        assert cluster.replica(i).stable_checkpoint == 4
        assert any(o.discard_below == 4 for j, o in cluster.outputs if j == i)
        # What the driver kept: nothing below the stable checkpoint.
        assert all((record_seq(r.value) or 4) >= 4 for r in node.records.values())
        stable = node.records["stable"].value
        assert stable["stable_seq"] == 4 and len(stable["proof"]) >= cluster.config.q
    checkpoints = [
        s.message for _, o in cluster.outputs for s in o.sends if s.message["type"] == "checkpoint"
    ]
    assert {c["seq"] for c in checkpoints} == {2, 4}
    assert len({c["block_hash"] for c in checkpoints if c["seq"] == 4}) == 1


def test_watermarks_bound_the_primary() -> None:
    """OSDI'99 §4.3: the primary may not assign sequence numbers above the high watermark
    h + L until a checkpoint becomes stable and moves the low watermark h."""
    cluster = _cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "checkpoint")
    cluster.submit([make_tx(i) for i in range(8)])
    cluster.tick(3)
    assert cluster.executed(0) == 4  # L = 4: seqs 1..4 only
    assert cluster.replica(0).pending_count == 4
    cluster.filters.clear()
    # The lost CHECKPOINTs are resent every few ticks; then h moves and the rest is ordered.
    cluster.run_until(lambda: cluster.executed(0) == 8, ticks_max=30)
    assert cluster.replica(0).stable_checkpoint >= 4


def test_far_behind_replica_asks_for_state_transfer_and_catches_up() -> None:
    """OSDI'99 §4.3: a replica that learns of a stable checkpoint beyond its log fetches the
    state (here: the certified blocks) instead of stalling, then rejoins the protocol."""
    cluster = _cluster()
    cluster.filters.append(lambda s, r, w: 3 not in (s, r))
    cluster.submit([make_tx(i) for i in range(6)], to=[0, 1, 2])
    cluster.tick(2)
    assert cluster.executed(0) == 6 and cluster.executed(3) == 0
    cluster.filters.clear()
    cluster.submit([make_tx(i) for i in range(6, 8)], to=[0, 1, 2])
    cluster.tick(2)
    assert cluster.executed(0) == 8
    transfers = cluster.nodes[3].transfers
    assert transfers and transfers[-1].seq == 8
    assert len(transfers[-1].peers) >= cluster.config.f + 1
    cluster.apply(3, cluster.replica(3).on_blocks_fetched(cluster.nodes[0].ledger[:8]))
    assert cluster.executed(3) == 8
    assert cluster.replica(3).head_hash == cluster.replica(0).head_hash
    assert cluster.replica(3).stable_checkpoint == 8
    cluster.submit([make_tx(50)])
    cluster.tick(2)
    assert cluster.executed(3) == cluster.executed(0) == 9


def test_replica_missing_one_seq_recovers_through_state_transfer() -> None:
    """OSDI'99 §4.3: messages for a seq may be lost for good once others discard them; f + 1
    checkpoints above what we executed, with no progress of our own, trigger state transfer."""
    cluster = _cluster()
    cluster.filters.append(
        lambda s, r, w: not (r == 3 and w.get("seq") == 1 and w["type"] != "checkpoint")
    )
    cluster.submit([make_tx(i) for i in range(3)])
    cluster.tick(4)
    assert cluster.executed(3) == 0 and cluster.executed(0) == 3
    (transfer, *_) = cluster.nodes[3].transfers
    assert transfer.seq == 2
    cluster.apply(3, cluster.replica(3).on_blocks_fetched(cluster.nodes[0].ledger[:2]))
    assert cluster.executed(3) == 3  # seq 3 was committed in its log already


def test_fetched_blocks_need_a_valid_certificate() -> None:
    """Spec §4: a block is accepted only with >= q valid votes from distinct validators."""
    cluster = _cluster()
    cluster.submit([make_tx(1)])
    block = cluster.nodes[0].ledger[0]
    fresh = Cluster(batch_size_max=1, checkpoint_interval=2, watermark_window=4)
    replica = fresh.replica(3)
    votes = dict(block.certificate.signatures)
    forged = dict(votes)
    forged[next(iter(forged))] = "00" * 64
    short = dict(list(votes.items())[: fresh.config.q - 1])
    for signatures in (forged if len(votes) == fresh.config.q else short, short):
        bad = dataclasses.replace(
            block, certificate=Certificate(block.certificate.view, signatures)
        )
        assert replica.on_blocks_fetched([bad]).committed == []
    other_view = dataclasses.replace(
        block, certificate=Certificate(block.certificate.view + 1, votes)
    )
    assert replica.on_blocks_fetched([other_view]).committed == []
    assert replica.dropped[("state_transfer", "bad_certificate")] == 3
    assert [c.batch.seq for c in replica.on_blocks_fetched([block]).committed] == [1]
