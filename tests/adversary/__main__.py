"""``scripts/chaos``: run named chaos scenarios on real nodes in network namespaces.

    scripts/chaos --list
    scripts/chaos [--scenario NAME ...] [--seed S] [--workdir DIR]

Prints one line per scenario (its counts, verdicts and recovery times) and a final
``chaos: P/T scenarios passed``; exits 0 only if all passed, 2 if namespaces cannot be made
here (with the reason). Each run's files (configs, logs, ledgers, ``history.jsonl``) stay in
``--workdir`` (default: a new temporary directory, printed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.adversary.netns import ensure_nftables, unavailable_reason
from tests.adversary.scenario import SCENARIOS, run
from tests.adversary.twins import run_twins

# Twins (tests.adversary.twins): one key twinned must never fork; two keys twinned (f + 1
# faulty) is the negative control, which passes when the fork check reports the fork.
TWINS = {
    "twins": ((3,), "node3 runs twice, one process each side of changing partitions: no fork"),
    "twins-fork-control": ((2, 3), "negative control: two keys twinned, the fork is reported"),
}


def _run_twins(name: str, workdir: Path, seed: int) -> bool:
    twinned, _ = TWINS[name]
    report = run_twins(workdir, twinned=twinned, seed=seed)
    if len(twinned) == 1:
        passed = report.fork is None and report.linearizable == "linearizable"
    else:
        passed = report.fork is not None
    print(f"{name} seed={seed}: {'PASS' if passed else 'FAIL'} {report.line()}", flush=True)
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--scenario", action="append", choices=sorted([*SCENARIOS, *TWINS]), default=None
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in SCENARIOS.items():
            print(f"{name}\t{spec.summary}")
        for name, (_, summary) in TWINS.items():
            print(f"{name}\t{summary}")
        return 0
    reason = unavailable_reason() or ensure_nftables()
    if reason is not None:
        print(f"chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phalanx-chaos-"))
    print(f"chaos: files in {workdir}", file=sys.stderr)
    names = args.scenario or [*SCENARIOS, *TWINS]
    passed = 0
    for name in names:
        if name in TWINS:
            passed += _run_twins(name, workdir / name, args.seed)
            continue
        report = run(SCENARIOS[name], workdir / name, args.seed)
        print(report.line(), flush=True)
        for note in report.notes:
            print(f"  note: {note}", flush=True)
        passed += report.passed
    print(f"chaos: {passed}/{len(names)} scenarios passed")
    return 0 if passed == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
