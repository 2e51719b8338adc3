"""Latency against throughput (scripts/bench --sweep): offered-load steps around the peak.

On a running testnet, in one run:
1. the one-core Ed25519 sign and verify times, hence the signature limit
   cores / (t_sign + 4 * t_verify);
2. idle latency: one ``POST /v1/tx?wait=commit`` at a time, each receipt carrying its execution
   certificate;
3. the peak: a flood of --peak-txs transactions (as scripts/bench does), committed tx/s;
4. for each step (default 5% ... 120% of that peak) an open-loop load: every --interval-ms a
   ``POST /v1/txs`` with the transactions due by then at the step's rate, sent whatever the
   answers to earlier requests (a slow node does not slow the offer down). For each step:
   committed tx/s, commit latency p50/p99 (from the moment a batch was due to the moment its
   block event arrived on ``GET /v1/events``: a generator that fell behind counts against
   the latency instead of hiding it), and the receipt latency p50/p99 of probe transactions
   sent with ``?wait=commit`` beside the load, one every --probe-interval-ms (what a client
   waiting for its receipt with execution certificate sees at that load; the probes are part
   of the step's offered rate, at most a quarter of it);
5. the peak resident memory of every node over the whole run.

It prints the figures as one JSON object on stdout (and writes them to --out), a table on
stderr, and draws --plot: latency (p50, p99) against committed tx/s with the signature limit
as a vertical line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_common import (
    Refused,
    StillPending,
    Target,
    head_seq,
    idle_latencies,
    make_transactions,
    measure_ed25519,
    quantile_ms,
    receipt_latency,
    sampling_rss,
    signature_limit,
    status,
    wait_committed,
    watch_commits,
)
from bench_load import flood
from yarl import URL

from crypto.hashing import hash_object
from node.p2p.guard import PLAINTEXT_ENV

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PERCENTS = (5, 10, 25, 50, 75, 90, 100, 110, 120)
DEFAULT_OUT = ROOT / "docs" / "bench-sweep.json"
DEFAULT_PLOT = ROOT / "docs" / "bench-sweep.png"


@dataclass(frozen=True)
class Step:
    """One offered load: ``percent`` of the measured peak, i.e. ``rate`` tx/s for ``seconds``."""

    percent: float
    rate: float
    seconds: float

    @property
    def count(self) -> int:
        return round(self.rate * self.seconds)


@dataclass(frozen=True)
class Batch:
    """Transactions ``start``..``end`` (exclusive) of a step, due ``offset_s`` after its start."""

    offset_s: float
    start: int
    end: int


@dataclass
class StepResult:
    percent: float
    offered_tx_per_s: float  # the load and the probes together
    submitted: int  # by the load (submitted, rejected, committed: the load's transactions)
    rejected: int
    rejected_by_error: dict[str, int]  # error code (429 answers: "429 <code>") -> transactions
    committed: int
    committed_tx_per_s: float  # the load's and the probes' commits
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    receipt_probes: int
    receipt_probes_pending: int  # no receipt within 60 s
    receipt_probes_failed: int  # connection lost or refused with 429 (said on stderr)
    receipt_p50_ms: float | None
    receipt_p99_ms: float | None
    view_changes: int  # views node0 moved through during the step (0 in a healthy run)


def plan_steps(peak_tx_per_s: float, percents: list[float], seconds: float) -> list[Step]:
    """The offered loads, in the order given, as rates relative to the measured peak."""
    if peak_tx_per_s <= 0:
        raise ValueError(f"the peak must be positive to plan steps from it, not {peak_tx_per_s}")
    if seconds <= 0 or any(p <= 0 for p in percents):
        raise ValueError("step durations and percentages must be positive")
    return [Step(p, peak_tx_per_s * p / 100, seconds) for p in percents]


def schedule(step: Step, interval_s: float) -> list[Batch]:
    """When each of the step's transactions is sent: every ``interval_s`` the ones due by then
    (transaction i is due at i / rate), so that the offer is steady at the step's rate and no
    batch is empty."""
    if interval_s <= 0:
        raise ValueError(f"the batch interval must be positive, not {interval_s}")
    batches: list[Batch] = []
    sent = 0
    tick = 0
    while sent < step.count:
        offset = tick * interval_s
        due = min(step.count, int(step.rate * offset) + 1)  # transactions with i / rate <= offset
        if due > sent:
            batches.append(Batch(offset, sent, due))
            sent = due
        tick += 1
    return batches


def step_throughput(committed_times: list[float], seconds: float) -> float:
    """The step's commit rate: commits per second between its 10th and 90th percentile commit.
    Below saturation that is the offered rate, above it what the testnet sustains; the time a
    commit lags its submission (up to seconds past saturation) and the filling and draining of
    the pipeline stay out of it. If those commits all landed at one instant (one block), the
    count over the step's ``seconds``."""
    times = sorted(committed_times)
    if len(times) < 2:
        return len(times) / seconds
    low, high = int(0.1 * (len(times) - 1)), int(0.9 * (len(times) - 1))
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else len(times) / seconds


PROBE_ADDRESS = "127.0.0.2"  # any 127/8 address reaches a node listening on 127.0.0.1
IN_FLIGHT_PER_NODE = 16  # the default limits.http_requests_in_flight_per_ip


def _probe_address(target: Target) -> str | None:
    """The probes' own source address where the nodes listen on loopback (else the system's
    choice: the probes then share the load's per-client limits)."""
    hosts = {URL(url).host for url in target.urls}
    return PROBE_ADDRESS if all(h and h.startswith("127.") for h in hosts) else None


def _connector(local_address: str | None = None) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(
        limit_per_host=IN_FLIGHT_PER_NODE,
        local_addr=(local_address, 0) if local_address else None,
    )


async def _post_batch(
    session: aiohttp.ClientSession,
    url: str,
    batch: list[dict[str, Any]],
    ids: list[str],
    accepted: list[str],
    rejections: Counter[str],
) -> None:
    """Posts one batch; appends the ids the node took to ``accepted`` and counts the others in
    ``rejections`` by error code (no retry: a retry would change the offered load)."""
    try:
        async with session.post(f"{url}/v1/txs", json=batch) as response:
            body = await response.json()
    except aiohttp.ClientConnectionError as e:
        _say(f"POST {url}/v1/txs: {type(e).__name__}: {e}")
        rejections[f"connection: {type(e).__name__}"] += len(batch)
        return
    if response.status == 429:
        rejections[f"429 {body.get('error')}"] += len(batch)
        return
    if response.status != 202:
        raise RuntimeError(f"POST /v1/txs answered {response.status}: {body}")
    for tx_id, item in zip(ids, body, strict=True):
        if "error" in item:
            rejections[str(item["error"])] += 1
        else:
            accepted.append(tx_id)


async def _probe(
    session: aiohttp.ClientSession,
    target: Target,
    txs: list[dict[str, Any]],
    interval_s: float,
) -> tuple[list[float], int, int]:
    """One ``wait=commit`` transaction every ``interval_s``, each sent on time whether or not
    the earlier ones were answered (so a slow step still gets its full count of samples).
    Returns the sorted latencies, how many probes were still pending when the node stopped
    waiting (60 s: only far past saturation) and how many failed (connection lost, or refused
    with 429); the failures are summed up on stderr."""
    latencies: list[float] = []
    pending = 0
    failures: Counter[str] = Counter()

    async def one(i: int, tx: dict[str, Any]) -> None:
        nonlocal pending
        url = target.urls[i % len(target.urls)]
        try:
            latencies.append(await receipt_latency(session, url, tx, timeout_ms=60_000))
        except StillPending:
            pending += 1
        except Refused as e:
            failures[str(e)] += 1
        except aiohttp.ClientConnectionError as e:
            failures[f"{type(e).__name__}: {e}"] += 1

    tasks = []
    start = time.perf_counter()
    for i, tx in enumerate(txs):
        await asyncio.sleep(max(0.0, start + i * interval_s - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, tx)))
    await asyncio.gather(*tasks)
    for failure, count in failures.items():
        _say(f"{count} probe(s) failed: {failure}")
    return sorted(latencies), pending, sum(failures.values())


async def run_step(
    target: Target,
    step: Step,
    committed_at: dict[str, float],
    interval_s: float,
    probe_interval_s: float,
    drain_s: float,
) -> StepResult:
    # The probes are part of the step's offered load (at most a quarter of it), so that the
    # step offers its rate in all and its committed tx/s counts everything it committed.
    probe_rate = min(1 / probe_interval_s, step.rate / 4)
    load = Step(step.percent, step.rate - probe_rate, step.seconds)
    tag = f"sweep-{time.time_ns()}"
    txs = make_transactions(target.client, target.chain_id, load.count, tag)
    ids = [hash_object(tx["body"]) for tx in txs]
    probes = make_transactions(
        target.client, target.chain_id, int(step.seconds * probe_rate), f"{tag}-probe"
    )
    probe_ids = [hash_object(tx["body"]) for tx in probes]
    batches = schedule(load, interval_s)
    accepted: list[str] = []
    due_at: dict[str, float] = {}
    rejections: Counter[str] = Counter()
    posts: list[asyncio.Task[None]] = []
    view_before = (await status(target.urls[0]))["view"]
    # A node serves at most 16 requests of one client address at once (node/api/limits.py):
    # the load keeps to that per node, and the probes come from a second loopback address, as
    # another client would. Requests waiting for a free connection wait on the clock: latency
    # runs from the moment a batch was due.
    async with (
        aiohttp.ClientSession(connector=_connector()) as session,
        aiohttp.ClientSession(connector=_connector(_probe_address(target))) as probe_session,
    ):
        start = time.perf_counter()
        prober = asyncio.create_task(_probe(probe_session, target, probes, 1 / probe_rate))
        for k, batch in enumerate(batches):
            due = start + batch.offset_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            for tx_id in ids[batch.start : batch.end]:
                due_at[tx_id] = due
            posts.append(
                asyncio.create_task(
                    _post_batch(
                        session,
                        target.urls[k % len(target.urls)],
                        txs[batch.start : batch.end],
                        ids[batch.start : batch.end],
                        accepted,
                        rejections,
                    )
                )
            )
        await asyncio.gather(*posts)
        receipts, receipts_pending, receipts_failed = await prober
    await wait_committed(committed_at, accepted, drain_s)
    view_changes = (await status(target.urls[0]))["view"] - view_before
    committed = [t for t in accepted if t in committed_at]
    latencies = sorted(committed_at[t] - due_at[t] for t in committed)
    all_committed = committed + [t for t in probe_ids if t in committed_at]
    tps = step_throughput([committed_at[t] for t in all_committed], step.seconds)
    return StepResult(
        percent=step.percent,
        offered_tx_per_s=round(step.rate, 1),
        submitted=len(txs),
        rejected=sum(rejections.values()),
        rejected_by_error=dict(rejections),
        committed=len(committed),
        committed_tx_per_s=round(tps, 1),
        latency_p50_ms=quantile_ms(latencies, 0.5),
        latency_p99_ms=quantile_ms(latencies, 0.99),
        receipt_probes=len(receipts),
        receipt_probes_pending=receipts_pending,
        receipt_probes_failed=receipts_failed,
        receipt_p50_ms=quantile_ms(receipts, 0.5),
        receipt_p99_ms=quantile_ms(receipts, 0.99),
        view_changes=view_changes,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    target = Target.load(Path(args.dir))
    cores = os.cpu_count() or 1
    t_sign, t_verify = measure_ed25519()
    limit = signature_limit(cores, t_sign, t_verify)
    async with sampling_rss(target.pids) as rss:
        _say(f"idle: {args.idle_txs} transactions one at a time")
        idle = await idle_latencies(target, args.idle_txs)
        if args.peak is None:
            _say(f"peak: flooding with {args.peak_txs} transactions")
            peak_run = await flood(target, args.peak_txs, 250, 8, timeout_s=300)
            peak = peak_run.tx_per_s
        else:
            peak_run, peak = None, args.peak
        _say(f"peak: {peak:.0f} tx/s")
        committed_at: dict[str, float] = {}
        from_seq = await head_seq(target.urls[0]) + 1
        watcher = asyncio.create_task(watch_commits(target.urls[0], committed_at, from_seq))
        await asyncio.sleep(0.2)  # let the event stream attach before the first commit
        steps = []
        try:
            for step in plan_steps(peak, args.percents, args.step_s):
                _say(f"step {step.percent:g}%: {step.rate:.0f} tx/s for {step.seconds:g} s")
                steps.append(
                    await run_step(
                        target,
                        step,
                        committed_at,
                        args.interval_ms / 1000,
                        args.probe_interval_ms / 1000,
                        args.drain_s,
                    )
                )
                await asyncio.sleep(args.pause_s)
        finally:
            watcher.cancel()
    return {
        "command": command_line(sys.argv[1:]),
        "peer_links": "plaintext" if os.environ.get(PLAINTEXT_ENV) == "1" else "tls",
        "cores": cores,
        "ed25519_sign_per_s": round(1 / t_sign),
        "ed25519_verify_per_s": round(1 / t_verify),
        "signature_limit_tx_per_s": round(limit),
        "idle": {
            "txs": len(idle),
            "receipt_p50_ms": quantile_ms(idle, 0.5),
            "receipt_p99_ms": quantile_ms(idle, 0.99),
        },
        "peak": {
            "txs": peak_run.submitted if peak_run else None,
            "committed": peak_run.committed if peak_run else None,
            "committed_tx_per_s": round(peak, 1),
            "ratio_to_signature_limit": round(peak / limit, 4),
            "latency_p50_ms": quantile_ms(peak_run.latencies, 0.5) if peak_run else None,
            "latency_p99_ms": quantile_ms(peak_run.latencies, 0.99) if peak_run else None,
        },
        "step_s": args.step_s,
        "interval_ms": args.interval_ms,
        "probe_interval_ms": args.probe_interval_ms,
        "steps": [asdict(s) for s in steps],
        **rss.report(),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency p50/p99 (log scale) against committed tx/s, one point per step labelled with
    its offered percentage; the signature limit as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into the file only
    import matplotlib.pyplot as plt

    steps = result["steps"]
    x = [s["committed_tx_per_s"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label, style in (
        ("latency_p50_ms", "commit p50 (all txs, batch due -> block event)", "o-"),
        ("latency_p99_ms", "commit p99", "s-"),
        ("receipt_p50_ms", "receipt p50 (wait=commit probe, with execution cert)", "o--"),
        ("receipt_p99_ms", "receipt p99", "s--"),
    ):
        points = [
            (xi, s[key])
            for xi, s in zip(x, steps, strict=True)
            if s[key] is not None and (key.startswith("latency") or _enough_probes(s))
        ]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=4)
    for xi, s in zip(x, steps, strict=True):
        if s["latency_p99_ms"] is not None:
            ax.annotate(
                f"{s['percent']:g}%",
                (xi, s["latency_p99_ms"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
            )
    limit = result["signature_limit_tx_per_s"]
    ax.axvline(limit, color="red", linestyle=":", label=f"signature limit {limit} tx/s")
    ax.axvline(limit / 2, color="grey", linestyle=":", label=f"half the limit {limit // 2} tx/s")
    peak = result["peak"]["committed_tx_per_s"]
    ax.axvline(peak, color="green", linestyle="--", label=f"peak (flood) {peak:.0f} tx/s")
    ax.set_yscale("log")
    ax.set_xlim(left=0, right=max([limit * 1.05, *x]))
    ax.set_xlabel("committed tx/s")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(
        f"4 nodes, {result['cores']} cores, peer links {result['peer_links']}: "
        f"peak {result['peak']['committed_tx_per_s']:.0f} tx/s"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


MIN_PROBES_TO_PLOT = 20  # a p99 of fewer samples is the maximum of a handful


def _enough_probes(step: dict[str, Any]) -> bool:
    """A step whose probes mostly failed or stayed pending: the table shows its figures, the
    plot leaves them out."""
    return int(step["receipt_probes"]) >= MIN_PROBES_TO_PLOT


def table(result: dict[str, Any]) -> str:
    """The figures for people (stderr), as Markdown: the README shows them beside the plot."""
    peak, idle = result["peak"], result["idle"]
    lines = [
        f"`{result['command']}`: {result['cores']} cores, peer links {result['peer_links']}, "
        f"signature limit {result['signature_limit_tx_per_s']} tx/s; peak (flood) "
        f"{peak['committed_tx_per_s']:.0f} tx/s = {peak['ratio_to_signature_limit']:.2f} of "
        f"the limit; idle receipt latency p50 {idle['receipt_p50_ms']} ms, "
        f"p99 {idle['receipt_p99_ms']} ms ({idle['txs']} one at a time).",
        "",
        "| offered | tx/s offered | tx/s committed | commit p50 ms | commit p99 ms "
        "| receipt p50 ms | receipt p99 ms | probes | rejected | view changes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["steps"]:
        lines.append(
            f"| {s['percent']:g}% | {s['offered_tx_per_s']:.0f} | {s['committed_tx_per_s']:.0f} "
            f"| {s['latency_p50_ms']} | {s['latency_p99_ms']} | {s['receipt_p50_ms']} "
            f"| {s['receipt_p99_ms']} | {s['receipt_probes']} | {s['rejected']} "
            f"| {s['view_changes']} |"
        )
    peaks = ", ".join(f"{n} {m}" for n, m in result["rss_peak_mib"].items())
    lines += ["", f"Peak RSS (MiB, limit {result['rss_limit_mib']}): {peaks}."]
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    """The scripts/bench command that repeats this run (the testnet directory is a fresh
    temporary one each time, so it is left out)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--dir":
            skip = True
        elif not arg.startswith("--dir="):
            kept.append(arg)
    return shlex.join(["scripts/bench", "--sweep", *kept])


_STARTED = time.perf_counter()


def _say(message: str) -> None:
    elapsed = time.perf_counter() - _STARTED
    print(f"bench --sweep [{elapsed:5.1f} s]: {message}", file=sys.stderr, flush=True)


def _percents(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--percents wants numbers like 5,10,50: {e}") from e
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("--percents wants positive numbers like 5,10,50")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the testnet directory (holds testnet.json)")
    parser.add_argument(
        "--percents",
        type=_percents,
        default=list(DEFAULT_PERCENTS),
        help="offered loads in %% of the peak (default %(default)s)",
    )
    parser.add_argument("--step-s", type=float, default=6.0, help="seconds per step")
    parser.add_argument("--peak-txs", type=int, default=20_000, help="transactions in the flood")
    parser.add_argument("--peak", type=float, help="take this peak tx/s instead of flooding")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="ms between POSTs")
    parser.add_argument(
        "--probe-interval-ms", type=float, default=50.0, help="ms between wait=commit probes"
    )
    parser.add_argument("--idle-txs", type=int, default=100, help="one-at-a-time idle txs")
    parser.add_argument(
        "--drain-s", type=float, default=30.0, help="seconds a step's txs may take to commit"
    )
    parser.add_argument("--pause-s", type=float, default=0.5, help="quiet between steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG file to write")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.plot)
    print(table(result), file=sys.stderr)
    _say(f"wrote {args.out} and {args.plot}")
    print(json.dumps(result))
    uncommitted = sum(s["submitted"] - s["rejected"] - s["committed"] for s in result["steps"])
    if uncommitted:
        _say(f"{uncommitted} accepted transactions did not commit within --drain-s")
    return 1 if uncommitted else 0


if __name__ == "__main__":
    sys.exit(main())
