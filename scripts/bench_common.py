"""What scripts/bench_load.py (the flood) and scripts/bench_sweep.py (the sweep) share.

- the testnet they drive (:class:`Target`, read from the testnet directory's testnet.json);
- the machine's one-core Ed25519 sign and verify times and the signature limit they give;
- signed transactions, the commit watcher on ``GET /v1/events`` and the one-at-a-time
  ``POST /v1/tx?wait=commit`` latency probe;
- quantiles in milliseconds;
- :class:`RssSampler`: the resident memory of every node process (with any children it
  forked), read from /proc while the load runs, keeping each node's peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from crypto.signing import TAG_TX, Ed25519Signer, signing_input, verify_bytes

RSS_LIMIT_MIB = 512  # issue 13: every node under this during a 50,000-transaction flood


@dataclass(frozen=True)
class Target:
    """The running testnet a benchmark drives."""

    urls: list[str]
    pids: dict[str, int]  # node name -> pid of its process (nodes that are running)
    client: Ed25519Signer  # the demo client funded in the genesis
    chain_id: str

    @classmethod
    def load(cls, testnet_dir: Path) -> Target:
        testnet = json.loads((testnet_dir / "testnet.json").read_text())
        seed = bytes.fromhex((testnet_dir / "client.key").read_text().strip())
        return cls(
            urls=[node["url"] for node in testnet["nodes"]],
            pids={node["name"]: node["pid"] for node in testnet["nodes"] if node["pid"]},
            client=Ed25519Signer(seed),
            chain_id=json.loads(Path(testnet["genesis"]).read_text())["chain_id"],
        )


def measure_ed25519(samples: int = 3000, rounds: int = 5) -> tuple[float, float]:
    """Seconds per sign and per verify on one core, for a typical transaction-sized message:
    the fastest of ``rounds`` rounds, since the limit is what the machine can do and other
    work on it only ever makes a round slower."""
    signer = Ed25519Signer.generate()
    message = b"x" * 160
    signature = signer.sign_bytes(message)
    per_round = max(1, samples // rounds)
    t_sign = t_verify = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            signer.sign_bytes(message)
        t_sign = min(t_sign, (time.perf_counter() - start) / per_round)
        start = time.perf_counter()
        for _ in range(per_round):
            verify_bytes(signer.public_key, message, signature)
        t_verify = min(t_verify, (time.perf_counter() - start) / per_round)
    return t_sign, t_verify


def signature_limit(cores: int, t_sign: float, t_verify: float) -> float:
    """Transactions per second the machine could sign and verify if it did nothing else: a
    client signs each transaction once and each of the 4 nodes verifies it once."""
    return cores / (t_sign + 4 * t_verify)


def make_transactions(
    signer: Ed25519Signer, chain_id: str, count: int, run_tag: str
) -> list[dict[str, Any]]:
    """``count`` v2 transactions for the chain ``chain_id``, each setting a key of its own (the
    tag keeps the bodies, hence the tx ids, of different runs and steps apart)."""
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


async def status(url: str) -> dict[str, Any]:
    """The node's ``GET /v1/status`` answer."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/status") as response:
        answer: dict[str, Any] = await response.json()
        return answer


async def head_seq(url: str) -> int:
    return int((await status(url))["seq"])


async def block_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, list[str]]]:
    """``(perf_counter at arrival, tx_ids)`` of each ``block`` event of a ``/v1/events``
    stream."""
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "block":
            yield time.perf_counter(), json.loads(line[5:])["tx_ids"]


async def watch_commits(url: str, committed_at: dict[str, float], from_seq: int) -> None:
    """Records, for every transaction in a ``block`` event from ``from_seq`` on, the
    perf_counter time its block event arrived. Runs until cancelled."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{url}/v1/events", params={"from_seq": str(from_seq)}) as response,
    ):
        async for now, tx_ids in block_events(response):
            for tx_id in tx_ids:
                committed_at.setdefault(tx_id, now)


async def wait_committed(
    committed_at: dict[str, float], tx_ids: Iterable[str], timeout_s: float
) -> bool:
    """True once every one of ``tx_ids`` is in ``committed_at``; False after ``timeout_s``."""
    missing = set(tx_ids)
    deadline = time.perf_counter() + timeout_s
    while True:
        missing = {tx_id for tx_id in missing if tx_id not in committed_at}
        if not missing:
            return True
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.02)


class StillPending(Exception):
    """``POST /v1/tx?wait=commit`` answered 202: not committed within its ``timeout_ms``."""


class Refused(Exception):
    """The node answered 429 (overloaded): it did not take the transaction."""


async def receipt_latency(
    session: aiohttp.ClientSession, url: str, tx: dict[str, Any], timeout_ms: int = 10_000
) -> float:
    """Seconds for one ``POST /v1/tx?wait=commit``: the spec (§8) answers 200 only once the
    transaction is committed and its execution certificate is complete; the receipt must carry
    that certificate, or the figure would not be what a client waiting for proof sees."""
    params = {"wait": "commit", "timeout_ms": str(timeout_ms)}
    start = time.perf_counter()
    async with session.post(f"{url}/v1/tx", params=params, json=tx) as response:
        body = await response.json()
    elapsed = time.perf_counter() - start
    if response.status == 202 and body.get("status") == "pending":
        raise StillPending(f"{body['tx_id']} not committed within {timeout_ms} ms")
    if response.status == 429:
        raise Refused(f"429 {body.get('error')}: {body.get('detail')}")
    if response.status != 200 or body.get("status") != "committed":
        raise RuntimeError(f"POST /v1/tx?wait=commit answered {response.status}: {body}")
    if not body.get("receipt", {}).get("execution"):
        raise RuntimeError(f"the receipt of {body['tx_id']} has no execution certificate: {body}")
    return elapsed


async def idle_latencies(target: Target, count: int) -> list[float]:
    """Seconds per ``POST /v1/tx?wait=commit``, one transaction at a time, rotating nodes."""
    txs = make_transactions(target.client, target.chain_id, count, f"idle-{time.time_ns()}")
    async with aiohttp.ClientSession() as session:
        return sorted(
            [
                await receipt_latency(session, target.urls[i % len(target.urls)], tx)
                for i, tx in enumerate(txs)
            ]
        )


def quantile_ms(sorted_seconds: list[float], quantile: float) -> float | None:
    """The ``quantile`` (nearest rank below) of already sorted seconds, in ms; None if empty."""
    if not sorted_seconds:
        return None
    return round(sorted_seconds[int(quantile * (len(sorted_seconds) - 1))] * 1000, 1)


def process_tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` plus every process it forked (a node may verify in worker
    processes), from /proc; None if ``pid`` is gone. Pages shared after a fork are counted in
    each process, so the figure errs high, never low."""
    total = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        rss = _vm_rss_bytes(current)
        if rss is None:
            if current == pid:
                return None
            continue
        total += rss
        pending.extend(_children(current))
    return total


def _vm_rss_bytes(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", f"unexpected VmRSS unit {unit!r} in /proc/{pid}/status"
            return int(value) * 1024
    return None  # a zombie has no VmRSS line


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                children.extend(int(c) for c in (task / "children").read_text().split())
    return children


@dataclass
class RssSampler:
    """Samples every node's resident memory every ``interval_s`` while it runs."""

    pids: dict[str, int]
    interval_s: float = 0.25
    peak_bytes: dict[str, int] = field(default_factory=dict)  # the node with its children
    peak_main_bytes: dict[str, int] = field(default_factory=dict)  # the node process alone
    samples: int = 0

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = process_tree_rss_bytes(pid)
            main = _vm_rss_bytes(pid)
            if rss is not None and main is not None:
                self.peak_bytes[name] = max(rss, self.peak_bytes.get(name, 0))
                self.peak_main_bytes[name] = max(main, self.peak_main_bytes.get(name, 0))
        self.samples += 1

    async def run(self) -> None:
        """Samples until cancelled (reading /proc takes microseconds: it does not disturb the
        nodes it measures)."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def report(self) -> dict[str, Any]:
        """The figures for a benchmark's JSON: each node's peak in MiB (with the processes it
        forked, and its own process alone) and the limit."""
        peaks = _mib(self.peak_bytes)
        return {
            "rss_peak_mib": peaks,
            "rss_peak_main_process_mib": _mib(self.peak_main_bytes),
            "rss_max_mib": max(peaks.values()) if peaks else None,
            "rss_limit_mib": RSS_LIMIT_MIB,
            "rss_samples": self.samples,
        }


def _mib(by_name: dict[str, int]) -> dict[str, float]:
    return {name: round(b / 2**20, 1) for name, b in sorted(by_name.items())}


@contextlib.asynccontextmanager
async def sampling_rss(pids: dict[str, int]) -> AsyncIterator[RssSampler]:
    """``async with sampling_rss(pids) as sampler:`` samples during the block and once more at
    its end."""
    sampler = RssSampler(pids)
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sampler.sample()
