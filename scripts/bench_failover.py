"""Failover benchmark for ``scripts/bench --failover``: how long a 4-node testnet goes without a
commit after its primary is killed (kill -9) under light load, and whether a flood makes views
change.

Each round, with a client submitting ``--rate`` transactions a second (one per ``POST /v1/txs``)
to the nodes that are up:
1. find the primary (``/v1/status`` "primary" pubkey -> node) and wait until the load commits;
2. SIGKILL it and take the time;
3. wait for the first block event, on a survivor's ``GET /v1/events``, holding a transaction
   submitted after the kill: the recovery time is the time from the kill to that event;
4. start the killed node again and wait until it has caught up with the survivors' head.

``--flood-view-check SECONDS`` then floods the testnet (as many transactions as the pools
admit, backing off on 429) for that long and reports every node's view before and after: a
primary that is merely busy must not be deposed, so the view must stay where it was.

Prints one JSON object on stdout (per-round figures, median, worst, the flood's views); the
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from bench_common import block_events

from crypto.hashing import hash_object
from crypto.signing import TAG_TX, Ed25519Signer, signing_input
from node import testnet as tn

ROUND_TIMEOUT_S = 30.0  # a round without a commit this long after the kill fails the bench
CATCH_UP_TIMEOUT_S = 60.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TxMaker:
    """Signed transactions of one funded client, each setting a key of its own."""

    def __init__(self, signer: Ed25519Signer, chain_id: str, tag: str) -> None:
        self.signer, self.chain_id, self.tag = signer, chain_id, tag
        self.count = 0

    def make(self) -> dict[str, Any]:
        i = self.count
        self.count += 1
        body = {
            "chain_id": self.chain_id,
            "client": self.signer.public_key,
            "nonce": i,
            "ops": [{"op": "set", "key": f"failover/{self.tag}/{i}", "value": i}],
        }
        return {"body": body, "sig": self.signer.sign_bytes(signing_input(TAG_TX, body))}

    def chunk(self, size: int) -> Iterator[dict[str, Any]]:
        return (self.make() for _ in range(size))


class Bench:
    def __init__(self, dir: Path, session: aiohttp.ClientSession, maker: TxMaker) -> None:
        self.dir = dir
        self.session = session
        self.maker = maker
        self.net = tn.Testnet.load(dir)
        self.down: set[str] = set()  # node names the load must not address
        self.sent_at: dict[str, float] = {}  # tx_id -> perf_counter when its POST was sent
        self.submit_errors = 0
        self.kill_t0 = float("inf")

    def url(self, name: str) -> str:
        return self.net.node(name).url

    def up_names(self) -> list[str]:
        return [n.name for n in self.net.nodes if n.name not in self.down]

    async def status(self, name: str) -> dict[str, Any] | None:
        try:
            async with self.session.get(
                f"{self.url(name)}/v1/status", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                return dict(await r.json()) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def statuses(self) -> dict[str, dict[str, Any]]:
        names = self.up_names()
        answers = await asyncio.gather(*(self.status(n) for n in names))
        return {n: a for n, a in zip(names, answers, strict=True) if a is not None}

    async def post(self, name: str, txs: list[dict[str, Any]]) -> int:
        """POST /v1/txs; returns the HTTP status (0 if the node did not answer)."""
        start = time.perf_counter()
        try:
            async with self.session.post(
                f"{self.url(name)}/v1/txs", json=txs, timeout=aiohttp.ClientTimeout(total=10)
            ) as r:
                body = await r.json()
                if r.status == 202:
                    for tx, item in zip(txs, body, strict=True):
                        if "error" not in item:
                            self.sent_at.setdefault(hash_object(tx["body"]), start)
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            self.submit_errors += 1
            return 0

    async def light_load(self, rate: float) -> None:
        """One transaction per POST, ``rate`` a second, rotating over the nodes that are up."""
        period = 1 / rate
        i = 0
        next_at = time.perf_counter()
        while True:
            names = self.up_names()
            tx = self.maker.make()
            name = names[i % len(names)]
            i += 1
            asyncio.get_running_loop().create_task(self.post(name, [tx]))
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def primary_name(self) -> tuple[str, int]:
        """The node the up nodes agree is primary, and the view (waits until they agree)."""
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        by_key = {n.pubkey: n.name for n in self.net.nodes}
        while time.monotonic() < deadline:
            answers = await self.statuses()
            views = {(a["view"], a["primary"]) for a in answers.values()}
            if len(answers) == len(self.up_names()) and len(views) == 1:
                view, primary = views.pop()
                return by_key[primary], int(view)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the nodes do not agree on a view: {await self.statuses()}")

    async def first_commit_after(self, name: str, from_seq: int) -> float:
        """perf_counter at which ``name`` streams a block holding a transaction sent after
        ``kill_t0``."""
        async with self.session.get(
            f"{self.url(name)}/v1/events",
            params={"from_seq": str(from_seq)},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            async for now, tx_ids in block_events(response):
                for tx_id in tx_ids:
                    sent = self.sent_at.get(tx_id)
                    if sent is not None and sent >= self.kill_t0:
                        return now
        raise RuntimeError(f"{name} closed its event stream")

    async def wait_committing(self) -> None:
        """Until a transaction sent now commits on every up node (the load flows again)."""
        t = time.perf_counter()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while time.monotonic() < deadline:
            answers = await self.statuses()
            fresh = [
                tx_id for tx_id, sent in self.sent_at.items() if sent >= t
            ]  # sent since we started waiting
            if fresh and len(answers) == len(self.up_names()):
                seqs = {a["seq"] for a in answers.values()}
                if max(seqs) - min(seqs) <= 2 and await self._committed(fresh[0]):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the load does not commit everywhere: {await self.statuses()}")

    async def _committed(self, tx_id: str) -> bool:
        for name in self.up_names():
            try:
                async with self.session.get(f"{self.url(name)}/v1/tx/{tx_id}") as r:
                    if r.status != 200 or (await r.json()).get("status") != "committed":
                        return False
            except aiohttp.ClientError:
                return False
        return True

    async def round(self, index: int) -> dict[str, Any]:
        await self.wait_committing()
        primary, view = await self.primary_name()
        survivor = next(n for n in self.up_names() if n != primary)
        head = (await self.status(survivor) or {}).get("seq", 0)
        self.kill_t0 = float("inf")  # nothing counts until the kill
        watch = asyncio.create_task(self.first_commit_after(survivor, int(head) + 1))
        await asyncio.sleep(0.3)  # the stream is attached and replays from head + 1
        self.down.add(primary)
        pid = tn.Testnet.load(self.dir).node(primary).pid
        if pid is None:
            raise RuntimeError(f"{primary} has no pid on record in {self.dir}")
        # The signal first, then the clock: a transaction sent between the two could still be
        # ordered by the dying primary and count as a commit "after" the kill.
        os.killpg(pid, signal.SIGKILL)  # the node leads its own session (node.testnet.spawn)
        t0 = self.kill_t0 = time.perf_counter()
        killed_at = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        await asyncio.to_thread(tn.kill, self.dir, primary)  # waits for it, records it down
        try:
            t1 = await asyncio.wait_for(watch, ROUND_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(
                f"round {index}: no commit {ROUND_TIMEOUT_S:.0f} s after killing {primary}"
            ) from None
        recovery = t1 - t0
        _, new_view = await self.primary_name()
        _say(
            f"round {index}: killed {primary} (view {view}) at {killed_at} UTC, first commit after "
            f"{recovery * 1000:.0f} ms, now view {new_view}; restarting {primary}"
        )
        await asyncio.to_thread(tn.start, self.dir, primary, CATCH_UP_TIMEOUT_S)
        self.down.discard(primary)
        return {
            "round": index,
            "killed": primary,
            "view_before": view,
            "view_after": new_view,
            "recovery_ms": round(recovery * 1000, 1),
        }

    async def flood(self, seconds: float, chunk: int, concurrency: int) -> dict[str, Any]:
        """As many transactions as the pools admit for ``seconds``; views before and after."""
        before = {n: a["view"] for n, a in (await self.statuses()).items()}
        seq_before = max(a["seq"] for a in (await self.statuses()).values())
        stop_at = time.perf_counter() + seconds
        accepted = 0
        busy = 0

        async def worker(w: int) -> None:
            nonlocal accepted, busy
            i = w
            while time.perf_counter() < stop_at:
                names = self.up_names()
                txs = list(self.maker.chunk(chunk))
                status = await self.post(names[i % len(names)], txs)
                i += 1
                if status == 202:
                    accepted += len(txs)
                else:
                    busy += 1
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        views_during = {n: a["view"] for n, a in (await self.statuses()).items()}
        answers = await self.statuses()
        return {
            "seconds": seconds,
            "submitted_accepted": accepted,
            "posts_refused_or_failed": busy,
            "committed_blocks": max(a["seq"] for a in answers.values()) - seq_before,
            "views_before": before,
            "views_after": views_during,
            "view_flat": set(before.values()) == set(views_during.values())
            and len(set(views_during.values())) == 1,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    dir = args.dir.resolve()
    net = tn.Testnet.load(dir)
    client = Ed25519Signer(bytes.fromhex((dir / "client.key").read_text().strip()))
    chain_id = json.loads(Path(net.genesis).read_text())["chain_id"]
    maker = TxMaker(client, chain_id, tag=str(time.time_ns()))
    result: dict[str, Any] = {"rate_tx_per_s": args.rate}
    async with aiohttp.ClientSession() as session:
        bench = Bench(dir, session, maker)
        load = asyncio.create_task(bench.light_load(args.rate))
        try:
            rounds = [await bench.round(i) for i in range(1, args.rounds + 1)]
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        if rounds:
            ms = [r["recovery_ms"] for r in rounds]
            result.update(
                rounds=rounds,
                recovery_median_ms=round(statistics.median(ms), 1),
                recovery_worst_ms=max(ms),
            )
        if args.flood_view_check > 0:
            _say(f"flood: {args.flood_view_check:.0f} s")
            result["flood"] = await bench.flood(args.flood_view_check, args.chunk, args.concurrency)
            _say(f"flood: {result['flood']}")
        result["submit_errors"] = bench.submit_errors
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the testnet directory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="light load, tx/s")
    parser.add_argument(
        "--flood-view-check",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the rounds, flood this long and report the views before and after",
    )
    parser.add_argument("--chunk", type=int, default=250, help="flood: transactions per POST")
    parser.add_argument("--concurrency", type=int, default=8, help="flood: POSTs in flight")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    flood_ok = result.get("flood", {}).get("view_flat", True)
    return 0 if flood_ok else 1


if __name__ == "__main__":
    sys.exit(main())
