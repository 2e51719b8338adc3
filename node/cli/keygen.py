"""``phalanx keygen --out FILE``: write a new Ed25519 key (mode 0600) and print its public key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from crypto.keys import save_private_key
from crypto.signing import Ed25519Signer


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create a new Ed25519 key file",
        description="Write a new Ed25519 private key (its 32-byte seed as 64 hex characters) to "
        "FILE with mode 0600 and print the public key. An existing FILE is never overwritten.",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="key file to create"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    signer = Ed25519Signer.generate()
    try:
        save_private_key(args.out, signer)
    except FileExistsError:
        print(
            f"phalanx keygen: {args.out} already exists; refusing to overwrite a key",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"phalanx keygen: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(signer.public_key)
    return 0
