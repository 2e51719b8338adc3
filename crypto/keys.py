"""Ed25519 key files: a private key file holds the 32-byte seed as 64 lowercase hex characters.

Key files are created with mode 0600, and a private key file that group or others can read is
refused, because whoever reads it can sign as this validator or client.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from crypto.hexcodec import decode_hex
from crypto.signing import SEED_LEN, Ed25519Signer


class KeyFileError(Exception):
    """A key file is missing, malformed or too widely readable."""


def save_private_key(path: Path, signer: Ed25519Signer) -> None:
    """Write the seed to ``path`` with mode 0600; refuses to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.seed.hex() + "\n")


def load_private_key(path: Path) -> Ed25519Signer:
    """Read a seed written by :func:`save_private_key`, checking the file's permissions."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(
            f"key file {path} does not exist; create one with `phalanx keygen`"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` and start again"
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        seed = decode_hex(text, SEED_LEN * 2, "an Ed25519 seed")
    except ValueError as exc:
        raise KeyFileError(f"key file {path}: {exc}") from exc
    return Ed25519Signer(seed)
