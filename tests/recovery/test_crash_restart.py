"""Crash recovery with real processes: kill -9 at random moments under load, and all four at
once. What must hold afterwards: every transaction a node acknowledged as committed is in every
ledger at the position of its receipt, all ledgers are one chain, and the cluster commits again.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.e2e.cluster import Cluster
from tests.recovery import harness

pytestmark = pytest.mark.e2e

KILLS = 6


def test_kill9_random_nodes_at_random_moments_under_load(cluster: Cluster) -> None:
    """Repeatedly SIGKILL a random node (the primary included) at a random instant while clients
    commit, restart it from its data directory after a random pause, and go on. The killed node
    rejoins at the right view and seq, and no acknowledged transaction is lost or moved."""
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    print(f"seed {seed}")
    names = harness.names(cluster)
    load = harness.Load(cluster, workers=4, prefix=f"kill-{seed}").start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5, 2.5))
            victim = cluster.primary_name() if rng.random() < 0.4 else rng.choice(names)
            before = cluster.status(victim)
            load.mark_down(victim)
            cluster.kill(victim)
            time.sleep(rng.uniform(0.0, 2.0))
            cluster.start(victim)
            load.mark_up(victim)
            after = cluster.status(victim)
            if before is not None and after is not None:
                # Restarted from its records: never an older view, never a shorter ledger.
                assert after["view"] >= before["view"], (before, after)
                assert after["seq"] >= before["seq"], (before, after)
        acked = load.acked_count()
        harness.wait_until(lambda: load.acked_count() > acked + 20, 30, "commits after kills")
    finally:
        load.stop()
    harness.commit_one(cluster, "node0", f"after-kills-{seed}")
    seq = cluster.wait_same_head(names, min_seq=1, timeout_s=60)
    cluster.down()
    report = harness.check_ledgers(cluster, load.acked)
    assert report.head_seq == seq
    print(f"acked {report.acked_checked}, head {report.head_seq}, errors {load.errors}")
    assert report.acked_checked > 50, f"too little load got through: {load.acked_count()}"


def test_kill9_all_four_then_restart_and_continue(cluster: Cluster) -> None:
    """SIGKILL every node mid-load (no clean shutdown anywhere), start them all again: they
    agree on the ledger, keep every acknowledged transaction, and commit new ones."""
    names = harness.names(cluster)
    load = harness.Load(cluster, workers=4, prefix="all-four").start()
    try:
        harness.wait_until(lambda: load.acked_count() >= 30, 30, "load to commit")
        for name in names:
            cluster.kill(name)
            load.mark_down(name)
    finally:
        load.stop()
    for name in names:
        cluster.start(name)
    for i, name in enumerate(names):
        harness.commit_one(cluster, name, f"after-restart-{i}")
    cluster.wait_same_head(names, min_seq=1, timeout_s=60)
    cluster.down()
    harness.check_ledgers(cluster, load.acked)
