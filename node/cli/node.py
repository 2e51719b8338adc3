"""``phalanx node run --config FILE``: run one validator node in the foreground.

SIGTERM and SIGINT stop it cleanly (peer links closed, LMDB closed); a SIGKILL at any instant
leaves a ledger that restarts, because every step is persisted before its effects leave the
process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("node", help="run a validator node")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run one node in the foreground until SIGTERM")
    run.add_argument("--config", type=Path, required=True, help="the node's config file")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `phalanx --help` and the other commands stay fast.
    from node.config import ConfigError, load_config
    from node.logging_setup import configure_logging
    from node.runtime import NodeRuntime, StartupError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"phalanx node run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log.level, config.log.format, config.log.file, node=config.name)
    try:
        runtime = NodeRuntime(config)
    except StartupError as exc:
        print(f"phalanx node run: cannot start {config.name}: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    asyncio.run(runtime.run_until_signalled())
    return EXIT_OK
