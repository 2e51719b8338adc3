"""The clock-skew hook: a process started through ``tests.adversary.clock`` sees its wall clock
shifted (what the node stamps batches with), and nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _shift_seen(args: list[str], env: dict[str, str] | None = None) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.adversary.clock", *args, "-m", "tests.chaos.print_clock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    node_ms, real_ms = map(int, done.stdout.split())
    return node_ms - real_ms


def test_offset_from_the_command_line() -> None:
    assert abs(_shift_seen(["--offset-ms", "-90000"]) + 90_000) < 1_000


def test_offset_from_the_environment_only_through_the_wrapper() -> None:
    env = {"PHALANX_TEST_CLOCK_OFFSET_MS": "120000"}
    assert abs(_shift_seen([], env) - 120_000) < 1_000
    # The node itself ignores the variable: started directly, its clock is the real one.
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.print_clock"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    node_ms, real_ms = map(int, done.stdout.split())
    assert abs(node_ms - real_ms) < 1_000


def test_production_code_knows_neither_the_variable_nor_the_chaos_tools() -> None:
    for package in ("node", "consensus", "ledger", "crypto"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            assert "PHALANX_TEST_CLOCK_OFFSET_MS" not in text, path
            # The adversary tools live in tests/adversary (dev-only): nothing the node runs may
            # reach them, nor anything else under tests/.
            for forbidden in ("tests.adversary", "import tests", "from tests", "import chaos"):
                assert forbidden not in text, (path, forbidden)
