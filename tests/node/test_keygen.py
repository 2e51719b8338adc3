"""`phalanx keygen --out FILE`."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest

from crypto.keys import load_private_key
from node.cli import keygen


def phalanx_keygen(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="phalanx")
    keygen.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keygen", *argv])
    code: int = args.func(args)
    return code


def test_writes_a_0600_key_and_prints_its_pubkey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "v.key"
    assert phalanx_keygen("--out", str(path)) == 0
    printed = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).public_key == printed
    assert len(path.read_text().strip()) == 64


def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v.key"
    assert phalanx_keygen("--out", str(path)) == 0
    before = path.read_text()
    capsys.readouterr()
    assert phalanx_keygen("--out", str(path)) == 1
    captured = capsys.readouterr()
    assert "already exists" in captured.err and captured.out == ""
    assert path.read_text() == before


def test_reports_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert phalanx_keygen("--out", str(tmp_path / "no" / "such" / "v.key")) == 1
    assert "cannot create" in capsys.readouterr().err


def test_two_keys_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    phalanx_keygen("--out", str(tmp_path / "a.key"))
    phalanx_keygen("--out", str(tmp_path / "b.key"))
    a, b = capsys.readouterr().out.split()
    assert a != b
