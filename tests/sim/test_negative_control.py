"""The negative control: with f + 1 faulty keys the checkers must find a fork, or they prove
nothing. Validators 0 and 1 of n = 4 are both twinned and partitioned so that each side holds
q = 3 distinct keys (consensus.sim.scenario.negative_control_scenario)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from consensus.sim import Simulation, negative_control_scenario

ROOT = Path(__file__).resolve().parents[2]
SEEDS = range(10)


def test_two_twins_fork_and_the_checker_reports_it() -> None:
    forks = []
    for seed in SEEDS:
        result = Simulation(negative_control_scenario(seed)).run()
        if any("AGREEMENT violated" in v for v in result.violations):
            forks.append(seed)
        assert not result.liveness_failures, "liveness is not judged with f + 1 faulty"
    assert forks, f"no fork in seeds {list(SEEDS)}: the agreement checker cannot fail"


def test_the_command_reports_the_fork_with_a_replay_line() -> None:
    run = subprocess.run(
        [str(ROOT / "scripts" / "sim"), "--twins-fork", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "  replay: scripts/sim --seed 3 --twins-fork" in lines
    assert lines[-1] == "sim: 1 seeds, 1 safety violations, 0 liveness failures"
