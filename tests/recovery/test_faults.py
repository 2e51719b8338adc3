"""Faults beyond one crash, with real processes: two of four down (no quorum), and a primary
frozen with SIGSTOP for ten seconds."""

from __future__ import annotations

import time

import pytest

from node.client import Client, set_op, tx_id_of
from tests.e2e.cluster import Cluster
from tests.recovery import harness

pytestmark = pytest.mark.e2e

OBSERVE_S = 12.0


def test_two_of_four_down_no_commits_no_view_change_storm_then_resume(cluster: Cluster) -> None:
    """node0 and node1 (the primaries of views 0 and 1) are killed. The two left cannot commit
    (q = 3) and must not spin through views: they move to view 1 once, and a view change only
    goes further once q replicas asked for it (then with a doubled timeout), which two cannot.
    When node0 returns, node0, node2 and node3 make view 2 (node1, its primary-to-be of view 1,
    is still down) and the pending transaction commits."""
    names = harness.names(cluster)
    head = harness.commit_one(cluster, "node2", "before")["seq"]
    cluster.kill("node0")
    cluster.kill("node1")
    tx = cluster.tx([set_op("stuck", 1)])
    assert Client(cluster.url("node2")).submit(tx)["status"] == "pending"

    views: dict[str, list[int]] = {"node2": [], "node3": []}
    deadline = time.monotonic() + OBSERVE_S
    while time.monotonic() < deadline:
        for name in views:
            status = cluster.status(name)
            assert status is not None, f"{name} stopped answering"
            assert status["seq"] == head, f"{name} committed without a quorum: {status}"
            views[name].append(status["view"])
        time.sleep(0.25)
    for name, seen in views.items():
        assert seen == sorted(seen), f"{name}'s view went back: {seen}"
        assert seen[-1] <= 2, f"{name} kept changing views without a quorum: {seen}"

    cluster.start("node0")
    receipt = harness.wait_committed(cluster, "node2", tx_id_of(tx), timeout_s=60)
    assert receipt["seq"] == head + 1
    cluster.start("node1")
    harness.commit_one(cluster, "node1", "after")
    cluster.wait_same_head(names, min_seq=head + 2)
    cluster.down()
    harness.check_ledgers(cluster)


def test_frozen_primary_is_replaced_then_catches_up_without_a_fork(cluster: Cluster) -> None:
    """SIGSTOP the primary for 10 s under load: the others change view and go on committing.
    After SIGCONT the old primary (which still believes it leads view 0) learns of the new view
    from its peers' votes, joins it, catches up, and every ledger is the same chain."""
    names = harness.names(cluster)
    primary = cluster.primary_name()
    others = [name for name in names if name != primary]
    load = harness.Load(cluster, workers=4, prefix="freeze").start()
    try:
        harness.wait_until(lambda: load.acked_count() >= 20, 30, "load to commit")
        load.mark_down(primary)
        harness.freeze(cluster, primary)
        frozen_at = time.monotonic()
        try:
            harness.wait_until(
                lambda: all((cluster.status(n) or {}).get("view", 0) > 0 for n in others),
                9,
                "a view change among the others",
            )
            acked = load.acked_count()
            harness.wait_until(lambda: load.acked_count() > acked + 10, 9, "commits meanwhile")
            time.sleep(max(0.0, 10.0 - (time.monotonic() - frozen_at)))
        finally:
            harness.thaw(cluster, primary)
        load.mark_up(primary)
        time.sleep(3)
    finally:
        load.stop()
    harness.commit_one(cluster, primary, "after-thaw", timeout_ms=30_000)
    cluster.wait_same_head(names, min_seq=1, timeout_s=60)

    def one_view() -> bool:
        return len({(cluster.status(n) or {}).get("view") for n in names}) == 1

    harness.wait_until(one_view, 30, "the old primary to join the new view")
    cluster.down()
    harness.check_ledgers(cluster, load.acked)
