"""A delaying TCP relay: netem's job in user space, for kernels without ``sch_netem``.

Put one on a link by pointing a node's peer address at the relay, which connects on to the real
peer. Run it *inside the sending host's namespace* (``python -m tests.adversary.relay`` through
``TestNet.spawn``, listening on that namespace's loopback): what it forwards then leaves from the
host's own address, so the partitions and drops of :mod:`.netns` still apply to it.

What it can emulate on a TCP stream, per direction:

* **delay with jitter**: each chunk read is delivered ``delay_ms`` ± ``jitter_ms`` (uniform)
  after it arrived, but never before the chunk ahead of it: a TCP stream cannot be reordered,
  so jitter shows as bunching, as behind a real jittery link;
* **loss as stalls**: a lost segment on a real link costs a retransmission timeout, which the
  receiving application sees as the stream standing still; with probability ``stall_p`` a chunk
  is held ``stall_ms`` longer (and everything behind it);
* **reordering** exists only between different connections (each has its own delays), which is
  what a node sees when several links carry related messages.

**Duplication is not meaningful for TCP**: the kernel hands the application each byte once, and
a relay that repeated bytes would corrupt the stream instead of emulating anything; duplicated
*messages* are a Byzantine sender's behaviour, not the network's.

Bounds: at most ``buffer_bytes_max`` bytes in flight per direction (reading stops until the
writer catches up), connections at most ``connections_max``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass

CHUNK_BYTES = 64 * 1024
BUFFER_BYTES_MAX = 4 * 1024 * 1024
CONNECTIONS_MAX = 256


@dataclass
class LinkShape:
    """What the relay does to each direction; change it at any time (applies to new chunks)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    stall_p: float = 0.0
    stall_ms: float = 0.0

    def hold_s(self, rng: random.Random) -> float:
        hold = self.delay_ms + (
            rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0
        )
        if self.stall_p and rng.random() < self.stall_p:
            hold += self.stall_ms
        return max(0.0, hold) / 1000


class Relay:
    """``listen`` -> ``target``, shaping both directions with ``shape`` (shared, mutable)."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        shape: LinkShape,
        seed: int = 0,
        buffer_bytes_max: int = BUFFER_BYTES_MAX,
        connections_max: int = CONNECTIONS_MAX,
    ) -> None:
        self.listen, self.target, self.shape = listen, target, shape
        self._rng = random.Random(seed)
        self._buffer_bytes_max = buffer_bytes_max
        self._connections_max = connections_max
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.bytes_relayed = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the relay is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._on_client, *self.listen)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:  # so that stop() also ends the handlers
            self._tasks.add(me)
            me.add_done_callback(self._tasks.discard)
        if self.connections >= self._connections_max:
            await _close(writer)
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.connections -= 1
            await _close(writer)
            return
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        for task in pipes:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            # When one direction ends, the other is cut too (as a proxy closing the pair).
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            self.connections -= 1
            for w in (writer, up_writer):
                await _close(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        queued = 0
        arrived = asyncio.Event()
        room = asyncio.Event()
        room.set()
        done = False

        async def read() -> None:
            nonlocal queued, done
            last_due = 0.0
            while True:
                await room.wait()
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    done = True
                    arrived.set()
                    return
                due = max(last_due, time.monotonic() + self.shape.hold_s(self._rng))
                last_due = due
                queue.append((due, data))
                queued += len(data)
                if queued >= self._buffer_bytes_max:
                    room.clear()
                arrived.set()

        reading = asyncio.create_task(read())
        try:
            while True:
                if not queue:
                    if done:
                        return
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, data = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                queued -= len(data)
                if queued < self._buffer_bytes_max:
                    room.set()
                writer.write(data)
                await writer.drain()
                self.bytes_relayed += len(data)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await reading


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.adversary.relay", description=__doc__)
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--target", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--stall-p", type=float, default=0.0)
    parser.add_argument("--stall-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = LinkShape(args.delay_ms, args.jitter_ms, args.stall_p, args.stall_ms)

    async def serve() -> None:
        relay = await Relay(args.listen, args.target, shape, seed=args.seed).start()
        print(f"relay listening on {relay.listen[0]}:{relay.port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
