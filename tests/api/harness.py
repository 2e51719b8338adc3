"""An in-process API over a real LedgerStore in a temporary directory, with a real Pool,
EventHub, CommitWaiters and NodeMetrics; only the replica is missing (tests commit blocks
themselves with :meth:`ApiHarness.commit`, as the runtime does after executing a block)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consensus.batch import Tx
from ledger.state_machine import ChainRules
from ledger.store import LedgerStore
from node.api.app import ApiContext, create_app
from node.api.events import CommitWaiters, EventHub
from node.api.operator import OperatorContext
from node.consensus_log import PeerTracker
from node.metrics import NodeMetrics
from node.pool import Pool
from node.runtime import execute_block
from tests.ledger.helpers import (
    ALICE,
    VALIDATORS,
    certify_execution,
    committed,
    make_genesis,
    sign_tx,
)


class ApiHarness:
    def __init__(
        self,
        data_dir: Path,
        pool_capacity: int = 1_000,
        events_queue_max: int = 1_024,
        sse_keepalive_s: float = 15.0,
        fee_per_byte: int = 0,
        accounts: dict[str, int] | None = None,
    ) -> None:
        self.genesis = make_genesis(fee_per_byte=fee_per_byte, accounts=accounts)
        self.store = LedgerStore.open(data_dir, self.genesis)
        self.accepted: list[Tx] = []
        self.pool = Pool(
            ChainRules.of(self.genesis),
            self.store.balances,
            capacity=pool_capacity,
            on_accepted=lambda txs, relay: self.accepted.extend(txs),
            committed_among=self.store.committed_among,
        )
        self.events = EventHub(queue_max=events_queue_max)
        self.waiters = CommitWaiters()
        self.metrics = NodeMetrics()
        self.context = ApiContext(
            store=self.store,
            pool=self.pool,
            status=self.status,
            events=self.events,
            waiters=self.waiters,
            metrics=self.metrics,
            sse_keepalive_s=sse_keepalive_s,
            # The operator endpoints as a node linked to every peer sees them.
            operator=OperatorContext(
                genesis=self.genesis,
                pubkey=VALIDATORS[0].public_key,
                peer_addresses={
                    v.public_key: f"127.0.0.1:{7101 + i}" for i, v in enumerate(VALIDATORS[1:])
                },
                connected=lambda: [v.public_key for v in VALIDATORS[1:]],
                catching_up=lambda: False,
                tracker=PeerTracker([v.public_key for v in VALIDATORS[1:]]),
                series=self.metrics.series,
                pool_size=lambda: len(self.pool),
            ),
        )

    def status(self) -> dict[str, Any]:
        seq, head_hash = self.store.head()
        return {
            "name": "node0",
            "pubkey": VALIDATORS[0].public_key,
            "chain_id": self.genesis.chain_id,
            "view": 0,
            "primary": VALIDATORS[0].public_key,
            "seq": seq,
            "head_hash": head_hash,
            "stable_checkpoint": 0,
            "n": self.genesis.n,
            "f": self.genesis.f,
            "version": "0.1.0",
            "catching_up": False,
            "peers_connected": self.genesis.n - 1,
        }

    def app(self) -> web.Application:
        return create_app(self.context)

    def commit(self, txs: list[Tx]) -> int:
        """Execute a block holding ``txs`` as the runtime does; its seq."""
        seq = self.store.head()[0] + 1
        block = committed(self.genesis, seq, txs)
        execute_block(block, self.store, self.pool, self.waiters, self.events, self.metrics)
        # The validators' execution votes, as the runtime would collect them.
        certify_execution(self.store, seq)
        return seq

    def commit_accepted(self) -> int | None:
        """Commit every accepted transaction not committed yet, as one block."""
        txs = [tx for tx in self.accepted if not self.store.is_committed(tx.tx_id)]
        self.accepted.clear()
        unique = list({tx.tx_id: tx for tx in txs}.values())
        return self.commit(unique) if unique else None

    def close(self) -> None:
        self.pool.close()
        self.store.close()


def set_tx(key: str = "k", value: Any = 1, nonce: int = 0) -> dict[str, Any]:
    return sign_tx(ALICE, nonce, [{"op": "set", "key": key, "value": value}])


def run(harness: ApiHarness, scenario: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    """Run ``scenario(client)`` against the harness's app in a fresh event loop."""

    async def main() -> None:
        async with TestClient(TestServer(harness.app())) as client:
            await scenario(client)

    asyncio.run(main())


class Served:
    """The harness's app served from a background thread on 127.0.0.1."""

    def __init__(self, harness: ApiHarness, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.harness = harness
        self.url = url
        self.loop = loop

    def commit_pending(self) -> int | None:
        """Commit every accepted, not yet committed transaction in one block (in the server's
        loop, where the waiters live); the block's seq, or None if there was nothing."""

        async def commit() -> int | None:
            return self.harness.commit_accepted()

        return asyncio.run_coroutine_threadsafe(commit(), self.loop).result(10)


@contextmanager
def serve_in_thread(harness: ApiHarness, auto_commit_s: float | None = None) -> Iterator[Served]:
    """Serve the app on 127.0.0.1 (a free port) from a background thread. With
    ``auto_commit_s``, accepted transactions are committed that often, like a live node."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def auto_commit(period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            harness.commit_accepted()

    async def start() -> None:
        runner = web.AppRunner(harness.app(), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]
        if auto_commit_s is not None:
            box["task"] = asyncio.create_task(auto_commit(auto_commit_s))

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        if "task" in box:
            box["task"].cancel()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the test server did not start")
    try:
        yield Served(harness, f"http://127.0.0.1:{box['port']}", loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
