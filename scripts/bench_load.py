"""Load generator for scripts/bench: drives a running testnet through its HTTP API.

It runs in its own process, separate from the nodes. It measures, in one run:
- the machine's raw Ed25519 sign and verify times (one core), which bound what any node can do;
- committed tx/s: transactions submitted through POST /v1/txs, counted as committed when their
  block event arrives on GET /v1/events;
- commit latency p50/p99 under that load: from the moment a transaction's submission request
  was sent to the moment its block event arrived (it includes queueing behind the whole flood);
- idle latency p50/p99: one transaction at a time, POST /v1/tx?wait=commit round trips on an
  otherwise idle testnet (what a single client sees).
and prints the ratio of committed tx/s to the signature limit cores / (t_sign + 4 * t_verify)
(a client signs once; each of 4 nodes verifies once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from crypto.hashing import hash_object
from crypto.signing import TAG_TX, Ed25519Signer, signing_input, verify_bytes
from node.p2p.guard import PLAINTEXT_ENV


def measure_ed25519(samples: int = 3000) -> tuple[float, float]:
    """Seconds per sign and per verify on one core, for a typical transaction-sized message."""
    signer = Ed25519Signer.generate()
    message = b"x" * 160
    start = time.perf_counter()
    for _ in range(samples):
        signature = signer.sign_bytes(message)
    t_sign = (time.perf_counter() - start) / samples
    start = time.perf_counter()
    for _ in range(samples):
        verify_bytes(signer.public_key, message, signature)
    t_verify = (time.perf_counter() - start) / samples
    return t_sign, t_verify


def make_transactions(
    signer: Ed25519Signer, chain_id: str, count: int, run_tag: str
) -> list[dict[str, Any]]:
    """``count`` v2 transactions for the chain ``chain_id``, each setting a key of its own."""
    txs = []
    for i in range(count):
        body = {
            "chain_id": chain_id,
            "client": signer.public_key,
            "nonce": i,
            "ops": [{"op": "set", "key": f"bench/{run_tag}/{i}", "value": i}],
        }
        txs.append({"body": body, "sig": signer.sign_bytes(signing_input(TAG_TX, body))})
    return txs


async def watch_commits(
    url: str, wanted: set[str], committed_at: dict[str, float], from_seq: int, done: asyncio.Event
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{url}/v1/events", params={"from_seq": str(from_seq)}) as response,
    ):
        event = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "block":
                now = time.perf_counter()
                for tx_id in json.loads(line[5:])["tx_ids"]:
                    if tx_id in wanted and tx_id not in committed_at:
                        committed_at[tx_id] = now
                if len(committed_at) >= len(wanted):
                    done.set()
                    return


async def submit_all(
    urls: list[str], chunks: list[list[dict[str, Any]]], sent_at: dict[str, float], concurrency: int
) -> int:
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


async def idle_latencies(
    urls: list[str], client: Ed25519Signer, chain_id: str, count: int
) -> list[float]:
    """Seconds per ``POST /v1/tx?wait=commit``, one transaction at a time, rotating nodes."""
    txs = make_transactions(client, chain_id, count, run_tag=f"idle-{time.time_ns()}")
    latencies = []
    async with aiohttp.ClientSession() as session:
        for i, tx in enumerate(txs):
            start = time.perf_counter()
            url = f"{urls[i % len(urls)]}/v1/tx"
            async with session.post(url, params={"wait": "commit"}, json=tx) as response:
                body = await response.json()
            if response.status != 200 or body.get("status") != "committed":
                raise RuntimeError(f"POST /v1/tx?wait=commit answered {response.status}: {body}")
            latencies.append(time.perf_counter() - start)
    return sorted(latencies)


def _ms(latencies: list[float], quantile: float) -> float | None:
    if not latencies:
        return None
    return round(latencies[int(quantile * (len(latencies) - 1))] * 1000, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    testnet = json.loads(Path(args.dir, "testnet.json").read_text())
    urls = [node["url"] for node in testnet["nodes"]]
    client = Ed25519Signer(bytes.fromhex(Path(args.dir, "client.key").read_text().strip()))
    chain_id = json.loads(Path(testnet["genesis"]).read_text())["chain_id"]

    t_sign, t_verify = measure_ed25519()
    txs = make_transactions(client, chain_id, args.txs, run_tag=str(int(time.time())))
    tx_ids = {hash_object(tx["body"]) for tx in txs}
    chunks = [txs[i : i + args.chunk] for i in range(0, len(txs), args.chunk)]

    async with aiohttp.ClientSession() as session, session.get(f"{urls[0]}/v1/status") as r:
        head = (await r.json())["seq"]
    sent_at: dict[str, float] = {}
    committed_at: dict[str, float] = {}
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_commits(urls[0], tx_ids, committed_at, head + 1, done))
    await asyncio.sleep(0.2)  # let the event stream attach before the first commit

    start = time.perf_counter()
    rejected = await submit_all(urls, chunks, sent_at, args.concurrency)
    with contextlib.suppress(TimeoutError):  # the report says how many did not commit
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
    watcher.cancel()
    committed = [tx_id for tx_id in tx_ids if tx_id in committed_at]
    elapsed = (max(committed_at.values()) - start) if committed_at else float("nan")
    latencies = sorted(committed_at[t] - sent_at[t] for t in committed if t in sent_at)
    cores = os.cpu_count() or 1
    limit = cores / (t_sign + 4 * t_verify)
    tps = len(committed) / elapsed if committed else 0.0
    idle = await idle_latencies(urls, client, chain_id, args.idle_txs)
    return {
        # TLS unless the testnet was started with PHALANX_INSECURE_BENCH_PLAINTEXT_LINKS=1
        # (node.p2p.guard), which exists only to measure what TLS costs.
        "peer_links": "plaintext" if os.environ.get(PLAINTEXT_ENV) == "1" else "tls",
        "cores": cores,
        "ed25519_sign_per_s": round(1 / t_sign),
        "ed25519_verify_per_s": round(1 / t_verify),
        "signature_limit_tx_per_s": round(limit),
        "submitted": len(txs),
        "rejected": rejected,
        "committed": len(committed),
        "seconds": round(elapsed, 3),
        "committed_tx_per_s": round(tps, 1),
        "latency_p50_ms": _ms(latencies, 0.5),
        "latency_p99_ms": _ms(latencies, 0.99),
        "ratio_to_signature_limit": round(tps / limit, 4),
        "idle_latency_p50_ms": _ms(idle, 0.5),
        "idle_latency_p99_ms": _ms(idle, 0.99),
    }


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
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result["committed"] == result["submitted"] - result["rejected"] else 1


if __name__ == "__main__":
    sys.exit(main())
