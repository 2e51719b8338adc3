"""A stand-in for `phalanx node run` in the testnet tests: loads the node config the testnet
wrote and serves GET /v1/status with the right shape. Environment knobs:
FAKE_NODE_FAIL=<name>[,<name>...] makes those nodes exit with status 3 at once;
FAKE_NODE_IGNORE_TERM=1 makes nodes ignore SIGTERM (to test the SIGKILL after the grace period)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from crypto.hashing import hash_object
from crypto.keys import load_private_key
from node.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    config = load_config(parser.parse_args().config)
    if config.name in os.environ.get("FAKE_NODE_FAIL", "").split(","):
        print(f"{config.name}: failing on purpose", file=sys.stderr)
        return 3
    genesis = json.loads(config.genesis_file.read_text())
    validators = [v["pubkey"] for v in genesis["validators"]]
    n = len(validators)
    status = {
        "name": config.name,
        "pubkey": load_private_key(config.key_file).public_key,
        "chain_id": genesis["chain_id"],
        "view": 0,
        "primary": validators[0],
        "seq": 0,
        "head_hash": hash_object(genesis),
        "stable_checkpoint": 0,
        "n": n,
        "f": (n - 1) // 3,
    }

    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/v1/status", get_status)
    print(json.dumps({"event": "fake_node_started", "node": config.name}), flush=True)
    handle_signals = os.environ.get("FAKE_NODE_IGNORE_TERM") != "1"
    if not handle_signals:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    web.run_app(
        app,
        host=config.http_listen.host,
        port=config.http_listen.port,
        print=None,
        handle_signals=handle_signals,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
