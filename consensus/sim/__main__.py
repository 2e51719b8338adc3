"""``python -m consensus.sim [--seeds N] [--start K] [--seed S] [--ed25519] [--twins-fork]``
``[--seed-list S,S,...] [-v] [-x]``.

Runs seeds start .. start + N - 1 (or the single seed S), prints each failing seed with the
command that replays it alone, and ends with exactly one summary line:
``sim: N seeds, V safety violations, L liveness failures``. Exit status 1 on any failure.

``--twins-fork`` runs the negative control instead (f + 1 faulty keys: two twins in n = 4),
where safety violations are expected: it shows that the checkers can fail.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consensus.sim.scenario import negative_control_scenario, scenario_for_seed
from consensus.sim.simulator import SimResult, Simulation

REPLAY = "scripts/sim --seed {seed}{flags}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed only (a replay)")
    parser.add_argument(
        "--seed-list", help="run these seeds (comma-separated), e.g. scripts/mutants' choice"
    )
    parser.add_argument("--ed25519", action="store_true", help="real Ed25519 signatures")
    parser.add_argument(
        "--twins-fork", action="store_true", help="the negative control: f + 1 faulty keys"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per seed")
    parser.add_argument(
        "-x", "--first-failure", action="store_true", help="stop at the first failing seed"
    )
    args = parser.parse_args(argv)
    seeds: Sequence[int] = range(args.start, args.start + args.seeds)
    if args.seed is not None:
        seeds = [args.seed]
    elif args.seed_list:
        seeds = [int(s) for s in args.seed_list.split(",")]
    flags = (" --ed25519" if args.ed25519 else "") + (" --twins-fork" if args.twins_fork else "")
    violations = liveness = 0
    for seed in seeds:
        scenario = (
            negative_control_scenario(seed)
            if args.twins_fork
            else scenario_for_seed(seed, args.ed25519)
        )
        result = Simulation(scenario).run()
        violations += bool(result.violations)
        liveness += bool(result.liveness_failures)
        if not result.ok or args.verbose or args.seed is not None:
            _report(result, REPLAY.format(seed=seed, flags=flags))
        if not result.ok and args.first_failure:
            seeds = seeds[: list(seeds).index(seed) + 1]  # the summary counts those that ran
            break
    print(f"sim: {len(seeds)} seeds, {violations} safety violations, {liveness} liveness failures")
    return 1 if violations or liveness else 0


def _report(result: SimResult, replay: str) -> None:
    verdict = "ok" if result.ok else "FAILED"
    print(f"seed {result.seed} {verdict}: {result.scenario}")
    print(
        f"  ticks={result.ticks} blocks={result.blocks} views={list(result.views)} "
        f"packets={result.packets} repeats={result.repeats} "
        f"recovery={result.recovery_ticks}/{result.recovery_bound} "
        f"vc_restarts={result.view_change_restarts} "
        f"lone_certs={result.lone_certificates} split_new_views={result.split_new_views} "
        f"lost_link_lies={result.lost_link_lies} "
        f"fingerprint={result.fingerprint[:16]}"
    )
    for line in result.violations:
        print(f"  safety: {line}")
    for line in result.liveness_failures:
        print(f"  liveness: {line}")
    if not result.ok:
        print(f"  replay: {replay}")


if __name__ == "__main__":
    sys.exit(main())
