"""Runs the seed sweeps of tests/sim on up to two worker processes.

The simulator is single-threaded Python; two spawned processes halve the wall time on the two
cores the suite is budgeted for. Results come back per seed, and each test reports its own."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

from consensus.sim import SimResult, run_seed

WORKERS = max(1, min(2, os.cpu_count() or 1))


def run_seeds(seeds: Iterable[int], ed25519: bool = False) -> dict[int, SimResult]:
    seeds = list(seeds)
    if WORKERS == 1 or len(seeds) < 8:
        return {seed: run_seed(seed, ed25519) for seed in seeds}
    # spawn, not fork: pytest's process may hold threads, and warnings are errors here.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        results = pool.map(run_seed, seeds, [ed25519] * len(seeds), chunksize=8)
        return dict(zip(seeds, results, strict=True))


def failure_report(results: Iterable[SimResult], flags: str = "") -> str:
    """Every failing seed with what failed and the command that replays it alone."""
    lines: list[str] = []
    for result in results:
        if result.ok:
            continue
        lines.append(f"seed {result.seed}: {result.scenario}")
        lines.extend(f"  safety: {v}" for v in result.violations[:5])
        lines.extend(f"  liveness: {v}" for v in result.liveness_failures[:5])
        lines.append(f"  replay: scripts/sim --seed {result.seed}{flags}")
    return "\n".join(lines)
