"""Cross-chain replay at the replica (spec §3): a primary that proposes another network's
transaction, validly signed by its client, gets no PREPARE from an honest backup whose check is
the node's own (``Pool.tx_checker``)."""

from __future__ import annotations

from typing import Any

from consensus.batch import Batch, Tx
from consensus.messages import PrePrepare, sign_message
from ledger.state_machine import ChainRules
from node.pool import Pool
from tests.consensus.harness import CHAIN_ID, Cluster
from tests.ledger.helpers import ALICE, sign_tx


def _pre_prepare(cluster: Cluster, txs: tuple[Tx, ...]) -> dict[str, Any]:
    batch = Batch(CHAIN_ID, 1, cluster.now_ms, txs)
    return sign_message(
        cluster.signers[0], PrePrepare(CHAIN_ID, 0, 1, batch.digest, batch)
    ).to_wire()


def _prepares(cluster: Cluster, i: int) -> list[dict[str, Any]]:
    return [
        s.message
        for j, o in cluster.outputs
        if j == i
        for s in o.sends
        if s.message["type"] == "prepare"
    ]


def _cluster() -> tuple[Cluster, Pool]:
    pool = Pool(ChainRules(CHAIN_ID, 0), lambda _pubkey: 0)
    cluster = Cluster(tx_checker=pool.tx_checker)
    cluster.tick()
    cluster.queue.clear()
    return cluster, pool


def test_a_batch_holding_another_chains_transaction_is_not_prepared() -> None:
    cluster, pool = _cluster()
    elsewhere = Tx.from_wire(
        sign_tx(ALICE, 0, [{"op": "set", "key": "k", "value": 1}], chain_id="other-net")
    )
    here = Tx.from_wire(sign_tx(ALICE, 1, [{"op": "set", "key": "k", "value": 1}], CHAIN_ID))
    cluster.inject(1, _pre_prepare(cluster, (here, elsewhere)))
    assert _prepares(cluster, 1) == []
    assert cluster.drops(1, "invalid_tx") == 1
    pool.close()


def test_the_same_batch_without_it_is_prepared() -> None:
    cluster, pool = _cluster()
    here = Tx.from_wire(sign_tx(ALICE, 1, [{"op": "set", "key": "k", "value": 1}], CHAIN_ID))
    wire = _pre_prepare(cluster, (here,))
    cluster.inject(1, wire)
    (prepare,) = _prepares(cluster, 1)
    assert prepare["digest"] == wire["digest"]
    pool.close()
