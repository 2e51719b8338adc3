"""Key files: the 32-byte seed as 64 hex characters, mode 0600, refused when others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crypto.keys import KeyFileError, load_private_key, save_private_key
from crypto.signing import Ed25519Signer


def test_saved_key_is_0600_and_loads_back(tmp_path: Path) -> None:
    signer = Ed25519Signer(bytes(range(32)))
    path = tmp_path / "node.key"
    save_private_key(path, signer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == bytes(range(32)).hex() + "\n"
    assert load_private_key(path).public_key == signer.public_key


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_private_key(path, Ed25519Signer.generate())
    before = path.read_text()
    with pytest.raises(FileExistsError):
        save_private_key(path, Ed25519Signer.generate())
    assert path.read_text() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610, 0o601, 0o700 | 0o004])
def test_group_or_other_access_is_refused_with_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_private_key(path, Ed25519Signer.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert "chmod 600" in str(info.value)
    assert str(path) in str(info.value)
    os.chmod(path, 0o600)
    load_private_key(path)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_private_key(path, Ed25519Signer.generate())
    os.chmod(path, 0o400)
    load_private_key(path)


def test_missing_key_file_names_keygen(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="phalanx keygen"):
        load_private_key(tmp_path / "absent.key")


@pytest.mark.parametrize(
    "content", ["", "zz" * 32, "00" * 31, "00" * 33, ("AB" * 32), "00" * 32 + " extra"]
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "node.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="seed"):
        load_private_key(path)


def test_seed_length_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Ed25519Signer(bytes(31))
