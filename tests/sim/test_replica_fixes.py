"""Unit tests, on the small in-memory cluster of tests/consensus, for the replica bugs the
simulator found (each also pinned as a seed in test_seeds.REGRESSION_SEEDS). They hold even if
the seeds' scenarios drift."""

from __future__ import annotations

import dataclasses

from consensus.batch import Batch, Tx
from consensus.messages import BatchResponse, Checkpoint, ViewChange, sign_message
from consensus.sim.keys import ClientTxChecker, SimSigner, SimVerifier, make_tx, with_bad_sig
from tests.consensus.harness import CHAIN_ID, GENESIS_HASH, Cluster

CLIENT = SimSigner("cd" * 32, b"client secret")


def _checker() -> ClientTxChecker:
    return ClientTxChecker(SimVerifier(b"client secret"), (CLIENT.public_key,))


def _cluster(**params: int) -> Cluster:
    settings: dict[str, int] = {
        "batch_size_max": 1,
        "checkpoint_interval": 4,
        "watermark_window": 8,
        "view_change_timeout_ticks": 6,
    }
    settings.update(params)
    cluster = Cluster(tx_checker=_checker(), **settings)
    cluster.tick()
    return cluster


def _tx(nonce: int) -> Tx:
    return make_tx(CLIENT, nonce, "k")


def _forged_copy(batch: Batch) -> Batch:
    txs = tuple(with_bad_sig(tx, "ee" * 64) for tx in batch.txs)
    return Batch(batch.chain_id, batch.seq, batch.time_ms, txs)


def test_fetched_blocks_with_forged_transaction_signatures_are_refused() -> None:
    """Seed 11: a certificate covers the digest, hence the tx_ids, not the signatures. A block
    whose transactions carry forged signatures has the same digest and a valid certificate."""
    cluster = _cluster()
    cluster.submit([_tx(1)])
    block = cluster.nodes[0].ledger[0]
    forged = dataclasses.replace(block, batch=_forged_copy(block.batch))
    assert forged.batch.digest == block.batch.digest
    replica = Cluster(tx_checker=_checker(), batch_size_max=1).replica(3)
    assert replica.on_blocks_fetched([forged]).committed == []
    assert replica.dropped[("state_transfer", "block_with_invalid_tx")] == 1
    assert [c.batch.seq for c in replica.on_blocks_fetched([block]).committed] == [1]


def test_a_batch_response_with_forged_transaction_signatures_is_refused() -> None:
    """Seed 11: a batch fetched by digest must carry its clients' signatures, else a faulty
    peer's copy is refused and the digest stays wanted (an honest peer's copy is then taken)."""
    cluster = _cluster()
    cluster.filters.append(lambda s, r, w: not (w["type"] == "pre_prepare" and r == 3))
    cluster.filters.append(lambda s, r, w: w["type"] != "batch_response")
    cluster.submit([_tx(1)])
    assert cluster.executed(0) == 1 and cluster.executed(3) == 0
    batch = cluster.nodes[0].ledger[0].batch
    replica = cluster.replica(3)
    replica._wanted[batch.digest] = 0  # as if a NEW-VIEW had re-proposed it
    bad = sign_message(cluster.signers[1], BatchResponse(CHAIN_ID, (_forged_copy(batch),)))
    cluster.inject(3, bad.to_wire())
    assert replica.dropped[(cluster.keys[1], "batch_with_invalid_tx")] == 1
    assert batch.digest in replica._wanted
    good = sign_message(cluster.signers[2], BatchResponse(CHAIN_ID, (batch,)))
    cluster.inject(3, good.to_wire())
    assert batch.digest not in replica._wanted


def test_an_idle_replica_announces_its_head_and_a_laggard_fetches_it() -> None:
    """Seeds 0 and 42: COMMITs for the last seq before traffic stops are lost to one replica.
    No checkpoint will come; the others' head announcements (CHECKPOINTs between multiples of K)
    make it fetch the block."""
    cluster = _cluster()
    cluster.submit([_tx(1)])
    cluster.filters.append(lambda s, r, w: not (r == 3 and w["type"] == "commit"))
    cluster.submit([_tx(2)])
    assert cluster.executed(0) == 2 and cluster.executed(3) == 1
    cluster.filters.clear()
    cluster.run_until(lambda: bool(cluster.nodes[3].transfers), ticks_max=4 * 6)
    transfer = cluster.nodes[3].transfers[-1]
    assert transfer.seq == 2 and transfer.block_hash == cluster.replica(0).head_hash
    heads = [
        s.message for _, o in cluster.outputs for s in o.sends if s.message["type"] == "checkpoint"
    ]
    assert any(m["seq"] == 2 for m in heads)
    cluster.apply(3, cluster.replica(3).on_blocks_fetched(cluster.nodes[0].ledger[1:2]))
    assert cluster.executed(3) == 2
    cluster.assert_persisted_before_sent()


def test_the_view_change_timer_counts_view_changes_for_higher_views() -> None:
    """Seed 493: replicas 1 and 2 wait in view 1; replica 3 already moved on to view 2 and will
    never resend its VIEW-CHANGE for view 1. Counting it (it left view 1 too) starts the timer,
    so they move to view 2 instead of waiting forever."""
    cluster = _cluster()
    cluster.filters.append(lambda s, r, w: 0 not in (s, r) and r != 3)  # 0 gone, 3 ahead
    cluster.submit([_tx(1)], to=[1, 2])
    cluster.tick(8 * 6)
    for i in (1, 2):  # two VIEW-CHANGEs for view 1 are not q: no timer, no NEW-VIEW
        assert cluster.replica(i).view == 1 and cluster.replica(i).in_view_change
    vc2 = sign_message(cluster.signers[3], ViewChange(CHAIN_ID, 2, 0, GENESIS_HASH, (), ()))
    for i in (1, 2):
        cluster.inject(i, vc2.to_wire())
    cluster.run_until(lambda: cluster.replica(1).view >= 2, ticks_max=4 * 6)


def test_a_lone_claim_to_be_ahead_is_tried_after_a_timeout() -> None:
    """Seeds 26487 and 26604: one honest replica ahead, a faulty one announcing a wrong hash, so
    no f + 1 agree. After a timeout without progress the laggard fetches from every claimant:
    the blocks carry their certificates, a liar only wastes a fetch."""
    cluster = _cluster()
    cluster.filters.append(lambda s, r, w: r != 3)
    honest = sign_message(cluster.signers[1], Checkpoint(CHAIN_ID, 3, "ab" * 32))
    liar = sign_message(cluster.signers[2], Checkpoint(CHAIN_ID, 3, "cd" * 32))
    cluster.inject(3, honest.to_wire())
    cluster.inject(3, liar.to_wire())
    cluster.tick(3)
    assert not cluster.nodes[3].transfers  # f + 1 do not agree: not at once
    cluster.run_until(lambda: bool(cluster.nodes[3].transfers), ticks_max=6 + 4)
    transfer = cluster.nodes[3].transfers[-1]
    assert transfer.seq == 3
    assert set(transfer.peers) == {cluster.keys[1], cluster.keys[2]}
