"""The pending pool (verify once, dedupe, bounds, the replica's check), commit waiters, the
event hub, and the SSE stream with replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import node.pool as pool_module
from consensus.batch import Tx
from crypto.signing import TAG_TX
from ledger.state_machine import ChainRules
from ledger.transaction import ValidTx, verify_transaction
from node.api.events import CommitWaiters, EventHub, TooManyWaiters
from node.pool import Pool
from tests.api.harness import ApiHarness, run, set_tx
from tests.ledger.helpers import ALICE, BOB, CAROL, CHAIN_ID, sign_tx, tx


def make_pool(fee_per_byte: int = 0, balances: dict[str, int] | None = None, **kw: Any) -> Pool:
    """A pool for this test chain; balances as the ledger would answer them."""
    table = balances or {}
    return Pool(
        ChainRules(CHAIN_ID, fee_per_byte),
        lambda pubkeys: {pubkey: table.get(pubkey, 0) for pubkey in pubkeys},
        **kw,
    )


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = verify_transaction

    def counting(valid: ValidTx) -> None:
        calls.append(valid.tx_id)
        real(valid)

    monkeypatch.setattr(pool_module, "verify_transaction", counting)
    return calls


def test_pool_verifies_once_and_dedupes(verify_calls: list[str]) -> None:
    accepted: list[tuple[list[Tx], bool]] = []
    pool = make_pool(capacity=10, on_accepted=lambda txs, relay: accepted.append((txs, relay)))
    wires = [set_tx(nonce=i) for i in range(5)]

    async def main() -> None:
        results = await pool.submit([*wires, wires[0]])
        assert [r.status for r in results] == ["pending"] * 6
        assert len(pool) == 5 and len(verify_calls) == 5
        assert [len(txs) for txs, _ in accepted] == [5] and accepted[0][1] is True
        again = await pool.submit(wires, relay=False)
        assert [r.tx_id for r in again] == [r.tx_id for r in results[:5]]
        assert len(verify_calls) == 5 and len(accepted) == 1
        # The replica's check is a cache hit for all of them.
        for txn in accepted[0][0]:
            assert pool.tx_checker(txn)
        assert len(verify_calls) == 5
        pool.remove([r.tx_id for r in results[:2] if r.tx_id])
        assert len(pool) == 3
        # Removed (committed elsewhere, say) and resubmitted: admitted without re-verifying.
        await pool.submit([wires[0]])
        assert len(pool) == 4 and len(verify_calls) == 5

    asyncio.run(main())
    pool.close()


def test_pool_committed_and_full_and_expiry() -> None:
    committed_ids: set[str] = set()
    now = [0.0]
    pool = make_pool(
        capacity=2,
        committed_among=committed_ids.intersection,
        pending_ttl_s=100.0,
        clock=lambda: now[0],
    )
    wires = [set_tx(nonce=i) for i in range(4)]
    committed_ids.add(tx(ALICE, 3, {"op": "set", "key": "k", "value": 1}).tx_id)

    async def main() -> None:
        results = await pool.submit(wires)
        assert [r.status or r.error for r in results] == [
            "pending", "pending", "pool_full", "committed",
        ]  # fmt: skip
        assert results[2].to_wire()["error"] == "pool_full"
        now[0] = 101.0  # the oldest pending entry has expired: it makes room
        results = await pool.submit([wires[2]])
        assert results[0].status == "pending"
        assert not pool.contains(results[0].tx_id or "") or len(pool) == 2
        assert wires[0]["body"]["nonce"] == 0 and len(pool) == 2

    asyncio.run(main())
    pool.close()


def test_tx_checker_refuses_bad_and_mismatched() -> None:
    pool = make_pool()
    good = tx(ALICE, 1, {"op": "set", "key": "k", "value": 1})
    assert pool.tx_checker(good)
    body = dict(good.wire["body"])
    forged_sig = BOB.sign(TAG_TX, body)
    assert not pool.tx_checker(Tx(good.tx_id, {"body": body, "sig": forged_sig}))
    assert not pool.tx_checker(Tx(good.tx_id, {**good.wire, "extra": 1}))
    assert not pool.tx_checker(Tx("00" * 32, good.wire))
    assert not pool.tx_checker(Tx("00" * 32, {"body": 1}))
    pool.close()


def test_preverify_fills_the_cache(verify_calls: list[str]) -> None:
    pool = make_pool()
    wires = [set_tx(nonce=i) for i in range(3)] + [{"junk": 1}]

    async def main() -> None:
        await pool.preverify(wires)

    asyncio.run(main())
    assert len(verify_calls) == 3
    assert all(pool.tx_checker(Tx.from_wire(w)) for w in wires[:3])
    assert len(verify_calls) == 3 and len(pool) == 0
    pool.close()


def test_preverify_skips_known_signatures_but_a_reused_one_still_fails(
    verify_calls: list[str],
) -> None:
    """A proposal's transactions seen before are not decoded or verified again; a different
    body under a known signature is not trusted for it: tx_checker verifies it, and refuses."""
    pool = make_pool()
    known = set_tx(nonce=1)
    reused = {"body": {**known["body"], "nonce": 2}, "sig": known["sig"]}
    unhashable_sig = {"body": known["body"], "sig": ["not", "a", "string"]}

    async def main() -> None:
        await pool.preverify([known])
        await pool.preverify([known, reused, unhashable_sig])

    asyncio.run(main())
    assert len(verify_calls) == 1
    assert pool.tx_checker(Tx.from_wire(known))
    assert not pool.tx_checker(Tx.from_wire(reused))
    assert len(verify_calls) == 2
    pool.close()


def _size(wire: dict[str, Any]) -> int:
    from crypto.canonical import canonical_json

    return len(canonical_json(wire["body"]))


def test_pool_refuses_another_chains_transaction_and_never_caches_it(
    verify_calls: list[str],
) -> None:
    pool = make_pool()
    other = sign_tx(ALICE, 0, [{"op": "set", "key": "k", "value": 1}], chain_id="other-net")

    async def main() -> None:
        (result,) = await pool.submit([other])
        assert result.error == "wrong_chain" and "other-net" in (result.detail or "")
        await pool.preverify([other])

    asyncio.run(main())
    assert len(pool) == 0
    # Neither admission nor preverify cached it: the replica's check verifies it and refuses.
    calls = len(verify_calls)
    assert not pool.tx_checker(Tx.from_wire(other))
    assert len(verify_calls) == calls + 1
    pool.close()


def test_admission_checks_run_in_the_spec_order() -> None:
    """shape, signature, wrong_chain, already known, fee (spec §3)."""
    wire = set_tx(nonce=1)
    pool = make_pool(fee_per_byte=1, balances={ALICE.public_key: _size(wire)})

    async def main() -> None:
        (first,) = await pool.submit([wire])
        assert first.status == "pending"
        # Already known beats the fee: the same body again is idempotent, though the balance
        # is now all reserved by its own pending fee.
        (again,) = await pool.submit([wire])
        assert (again.status, again.tx_id) == ("pending", first.tx_id)
        # A known body with a signature that is not the client's: the signature comes first.
        forged = {"body": wire["body"], "sig": BOB.sign(TAG_TX, wire["body"])}
        (bad,) = await pool.submit([forged])
        assert bad.error == "bad_signature"
        # Bad signature before wrong chain; wrong chain before the fee.
        other = sign_tx(CAROL, 0, [{"op": "delete", "key": "k"}], chain_id="other-net")
        (wrong,) = await pool.submit([other])
        assert wrong.error == "wrong_chain"
        (worse,) = await pool.submit([{**other, "sig": "ab" * 64}])
        assert worse.error == "bad_signature"
        (shape,) = await pool.submit([{**other, "extra": 1}])
        assert shape.error == "malformed_tx"

    asyncio.run(main())
    pool.close()


def test_admission_reserves_fees_of_pending_transactions_per_client() -> None:
    wires = [set_tx(nonce=i) for i in range(3)]
    fees = [_size(w) for w in wires]
    balances = {ALICE.public_key: fees[0] + fees[1] + fees[2] - 1, BOB.public_key: 10**6}
    pool = make_pool(fee_per_byte=1, balances=balances)

    async def main() -> None:
        results = await pool.submit(wires)
        assert [r.status or r.error for r in results] == [
            "pending", "pending", "insufficient_fee",
        ]  # fmt: skip
        assert pool.pending_fees(ALICE.public_key) == fees[0] + fees[1]
        detail = results[2].detail or ""
        assert str(fees[2]) in detail and "reserved" in detail
        # Another client is not affected by Alice's reservations.
        bob = sign_tx(BOB, 0, [{"op": "set", "key": "b", "value": 1}])
        assert (await pool.submit([bob]))[0].status == "pending"
        # One commits: its fee leaves the balance and the reservation alike, so still no room.
        committed_id = results[0].tx_id or ""
        balances[ALICE.public_key] -= fees[0]
        pool.remove([committed_id])
        assert pool.pending_fees(ALICE.public_key) == fees[1]
        assert (await pool.submit([wires[2]]))[0].error == "insufficient_fee"
        balances[ALICE.public_key] += 1  # a transfer to Alice commits: now it fits exactly
        assert (await pool.submit([wires[2]]))[0].status == "pending"
        assert pool.pending_fees(ALICE.public_key) == fees[1] + fees[2]

    asyncio.run(main())
    pool.close()


def test_relayed_transactions_reserve_fees_too() -> None:
    """A client's fees pending at a node count whether it got them from the client or a peer,
    so a client cannot overdraw by spreading transactions over the validators."""
    wires = [set_tx(nonce=i) for i in range(2)]
    pool = make_pool(fee_per_byte=1, balances={ALICE.public_key: _size(wires[0])})

    async def main() -> None:
        (relayed,) = await pool.submit([wires[0]], relay=False)
        assert relayed.status == "pending"
        (direct,) = await pool.submit([wires[1]])
        assert direct.error == "insufficient_fee"

    asyncio.run(main())
    pool.close()


def test_expired_transactions_release_their_fee() -> None:
    now = [0.0]
    wires = [set_tx(nonce=i) for i in range(2)]
    pool = make_pool(
        fee_per_byte=1,
        balances={ALICE.public_key: 10**6},
        capacity=1,
        pending_ttl_s=10.0,
        clock=lambda: now[0],
    )

    async def main() -> None:
        assert (await pool.submit([wires[0]]))[0].status == "pending"
        now[0] = 11.0
        assert (await pool.submit([wires[1]]))[0].status == "pending"  # the first expired
        assert pool.pending_fees(ALICE.public_key) == _size(wires[1])

    asyncio.run(main())
    pool.close()


def test_throwaway_key_flood_is_refused_at_admission(verify_calls: list[str]) -> None:
    throwaway = CAROL  # holds nothing
    flood = [
        sign_tx(throwaway, i, [{"op": "set", "key": f"spam-{i}", "value": "x" * 500}])
        for i in range(200)
    ]
    accepted: list[Tx] = []
    pool = make_pool(
        fee_per_byte=1,
        balances={ALICE.public_key: 10**6},
        on_accepted=lambda txs, relay: accepted.extend(txs),
    )

    async def main() -> None:
        results = await pool.submit(flood)
        assert {r.error for r in results} == {"insufficient_fee"}

    asyncio.run(main())
    assert len(pool) == 0 and accepted == [] and pool.pending_fees(throwaway.public_key) == 0
    pool.close()


def test_zero_fee_per_byte_admits_anyone() -> None:
    pool = make_pool(fee_per_byte=0)

    async def main() -> None:
        wire = sign_tx(CAROL, 0, [{"op": "set", "key": "k", "value": 1}])
        assert (await pool.submit([wire]))[0].status == "pending"

    asyncio.run(main())
    pool.close()


def test_commit_waiters() -> None:
    async def main() -> None:
        waiters = CommitWaiters(waiters_max=2)
        f1 = waiters.register("a")
        f2 = waiters.register("a")
        with pytest.raises(TooManyWaiters):
            waiters.register("b")
        task = asyncio.create_task(waiters.wait(f1, "a", 5))
        waiters.notify_committed(7, ["x", "a"])
        assert await task == 7
        assert await waiters.wait(f2, "a", 5) == 7
        assert len(waiters) == 0
        f3 = waiters.register("c")
        assert await waiters.wait(f3, "c", 0.01) is None
        assert len(waiters) == 0
        f4 = waiters.register("d")
        waiters.close()
        assert await waiters.wait(f4, "d", 5) is None

    asyncio.run(main())


def test_event_hub_disconnects_slow_subscribers() -> None:
    async def main() -> None:
        hub = EventHub(queue_max=2)
        fast, slow = hub.subscribe(), hub.subscribe()
        for seq in (1, 2):
            hub.publish({"seq": seq})
            assert (await fast.queue.get()) == {"seq": seq}
        hub.publish({"seq": 3})
        assert len(hub) == 1 and hub.disconnected_slow == 1
        assert [slow.queue.get_nowait() for _ in range(3)] == [{"seq": 1}, {"seq": 2}, None]
        assert (await fast.queue.get()) == {"seq": 3}
        hub.close_all()
        assert (await fast.queue.get()) is None and len(hub) == 0

    asyncio.run(main())


async def _read_events(response: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    kind = None
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            assert kind == "block"
            events.append(json.loads(line[6:]))
    return events


def test_sse_replays_then_goes_live(tmp_path: Path) -> None:
    h = ApiHarness(tmp_path / "ledger", sse_keepalive_s=0.05)
    txs = [tx(ALICE, i, {"op": "set", "key": f"k{i}", "value": i}) for i in range(3)]
    h.commit([txs[0]])
    h.commit([txs[1], txs[2]])
    h.commit([])

    async def scenario(c: Any) -> None:
        r = await c.get("/v1/events?from_seq=2")
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        replayed = await _read_events(r, 2)
        block2 = h.store.block(2)
        assert block2 is not None
        assert replayed[0] == {
            "seq": 2, "hash": block2["hash"], "tx_count": 2, "tx_ids": [txs[1].tx_id, txs[2].tx_id],
        }  # fmt: skip
        assert replayed[1]["seq"] == 3 and replayed[1]["tx_count"] == 0
        await asyncio.sleep(0.12)  # a keep-alive comment or two go by
        live = tx(ALICE, 9, {"op": "delete", "key": "k0"})
        h.commit([live])
        (event,) = await _read_events(r, 1)
        assert event["seq"] == 4 and event["tx_ids"] == [live.tx_id]
        r.close()

        # Live only (no from_seq), and Last-Event-ID resumes like from_seq.
        r = await c.get("/v1/events")
        r2 = await c.get("/v1/events", headers={"Last-Event-ID": "3"})
        await asyncio.sleep(0.05)
        h.commit([])
        assert [e["seq"] for e in await _read_events(r, 1)] == [5]
        assert [e["seq"] for e in await _read_events(r2, 2)] == [4, 5]
        r.close()
        r2.close()
        for bad in ("from_seq=-1", "from_seq=x", "seq=1"):
            resp = await c.get(f"/v1/events?{bad}")
            assert resp.status == 400 and (await resp.json())["error"] == "invalid_query"
        resp = await c.get("/v1/events", headers={"Accept": "application/json"})
        assert resp.status == 406

    try:
        run(h, scenario)
    finally:
        h.close()


def test_sse_from_seq_beyond_head_waits(tmp_path: Path) -> None:
    h = ApiHarness(tmp_path / "ledger")

    async def scenario(c: Any) -> None:
        r = await c.get("/v1/events?from_seq=2")
        await asyncio.sleep(0.05)
        h.commit([])
        h.commit([])
        assert [e["seq"] for e in await _read_events(r, 1)] == [2]
        r.close()

    try:
        run(h, scenario)
    finally:
        h.close()


def test_a_replaying_subscriber_holds_a_slot_from_the_start(tmp_path: Path) -> None:
    """A client replaying history counts toward the subscriber cap while it replays (else many
    long replays could run beyond the cap); the events it replays come from the stored tx_ids."""
    h = ApiHarness(tmp_path / "ledger", sse_keepalive_s=0.05)
    h.events.subscribers_max = 1
    txs = [tx(ALICE, i, {"op": "set", "key": f"k{i}", "value": i}) for i in range(2)]
    h.commit(txs)

    async def scenario(c: Any) -> None:
        r = await c.get("/v1/events?from_seq=5")  # beyond the head: still replaying
        await asyncio.sleep(0.05)
        assert len(h.events) == 1
        refused = await c.get("/v1/events?from_seq=1")
        assert refused.status == 429 and (await refused.json())["error"] == "overloaded"
        r.close()
        await asyncio.sleep(0.1)
        assert len(h.events) == 0
        r = await c.get("/v1/events?from_seq=1")
        (event,) = await _read_events(r, 1)
        assert event["tx_ids"] == [t.tx_id for t in txs] and event["tx_count"] == 2
        assert event == h.store.block_event(1)
        r.close()

    try:
        run(h, scenario)
    finally:
        h.close()
