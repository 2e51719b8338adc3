"""A seed names a whole run: replaying it gives the same run, in any process, whatever the
interpreter's hash seed (set iteration order must not leak into the simulation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from consensus.sim import run_seed

ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_run() -> None:
    assert run_seed(17).fingerprint == run_seed(17).fingerprint


def test_replay_does_not_depend_on_the_hash_seed() -> None:
    lines = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-m", "consensus.sim", "--seed", "12"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
            check=True,
        )
        lines.add(next(line for line in run.stdout.splitlines() if "fingerprint=" in line))
    assert len(lines) == 1, lines


def test_the_command_ends_with_one_summary_line() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "sim"), "--seeds", "3", "--start", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines() == ["sim: 3 seeds, 0 safety violations, 0 liveness failures"]
