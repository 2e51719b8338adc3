"""The ``phalanx`` command. Each subcommand lives in its own module in this package (``node/cli/``),
which exposes ``register(subparsers)``: it adds its parser and sets ``func`` to a callable that
takes the parsed arguments and returns the process exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules under node/cli/, each registering one top-level subcommand.
COMMAND_MODULES = ("keygen", "genesis", "node", "testnet", "tx", "audit")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from node.version import phalanx_version

    parser = argparse.ArgumentParser(
        prog="phalanx", description="Phalanx: a Byzantine fault-tolerant ledger node."
    )
    parser.add_argument("--version", action="version", version=f"phalanx {phalanx_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"node.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
