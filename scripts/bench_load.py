"""Load generator for scripts/bench: drives a running testnet through its HTTP API.

It runs in its own process, separate from the nodes. It measures, in one run:
- the machine's raw Ed25519 sign and verify times (one core), which bound what any node can do;
- committed tx/s: transactions submitted through POST /v1/txs, counted as committed when their
  block event arrives on GET /v1/events;
- commit latency p50/p99 under that load: from the moment a transaction's submission request
  was sent to the moment its block event arrived (it includes queueing behind the whole flood);
- the peak resident memory (VmRSS, with any child processes) of every node during the flood;
- idle latency p50/p99: one transaction at a time, POST /v1/tx?wait=commit round trips on an
  otherwise idle testnet, each answered with a receipt carrying its execution certificate (what
  a single client waiting for proof sees).
and prints the ratio of committed tx/s to the signature limit cores / (t_sign + 4 * t_verify)
(a client signs once; each of 4 nodes verifies once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_common import (
    RssSampler,
    Target,
    head_seq,
    idle_latencies,
    make_transactions,
    measure_ed25519,
    quantile_ms,
    sampling_rss,
    signature_limit,
    wait_committed,
    watch_commits,
)

from crypto.hashing import hash_object
from node.p2p.guard import PLAINTEXT_ENV


@dataclass
class FloodResult:
    submitted: int
    rejected: int
    committed: int
    seconds: float
    latencies: list[float]  # sorted seconds, submission request sent -> block event
    rss: RssSampler

    @property
    def tx_per_s(self) -> float:
        return self.committed / self.seconds if self.committed else 0.0


async def submit_all(
    urls: list[str], chunks: list[list[dict[str, Any]]], sent_at: dict[str, float], concurrency: int
) -> int:
    """Posts every chunk through ``POST /v1/txs`` with ``concurrency`` requests in flight,
    retrying a chunk the pool refused (429); returns how many transactions were rejected."""
    rejected = 0
    queue: asyncio.Queue[tuple[int, list[dict[str, Any]]]] = asyncio.Queue()
    for i, chunk in enumerate(chunks):
        queue.put_nowait((i, chunk))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal rejected
        while not queue.empty():
            i, chunk = queue.get_nowait()
            url = urls[i % len(urls)]
            for attempt in range(50):
                start = time.perf_counter()
                async with session.post(f"{url}/v1/txs", json=chunk) as response:
                    body = await response.json()
                if response.status == 429:
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                if response.status != 202:
                    raise RuntimeError(f"POST /v1/txs answered {response.status}: {body}")
                for tx, item in zip(chunk, body, strict=True):
                    if "error" in item:
                        rejected += 1
                    else:
                        sent_at.setdefault(hash_object(tx["body"]), start)
                break
            else:
                raise RuntimeError("the testnet kept answering 429 (pool full); lower the load")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return rejected


async def flood(
    target: Target, count: int, chunk: int, concurrency: int, timeout_s: float
) -> FloodResult:
    """Submits ``count`` fresh transactions as fast as the testnet takes them and waits (at
    most ``timeout_s``) for their block events, sampling every node's memory meanwhile."""
    txs = make_transactions(target.client, target.chain_id, count, f"flood-{time.time_ns()}")
    tx_ids = [hash_object(tx["body"]) for tx in txs]
    chunks = [txs[i : i + chunk] for i in range(0, len(txs), chunk)]
    sent_at: dict[str, float] = {}
    committed_at: dict[str, float] = {}
    watcher = asyncio.create_task(
        watch_commits(target.urls[0], committed_at, await head_seq(target.urls[0]) + 1)
    )
    await asyncio.sleep(0.2)  # let the event stream attach before the first commit
    try:
        async with sampling_rss(target.pids) as rss:
            start = time.perf_counter()
            rejected = await submit_all(target.urls, chunks, sent_at, concurrency)
            # Rejected transactions never commit: wait only for the accepted ones; the report
            # says how many did not commit in time.
            await wait_committed(committed_at, sent_at.keys(), timeout_s)
    finally:
        watcher.cancel()
    committed = [t for t in tx_ids if t in committed_at]
    seconds = (max(committed_at[t] for t in committed) - start) if committed else float("nan")
    latencies = sorted(committed_at[t] - sent_at[t] for t in committed if t in sent_at)
    return FloodResult(len(txs), rejected, len(committed), seconds, latencies, rss)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    target = Target.load(Path(args.dir))
    t_sign, t_verify = measure_ed25519()
    cores = os.cpu_count() or 1
    limit = signature_limit(cores, t_sign, t_verify)
    print(f"bench: flooding with {args.txs} transactions", file=sys.stderr)
    result = await flood(target, args.txs, args.chunk, args.concurrency, args.timeout)
    print(f"bench: {args.idle_txs} transactions one at a time (idle)", file=sys.stderr)
    idle = await idle_latencies(target, args.idle_txs)
    return {
        # TLS unless the testnet was started with PHALANX_INSECURE_BENCH_PLAINTEXT_LINKS=1
        # (node.p2p.guard), which exists only to measure what TLS costs.
        "peer_links": "plaintext" if os.environ.get(PLAINTEXT_ENV) == "1" else "tls",
        "cores": cores,
        "ed25519_sign_per_s": round(1 / t_sign),
        "ed25519_verify_per_s": round(1 / t_verify),
        "signature_limit_tx_per_s": round(limit),
        "submitted": result.submitted,
        "rejected": result.rejected,
        "committed": result.committed,
        "seconds": round(result.seconds, 3),
        "committed_tx_per_s": round(result.tx_per_s, 1),
        "latency_p50_ms": quantile_ms(result.latencies, 0.5),
        "latency_p99_ms": quantile_ms(result.latencies, 0.99),
        "ratio_to_signature_limit": round(result.tx_per_s / limit, 4),
        "idle_latency_p50_ms": quantile_ms(idle, 0.5),
        "idle_latency_p99_ms": quantile_ms(idle, 0.99),
        **result.rss.report(),
    }


def print_text(result: dict[str, Any]) -> None:
    for key, value in result.items():
        if isinstance(value, dict):  # one line per node
            for name, item in value.items():
                print(f"{key + '.' + name:28} {item}")
        else:
            print(f"{key:28} {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the testnet directory (holds testnet.json)")
    parser.add_argument("--txs", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=250, help="transactions per POST /v1/txs")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for commits")
    parser.add_argument(
        "--idle-txs", type=int, default=100, help="one-at-a-time transactions for idle latency"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        print_text(result)
    return 0 if result["committed"] == result["submitted"] - result["rejected"] else 1


if __name__ == "__main__":
    sys.exit(main())
