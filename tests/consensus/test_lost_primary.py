"""A backup whose node lost its link to the primary (``on_tick(now_ms, lost_peers)``) asks for
the next view at once, instead of waiting for its request timer; safety and the quorums are
unchanged: one backup alone only leaves the view itself, f + 1 make the others join."""

from __future__ import annotations

from collections.abc import Mapping

from consensus.batch import Tx
from tests.consensus.harness import TICK_MS, Cluster, make_tx

LONG_TIMEOUT = 50  # ticks: far longer than any test here runs, so no request timer fires


def tick(cluster: Cluster, lost: Mapping[int, frozenset[str]], count: int = 1) -> None:
    """``Cluster.tick`` with the node's lost-link reports: ``lost[i]`` for replica i."""
    for _ in range(count):
        cluster.now_ms += TICK_MS
        for i, node in enumerate(cluster.nodes):
            if node.replica is not None:
                cluster.apply(i, node.replica.on_tick(cluster.now_ms, lost.get(i, frozenset())))
        cluster.deliver()


def started(**params: object) -> Cluster:
    cluster = Cluster(batch_size_max=1, view_change_timeout_ticks=LONG_TIMEOUT, **params)
    cluster.tick()
    return cluster


def submit(cluster: Cluster, txs: list[Tx], to: tuple[int, ...]) -> None:
    cluster.submit(txs, to=to)


def test_backups_that_lost_the_crashed_primary_change_view_at_once() -> None:
    cluster = started()
    cluster.submit([make_tx(0)])
    assert all(cluster.executed(i) == 1 for i in range(4))
    cluster.crash(0)  # kill -9 of the primary of view 0
    submit(cluster, [make_tx(1), make_tx(2)], to=(1, 2, 3))
    lost = {i: frozenset({cluster.keys[0]}) for i in (1, 2, 3)}
    tick(cluster, lost, count=3)
    for i in (1, 2, 3):
        replica = cluster.replica(i)
        assert replica.view == 1 and not replica.in_view_change
        assert cluster.executed(i) == 3
    cluster.assert_persisted_before_sent()


def test_without_the_report_the_same_crash_waits_for_the_request_timer() -> None:
    """The control: with no lost-link report nothing moves before the timer (two timeouts:
    the first one relays the requests, in case the primary never had them)."""
    cluster = started()
    cluster.crash(0)
    submit(cluster, [make_tx(1)], to=(1, 2, 3))
    tick(cluster, {}, count=LONG_TIMEOUT - 1)
    assert all(cluster.replica(i).view == 0 for i in (1, 2, 3))
    cluster.run_until(lambda: all(cluster.executed(i) == 1 for i in (1, 2, 3)), ticks_max=200)
    assert all(cluster.replica(i).view == 1 for i in (1, 2, 3))


def test_one_backup_reporting_the_primary_lost_cannot_depose_it() -> None:
    """A lone report (a flaky link, or a faulty backup) makes only that backup leave: it sends
    its own VIEW-CHANGE, short of the f + 1 the others need to join, and the primary keeps
    ordering with the other two backups."""
    cluster = started()
    lost = {3: frozenset({cluster.keys[0]})}
    submit(cluster, [make_tx(1)], to=(3,))  # waits at replica 3 alone
    tick(cluster, lost, count=5)
    assert cluster.replica(3).view == 1 and cluster.replica(3).in_view_change
    for i in (0, 1, 2):
        assert cluster.replica(i).view == 0 and not cluster.replica(i).in_view_change
    submit(cluster, [make_tx(2), make_tx(3)], to=(0, 1, 2, 3))
    tick(cluster, lost, count=5)
    for i in (0, 1, 2):
        assert cluster.replica(i).view == 0
        assert cluster.executed(i) == 2
    assert cluster.tx_order(0) == cluster.tx_order(1) == cluster.tx_order(2)


def test_no_waiting_request_no_view_change() -> None:
    """An idle backup has nothing to wait for: a lost primary alone does not change the view
    (the next request will)."""
    cluster = started()
    cluster.crash(0)
    lost = {i: frozenset({cluster.keys[0]}) for i in (1, 2, 3)}
    tick(cluster, lost, count=10)
    assert all(
        cluster.replica(i).view == 0 and not cluster.replica(i).in_view_change for i in (1, 2, 3)
    )
    submit(cluster, [make_tx(1)], to=(1, 2, 3))
    tick(cluster, lost, count=3)
    assert all(cluster.replica(i).view == 1 and cluster.executed(i) == 1 for i in (1, 2, 3))


def test_a_lost_backup_is_no_reason_to_change_view() -> None:
    """Only the primary's link counts: losing another backup leaves the view alone."""
    cluster = started()
    cluster.crash(3)
    lost = {i: frozenset({cluster.keys[3]}) for i in (0, 1, 2)}
    submit(cluster, [make_tx(1)], to=(0, 1, 2))
    tick(cluster, lost, count=5)
    assert all(cluster.replica(i).view == 0 and cluster.executed(i) == 1 for i in (0, 1, 2))


def test_same_reports_same_outputs() -> None:
    """The report is an input like any other: two runs with the same inputs send the same."""

    def run() -> list[list[dict[str, object]]]:
        cluster = started()
        cluster.crash(0)
        submit(cluster, [make_tx(1)], to=(1, 2, 3))
        tick(cluster, {i: frozenset({cluster.keys[0]}) for i in (1, 2, 3)}, count=3)
        return [[s.message for s in o.sends] for _, o in cluster.outputs]

    assert run() == run()
