"""A replica that comes back (restarted from old records, or wiped and refilled by state
transfer) must rejoin consensus itself, not only follow the ledger: these run the pure replicas
of tests/consensus/harness.py, and prove participation by crashing another replica afterwards,
so that nothing commits without the one that came back."""

from __future__ import annotations

from tests.consensus.harness import VIEW_CHANGE_TIMEOUT, Cluster, make_tx, view_change_cluster


def _move_to_view_2_without(cluster: Cluster, absent: int) -> None:
    """With replica ``absent`` crashed, the others change view twice (their primaries' proposals
    are lost) and commit one request in view 2."""
    cluster.crash(absent)
    cluster.filters.append(lambda s, r, w: not (w["type"] == "pre_prepare" and w["view"] < 2))
    cluster.submit([make_tx(1)])
    live = [i for i in range(4) if i != absent]
    cluster.run_until(
        lambda: all(cluster.executed(i) == 1 for i in live), ticks_max=20 * VIEW_CHANGE_TIMEOUT
    )
    cluster.filters.clear()
    for i in live:
        assert cluster.replica(i).view == 2 and not cluster.replica(i).in_view_change


def _serve_transfers(cluster: Cluster, i: int, source: int) -> None:
    """What the node's block sync does: hand the replica the blocks it lacks, all certified."""
    have = cluster.executed(i)
    missing = cluster.nodes[source].ledger[have:]
    if missing:
        cluster.apply(i, cluster.replica(i).on_blocks_fetched(missing))


def _views_of(cluster: Cluster, replicas: list[int]) -> set[tuple[int, bool]]:
    return {(cluster.replica(i).view, cluster.replica(i).in_view_change) for i in replicas}


def test_replica_restarted_two_views_behind_joins_the_current_view() -> None:
    """Restarted from records of view 0 while the others reached view 2: the normal-case
    messages of view 2 from f + 1 replicas (one of them honest) tell it that view is installed;
    it asks to join and the primary of view 2 answers with its NEW-VIEW. No view change among
    the others, and no timeout waited for."""
    cluster = view_change_cluster()
    _move_to_view_2_without(cluster, absent=3)
    cluster.restart(3)
    assert cluster.replica(3).view == 0
    cluster.submit([make_tx(2)])
    _serve_transfers(cluster, 3, source=1)
    cluster.tick(2)
    assert _views_of(cluster, [0, 1, 2, 3]) == {(2, False)}
    # Participation: without replica 0, nothing commits unless replica 3 votes.
    cluster.crash(0)
    cluster.submit([make_tx(3)])
    cluster.run_until(lambda: cluster.executed(3) == 3, ticks_max=VIEW_CHANGE_TIMEOUT - 1)
    assert cluster.executed(1) == cluster.executed(2) == 3
    assert _views_of(cluster, [1, 2, 3]) == {(2, False)}


def test_replica_behind_whose_own_timer_fired_is_sent_the_new_view() -> None:
    """A replica two views behind that timed out and asks for view 1 (the others are in view 2)
    is answered with the NEW-VIEW of view 2, which it checks and installs."""
    cluster = view_change_cluster()
    _move_to_view_2_without(cluster, absent=3)
    replica = cluster.restart(3)
    # Only requests reach it: it times out in view 0 and asks for view 1.
    cluster.filters.append(lambda s, r, w: r != 3 or w["type"] == "new_view")
    cluster.submit([make_tx(2)], to=[3])
    cluster.run_until(lambda: replica.view >= 1, ticks_max=4 * VIEW_CHANGE_TIMEOUT)
    cluster.filters.clear()
    cluster.run_until(lambda: not replica.in_view_change, ticks_max=2 * VIEW_CHANGE_TIMEOUT)
    assert replica.view == 2
    assert {cluster.replica(i).view for i in range(3)} == {2}


def test_wiped_replica_refilled_by_state_transfer_rejoins() -> None:
    """A replica whose disk was wiped (no records, empty ledger) gets the blocks from block
    sync, then learns the current view from its peers' messages and votes again."""
    cluster = view_change_cluster()
    _move_to_view_2_without(cluster, absent=3)
    cluster.nodes[3].records.clear()
    cluster.nodes[3].ledger.clear()
    cluster.nodes[3].committed_ids.clear()
    cluster.restart(3)
    _serve_transfers(cluster, 3, source=1)
    assert cluster.executed(3) == 1
    cluster.submit([make_tx(2)])
    _serve_transfers(cluster, 3, source=1)
    cluster.tick(2)
    cluster.crash(1)
    cluster.submit([make_tx(3)])
    cluster.run_until(lambda: cluster.executed(3) == 3, ticks_max=VIEW_CHANGE_TIMEOUT - 1)
    assert cluster.executed(0) == cluster.executed(2) == 3
    assert cluster.nodes[3].head_hash == cluster.nodes[0].head_hash


def test_caught_up_replica_adopts_a_stable_checkpoint_announced_after_it_executed() -> None:
    """A replica refilled by state transfer beyond its watermark window learns of the stable
    checkpoint only afterwards (the idle peers rebroadcast theirs now and then). It must adopt
    it: with its low watermark left at 0 it would drop every new proposal as out of window."""
    cluster = view_change_cluster(checkpoint_interval=2, watermark_window=4)
    cluster.crash(3)
    cluster.submit([make_tx(i) for i in range(10)])
    cluster.tick(2)
    assert cluster.executed(0) == 10 and cluster.replica(0).stable_checkpoint == 10
    cluster.nodes[3].records.clear()
    cluster.restart(3)
    _serve_transfers(cluster, 3, source=0)  # before any CHECKPOINT reached it
    assert cluster.executed(3) == 10 and cluster.replica(3).stable_checkpoint < 10
    cluster.run_until(
        lambda: cluster.replica(3).stable_checkpoint == 10, ticks_max=3 * VIEW_CHANGE_TIMEOUT
    )
    cluster.crash(0)  # now nothing commits without replica 3 (view change to primary 1)
    cluster.submit([make_tx(20)])
    cluster.run_until(lambda: cluster.executed(3) == 11, ticks_max=6 * VIEW_CHANGE_TIMEOUT)
    assert cluster.nodes[3].head_hash == cluster.nodes[1].head_hash
