"""The request timer measures progress, not queueing: a primary that keeps executing requests in
the order they came is not deposed however long the queue (a flood), and one that keeps
executing later requests while an older one waits (censorship) still is."""

from __future__ import annotations

from consensus.replica import CENSORSHIP_TIMEOUTS
from tests.consensus.harness import Cluster, make_tx

TIMEOUT = 5


def started() -> Cluster:
    cluster = Cluster(batch_size_max=1, pipeline_depth_max=1, view_change_timeout_ticks=TIMEOUT)
    cluster.tick()
    return cluster


def test_a_busy_primary_ordering_in_arrival_order_is_not_deposed() -> None:
    """The backups hold a queue of 8 timeouts' worth of requests; the primary gets them (in the
    same order) one per tick and orders each at once, so the oldest waits far longer than
    CENSORSHIP_TIMEOUTS timeouts while something executes at every tick."""
    cluster = started()
    # The primary has the requests in its queue already: relays on timeout do not speed it up.
    cluster.filters.append(lambda s, r, w: not (r == 0 and w["type"] == "relay"))
    queue = [make_tx(i) for i in range(8 * TIMEOUT)]
    cluster.submit(queue, to=(1, 2, 3))
    for tx in queue:
        cluster.submit([tx], to=(0,))
        cluster.tick()
    assert 8 * TIMEOUT > CENSORSHIP_TIMEOUTS * TIMEOUT + TIMEOUT
    for i in range(4):
        assert cluster.replica(i).view == 0 and not cluster.replica(i).in_view_change
        assert cluster.executed(i) == len(queue)


def test_a_primary_that_skips_one_request_is_deposed() -> None:
    """Censorship: the primary never orders request x (it drops it, and x's relays), while it
    orders every later request at once; x's backups move to view 1, where x executes."""
    cluster = started()
    censored = make_tx(1_000)
    cluster.filters.append(
        lambda s, r, w: not (r == 0 and w["type"] == "relay")  # the primary "loses" x
    )
    cluster.submit([censored], to=(1, 2, 3))
    later = [make_tx(i) for i in range(8 * TIMEOUT)]
    for tx in later:
        cluster.submit([tx], to=(0, 1, 2, 3))
        cluster.tick()
        if all(cluster.replica(i).view >= 1 for i in (1, 2, 3)):
            break
    assert all(cluster.replica(i).view >= 1 for i in (1, 2, 3))
    cluster.run_until(
        lambda: all(censored.tx_id in cluster.tx_order(i) for i in (1, 2, 3)), ticks_max=50
    )
