"""``phalanx tx``: sign one transaction, submit it, wait for its commit, check its receipt.

    phalanx tx set KEY VALUE_JSON      --url URL --key FILE [--genesis FILE] [--nonce N]
    phalanx tx delete KEY              ...
    phalanx tx cas KEY EXPECT VALUE_JSON ...
    phalanx tx transfer TO AMOUNT      ...

``--quiet`` prints one summary line instead of the receipt. ``--sign-only`` prints the signed
transaction and submits nothing, for use with any HTTP client:

    phalanx tx set colour '"blue"' --key client.key --sign-only > tx.json
    curl -s --data-binary @tx.json 'http://127.0.0.1:7000/v1/tx?wait=commit'

It prints the receipt as JSON, then "receipt verified" when ``--genesis`` is given and the
receipt proves the commitment under it (without ``--genesis`` nothing else is fetched and the
receipt is printed unverified). Exit codes: 0 committed with an ok result; 1 an error (refused,
unreachable, not committed in time, receipt invalid); 2 usage; 3 committed but the result is a
failure (``cas_mismatch``, ``insufficient_funds``...), which is still recorded in the ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TX_FAILED = 3

URL_ENV = "PHALANX_URL"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tx",
        help="sign, submit and confirm a transaction",
        description="Sign a transaction with --key, submit it to --url, wait for its commit "
        "and print its receipt (verified against --genesis when given).",
    )
    ops = parser.add_subparsers(dest="op", metavar="OP", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=os.environ.get(URL_ENV), help=f"node API URL (default: ${URL_ENV})"
    )
    common.add_argument("--key", required=True, type=Path, help="client key file (64 hex seed)")
    common.add_argument("--genesis", type=Path, help="genesis file to verify the receipt with")
    common.add_argument("--nonce", type=int, help="nonce (default: random)")
    common.add_argument(
        "--timeout-ms", type=int, default=10_000, help="how long to wait for the commit"
    )
    common.add_argument(
        "--quiet", action="store_true", help="one summary line instead of the whole receipt"
    )
    common.add_argument(
        "--sign-only",
        action="store_true",
        help="print the signed transaction as JSON and exit (to submit it with curl)",
    )
    p = ops.add_parser("set", parents=[common], help="set KEY to a JSON value")
    p.add_argument("key_name", metavar="KEY")
    p.add_argument("value", metavar="VALUE_JSON")
    p = ops.add_parser("delete", parents=[common], help="delete KEY")
    p.add_argument("key_name", metavar="KEY")
    p = ops.add_parser("cas", parents=[common], help="set KEY if its version is EXPECT")
    p.add_argument("key_name", metavar="KEY")
    p.add_argument("expect", metavar="EXPECT", type=int)
    p.add_argument("value", metavar="VALUE_JSON")
    p = ops.add_parser("transfer", parents=[common], help="move AMOUNT to public key TO")
    p.add_argument("to", metavar="TO")
    p.add_argument("amount", metavar="AMOUNT", type=int)
    parser.set_defaults(func=run)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"phalanx tx: {message}", file=sys.stderr)
    return code


def _op(args: argparse.Namespace) -> dict[str, Any]:
    from crypto.canonical import CanonicalJsonError, parse_json
    from node.client import cas_op, delete_op, set_op, transfer_op

    if args.op == "transfer":
        return transfer_op(args.to, args.amount)
    if args.op == "delete":
        return delete_op(args.key_name)
    try:
        value = parse_json(args.value)
    except CanonicalJsonError as exc:
        raise ValueError(f"VALUE_JSON is not a valid Phalanx JSON value: {exc}") from exc
    if args.op == "set":
        return set_op(args.key_name, value)
    return cas_op(args.key_name, args.expect, value)


def run(args: argparse.Namespace) -> int:
    from crypto.keys import KeyFileError
    from ledger.genesis import GenesisError, load_genesis
    from node.client import Client, ClientError, load_key, make_tx

    if not args.url and not args.sign_only:
        return _fail(f"give the node's API URL with --url (or ${URL_ENV})", EXIT_USAGE)
    if not 0 <= args.timeout_ms <= 60_000:
        return _fail("--timeout-ms must be from 0 to 60000", EXIT_USAGE)
    try:
        signer = load_key(args.key)
        genesis = load_genesis(args.genesis) if args.genesis is not None else None
        tx = make_tx(signer, [_op(args)], args.nonce)
    except (KeyFileError, GenesisError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.sign_only:
        print(json.dumps(tx))
        return EXIT_OK
    client = Client(args.url)
    try:
        answer = client.submit(tx, wait=True, timeout_ms=args.timeout_ms)
        if answer.get("status") != "committed":
            return _fail(
                f"transaction {answer.get('tx_id')} is pending but was not committed within "
                f"{args.timeout_ms} ms; check later with GET /v1/tx/{answer.get('tx_id')}"
            )
        receipt = answer["receipt"]
        if not args.quiet:
            print(json.dumps(receipt, indent=2, sort_keys=True))
        if genesis is not None:
            client.verify_receipt(receipt, genesis, answer["tx_id"])
        if args.quiet:
            proof = "receipt verified" if genesis is not None else "receipt not verified"
            print(f"{args.op} {answer['tx_id'][:16]}... committed at seq {receipt['seq']}, {proof}")
        elif genesis is not None:
            print("receipt verified")
        else:
            print("receipt not verified (no --genesis given)", file=sys.stderr)
    except ClientError as exc:
        return _fail(str(exc))
    result = receipt.get("result") or {}
    if result.get("ok") is not True:
        return _fail(
            f"transaction committed at seq {receipt.get('seq')} but failed: "
            f"{result.get('error')}; it changed no state",
            EXIT_TX_FAILED,
        )
    return EXIT_OK
