"""``phalanx genesis create``: write the genesis of a consortium from its members' public keys.

    phalanx genesis create --chain-id acme-ledger --validator acme=<pubkey> \\
        --validator globex=<pubkey> ... --account <client pubkey>=1000000 [--fee-per-byte 1] \\
        [--out genesis.json]

Each organisation runs ``phalanx keygen`` and sends its public key; one of them runs this
command and sends the file to all. Without ``--chain-id`` the chain is named
``phalanx-<64 random bits>``, so two networks never share one by accident (spec §2). With
``--out`` the file is written (never overwritten) and its ``genesis_hash`` printed on stdout;
without it the document itself goes to stdout.

Exit codes: 0 written; 1 the file cannot be written; 2 usage (a bad key, name or amount).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
FEE_PER_BYTE_DEFAULT = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "genesis",
        help="create a genesis document",
        description="Write the genesis of a consortium from its members' public keys.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="write a genesis from validator and account public keys",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument(
        "--chain-id",
        default=None,
        help="the chain's name, 1 to 64 of [a-z0-9._-] (default: phalanx-<16 random hex>)",
    )
    create.add_argument(
        "--validator",
        action="append",
        default=[],
        metavar="NAME=PUBKEY",
        required=True,
        help="a validator (repeat, in order; 4 tolerate 1 fault, 7 tolerate 2)",
    )
    create.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="PUBKEY=AMOUNT",
        help="a funded client account (repeat; default: none)",
    )
    create.add_argument(
        "--fee-per-byte",
        type=int,
        default=FEE_PER_BYTE_DEFAULT,
        help=f"fee per byte of a transaction body, 0 for no fees (default {FEE_PER_BYTE_DEFAULT})",
    )
    create.add_argument(
        "--out", type=Path, default=None, help="file to write (default: print to stdout)"
    )
    create.set_defaults(func=run_create)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"phalanx genesis create: {message}", file=sys.stderr)
    return code


def _pair(text: str, what: str) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise ValueError(f"{what} must look like {what.split()[-1]}, got {text!r}")
    return left.strip(), right.strip()


def build_document(
    chain_id: str | None, validators: list[str], accounts: list[str], fee_per_byte: int
) -> dict[str, Any]:
    """The genesis document, validated (``GenesisError`` or ``ValueError`` saying what is
    wrong)."""
    from ledger.genesis import genesis_from_document, new_chain_id

    document: dict[str, Any] = {
        "chain_id": new_chain_id() if chain_id is None else chain_id,
        "validators": [],
        "accounts": {},
        "fee_per_byte": fee_per_byte,
    }
    for text in validators:
        name, pubkey = _pair(text, "--validator NAME=PUBKEY")
        document["validators"].append({"name": name, "pubkey": pubkey.lower()})
    for text in accounts:
        pubkey, amount = _pair(text, "--account PUBKEY=AMOUNT")
        if not amount.isdigit():
            raise ValueError(f"--account {pubkey[:16]}...: AMOUNT must be a whole number >= 0")
        if pubkey.lower() in document["accounts"]:
            raise ValueError(f"--account {pubkey[:16]}... is given twice")
        document["accounts"][pubkey.lower()] = int(amount)
    genesis_from_document(document)  # every rule of spec §2, with its own error message
    return document


def run_create(args: argparse.Namespace) -> int:
    from ledger.genesis import GenesisError, genesis_from_document

    if args.fee_per_byte < 0:
        return _fail("--fee-per-byte must be 0 or more")
    try:
        document = build_document(args.chain_id, args.validator, args.account, args.fee_per_byte)
    except (GenesisError, ValueError) as exc:
        return _fail(str(exc))
    text = json.dumps(document, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        with open(args.out, "x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        return _fail(f"{args.out} already exists; choose another --out or remove it", EXIT_FAILED)
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror or exc}", EXIT_FAILED)
    genesis = genesis_from_document(document)
    print(genesis.genesis_hash)
    print(
        f"wrote {args.out}: chain {genesis.chain_id}, {genesis.n} validators "
        f"(tolerates {genesis.f} faulty), {len(genesis.accounts)} accounts",
        file=sys.stderr,
    )
    return EXIT_OK
