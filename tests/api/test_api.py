"""Spec §6, endpoint by endpoint: success paths and every refusal, over a real LedgerStore."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from crypto.canonical import canonical_json
from crypto.signing import TAG_TX
from ledger.receipt import verify_receipt
from node.client import transfer_op
from tests.api.harness import ApiHarness, run, set_tx
from tests.ledger.helpers import ALICE, BOB, CAROL, CHAIN_ID, sign_tx, tx

Client = TestClient[Any, Any]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ApiHarness]:
    h = ApiHarness(tmp_path / "ledger")
    yield h
    h.close()


async def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Every error answer: the given status and exactly {"error", "detail"}."""
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = json.loads(text)
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    return body


# ---- POST /v1/tx ----------------------------------------------------------------------------


def test_submit_pending_then_committed_with_receipt(harness: ApiHarness) -> None:
    wire = set_tx("greeting", {"text": "hi"})

    async def scenario(c: Client) -> None:
        r = await c.post("/v1/tx", json=wire)
        assert r.status == 202
        answer = await r.json()
        tx_id = answer["tx_id"]
        assert answer == {"tx_id": tx_id, "status": "pending"}
        assert [t.tx_id for t in harness.accepted] == [tx_id]
        # The same body again: idempotent, not accepted twice.
        r = await c.post("/v1/tx", json=wire)
        assert r.status == 202 and (await r.json())["tx_id"] == tx_id
        assert len(harness.accepted) == 1

        r = await c.get(f"/v1/tx/{tx_id}")
        assert r.status == 200 and await r.json() == {"tx_id": tx_id, "status": "pending"}

        harness.commit_accepted()
        r = await c.get(f"/v1/tx/{tx_id}")
        assert r.status == 200
        answer = await r.json()
        assert answer["status"] == "committed"
        assert verify_receipt(answer["receipt"], harness.genesis) == []
        assert answer["receipt"]["tx_id"] == tx_id

        # Already committed: 200 with the same receipt, with or without wait.
        for path in ("/v1/tx", "/v1/tx?wait=commit"):
            r = await c.post(path, json=wire)
            assert r.status == 200
            assert (await r.json())["receipt"] == answer["receipt"]

    run(harness, scenario)


def test_wait_commit_returns_receipt_when_committed(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        async def committer() -> None:
            while not harness.accepted:
                await asyncio.sleep(0.01)
            harness.commit_accepted()

        task = asyncio.create_task(committer())
        r = await c.post("/v1/tx?wait=commit&timeout_ms=5000", json=set_tx())
        await task
        assert r.status == 200
        answer = await r.json()
        assert answer["status"] == "committed"
        assert verify_receipt(answer["receipt"], harness.genesis) == []
        assert len(harness.waiters) == 0

    run(harness, scenario)


def test_wait_commit_times_out_as_pending(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        r = await c.post("/v1/tx?wait=commit&timeout_ms=50", json=set_tx())
        assert r.status == 202
        assert (await r.json())["status"] == "pending"
        assert len(harness.waiters) == 0

    run(harness, scenario)


def _big_value_tx() -> dict[str, Any]:
    return set_tx("k", "x" * 70_000)


def _unsigned(body: dict[str, Any]) -> dict[str, Any]:
    return {"body": body, "sig": ALICE.sign(TAG_TX, body)}


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "chain_id": CHAIN_ID,
        "client": ALICE.public_key,
        "nonce": 1,
        "ops": [{"op": "set", "key": "k", "value": 1}],
    }
    body.update(overrides)
    return body


BAD_TX_BODIES: list[tuple[str, bytes, int, str]] = [
    ("invalid json", b'{"body": ', 400, "malformed_tx"),
    ("empty body", b"", 400, "malformed_tx"),
    ("not an object", b"[1, 2]", 400, "malformed_tx"),
    ("float", json.dumps({"body": _body(ops=[{"op": "set", "key": "k", "value": 1.5}]),
                          "sig": "00" * 64}).encode(), 400, "malformed_tx"),
    ("float nonce", json.dumps({"body": _body(nonce=1.0), "sig": "00" * 64}).encode(),
     400, "malformed_tx"),
    ("NaN", b'{"body": NaN, "sig": "00"}', 400, "malformed_tx"),
    ("duplicate key", b'{"body": {}, "body": {}, "sig": "00"}', 400, "malformed_tx"),
    ("unknown top field", json.dumps({**set_tx(), "extra": 1}).encode(), 400, "malformed_tx"),
    ("unknown body field", json.dumps(_unsigned(_body(memo="x"))).encode(), 400, "malformed_tx"),
    ("unknown op field",
     json.dumps(_unsigned(_body(ops=[{"op": "delete", "key": "k", "value": 1}]))).encode(),
     400, "malformed_tx"),
    ("unknown op", json.dumps(_unsigned(_body(ops=[{"op": "mint", "key": "k"}]))).encode(),
     400, "malformed_tx"),
    ("bad signature", json.dumps({"body": _body(), "sig": BOB.sign(TAG_TX, _body())}).encode(),
     400, "bad_signature"),
    ("sig not hex", json.dumps({"body": _body(), "sig": "zz" * 64}).encode(), 400, "malformed_tx"),
    ("too many ops",
     json.dumps(_unsigned(_body(ops=[{"op": "delete", "key": "k"}] * 65))).encode(),
     400, "malformed_tx"),
    ("no ops", json.dumps(_unsigned(_body(ops=[]))).encode(), 400, "malformed_tx"),
    ("key too long",
     json.dumps(_unsigned(_body(ops=[{"op": "delete", "key": "é" * 129}]))).encode(),
     400, "malformed_tx"),
    ("empty key", json.dumps(_unsigned(_body(ops=[{"op": "delete", "key": ""}]))).encode(),
     400, "malformed_tx"),
    ("negative nonce", json.dumps(_unsigned(_body(nonce=-1))).encode(), 400, "malformed_tx"),
    ("nonce 2^53", json.dumps({"body": _body(nonce=2**53), "sig": "00" * 64}).encode(),
     400, "malformed_tx"),
    ("zero transfer",
     json.dumps(_unsigned(_body(ops=[transfer_op(BOB.public_key, 0)]))).encode(),
     400, "malformed_tx"),
    ("bad client key", json.dumps({"body": _body(client="ab" * 32), "sig": "00" * 64}).encode(),
     400, "malformed_tx"),
    ("tx too large", json.dumps(_big_value_tx()).encode(), 413, "too_large"),
    ("body over 1 MiB", b'{"body": "' + b"x" * (1024 * 1024 + 10) + b'"}', 413, "too_large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [case[1:] for case in BAD_TX_BODIES],
    ids=[case[0] for case in BAD_TX_BODIES],
)
def test_submit_refuses_bad_transactions(
    harness: ApiHarness, data: bytes, status: int, code: str
) -> None:
    async def scenario(c: Client) -> None:
        payload = io.BytesIO(data) if len(data) > 1024 * 1024 else data
        r = await c.post("/v1/tx", data=payload, headers={"Content-Type": "application/json"})
        await _error(r, status, code)
        assert harness.accepted == []

    run(harness, scenario)


@pytest.mark.parametrize(
    "query",
    ["wait=soon", "timeout_ms=100", "wait=commit&timeout_ms=60001", "wait=commit&timeout_ms=-1",
     "wait=commit&timeout_ms=1.5", "fast=1", "wait=commit&wait=commit"],
)  # fmt: skip
def test_submit_refuses_bad_query(harness: ApiHarness, query: str) -> None:
    async def scenario(c: Client) -> None:
        await _error(await c.post(f"/v1/tx?{query}", json=set_tx()), 400, "invalid_query")

    run(harness, scenario)


def test_full_pool_answers_429(tmp_path: Path) -> None:
    h = ApiHarness(tmp_path / "ledger", pool_capacity=1)

    async def scenario(c: Client) -> None:
        assert (await c.post("/v1/tx", json=set_tx(nonce=1))).status == 202
        await _error(await c.post("/v1/tx", json=set_tx(nonce=2)), 429, "pool_full")
        # A duplicate of the pending one is still fine.
        assert (await c.post("/v1/tx", json=set_tx(nonce=1))).status == 202
        r = await c.post("/v1/txs", json=[set_tx(nonce=3)])
        assert r.status == 202
        assert (await r.json())[0]["error"] == "pool_full"
        h.commit_accepted()  # the commit frees room
        assert (await c.post("/v1/tx", json=set_tx(nonce=2))).status == 202

    try:
        run(h, scenario)
    finally:
        h.close()


# ---- POST /v1/txs ---------------------------------------------------------------------------


def test_submit_many_answers_per_item_in_order(harness: ApiHarness) -> None:
    good = [set_tx(nonce=i) for i in range(3)]
    bad_sig = {"body": _body(nonce=99), "sig": BOB.sign(TAG_TX, _body(nonce=99))}
    items = [good[0], bad_sig, good[1], {"body": 1}, good[0], good[2]]

    async def scenario(c: Client) -> None:
        r = await c.post("/v1/txs", json=items)
        assert r.status == 202
        answer = await r.json()
        assert len(answer) == len(items)
        ids = [tx(ALICE, i, {"op": "set", "key": "k", "value": 1}).tx_id for i in range(3)]
        assert answer[0] == {"tx_id": ids[0], "status": "pending"}
        assert answer[1]["error"] == "bad_signature" and set(answer[1]) == {"error", "detail"}
        assert answer[2] == {"tx_id": ids[1], "status": "pending"}
        assert answer[3]["error"] == "malformed_tx"
        assert answer[4] == {"tx_id": ids[0], "status": "pending"}
        assert answer[5] == {"tx_id": ids[2], "status": "pending"}
        assert [t.tx_id for t in harness.accepted] == ids
        harness.commit_accepted()
        r = await c.post("/v1/txs", json=[good[1]])
        assert await r.json() == [{"tx_id": ids[1], "status": "committed"}]
        r = await c.post("/v1/txs", json=[])
        assert r.status == 202 and await r.json() == []

    run(harness, scenario)


def test_submit_many_refusals(harness: ApiHarness) -> None:
    one = set_tx()

    async def scenario(c: Client) -> None:
        await _error(await c.post("/v1/txs", json=[one] * 1001), 413, "too_many_txs")
        await _error(await c.post("/v1/txs", json=one), 400, "malformed_request")
        await _error(await c.post("/v1/txs", data=b"[1.0]"), 400, "malformed_request")
        await _error(await c.post("/v1/txs", data=b"[{]"), 400, "malformed_request")
        big = b"[" + b",".join([json.dumps(_big_value_tx()).encode()] * 16) + b"]"
        await _error(await c.post("/v1/txs", data=io.BytesIO(big)), 413, "too_large")
        await _error(await c.post("/v1/txs?x=1", json=[one]), 400, "invalid_query")

        async def chunks() -> Any:  # no Content-Length: the server's body limit still holds
            for _ in range(17):
                yield b" " * 65_536

        await _error(await c.post("/v1/txs", data=chunks()), 413, "too_large")

    run(harness, scenario)


def test_submit_many_accepts_1000(harness: ApiHarness) -> None:
    items = [set_tx(nonce=i) for i in range(1000)]

    async def scenario(c: Client) -> None:
        r = await c.post("/v1/txs", json=items)
        assert r.status == 202
        answer = await r.json()
        assert all(a["status"] == "pending" for a in answer)
        assert len(harness.accepted) == 1000

    run(harness, scenario)


# ---- GET /v1/tx/{tx_id} ---------------------------------------------------------------------


@pytest.mark.parametrize("tx_id", ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "%20" * 3])
def test_get_tx_refuses_bad_ids(harness: ApiHarness, tx_id: str) -> None:
    async def scenario(c: Client) -> None:
        await _error(await c.get(f"/v1/tx/{tx_id}"), 400, "invalid_tx_id")

    run(harness, scenario)


def test_get_tx_unknown_is_404(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        await _error(await c.get("/v1/tx/" + "ab" * 32), 404, "unknown_tx")

    run(harness, scenario)


# ---- GET /v1/blocks/{seq} -------------------------------------------------------------------


def test_blocks(harness: ApiHarness) -> None:
    t1 = tx(ALICE, 1, {"op": "transfer", "to": CAROL.public_key, "amount": 5})
    t2 = tx(BOB, 1, {"op": "transfer", "to": CAROL.public_key, "amount": 500})
    harness.commit([t1, t2])
    harness.commit([])

    async def scenario(c: Client) -> None:
        r = await c.get("/v1/blocks/1")
        assert r.status == 200
        block = await r.json()
        assert set(block) == {
            "seq", "hash", "prev_hash", "batch", "txs", "results", "certificate", "execution"
        }  # fmt: skip
        assert block["execution"] == harness.store.execution(1)
        assert block["execution"]["state_root"] == harness.store.roots(1)[0]
        assert block["prev_hash"] == harness.genesis.genesis_hash
        assert block["txs"] == [dict(t1.wire), dict(t2.wire)]
        assert block["results"] == [
            {"ok": True, "error": None},
            {"ok": False, "error": "insufficient_funds"},
        ]
        r = await c.get("/v1/blocks/2")
        assert (await r.json())["prev_hash"] == block["hash"]
        await _error(await c.get("/v1/blocks/3"), 404, "unknown_block")
        for bad in ("0", "-1", "01", "1.0", "abc", "9" * 17, str(2**53)):
            await _error(await c.get(f"/v1/blocks/{bad}"), 400, "invalid_seq")

    run(harness, scenario)


# ---- GET /v1/state/{key} --------------------------------------------------------------------


def test_state(harness: ApiHarness) -> None:
    harness.commit(
        [
            tx(ALICE, 1, {"op": "set", "key": "a/b c?€", "value": {"n": [1, None]}}),
            tx(ALICE, 2, {"op": "set", "key": "plain", "value": "v"}),
            tx(ALICE, 3, {"op": "set", "key": "plain", "value": "w"}),
        ]
    )

    async def scenario(c: Client) -> None:
        r = await c.get("/v1/state/a%2Fb%20c%3F%E2%82%AC")
        assert r.status == 200
        assert await r.json() == {
            "key": "a/b c?€",
            "value": {"n": [1, None]},
            "version": 1,
            "owner": ALICE.public_key,
            "seq": 1,
        }
        r = await c.get("/v1/state/plain")
        assert await r.json() == {
            "key": "plain",
            "value": "w",
            "version": 2,
            "owner": ALICE.public_key,
            "seq": 1,
        }
        await _error(await c.get("/v1/state/absent"), 404, "unknown_key")
        await _error(await c.get("/v1/state/" + "k" * 257), 400, "invalid_key")
        await _error(await c.get("/v1/state/%FF"), 400, "invalid_key")
        await _error(await c.get("/v1/state/"), 404, "not_found")

    run(harness, scenario)


def test_state_shows_the_owner_after_chown_and_refused_writes(harness: ApiHarness) -> None:
    harness.commit([tx(ALICE, 1, {"op": "set", "key": "colour", "value": "blue"})])
    seq = harness.commit(
        [
            tx(BOB, 1, {"op": "set", "key": "colour", "value": "hijacked"}),
            tx(ALICE, 2, {"op": "chown", "key": "colour", "to": BOB.public_key}),
            tx(BOB, 2, {"op": "set", "key": "colour", "value": "green"}),
        ]
    )
    block = harness.store.block(seq)
    assert block is not None
    assert [r["error"] for r in block["results"]] == ["forbidden", None, None]

    async def scenario(c: Client) -> None:
        r = await c.get("/v1/state/colour")
        answer = await r.json()
        assert (answer["value"], answer["version"], answer["owner"]) == (
            "green",
            3,
            BOB.public_key,
        )

    run(harness, scenario)


def test_wrong_chain_is_refused_with_400_and_never_accepted(harness: ApiHarness) -> None:
    other = sign_tx(ALICE, 1, [{"op": "set", "key": "k", "value": 1}], chain_id="other-net")

    async def scenario(c: Client) -> None:
        r = await c.post("/v1/tx", json=other)
        body = await _error(r, 400, "wrong_chain")
        assert "other-net" in body["detail"] and CHAIN_ID in body["detail"]
        r = await c.post("/v1/txs", json=[other, set_tx(nonce=5)])
        answer = await r.json()
        assert answer[0]["error"] == "wrong_chain" and answer[1]["status"] == "pending"
        assert len(harness.accepted) == 1

    run(harness, scenario)


def test_insufficient_fee_is_refused_with_400(tmp_path: Path) -> None:
    wire = set_tx(nonce=1)
    fee = len(canonical_json(wire["body"]))
    h = ApiHarness(tmp_path / "ledger", fee_per_byte=1, accounts={ALICE.public_key: fee})

    async def scenario(c: Client) -> None:
        assert (await c.post("/v1/tx", json=wire)).status == 202
        body = await _error(await c.post("/v1/tx", json=set_tx(nonce=2)), 400, "insufficient_fee")
        assert "reserved" in body["detail"]
        # The first commits and pays: the account is empty now.
        h.commit_accepted()
        r = await c.get(f"/v1/accounts/{ALICE.public_key}")
        assert (await r.json())["balance"] == 0
        await _error(await c.post("/v1/tx", json=set_tx(nonce=2)), 400, "insufficient_fee")

    try:
        run(h, scenario)
    finally:
        h.close()


def test_throwaway_key_flood_is_refused_and_the_ledger_does_not_grow(tmp_path: Path) -> None:
    """The issue's attack: a fresh key with nothing in its account floods valid `set`s. With
    fees, every one is refused at admission: nothing is ordered, and the ledger stays as is."""
    h = ApiHarness(tmp_path / "ledger", fee_per_byte=1)
    flood = [
        sign_tx(CAROL, i, [{"op": "set", "key": f"spam-{i}", "value": "x" * 2_000}])
        for i in range(400)  # 0.9 MB: one request within the 1 MiB body limit
    ]
    data_file = tmp_path / "ledger" / "data.mdb"
    size_before = data_file.stat().st_size

    async def scenario(c: Client) -> None:
        r = await c.post("/v1/txs", json=flood)
        assert r.status == 202
        assert {item["error"] for item in await r.json()} == {"insufficient_fee"}
        for wire in flood[:20]:
            await _error(await c.post("/v1/tx", json=wire), 400, "insufficient_fee")

    try:
        run(h, scenario)
        assert h.accepted == [] and len(h.pool) == 0
        assert h.commit_accepted() is None  # nothing to order
        assert h.store.head()[0] == 0
        assert data_file.stat().st_size == size_before
    finally:
        h.close()


# ---- GET /v1/accounts/{pubkey}, /v1/status --------------------------------------------------


def test_accounts(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        r = await c.get(f"/v1/accounts/{ALICE.public_key}")
        assert await r.json() == {"pubkey": ALICE.public_key, "balance": 1000, "seq": 0}
        r = await c.get(f"/v1/accounts/{CAROL.public_key}")
        assert await r.json() == {"pubkey": CAROL.public_key, "balance": 0, "seq": 0}
        for bad in ("abc", ALICE.public_key.upper(), "00" * 32, "zz" * 32):
            await _error(await c.get(f"/v1/accounts/{bad}"), 400, "invalid_pubkey")

    run(harness, scenario)


def test_status(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        r = await c.get("/v1/status")
        assert r.status == 200
        status = await r.json()
        assert set(status) == {
            "name", "pubkey", "chain_id", "view", "primary", "seq", "head_hash",
            "stable_checkpoint", "n", "f", "version", "catching_up", "peers_connected",
        }  # fmt: skip
        assert status["n"] == 4 and status["f"] == 1 and status["seq"] == 0

    run(harness, scenario)


# ---- the error middleware -------------------------------------------------------------------


def test_http_errors_have_the_error_shape(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        await _error(await c.get("/v2/nothing"), 404, "not_found")
        r = await c.put("/v1/status")
        await _error(r, 405, "method_not_allowed")
        assert "GET" in r.headers["Allow"]
        await _error(await c.get("/v1/tx"), 405, "method_not_allowed")
        await _error(await c.delete("/v1/txs"), 405, "method_not_allowed")
        r = await c.get("/v1/status", headers={"Accept": "text/html"})
        await _error(r, 406, "not_acceptable")
        r = await c.get("/v1/status", headers={"Accept": "text/html, application/*;q=0.5"})
        assert r.status == 200
        await _error(await c.get("/v1/status?verbose=1"), 400, "invalid_query")

    run(harness, scenario)


def test_unexpected_exception_is_500_with_error_shape(
    harness: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, Any]:
        raise KeyError("boom")

    harness.context.status = broken

    async def scenario(c: Client) -> None:
        await _error(await c.get("/v1/status"), 500, "internal_error")

    run(harness, scenario)
    assert any(r.getMessage() == "api_internal_error" for r in caplog.records)


# ---- /metrics, /openapi.json ----------------------------------------------------------------


def test_metrics(harness: ApiHarness) -> None:
    harness.metrics.drop("bad_signature", 2)

    async def scenario(c: Client) -> None:
        await c.post("/v1/tx", json=set_tx())
        harness.commit_accepted()
        r = await c.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
        for line in (
            "phalanx_committed_seq 1.0",
            "phalanx_committed_txs_total 1.0",
            "phalanx_commit_latency_seconds_count 1.0",
            'phalanx_dropped_peer_messages_total{reason="bad_signature"} 2.0',
            "phalanx_pending_pool_size 0.0",
            "phalanx_view_changes_total 0.0",
            "phalanx_view 0.0",
        ):
            assert line in text.splitlines(), line

    run(harness, scenario)


def test_openapi_is_served(harness: ApiHarness) -> None:
    async def scenario(c: Client) -> None:
        r = await c.get("/openapi.json")
        assert r.status == 200
        doc = await r.json()
        assert doc["openapi"].startswith("3.")
        assert set(doc["paths"]) == {
            "/v1/tx", "/v1/txs", "/v1/tx/{tx_id}", "/v1/blocks/{seq}", "/v1/state/{key}",
            "/v1/accounts/{pubkey}", "/v1/status", "/v1/events", "/metrics", "/openapi.json",
            "/v1/evidence", "/v1/health", "/v1/peers", "/v1/validators", "/v1/genesis",
            "/v1/blocks", "/v1/dashboard", "/v1/dashboard/block/{seq}", "/", "/dashboard/{file}",
        }  # fmt: skip

    run(harness, scenario)
