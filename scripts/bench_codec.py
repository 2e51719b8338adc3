"""Micro-benchmark of the per-transaction CPU work outside the signature: JCS, parsing, decoding.

Prints one JSON object on stdout: microseconds of CPU time (process time, so other load on the
machine matters less) per operation on a typical bench transaction (one ``set`` op, as
scripts/bench_load.py sends), for the fast encoder and for the pure-Python reference side by
side, and for Ed25519 verification (libsodium) as the yardstick. Run it as
``.venv/bin/python scripts/bench_codec.py`` from the project root; no testnet needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from crypto.canonical import (
    canonical_json,
    canonical_json_parsed,
    canonical_json_reference,
    parse_json,
)
from crypto.signing import TAG_TX, Ed25519Signer, signing_input, verify_bytes
from ledger.transaction import decode_for_execution, decode_transaction, parse_transaction


def _us(operation: Callable[[], Any], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in CPU microseconds per call."""
    runs = timeit.repeat(operation, number=number, repeat=repeat, timer=time.process_time)
    return round(min(runs) / number * 1e6, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (the best counts)")
    args = parser.parse_args()
    client = Ed25519Signer(b"\x01" * 32)
    body = {
        "chain_id": "phalanx-bench",
        "client": client.public_key,
        "nonce": 1234567,
        "ops": [{"op": "set", "key": "bench/run/123", "value": 123}],
    }
    signature = client.sign(TAG_TX, body)
    wire = {"body": body, "sig": signature}
    raw = json.dumps(wire).encode("utf-8")
    message = signing_input(TAG_TX, body)
    header = {"seq": 12345, "prev_hash": "ab" * 32, "digest": "cd" * 32}
    block = [wire] * 100
    n, r = args.number, args.repeat
    result = {
        "jcs_body_us": _us(lambda: canonical_json(body), n, r),
        "jcs_body_parsed_us": _us(lambda: canonical_json_parsed(body), n, r),
        "jcs_body_reference_us": _us(lambda: canonical_json_reference(body), n, r),
        "jcs_header_us": _us(lambda: canonical_json(header), n, r),
        "jcs_header_reference_us": _us(lambda: canonical_json_reference(header), n, r),
        "jcs_100_txs_us": _us(lambda: canonical_json(block), max(n // 100, 1), r),
        "jcs_100_txs_reference_us": _us(
            lambda: canonical_json_reference(block), max(n // 100, 1), r
        ),
        "parse_json_tx_us": _us(lambda: parse_json(raw), n, r),
        "decode_transaction_us": _us(lambda: decode_transaction(wire), n, r),
        "decode_for_execution_us": _us(lambda: decode_for_execution(wire, "00" * 32), n, r),
        "parse_transaction_us": _us(lambda: parse_transaction(raw), n, r),
        "verify_us": _us(
            lambda: verify_bytes(client.public_key, message, signature), max(n // 10, 1), r
        ),
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
