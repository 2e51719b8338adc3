"""``phalanx tx``: sign one transaction, submit it, wait for its commit, check its receipt.

    phalanx tx set KEY VALUE_JSON      --url URL --key FILE [--genesis FILE] [--nonce N]
    phalanx tx delete KEY              ...
    phalanx tx cas KEY EXPECT VALUE_JSON ...
    phalanx tx chown KEY TO            ...
    phalanx tx transfer TO AMOUNT      ...

Transactions are signed for one chain (``phalanx/tx/v2``): its chain_id comes from
``--chain-id``, else from ``--genesis``, else from the node at ``--url`` (``GET /v1/status``).
``TO`` is a client's public key (64 hex) or the path of its key file, so funding a new client
is ``phalanx keygen --out alice.key`` then ``phalanx tx transfer alice.key 1000000 --key
testnet/client.key --url URL``. Every transaction pays the genesis's ``fee_per_byte`` for each
byte of its canonical body; a client with too little is refused (``insufficient_fee``).

``--quiet`` prints one summary line instead of the receipt. ``--sign-only`` prints the signed
transaction and submits nothing, for use with any HTTP client:

    phalanx tx set colour '"blue"' --key client.key --genesis genesis.json --sign-only > tx.json
    curl -s --data-binary @tx.json 'http://127.0.0.1:7000/v1/tx?wait=commit'

It prints the receipt as JSON on stdout (so ``> receipt.json`` keeps a receipt that
``phalanx audit verify-receipt`` checks later) and "receipt verified" on stderr when
``--genesis`` is given and the receipt proves the commitment under it (without ``--genesis``
nothing else is fetched and the receipt is printed unverified). Exit codes: 0 committed with
an ok result; 1 an error (refused, unreachable, not committed in time, receipt invalid); 2
usage; 3 committed but the result is a failure (``cas_mismatch``, ``forbidden``,
``insufficient_funds``...), which is still recorded in the ledger (and still paid its fee).
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
_EXIT_CODES = (
    "exit codes: 0 committed with an ok result; 1 refused, unreachable, not committed in time "
    "or receipt invalid; 2 usage; 3 committed but its result is a failure (cas_mismatch, "
    "insufficient_funds...), still recorded in the ledger. The receipt JSON goes to stdout, "
    "messages to stderr."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tx",
        help="sign, submit and confirm a transaction",
        description="Sign a transaction with --key, submit it to --url, wait for its commit "
        "and print its receipt (verified against --genesis when given).",
        epilog=_EXIT_CODES,
    )
    ops = parser.add_subparsers(dest="op", metavar="OP", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get(URL_ENV),
        help=f"node API URL like http://127.0.0.1:7000 (default: ${URL_ENV})",
    )
    common.add_argument("--key", required=True, type=Path, help="client key file (64 hex seed)")
    common.add_argument(
        "--cacert",
        type=Path,
        help="PEM certificate to trust for an https:// node URL (e.g. the node's own)",
    )
    common.add_argument(
        "--genesis",
        type=Path,
        help="genesis file: the chain to sign for, and to verify the receipt with",
    )
    common.add_argument(
        "--chain-id", help="the chain to sign for (default: the genesis's, else the node's)"
    )
    common.add_argument("--nonce", type=int, help="nonce (default: random)")
    common.add_argument(
        "--timeout-ms",
        type=int,
        default=10_000,
        help="how long to wait for the commit, 0 to 60000 (default 10000)",
    )
    common.add_argument(
        "--quiet", action="store_true", help="one summary line instead of the whole receipt"
    )
    common.add_argument(
        "--sign-only",
        action="store_true",
        help="print the signed transaction as JSON and exit (to submit it with curl)",
    )
    p = ops.add_parser("set", parents=[common], help="set KEY to a JSON value", epilog=_EXIT_CODES)
    p.add_argument("key_name", metavar="KEY")
    p.add_argument("value", metavar="VALUE_JSON")
    p = ops.add_parser("delete", parents=[common], help="delete KEY")
    p.add_argument("key_name", metavar="KEY")
    p = ops.add_parser("cas", parents=[common], help="set KEY if its version is EXPECT")
    p.add_argument("key_name", metavar="KEY")
    p.add_argument("expect", metavar="EXPECT", type=int)
    p.add_argument("value", metavar="VALUE_JSON")
    p = ops.add_parser("chown", parents=[common], help="hand KEY over to the client TO")
    p.add_argument("key_name", metavar="KEY")
    p.add_argument("to", metavar="TO", help="the new owner: a public key (hex) or a key file")
    p = ops.add_parser("transfer", parents=[common], help="move AMOUNT to the client TO")
    p.add_argument("to", metavar="TO", help="a public key (hex) or a client key file")
    p.add_argument("amount", metavar="AMOUNT", type=int)
    parser.set_defaults(func=run)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"phalanx tx: {message}", file=sys.stderr)
    return code


def _not_a_key_file(path: Path) -> str | None:
    """A hint when ``--key`` names a JSON document (a genesis, a config) instead of a key."""
    try:
        head = path.read_bytes()[:4096].lstrip()
    except OSError:
        return None  # load_key says what is wrong with the path
    if not head.startswith(b"{"):
        return None
    what = "a genesis file" if b'"validators"' in head else "a JSON document"
    return (
        f"--key {path} is {what}, not a key; give the client's key file (64 hex characters, "
        "as written by `phalanx keygen`, e.g. testnet/client.key)"
    )


def _recipient(to: str) -> str:
    """A public key given as hex, or read from a client key file."""
    from crypto.hexcodec import KEY_HEX_LEN, is_hex
    from crypto.keys import KeyFileError, load_private_key
    from crypto.signing import is_valid_public_key

    if is_hex(to, KEY_HEX_LEN):
        if not is_valid_public_key(to):
            raise ValueError(f"TO {to} is not a valid Ed25519 public key")
        return to
    path = Path(to)
    if not path.exists():
        raise ValueError(
            f"TO must be a public key (64 lowercase hex) or a key file; {to} is neither"
        )
    try:
        return load_private_key(path).public_key
    except KeyFileError as exc:
        raise ValueError(f"TO {to}: {exc}") from exc


def _op(args: argparse.Namespace) -> dict[str, Any]:
    from crypto.canonical import CanonicalJsonError, parse_json
    from node.client import cas_op, chown_op, delete_op, set_op, transfer_op

    if args.op == "transfer":
        return transfer_op(_recipient(args.to), args.amount)
    if args.op == "chown":
        return chown_op(args.key_name, _recipient(args.to))
    if args.op == "delete":
        return delete_op(args.key_name)
    try:
        value = parse_json(args.value)
    except CanonicalJsonError as exc:
        hint = ""
        if args.value[:1].isalpha() and args.value not in ("true", "false", "null"):
            hint = f"; to store the string {args.value}, quote it as JSON: '\"{args.value}\"'"
        raise ValueError(f"VALUE_JSON is not a valid Phalanx JSON value: {exc}{hint}") from exc
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
    if args.url and not args.url.startswith(("http://", "https://")):
        return _fail(
            f"--url {args.url} has no scheme; write it like http://{args.url.split('://')[-1]}",
            EXIT_USAGE,
        )
    not_a_key = _not_a_key_file(args.key)
    if not_a_key is not None:
        return _fail(not_a_key, EXIT_USAGE)
    try:
        signer = load_key(args.key)
        genesis = load_genesis(args.genesis) if args.genesis is not None else None
        op = _op(args)
    except (KeyFileError, GenesisError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    if genesis is not None and args.chain_id and args.chain_id != genesis.chain_id:
        return _fail(
            f"--chain-id {args.chain_id} is not the chain of --genesis ({genesis.chain_id})",
            EXIT_USAGE,
        )
    chain_id = args.chain_id or (genesis.chain_id if genesis is not None else None)
    if chain_id is None:
        if args.sign_only and not args.url:
            return _fail(
                "say which chain to sign for: --genesis FILE, --chain-id ID or --url URL",
                EXIT_USAGE,
            )
        try:
            chain_id = Client(args.url, cacert=args.cacert).chain_id()
        except ClientError as exc:
            return _fail(f"cannot ask the node for its chain_id: {exc}")
    try:
        tx = make_tx(signer, [op], args.nonce, chain_id=chain_id)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.sign_only:
        print(json.dumps(tx))
        return EXIT_OK
    try:
        client = Client(args.url, cacert=args.cacert)
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
            print("receipt verified", file=sys.stderr)  # stdout holds only the receipt
        else:
            print("receipt not verified (no --genesis given)", file=sys.stderr)
    except ClientError as exc:
        return _fail(str(exc))
    result = receipt.get("result") or {}
    if result.get("ok") is not True:
        return _fail(
            f"transaction committed at seq {receipt.get('seq')} but failed: "
            f"{result.get('error')}; it changed no state beyond its fee",
            EXIT_TX_FAILED,
        )
    return EXIT_OK
