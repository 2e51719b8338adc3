"""``phalanx testnet up|down|status|kill|start``: a local testnet of node processes.

See node/testnet.py for the directory layout, the ports (HTTP at base-port + i, peers at
base-port + 100 + i) and the ``PHALANX_TESTNET_NODE_CMD`` hook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from node import testnet

_EPILOG = (
    "Node i serves HTTP on 127.0.0.1:(base-port + i) and peers on 127.0.0.1:(base-port + 100 + i). "
    f"Set {testnet.NODE_CMD_ENV} to replace `python -m node.cli node run` (for tests)."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "testnet",
        help="run a local testnet",
        description=__doc__.splitlines()[0].replace("``", ""),
        epilog=_EPILOG,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help, epilog=_EPILOG)
        sub.add_argument(
            "--dir",
            type=Path,
            default=testnet.DEFAULT_DIR,
            help="testnet directory (default ./testnet)",
        )
        return sub

    up = add("up", "create keys and genesis if absent, start the nodes, wait until they answer")
    up.add_argument(
        "--nodes", type=int, default=None, help=f"validators (default {testnet.DEFAULT_NODES})"
    )
    up.add_argument(
        "--base-port", type=int, default=None, help=f"default {testnet.DEFAULT_BASE_PORT}"
    )
    up.add_argument(
        "--timeout", type=float, default=testnet.READY_TIMEOUT_S, help="seconds to wait"
    )
    up.add_argument(
        "--chain-id",
        default=None,
        help="chain_id of a new testnet (default: phalanx-testnet-<64 random bits>, so that no "
        "two testnets share one)",
    )
    up.set_defaults(func=run_up)
    down = add("down", "stop every node (SIGTERM, then SIGKILL after --grace seconds)")
    down.add_argument("--grace", type=float, default=testnet.STOP_GRACE_S)
    down.set_defaults(func=run_down)
    add("status", "show each node's /v1/status (exit 1 unless all are up)").set_defaults(
        func=run_status
    )
    kill = add("kill", "SIGKILL one node, as a crash would")
    kill.add_argument("name")
    kill.set_defaults(func=run_kill)
    start = add("start", "start one node again and wait until it answers")
    start.add_argument("name")
    start.add_argument("--timeout", type=float, default=testnet.READY_TIMEOUT_S)
    start.set_defaults(func=run_start)
    watch = add("watch", "a live table (tx/s, pool, time since the last commit) until Ctrl-C")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds (default 2)")
    watch.set_defaults(func=run_watch)


def _fail(exc: Exception) -> int:
    print(f"phalanx testnet: {exc}", file=sys.stderr)
    return 1


def run_up(args: argparse.Namespace) -> int:
    try:
        net = testnet.up(args.dir, args.nodes, args.base_port, args.timeout, args.chain_id)
    except testnet.TestnetError as exc:
        return _fail(exc)
    for node in net.nodes:
        print(f"{node.name} {node.url}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    try:
        outcome = testnet.down(args.dir, args.grace)
    except testnet.TestnetError as exc:
        return _fail(exc)
    for name, what in outcome:
        print(f"{name} {what}")
    return 0


def run_kill(args: argparse.Namespace) -> int:
    try:
        was_running = testnet.kill(args.dir, args.name)
    except testnet.TestnetError as exc:
        return _fail(exc)
    print(f"{args.name} {'killed' if was_running else 'was not running'}")
    return 0


def run_start(args: argparse.Namespace) -> int:
    try:
        node, started = testnet.start(args.dir, args.name, args.timeout)
    except testnet.TestnetError as exc:
        return _fail(exc)
    print(f"{node.name} {node.url}" + ("" if started else " (already running)"))
    return 0


def run_watch(args: argparse.Namespace) -> int:
    from node.testnet_watch import watch

    directory = args.dir.resolve()
    try:
        testnet.Testnet.load(directory)
        watch(lambda: testnet.Testnet.load(directory).nodes, args.interval)
    except testnet.TestnetError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return 0
    return 0


def run_status(args: argparse.Namespace) -> int:
    try:
        rows = testnet.status(args.dir)
    except testnet.TestnetError as exc:
        return _fail(exc)
    names = {node.pubkey: node.name for node, _, _ in rows}
    table = [("NAME", "URL", "PID", "STATE", "VIEW", "PRIMARY", "SEQ", "CHECKPOINT", "HEAD")]
    for node, state, answer in rows:
        info = answer or {}
        primary = info.get("primary")
        table.append(
            (
                node.name,
                node.url,
                str(node.pid) if node.pid is not None else "-",
                state,
                str(info.get("view", "-")),
                names.get(primary, str(primary)[:12]) if primary else "-",
                str(info.get("seq", "-")),
                str(info.get("stable_checkpoint", "-")),
                str(info.get("head_hash", "-"))[:16],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0 if all(state == "up" for _, state, _ in rows) else 1
