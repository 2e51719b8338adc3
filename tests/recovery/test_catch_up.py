"""Catch-up with real processes: a node whose disk was wiped resyncs 10,000 transactions from
its idle peers and votes again; a node with a damaged ledger refuses to start and says why."""

from __future__ import annotations

import shutil
import time

import pytest

from ledger.store import LedgerStore
from node.testnet import TestnetError
from tests.e2e.cluster import Cluster
from tests.recovery import harness

pytestmark = pytest.mark.e2e

TXS = 10_000


def test_wiped_node_resyncs_from_idle_peers_and_votes_again(cluster: Cluster) -> None:
    """10,000 transactions through POST /v1/txs, then the load stops for good. node3's data
    directory is emptied and it restarts: with no new checkpoint coming, it learns the others'
    heads from their announcements, fetches every block with its certificate, verifies them and
    ends with the same ledger. Then node1 is killed: the next commit needs node3's votes."""
    names = harness.names(cluster)
    tx_ids = harness.submit_bulk(cluster, "node0", TXS, "bulk")
    for tx_id in tx_ids[-1::-997]:
        harness.wait_committed(cluster, "node0", tx_id, timeout_s=120)
    head = cluster.wait_same_head(names, min_seq=1, timeout_s=60)
    cluster.kill("node3")
    harness.wipe(cluster, "node3")
    started = time.monotonic()
    cluster.start("node3")
    cluster.wait_same_head(names, min_seq=head, timeout_s=60)
    print(f"node3 resynced {head} blocks in {time.monotonic() - started:.1f} s")

    cluster.kill("node1")
    harness.commit_one(cluster, "node3", "after-wipe", timeout_ms=30_000)
    cluster.start("node1")
    cluster.wait_same_head(names, min_seq=head + 1, timeout_s=60)
    cluster.down()
    report = harness.check_ledgers(cluster)
    assert report.tx_count == TXS + 1
    with LedgerStore.open(harness.data_dir(cluster, "node3"), readonly=True) as store:
        assert all(store.is_committed(tx_id) for tx_id in tx_ids)


def test_damaged_ledger_stops_the_node_with_a_clear_error(cluster: Cluster) -> None:
    """A truncated data.mdb, then a damaged head block: each time the node exits with status 1
    and a message naming the file and the damage. With the directory emptied it resyncs."""
    names = harness.names(cluster)
    for i in range(3):
        harness.commit_one(cluster, "node0", f"before-damage-{i}")
    head = cluster.wait_same_head(names, min_seq=3)
    cluster.kill("node2")
    data = harness.data_dir(cluster, "node2")
    saved = data.with_name("saved")
    shutil.copytree(data, saved)

    with open(data / "data.mdb", "r+b") as file:
        file.truncate((data / "data.mdb").stat().st_size // 2)
    with pytest.raises(TestnetError) as caught:
        cluster.start("node2")
    assert "exited with status 1" in str(caught.value)
    assert f"{data / 'data.mdb'} is truncated" in str(caught.value)

    shutil.rmtree(data)
    shutil.copytree(saved, data)
    with LedgerStore.open(data, readonly=True) as store:
        prev = store.block_hash(head - 1)
    raw = (data / "data.mdb").read_bytes()
    needle = f'"prev_hash":"{prev}"'.encode()
    assert raw.count(needle) == 1
    flipped = needle[:-2] + (b"0" if needle[-2:-1] != b"0" else b"1") + needle[-1:]
    (data / "data.mdb").write_bytes(raw.replace(needle, flipped))
    with pytest.raises(TestnetError) as caught:
        cluster.start("node2")
    assert "exited with status 1" in str(caught.value)
    assert f"block {head}" in str(caught.value) and "damaged" in str(caught.value)

    harness.wipe(cluster, "node2")
    cluster.start("node2")
    cluster.wait_same_head(names, min_seq=head)
