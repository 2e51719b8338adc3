"""Run a Python module with its wall clock shifted: the clock-skew hook of the chaos tests.

    python -m tests.adversary.clock --offset-ms MS -m node.cli node run --config node.toml

shifts ``time.time`` and ``time.time_ns`` (what the node reads for batch times, via
``node.runtime._now_ms``) by ``MS`` milliseconds (negative: behind) for that process only, then
runs the module as ``python -m`` would. ``time.monotonic`` is left alone: it measures intervals
(timeouts, rates) and no real machine's skew changes how long a second lasts. Without
``--offset-ms`` the offset is read from ``PHALANX_TEST_CLOCK_OFFSET_MS``.

Only this dev-only wrapper reads that variable: the node, its configuration and ``phalanx node
run`` know nothing of it, so a production node cannot be skewed by its environment.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from collections.abc import Callable

ENV_OFFSET = "PHALANX_TEST_CLOCK_OFFSET_MS"


def install_offset(offset_ms: int) -> Callable[[], None]:
    """Shift this process's wall clock by ``offset_ms``; returns a function that undoes it."""
    real_time, real_time_ns = time.time, time.time_ns
    offset_ns = offset_ms * 1_000_000

    def shifted_time_ns() -> int:
        return real_time_ns() + offset_ns

    def shifted_time() -> float:
        return real_time() + offset_ms / 1000

    time.time_ns = shifted_time_ns
    time.time = shifted_time

    def undo() -> None:
        time.time, time.time_ns = real_time, real_time_ns

    return undo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.adversary.clock", description=__doc__)
    parser.add_argument("--offset-ms", type=int, default=None)
    parser.add_argument("-m", dest="module", required=True, help="the module to run")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    offset = args.offset_ms
    if offset is None:
        raw = os.environ.get(ENV_OFFSET, "0")
        try:
            offset = int(raw)
        except ValueError:
            parser.error(f"{ENV_OFFSET} must be an integer number of milliseconds, not {raw!r}")
    install_offset(offset)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
