"""The operator endpoints (spec §8) over a real ledger, with the peer side faked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from node.api.operator import OperatorContext
from node.consensus_log import STATUS_MESSAGE, PeerTracker
from tests.api.harness import ApiHarness, run
from tests.ledger.helpers import ALICE, VALIDATORS, tx

ME = VALIDATORS[0].public_key
OTHERS = [v.public_key for v in VALIDATORS[1:]]


class FakeNode:
    def __init__(self) -> None:
        self.connected: list[str] = list(OTHERS)
        self.catching_up = False
        self.halted: str | None = None
        self.diverged: str | None = None
        self.now = 1_000.0
        self.tracker = PeerTracker(OTHERS, clock=lambda: self.now)


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    harness = ApiHarness(tmp_path / "data")
    node = FakeNode()
    harness.node = node  # type: ignore[attr-defined]
    harness.context.operator = OperatorContext(
        genesis=harness.genesis,
        pubkey=ME,
        peer_addresses={key: f"10.0.0.{i}:7100" for i, key in enumerate(OTHERS, 2)},
        connected=lambda: node.connected,
        catching_up=lambda: node.catching_up,
        tracker=node.tracker,
        series=harness.metrics.series,
        pool_size=lambda: len(harness.pool),
        halted=lambda: node.halted,
        diverged=lambda: node.diverged,
    )
    yield harness
    harness.close()


async def _get(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path)
    body = await response.json()
    assert response.status == status, body
    return body


def test_health_ok_then_each_reason(harness: ApiHarness) -> None:
    node: FakeNode = harness.node  # type: ignore[attr-defined]

    async def scenario(client: TestClient[Any, Any]) -> None:
        assert await _get(client, "/v1/health") == {"status": "ok"}
        node.connected = OTHERS[:1]  # q - 1 = 2 needed for n = 4
        body = await _get(client, "/v1/health", 503)
        assert body["status"] == "unhealthy"
        assert [r.split(":")[0] for r in body["reasons"]] == ["not_enough_peers"]
        node.connected = OTHERS[:2]
        assert (await client.get("/v1/health")).status == 200
        node.catching_up = True
        node.halted = "InvariantViolation: boom"
        node.diverged = "block 7 differs from f + 1 peers"
        body = await _get(client, "/v1/health", 503)
        codes = [r.split(":")[0] for r in body["reasons"]]
        assert codes == ["halted", "diverged", "catching_up"]
        assert "block 7" in body["reasons"][1]

    run(harness, scenario)


def test_peers_validators_genesis(harness: ApiHarness) -> None:
    node: FakeNode = harness.node  # type: ignore[attr-defined]
    node.connected = OTHERS[1:]
    node.tracker.on_frame(OTHERS[1], {"type": "sync-head", "seq": 12, "hash": "00" * 32})

    async def scenario(client: TestClient[Any, Any]) -> None:
        peers = await _get(client, "/v1/peers")
        assert [p["pubkey"] for p in peers] == OTHERS  # not the node itself
        assert set(peers[0]) == {
            "name", "pubkey", "address", "connected", "head_seq", "last_seen_ms"
        }  # fmt: skip
        assert peers[0]["connected"] is False and peers[1]["connected"] is True
        assert peers[0]["head_seq"] is None and peers[0]["last_seen_ms"] is None
        assert peers[1]["head_seq"] == 12 and peers[1]["last_seen_ms"] == 1_000_000
        assert peers[0]["address"] == "10.0.0.2:7100"
        validators = await _get(client, "/v1/validators")
        genesis = harness.genesis
        assert validators["genesis_hash"] == genesis.genesis_hash
        assert (validators["n"], validators["f"], validators["q"]) == (4, 1, 3)
        assert [v["pubkey"] for v in validators["validators"]] == [v.public_key for v in VALIDATORS]
        assert await _get(client, "/v1/genesis") == dict(genesis.document)
        await _get(client, "/v1/peers?x=1", 400)

    run(harness, scenario)


def test_block_listing_pages_to_the_head(harness: ApiHarness) -> None:
    for nonce in range(5):
        harness.commit([tx(ALICE, nonce, {"op": "set", "key": f"k{nonce}", "value": nonce})])

    async def scenario(client: TestClient[Any, Any]) -> None:
        body = await _get(client, "/v1/blocks?limit=2")
        assert [b["seq"] for b in body["blocks"]] == [1, 2]
        assert body["next_from_seq"] == 3
        assert set(body["blocks"][0]) == {"seq", "hash", "time_ms", "tx_count"}
        assert body["blocks"][0]["tx_count"] == 1
        block = await _get(client, "/v1/blocks/1")
        assert body["blocks"][0]["hash"] == block["hash"]
        body = await _get(client, "/v1/blocks?from_seq=4&limit=2")
        assert [b["seq"] for b in body["blocks"]] == [4, 5]
        assert body["next_from_seq"] is None
        body = await _get(client, "/v1/blocks")
        assert len(body["blocks"]) == 5 and body["next_from_seq"] is None
        assert (await _get(client, "/v1/blocks?from_seq=9"))["blocks"] == []
        for bad in ("limit=0", "limit=1001", "from_seq=0", "from_seq=x", "limit=-1", "other=1"):
            error = await _get(client, f"/v1/blocks?{bad}", 400)
            assert error["error"] == "invalid_query"

    run(harness, scenario)


def test_dashboard_endpoint_shows_every_validator(harness: ApiHarness) -> None:
    node: FakeNode = harness.node  # type: ignore[attr-defined]
    status = {"view": 3, "seq": 9, "primary": ME, "healthy": True, "peers_connected": 3,
              "catching_up": False}  # fmt: skip
    assert node.tracker.on_frame(OTHERS[0], {"type": STATUS_MESSAGE, **status})
    # A malformed summary is consumed but not kept.
    assert node.tracker.on_frame(OTHERS[1], {"type": STATUS_MESSAGE, **status, "seq": "9"})
    harness.commit([tx(ALICE, 0, {"op": "set", "key": "a", "value": 1})])

    async def scenario(client: TestClient[Any, Any]) -> None:
        body = await _get(client, "/v1/dashboard")
        rows = body["validators"]
        assert [r["name"] for r in rows] == [
            v["name"] for v in harness.genesis.document["validators"]
        ]
        assert rows[0]["self"] is True and rows[0]["seq"] == 1
        assert rows[1]["view"] == 3 and rows[1]["seq"] == 9 and rows[1]["healthy"] is True
        assert rows[2]["view"] is None  # its summary was malformed
        assert len(body["series"]) == 300
        node.now += 10  # stale: shown as unknown
        rows = (await _get(client, "/v1/dashboard"))["validators"]
        assert rows[1]["view"] is None and rows[1]["age_ms"] == 10_000

    run(harness, scenario)


def test_dashboard_page_and_static_files(harness: ApiHarness) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        response = await client.get("/")
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        assert "dashboard.js" in page and "http://" not in page and "https://" not in page
        for name in ("dashboard.js", "dashboard.css"):
            response = await client.get(f"/dashboard/{name}")
            assert response.status == 200, name
        for bad in ("../app.py", "..%2Fapp.py", ".hidden.js", "nope.js", "index.py"):
            response = await client.get(f"/dashboard/{bad}")
            assert response.status == 404, bad
            assert (await response.json())["error"] == "not_found"

    run(harness, scenario)


def test_without_operator_context_the_routes_are_absent(tmp_path: Path) -> None:
    harness = ApiHarness(tmp_path / "data")
    harness.context.operator = None
    try:

        async def scenario(client: TestClient[Any, Any]) -> None:
            assert (await client.get("/v1/health")).status == 404

        run(harness, scenario)
    finally:
        harness.close()
