"""``phalanx node run --config FILE``: run one validator node in the foreground.

``phalanx node init --name N --genesis G --key K --listen HOST:PORT --api HOST:PORT
--peer NAME=HOST:PORT ... [--data-dir D] [--out FILE]`` writes that config file: each
organisation of a consortium runs it on its own host with the shared genesis and its own key.

SIGTERM and SIGINT stop it cleanly (peer links closed, LMDB closed); a SIGKILL at any instant
leaves a ledger that restarts, because every step is persisted before its effects leave the
process.
"""

from __future__ import annotations

import argparse
import json
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
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=None,
        help="override log.level of the config (also PHALANX_LOG__LEVEL)",
    )
    run.set_defaults(func=_run)
    init = actions.add_parser(
        "init",
        help="write a node config from a genesis, a key and the peers' addresses",
        description="Write the config of one validator node (JSON, see node/config.py and "
        "docs/CONFIG.md). Every other validator of the genesis needs one --peer. Exit codes: 0 "
        "written; 1 the file cannot be written; 2 usage (the key is not the validator NAME of the "
        "genesis, a peer is missing or unknown, a bad address).",
    )
    init.add_argument("--name", required=True, help="this validator's name in the genesis")
    init.add_argument("--genesis", type=Path, required=True, help="the consortium's genesis file")
    init.add_argument("--key", type=Path, required=True, help="this validator's key file (keygen)")
    init.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="where to listen for the peers"
    )
    init.add_argument(
        "--api", required=True, metavar="HOST:PORT", help="where to serve the HTTP API"
    )
    init.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="another validator's peer address (repeat for each)",
    )
    init.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the ledger directory (default: data/ beside the config file)",
    )
    init.add_argument(
        "--out",
        type=Path,
        default=Path("node.json"),
        help="config file to write (default node.json)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing --out")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from crypto.keys import KeyFileError, load_private_key
    from ledger.genesis import GenesisError, load_genesis
    from node.config import ConfigError, parse_config

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"phalanx node init: {message}", file=sys.stderr)
        return code

    try:
        genesis = load_genesis(args.genesis)
        signer = load_private_key(args.key)
    except (GenesisError, KeyFileError) as exc:
        return fail(str(exc))
    by_name = {v.name: v.pubkey for v in genesis.validators}
    if by_name.get(args.name) != signer.public_key:
        owner = genesis.validator_name(signer.public_key)
        hint = f"it is the key of {owner!r}" if owner else "it is no validator's key"
        return fail(f"{args.key} is not the key of validator {args.name!r} in the genesis ({hint})")
    peers: dict[str, str] = {}
    for text in args.peer:
        name, sep, address = text.partition("=")
        if not sep or name not in by_name or name == args.name:
            return fail(
                f"--peer {text!r}: NAME must be another validator of the genesis "
                f"({', '.join(n for n in by_name if n != args.name)})"
            )
        peers[by_name[name]] = address
    missing = [n for n, key in by_name.items() if n != args.name and key not in peers]
    if missing:
        return fail(f"give a --peer NAME=HOST:PORT for {', '.join(missing)}")
    out = args.out.resolve()
    data = {
        "name": args.name,
        "key_file": str(args.key.resolve()),
        "genesis_file": str(args.genesis.resolve()),
        "data_dir": str(args.data_dir.resolve()) if args.data_dir else str(out.parent / "data"),
        "peer_listen": args.listen,
        "http_listen": args.api,
        "peers": peers,
    }
    try:
        parse_config(data, out.parent, environ={}, source="node init")
    except ConfigError as exc:
        return fail(str(exc))
    try:
        with open(out, "w" if args.force else "x", encoding="utf-8") as file:
            file.write(json.dumps(data, indent=2) + "\n")
    except FileExistsError:
        return fail(f"{out} already exists; give --force to overwrite it", EXIT_STARTUP_FAILED)
    except OSError as exc:
        return fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_STARTUP_FAILED)
    print(str(out))
    print(f"start it with: phalanx node run --config {out}", file=sys.stderr)
    return EXIT_OK


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
    level = args.log_level or config.log.level
    configure_logging(level, config.log.format, config.log.file, node=config.name)
    try:
        runtime = NodeRuntime(config)
    except StartupError as exc:
        print(f"phalanx node run: cannot start {config.name}: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    try:
        import uvloop  # here, like the imports above

        uvloop.run(runtime.run_until_signalled())
    except OSError as exc:
        # Almost always a listening address that is taken or not ours: one line, not a trace.
        print(
            f"phalanx node run: cannot start {config.name}: {exc.strerror or exc} while "
            f"listening on {config.http_listen} (HTTP) / {config.peer_listen} (peers); stop "
            "what uses the port or change http_listen / peer_listen in the config",
            file=sys.stderr,
        )
        return EXIT_STARTUP_FAILED
    return EXIT_OK
