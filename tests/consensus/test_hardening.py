"""Regression tests for issue 8 (consensus hardening), on the in-memory cluster. Each of them
fails on the replica before the fix: a batch lost across restarts during a view change, an early
buffer that pins memory, NEW-VIEWs and batches sent back without limit, batch times going back
after a restart, a request known to one replica never ordered."""

from __future__ import annotations

from typing import Any

from consensus.batch import Batch, Tx
from consensus.messages import (
    BatchRequest,
    Prepare,
    PrePrepare,
    sign_message,
)
from consensus.replica import (
    EARLY_BYTES_PER_SENDER_MAX,
    RELAY_ON_TIMEOUT_MAX,
    REPLY_BYTES_PER_WINDOW,
    REPLY_WINDOW_TICKS,
    early_bytes_bound,
)
from crypto.canonical import canonical_json
from tests.consensus.harness import (
    CHAIN_ID,
    VIEW_CHANGE_TIMEOUT,
    Cluster,
    make_tx,
    view_change_cluster,
)


def _sent(cluster: Cluster, kind: str, by: int | None = None, to: str | None = None) -> list[Any]:
    return [
        s.message
        for i, o in cluster.outputs
        for s in o.sends
        if s.message["type"] == kind and (by is None or i == by) and (to is None or s.to == to)
    ]


# --- 1. prepared batches survive restarts during a view change ------------------------------


def test_whole_cluster_restarting_during_a_view_change_keeps_the_prepared_batch() -> None:
    """Issue 8 (1a): the batch prepares everywhere, never commits; all four replicas time out
    into view 1 and restart before any NEW-VIEW. The only copies of the batch are on disk: the
    new view must re-propose it and execute it (before the fix every replica lost it, and every
    later view re-proposed a digest nobody held: no execution, ever)."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    tx = make_tx(1)
    cluster.submit([tx])
    assert all(cluster.replica(i)._prepared_certs for i in range(4))
    # VIEW-CHANGEs reach everybody but the new primary: the old primary joins the change too.
    cluster.filters.append(lambda s, r, w: not (w["type"] == "view_change" and r == 1))
    cluster.run_until(
        lambda: all(cluster.replica(i).in_view_change for i in range(4)),
        ticks_max=8 * VIEW_CHANGE_TIMEOUT,
    )
    for i in range(4):
        cluster.crash(i)
    for i in range(4):
        assert cluster.restart(i).in_view_change
    cluster.filters.clear()
    cluster.run_until(lambda: all(cluster.executed(i) == 1 for i in range(4)), ticks_max=200)
    assert all(cluster.tx_order(i) == [tx.tx_id] for i in range(4))
    assert all(cluster.replica(i).view <= 2 for i in range(4))
    cluster.assert_persisted_before_sent()


def test_batch_held_by_two_restarted_replicas_survives_a_faulty_primary() -> None:
    """Issue 8 (1b): a faulty primary sends its batch to replicas 1 and 2 only and withholds its
    COMMIT; 1 and 2 prepare it, crash and restart during the view change. Replica 3 never saw
    the batch: it must be fetched from 1 or 2's records and executed."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: not (s == 0 and (w["type"] == "commit" or r == 3)))
    tx = make_tx(1)
    cluster.submit([tx], to=[0, 1, 2])
    assert cluster.replica(1)._prepared_certs and cluster.replica(2)._prepared_certs
    assert all(cluster.executed(i) == 0 for i in (1, 2, 3))
    cluster.crash(0)  # the faulty primary says nothing more
    cluster.filters[:] = [lambda s, r, w: w["type"] != "view_change"]
    cluster.run_until(
        lambda: all(cluster.replica(i).in_view_change for i in (1, 2)),
        ticks_max=8 * VIEW_CHANGE_TIMEOUT,
    )
    for i in (1, 2):
        cluster.crash(i)
        cluster.restart(i)
    cluster.filters.clear()
    cluster.run_until(lambda: all(cluster.executed(i) == 1 for i in (1, 2, 3)), ticks_max=300)
    assert all(cluster.tx_order(i) == [tx.tx_id] for i in (1, 2, 3))


def test_accepting_a_new_view_never_overwrites_a_stored_batch() -> None:
    """The pre-prepare record a NEW-VIEW writes carries no batch; the batch keeps its own
    record (by digest) until the stable checkpoint."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "commit")
    cluster.submit([make_tx(1)])
    digest = cluster.replica(2)._prepared_certs[1].digest
    cluster.filters[:] = [lambda s, r, w: s != 0]
    cluster.run_until(lambda: cluster.executed(2) == 1, ticks_max=4 * VIEW_CHANGE_TIMEOUT)
    records = cluster.nodes[2].records
    assert records["seq/0000000000000001/pre_prepare"].value["message"]["batch"] is None
    assert records[f"batch/{digest}"].value["batch"]["header"]["seq"] == 1


def test_a_batch_request_for_an_executed_seq_is_answered_from_the_ledger() -> None:
    """A replica that executed a block fetched by state transfer holds no batch record of it,
    and after a restart nothing in memory either: the ledger answers the BATCH-REQUEST."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: r != 3)
    cluster.submit([make_tx(1)], to=[0, 1, 2])
    block = cluster.nodes[0].ledger[0]
    cluster.apply(3, cluster.replica(3).on_blocks_fetched([block]))
    assert cluster.executed(3) == 1
    cluster.crash(3)
    cluster.restart(3)
    cluster.filters.clear()
    request = sign_message(cluster.signers[1], BatchRequest(CHAIN_ID, (block.batch.digest,)))
    out = cluster.replica(3).on_message(request.to_wire())
    (reply,) = [s for s in out.sends if s.message["type"] == "batch_response"]
    assert reply.to == cluster.keys[1]
    assert reply.message["batches"][0]["header"] == block.batch.header


# --- 2. the early-message buffer is bounded --------------------------------------------------


def _big_txs(count: int, size: int) -> tuple[Tx, ...]:
    txs = []
    for i in range(count):
        wire = {"body": {"client": "c", "nonce": i, "ops": [], "pad": "x" * size}, "sig": "00"}
        txs.append(Tx.from_wire(wire))
    return tuple(txs)


def _wire_bytes(message: Any) -> int:
    return len(canonical_json(message.to_wire()))


def test_one_faulty_peer_flooding_early_messages_stays_under_the_bound() -> None:
    """Issue 8 (2): replica 1 (primary of views 1, 5, 9, ...) floods replica 0, still in view 0,
    with full-size PRE-PREPAREs for future views at every seq of the window, PRE-PREPAREs far
    ahead, PREPAREs for future views, and PRE-PREPAREs for views it does not lead. What stays
    buffered, measured as wire bytes, is under its per-sender cap and the stated bound."""
    batch_bytes = 256 * 1024
    cluster = Cluster(
        batch_size_max=8,
        batch_bytes_max=batch_bytes,
        checkpoint_interval=64,
        watermark_window=256,
    )
    cluster.tick()
    target = cluster.replica(0)
    faulty = cluster.signers[1]
    txs = _big_txs(8, batch_bytes // 8 - 200)
    sent = 0
    for view in (1, 5, 9, 2, 3):
        for seq in (*range(1, 257), 10**12):
            batch = Batch(CHAIN_ID, seq, cluster.now_ms, txs)
            pp = sign_message(faulty, PrePrepare(CHAIN_ID, view, seq, batch.digest, batch))
            target.on_message(pp.to_wire())
            sent += _wire_bytes(pp)
    for view in range(1, 60):
        for seq in range(1, 41):
            prepare = sign_message(faulty, Prepare(CHAIN_ID, view, seq, "ab" * 32))
            target.on_message(prepare.to_wire())
            sent += _wire_bytes(prepare)
    held = sum(_wire_bytes(m) for m in target._early if m.sender == faulty.public_key)
    assert sent > 300 * 1024 * 1024  # what the peer tried to pin
    assert held <= EARLY_BYTES_PER_SENDER_MAX
    assert target.early_bytes <= early_bytes_bound(4) == 3 * EARLY_BYTES_PER_SENDER_MAX
    assert all(m.seq <= 256 for m in target._early)
    assert all(
        m.sender == cluster.config.primary(m.view)
        for m in target._early
        if isinstance(m, PrePrepare)
    )
    assert cluster.drops(0, "early_buffer_full") > 0
    assert cluster.drops(0, "early_outside_watermarks") > 0
    assert cluster.drops(0, "pre_prepare_not_from_primary") > 0


def test_the_early_buffer_is_pruned_when_the_checkpoint_moves() -> None:
    cluster = Cluster(batch_size_max=1, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    target = cluster.replica(3)
    for seq in (1, 2, 3, 4):
        prepare = sign_message(cluster.signers[2], Prepare(CHAIN_ID, 1, seq, "ab" * 32))
        target.on_message(prepare.to_wire())
    assert len(target._early) == 4
    cluster.submit([make_tx(1)])
    cluster.submit([make_tx(2)])
    assert target.stable_checkpoint == 2
    assert sorted(m.seq for m in target._early) == [3, 4]


# --- 3. amplification ----------------------------------------------------------------------


def test_a_replayed_view_change_gets_one_new_view_per_period() -> None:
    """Issue 8 (3): after view 1 is installed, a faulty replica replays the VIEW-CHANGEs of
    replicas 2 and 3, 100 times each: each signer gets the NEW-VIEW once per half timeout, and
    nobody else gets anything (before: 100 NEW-VIEWs each)."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: s != 0)
    cluster.submit([make_tx(1)])
    cluster.run_until(lambda: cluster.executed(1) == 1, ticks_max=4 * VIEW_CHANGE_TIMEOUT)
    primary = cluster.replica(1)
    assert primary.view == 1 and primary.is_primary
    (vc,) = [w for w in _sent(cluster, "view_change", by=2) if w["view"] == 1]
    (other,) = [w for w in _sent(cluster, "view_change", by=3) if w["view"] == 1]
    cluster.tick(VIEW_CHANGE_TIMEOUT // 2 + 1)  # past any help given during the change
    cluster.queue.clear()
    before = len(cluster.outputs)
    for _ in range(100):
        cluster.apply(1, primary.on_message(vc))
        cluster.apply(1, primary.on_message(other))
    replies = [
        (s.to, s.message["view"])
        for _, o in cluster.outputs[before:]
        for s in o.sends
        if s.message["type"] == "new_view"
    ]
    assert sorted(replies) == sorted([(cluster.keys[2], 1), (cluster.keys[3], 1)])
    assert primary.dropped[(cluster.keys[2], "help_rate")] == 99
    cluster.queue.clear()
    cluster.tick(VIEW_CHANGE_TIMEOUT // 2 + 1)
    cluster.queue.clear()
    cluster.apply(1, primary.on_message(vc))
    assert _sent(cluster, "new_view", by=1, to=cluster.keys[2])[-1]["view"] == 1
    assert len(_sent(cluster, "new_view", by=1, to=cluster.keys[2])) == 2


def test_batch_responses_are_capped_in_bytes_per_peer_and_window() -> None:
    """Issue 8 (3): one small BATCH-REQUEST naming many large batches, every tick: the bytes sent
    back to that peer per window stay under REPLY_BYTES_PER_WINDOW (plus one batch)."""
    batch_bytes = 1024 * 1024
    cluster = Cluster(
        batch_size_max=8,
        batch_bytes_max=batch_bytes,
        checkpoint_interval=64,
        watermark_window=128,
        pipeline_depth_max=16,
    )
    cluster.tick()
    batches = []
    for b in range(12):
        txs = tuple(
            Tx(t.tx_id, t.wire, len(canonical_json(dict(t.wire))))
            for t in _big_txs(8, batch_bytes // 8 - 300)
        )
        txs = tuple(
            Tx.from_wire({"body": {**dict(t.wire["body"]), "nonce": 100 * b + i}, "sig": "00"})
            for i, t in enumerate(txs)
        )
        cluster.submit(txs)
        batches.append(cluster.nodes[0].ledger[-1].batch)
    assert cluster.executed(2) == 12
    digests = tuple(b.digest for b in batches)
    server = cluster.replica(2)
    asker = cluster.signers[3]
    per_window: dict[int, int] = {}
    for tick in range(3 * REPLY_WINDOW_TICKS):
        request = sign_message(asker, BatchRequest(CHAIN_ID, digests))
        out = server.on_message(request.to_wire())
        size = sum(
            len(canonical_json(s.message))
            for s in out.sends
            if s.message["type"] == "batch_response"
        )
        per_window[tick // REPLY_WINDOW_TICKS] = (
            per_window.get(tick // REPLY_WINDOW_TICKS, 0) + size
        )
        cluster.tick()
        cluster.queue.clear()
    assert all(0 < sent <= REPLY_BYTES_PER_WINDOW + batch_bytes for sent in per_window.values())
    assert cluster.drops(2, "reply_bytes_rate") > 0


# --- 4. batch time after a restart -----------------------------------------------------------


def test_a_restarted_backup_refuses_a_batch_time_before_the_last_executed() -> None:
    """Issue 8 (4): the last executed batch time comes back from the ledger on restart, so a
    restarted backup refuses (as those that did not restart do) a batch stamped before it."""
    cluster = Cluster(batch_size_max=1, checkpoint_interval=2, watermark_window=4)
    cluster.tick()
    cluster.submit([make_tx(1)])
    cluster.tick()
    cluster.submit([make_tx(2)])
    assert cluster.replica(1).stable_checkpoint == 2  # the log (and its batches) is gone
    executed_at = cluster.nodes[1].ledger[1].batch.time_ms
    cluster.crash(1)
    restarted = cluster.restart(1)
    early = Batch(CHAIN_ID, 3, executed_at - 5, (make_tx(3),))
    pp = sign_message(cluster.signers[0], PrePrepare(CHAIN_ID, 0, 3, early.digest, early))
    for i in (1, 2):
        cluster.inject(i, pp.to_wire())
    assert cluster.drops(2, "batch_time_not_monotonic") == 1
    assert restarted.dropped[(cluster.keys[0], "batch_time_not_monotonic")] == 1
    assert not [w for w in _sent(cluster, "prepare", by=1) if w["seq"] == 3]


# --- 5. a request known to one replica is ordered --------------------------------------------


def test_a_request_known_to_one_backup_is_relayed_and_ordered() -> None:
    """Issue 8 (5): only replica 2 learns the request (the node's one-shot relay was lost). Its
    timer fires: it relays the request instead of leaving alone for view 1, and the primary
    orders it; everybody executes it in view 0."""
    cluster = view_change_cluster()
    tx = make_tx(1)
    cluster.submit([tx], to=[2])
    cluster.run_until(lambda: all(cluster.executed(i) == 1 for i in range(4)), ticks_max=100)
    assert all(cluster.replica(i).view == 0 for i in range(4))
    relayed = [(i, txs) for i, o in cluster.outputs if o.relay for txs in [o.relay]]
    assert relayed == [(2, [tx])]


def test_a_request_whose_relays_are_lost_reaches_the_others_from_a_lone_view_change() -> None:
    """Only replica 2 learns the request and its relays are lost until it has left view 0
    alone (the others know of no request, so none joins): it keeps relaying every timeout from
    its view change, and the primary orders the request in view 0."""
    cluster = view_change_cluster()
    tx = make_tx(1)
    cluster.filters.append(
        lambda s, r, w: (
            not (s == 2 and w["type"] == "relay" and not cluster.replica(2).in_view_change)
        )
    )
    cluster.submit([tx], to=[2])
    cluster.run_until(lambda: cluster.replica(2).in_view_change, ticks_max=10 * VIEW_CHANGE_TIMEOUT)
    cluster.run_until(
        lambda: all(tx.tx_id in cluster.tx_order(i) for i in (0, 1, 3)),
        ticks_max=3 * VIEW_CHANGE_TIMEOUT,
    )
    assert all(cluster.replica(i).view == 0 for i in (0, 1, 3))
    assert cluster.replica(2).view == 1 and cluster.replica(2).in_view_change


def test_the_relay_on_timeout_happens_once_per_view() -> None:
    """A primary that ignores the relayed request still gets replaced: one relay per view buys
    it one more timeout, then the view changes."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: s != 0)  # a silent primary
    cluster.submit([make_tx(1)], to=[1, 2, 3])
    cluster.run_until(
        lambda: all(cluster.executed(i) == 1 for i in (1, 2, 3)), ticks_max=6 * VIEW_CHANGE_TIMEOUT
    )
    assert all(cluster.replica(i).view == 1 for i in (1, 2, 3))
    # It did relay (and keeps relaying every timeout while the request waits: the periodic
    # retransmission of _tick_relay); what bounds the delay is that only one relay per view
    # restarts the timer, else the run above would end in view 0.
    assert any(o.relay for i, o in cluster.outputs if i == 2)


def test_relay_rounds_take_every_stale_request_in_turn() -> None:
    """More stale requests than one round carries: the next round goes on after the last one
    relayed, so none is starved by older ones that keep waiting."""
    cluster = view_change_cluster()
    cluster.filters.append(lambda s, r, w: w["type"] != "relay")  # nobody else ever hears
    txs = [make_tx(i) for i in range(2 * RELAY_ON_TIMEOUT_MAX + 10)]
    cluster.submit(txs, to=[2])
    cluster.tick(4 * VIEW_CHANGE_TIMEOUT)
    rounds = [[tx.tx_id for tx in o.relay] for i, o in cluster.outputs if i == 2 and o.relay]
    relayed = [tx_id for r in rounds for tx_id in r]
    assert {tx.tx_id for tx in txs} <= set(relayed)
    assert all(len(r) <= RELAY_ON_TIMEOUT_MAX for r in rounds)
