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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in SCENARIOS.items():
            print(f"{name}\t{spec.summary}")
        return 0
    reason = unavailable_reason() or ensure_nftables()
    if reason is not None:
        print(f"chaos: cannot run here: {reason}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="phalanx-chaos-"))
    print(f"chaos: files in {workdir}", file=sys.stderr)
    names = args.scenario or list(SCENARIOS)
    passed = 0
    for name in names:
        report = run(SCENARIOS[name], workdir / name, args.seed)
        print(report.line(), flush=True)
        for note in report.notes:
            print(f"  note: {note}", flush=True)
        passed += report.passed
    print(f"chaos: {passed}/{len(names)} scenarios passed")
    return 0 if passed == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
