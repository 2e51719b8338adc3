"""The delaying relay on loopback (no namespaces needed): the configured delay is really added,
jitter never reorders a stream, stalls hold it, and the relay's bounds hold."""

from __future__ import annotations

import asyncio
import time

from tests.adversary.relay import LinkShape, Relay


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def _round_trips(port: int, count: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for i in range(count):
        started = time.monotonic()
        writer.write(b"%08d" % i)
        assert await reader.readexactly(8) == b"%08d" % i
        times.append((time.monotonic() - started) * 1000)
    writer.close()
    await writer.wait_closed()
    return times


def test_relay_adds_the_configured_delay() -> None:
    async def main() -> tuple[list[float], list[float]]:
        server = await _echo_server()
        target = server.sockets[0].getsockname()[:2]
        relay = await Relay(("127.0.0.1", 0), target, LinkShape(delay_ms=60)).start()
        try:
            direct = await _round_trips(target[1], 5)
            relayed = await _round_trips(relay.port, 5)
        finally:
            await relay.stop()
            server.close()
            await server.wait_closed()
        return direct, relayed

    direct, relayed = asyncio.run(main())
    # Both directions are delayed: each round trip takes at least 2 x 60 ms.
    assert max(direct) < 50
    assert min(relayed) >= 120
    assert sorted(relayed)[len(relayed) // 2] < 120 + 150  # and not much more (median)


def test_jitter_keeps_the_stream_in_order_and_stalls_hold_it() -> None:
    async def main() -> tuple[bytes, float]:
        server = await _echo_server()
        target = server.sockets[0].getsockname()[:2]
        shape = LinkShape(delay_ms=5, jitter_ms=5, stall_p=0.0, stall_ms=0)
        relay = await Relay(("127.0.0.1", 0), target, shape, seed=7).start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            sent = b"".join(b"%06d" % i for i in range(2_000))
            for i in range(0, len(sent), 600):
                writer.write(sent[i : i + 600])
                await asyncio.sleep(0)
            echoed = await asyncio.wait_for(reader.readexactly(len(sent)), 10)
            assert echoed == sent
            shape.stall_p, shape.stall_ms = 1.0, 150  # every chunk from now on stalls
            started = time.monotonic()
            writer.write(b"x")
            await asyncio.wait_for(reader.readexactly(1), 10)
            stalled_ms = (time.monotonic() - started) * 1000
            writer.close()
            await writer.wait_closed()
        finally:
            await relay.stop()
            server.close()
            await server.wait_closed()
        return echoed, stalled_ms

    _, stalled_ms = asyncio.run(main())
    assert stalled_ms >= 2 * 150


def test_connection_bound() -> None:
    async def main() -> bytes:
        server = await _echo_server()
        target = server.sockets[0].getsockname()[:2]
        relay = await Relay(("127.0.0.1", 0), target, LinkShape(), connections_max=1).start()
        try:
            _r1, w1 = await asyncio.open_connection("127.0.0.1", relay.port)
            await asyncio.sleep(0.05)
            r2, w2 = await asyncio.open_connection("127.0.0.1", relay.port)
            refused = await asyncio.wait_for(r2.read(10), 5)  # closed at once: EOF
            for w in (w1, w2):
                w.close()
                await w.wait_closed()
            return refused
        finally:
            await relay.stop()
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == b""
