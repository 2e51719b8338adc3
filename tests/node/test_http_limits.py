"""HTTP hardening (node/api/limits.py) against the real API app on 127.0.0.1: caps, timeouts,
JSON errors from the parser, per-client limits, bounded and off-loop body parsing."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.api.limits import HttpLimits, HttpServer, start_http
from node.runtime import GIL_SWITCH_INTERVAL_S
from tests.api.harness import ApiHarness, set_tx


@pytest.fixture(autouse=True)
def node_switch_interval() -> Iterator[None]:
    """The GIL switch interval a node process runs with (node.runtime)."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    yield
    sys.setswitchinterval(previous)


def serve(
    tmp_path: Path,
    limits: HttpLimits,
    scenario: Callable[[HttpServer, ApiHarness], Awaitable[None]],
) -> None:
    async def main() -> None:
        harness = ApiHarness(tmp_path)
        server = await start_http(harness.app(), "127.0.0.1", 0, limits)
        try:
            await scenario(server, harness)
        finally:
            await server.stop()
            harness.close()

    asyncio.run(asyncio.wait_for(main(), 60))


async def raw(port: int, data: bytes, bind: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a new connection from ``bind``; everything answered until close."""
    sock = socket.socket()
    sock.bind((bind, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def body_of(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/status?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
    ],
    ids=["long_url", "long_header"],
)
def test_over_long_url_or_header_gets_the_json_error(tmp_path: Path, request_bytes: bytes) -> None:
    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        status, body = body_of(await raw(server.port, request_bytes))
        assert status == 431
        assert body["error"] == "too_large" and "8190 bytes" in body["detail"]

    serve(tmp_path, HttpLimits(), scenario)


def test_garbage_instead_of_http_gets_a_json_400(tmp_path: Path) -> None:
    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        status, body = body_of(await raw(server.port, b"\x16\x03\x01 not http at all\r\n\r\n"))
        assert status == 400 and body["error"] == "malformed_request"

    serve(tmp_path, HttpLimits(), scenario)


async def idle(port: int, bind: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((bind, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 1), timeout) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_connections_are_capped_per_address_and_in_total_and_others_still_served(
    tmp_path: Path,
) -> None:
    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        mine = [await idle(server.port, "127.0.0.5") for _ in range(4)]
        extra = await idle(server.port, "127.0.0.5")
        assert await closed_by_server(extra, 2), "the 5th connection of one address is closed"
        others = [await idle(server.port, f"127.0.0.{6 + k}") for k in range(4)]
        over = await idle(server.port, "127.0.0.20")
        assert await closed_by_server(over, 2), "past the total cap new connections close"
        assert server.guard.refused == {"per_ip_cap": 1, "total_cap": 1}
        for sock in mine + others + [extra, over]:
            sock.close()
        await asyncio.sleep(0.2)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{server.port}/v1/status") as response,
        ):
            assert response.status == 200

    serve(tmp_path, HttpLimits(connections_max=8, connections_per_ip_max=4), scenario)


def test_idle_and_slow_header_connections_are_reaped(tmp_path: Path) -> None:
    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        silent = await idle(server.port, "127.0.0.1")
        slow = await idle(server.port, "127.0.0.1")
        await asyncio.get_running_loop().sock_sendall(slow, b"GET /v1/status HTTP/1.1\r\nHo")
        started = time.monotonic()
        assert await closed_by_server(slow, 5), "a header that never ends is cut off"
        assert time.monotonic() - started < 4
        assert server.guard.refused["header_timeout"] == 1
        assert await closed_by_server(silent, 5), "an idle connection is closed after keep-alive"
        silent.close()
        slow.close()

    serve(tmp_path, HttpLimits(keepalive_s=3.0, header_timeout_s=1.5), scenario)


def test_a_body_of_a_million_empty_objects_is_refused_before_parsing(tmp_path: Path) -> None:
    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        body = b"[" + b",".join([b"{}"] * 300_000) + b"]"
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            async with session.post(
                f"http://127.0.0.1:{server.port}/v1/txs",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                answer = await response.json()
            assert time.monotonic() - started < 0.5
        assert response.status == 413 and answer["error"] == "too_large"
        assert "JSON objects and arrays" in answer["detail"]

    serve(tmp_path, HttpLimits(), scenario)


def test_per_client_in_flight_and_transaction_rate_limits_answer_429(tmp_path: Path) -> None:
    async def scenario(server: HttpServer, harness: ApiHarness) -> None:
        url = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            # Two waits on commits hold both in-flight slots of this client.
            waits = [
                asyncio.ensure_future(
                    session.post(f"{url}/v1/tx?wait=commit&timeout_ms=1500", json=set_tx(nonce=k))
                )
                for k in range(2)
            ]
            await asyncio.sleep(0.5)
            async with session.get(f"{url}/v1/status") as response:
                assert response.status == 429
                assert (await response.json())["error"] == "overloaded"
            for wait in waits:
                (await wait).close()
            # 5 tx/s with a burst of 1,000: one request of 1,000 passes, the next is refused.
            txs = [set_tx(key=f"k{k}", nonce=100 + k) for k in range(1000)]
            async with session.post(f"{url}/v1/txs", json=txs) as response:
                assert response.status == 202
            async with session.post(f"{url}/v1/txs", json=txs[:10]) as response:
                assert response.status == 429

    serve(tmp_path, HttpLimits(requests_in_flight_per_ip=2, txs_per_s_per_ip=5.0), scenario)


def test_bodies_are_parsed_and_verified_off_the_event_loop(tmp_path: Path) -> None:
    """Four clients each post 1,000 badly signed transactions (the review cut commits from
    79/s to 4/s with those): parsing and signature checks run off the loop, which keeps
    ticking, and every transaction is refused."""

    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        txs = []
        for k in range(1000):
            tx = set_tx(key=f"k{k}", nonce=k)
            tx["sig"] = "11" * 64
            txs.append(tx)
        body = json.dumps(txs).encode()
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        async def post() -> None:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://127.0.0.1:{server.port}/v1/txs",
                    data=io.BytesIO(body),
                    headers={"Content-Type": "application/json"},
                ) as response,
            ):
                assert response.status == 202

        tick = asyncio.ensure_future(ticker())
        await asyncio.gather(*(post() for _ in range(4)))
        stop.set()
        await tick
        assert max(gaps) < 0.5, f"the loop stalled {max(gaps):.3f} s"

    serve(tmp_path, HttpLimits(), scenario)


def test_a_body_sent_after_its_head_is_not_a_slow_header(tmp_path: Path) -> None:
    """Clients often send a body in a segment after the head; while the request is handled
    (here a wait=commit longer than the header timeout) the connection is not reaped."""

    async def scenario(server: HttpServer, _: ApiHarness) -> None:
        body = json.dumps(set_tx(key="later")).encode()
        head = (
            "POST /v1/tx?wait=commit&timeout_ms=2500 HTTP/1.1\r\nHost: node\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock = await idle(server.port, "127.0.0.1")
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, head)
        await asyncio.sleep(0.2)
        await loop.sock_sendall(sock, body)
        started = time.monotonic()
        answer = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        assert time.monotonic() - started > 2.0  # the whole wait, past the 1 s header timeout
        assert server.guard.refused.get("header_timeout", 0) == 0

    serve(tmp_path, HttpLimits(header_timeout_s=1.0), scenario)
