"""The command-line rough edges of issue 12: `--version`, `genesis create`, `node init`, the tx
receipt on stdout alone (and checkable later, bound to its transaction), hints for common
mistakes, and the audit report's provenance and its behaviour in a closed pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.canonical import canonical_json
from ledger.genesis import load_genesis
from node.cli.main import main as phalanx
from node.config import load_config
from node.version import phalanx_version
from tests.api.harness import ApiHarness, Served, serve_in_thread
from tests.audit.builder import Built, build_ledger
from tests.ledger.helpers import ALICE, BOB, VALIDATORS, genesis_document

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = {ALICE.public_key: 10**9, BOB.public_key: 10**9}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_ledger(tmp_path_factory.mktemp("built") / "ledger")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        phalanx(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"phalanx {phalanx_version()}"


def _validators() -> list[str]:
    return [f"--validator=v{i}={s.public_key}" for i, s in enumerate(VALIDATORS)]


def test_genesis_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["genesis", "create", *_validators(), f"--account={ALICE.public_key}=500"]
    assert phalanx(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert phalanx(args) == 0
    second = json.loads(capsys.readouterr().out)
    # No --chain-id: a fresh chain each time (64 random bits), so two never collide.
    assert first["chain_id"] != second["chain_id"]
    assert first["chain_id"].startswith("phalanx-") and len(first["chain_id"]) == 24
    assert first["accounts"] == {ALICE.public_key: 500} and first["fee_per_byte"] == 1
    out = tmp_path / "genesis.json"
    assert (
        phalanx([*args, "--chain-id", "acme-ledger", "--fee-per-byte", "0", "--out", str(out)]) == 0
    )
    written = load_genesis(out)
    assert capsys.readouterr().out.strip() == written.genesis_hash
    assert written.chain_id == "acme-ledger" and written.n == 4
    # Never overwritten; bad input is a usage error naming what is wrong.
    assert phalanx([*args, "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    for bad, said in (
        (["--validator", "v0"], "NAME=PUBKEY"),
        (["--validator", "v0=abc"], "pubkey"),
        ([f"--account={BOB.public_key}=lots"], "AMOUNT"),
        (["--chain-id", "Not Valid"], "chain_id"),
        (["--fee-per-byte", "-1"], "fee-per-byte"),
    ):
        assert phalanx([*args, *bad]) == 2, bad
        assert said in capsys.readouterr().err, bad


def test_node_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    genesis = tmp_path / "genesis.json"
    assert phalanx(["genesis", "create", *_validators(), "--out", str(genesis)]) == 0
    key = tmp_path / "v1.key"
    key.write_text(VALIDATORS[1].seed.hex() + "\n")
    os.chmod(key, 0o600)
    base = ["node", "init", "--name", "v1", "--genesis", str(genesis), "--key", str(key),
            "--listen", "10.0.0.2:7100", "--api", "0.0.0.0:7000"]  # fmt: skip
    peers = ["--peer=v0=10.0.0.1:7100", "--peer=v2=10.0.0.3:7100", "--peer=v3=host-d:7100"]
    out = tmp_path / "site" / "node.json"
    out.parent.mkdir()
    capsys.readouterr()
    assert phalanx([*base, *peers, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = load_config(out, environ={})
    assert config.name == "v1" and config.data_dir == out.parent / "data"
    assert config.key_file == key and config.genesis_file == genesis
    assert str(config.peers[VALIDATORS[3].public_key]) == "host-d:7100"
    assert VALIDATORS[1].public_key not in config.peers
    assert phalanx([*base, *peers, "--out", str(out)]) == 1  # exists; --force overwrites
    assert phalanx([*base, *peers, "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    for bad, said in (
        (peers[:2], "--peer NAME=HOST:PORT for v3"),
        ([*peers, "--peer=v9=h:1"], "another validator"),
        ([*peers[:2], "--peer=v3=nohostport"], "HOST:PORT"),
    ):
        assert phalanx([*base, *bad, "--out", str(tmp_path / "x.json")]) == 2, bad
        assert said in capsys.readouterr().err, bad
    wrong = [*base[:7], str(tmp_path / "v0.key"), *base[8:]]
    (tmp_path / "v0.key").write_text(VALIDATORS[0].seed.hex() + "\n")
    os.chmod(tmp_path / "v0.key", 0o600)
    assert phalanx([*wrong, *peers, "--out", str(tmp_path / "y.json")]) == 2
    assert "it is the key of 'v0'" in capsys.readouterr().err


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    h = ApiHarness(tmp_path / "ledger", fee_per_byte=1, accounts=ACCOUNTS)
    try:
        with serve_in_thread(h, auto_commit_s=0.02) as s:
            yield s
    finally:
        h.close()


def _client_files(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "client.key"
    key.write_text(ALICE.seed.hex() + "\n")
    os.chmod(key, 0o600)
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(canonical_json(genesis_document(accounts=ACCOUNTS, fee_per_byte=1)))
    return key, genesis


def test_receipt_on_stdout_verifies_later_and_binds_to_its_tx(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    key, genesis = _client_files(tmp_path)
    common = ["--key", str(key), "--genesis", str(genesis)]
    assert phalanx(["tx", "set", "colour", '"blue"', *common, "--nonce", "9", "--sign-only"]) == 0
    tx_file = tmp_path / "tx.json"
    tx_file.write_text(capsys.readouterr().out)
    assert phalanx(["tx", "set", "colour", '"blue"', *common, "--nonce", "9",
                    "--url", served.url]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "receipt verified" in captured.err and "verified" not in captured.out
    receipt = tmp_path / "receipt.json"
    receipt.write_text(captured.out)  # what `phalanx tx ... > receipt.json` keeps
    verify = ["audit", "verify-receipt", str(receipt), "--genesis", str(genesis)]
    assert phalanx([*verify, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["tool"]["version"] == phalanx_version()
    assert "commit_certificate" in report["checks"] and report["generated_at"].endswith("Z")
    assert phalanx([*verify, "--tx", str(tx_file)]) == 0
    assert f"it is the receipt of {tx_file}" in capsys.readouterr().out
    # Another transaction (same op, other nonce) is not what this receipt proves.
    assert phalanx(["tx", "set", "colour", '"blue"', *common, "--nonce", "10", "--sign-only"]) == 0
    other = tmp_path / "other.json"
    other.write_text(capsys.readouterr().out)
    assert phalanx([*verify, "--tx", str(other), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["tx_bound"]
    assert any("the given transaction's id" in f for f in report["failures"])
    # The API's whole answer is accepted as well.
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"tx_id": json.loads(receipt.read_text())["tx_id"],
                                  "status": "committed",
                                  "receipt": json.loads(receipt.read_text())}))  # fmt: skip
    assert phalanx(["audit", "verify-receipt", str(answer), "--genesis", str(genesis)]) == 0


def test_tx_hints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, genesis = _client_files(tmp_path)
    url = ["--url", "http://127.0.0.1:9"]
    assert phalanx(["tx", "set", "colour", "blue", "--key", str(key), *url]) == 2
    assert """quote it as JSON: '"blue"'""" in capsys.readouterr().err
    assert phalanx(["tx", "set", "c", "1", "--key", str(genesis), *url]) == 2
    err = capsys.readouterr().err
    assert "is a genesis file, not a key" in err and "chmod" not in err
    assert phalanx(["tx", "set", "c", "1", "--key", str(key), "--url", "localhost:7000"]) == 2
    assert "write it like http://localhost:7000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        phalanx(["tx", "set", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 committed" in help_text and "(default 10000)" in help_text
    assert "``" not in help_text  # no raw reStructuredText markup


def test_audit_report_names_checks_version_time_and_stored_genesis(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    assert phalanx(["audit", str(built.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tool"] == {"name": "phalanx audit", "version": phalanx_version()}
    assert report["generated_at"].endswith("Z")
    assert {"certificate", "tx_signature", "state"} <= set(report["checks"])
    # No --genesis: the genesis_hash is the one the ledger stores, not null.
    assert report["genesis"]["source"] == "ledger"
    assert report["genesis"]["genesis_hash"] == built.genesis.genesis_hash
    assert phalanx(["audit", str(built.path)]) == 0
    text = capsys.readouterr().out
    assert f"phalanx audit {phalanx_version()}" in text and "checks: genesis, meta" in text


def test_audit_into_a_closed_pipe_is_quiet(built: Built) -> None:
    command = f"{sys.executable} -m node.cli audit {built.path} | head -1"
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.stdout.startswith("phalanx audit")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["keygen"], ["genesis"], ["genesis", "create"], ["node", "run"], ["node", "init"],
     ["testnet"], ["testnet", "up"], ["tx"], ["tx", "set"], ["audit"]],
)  # fmt: skip
def test_help_has_no_raw_markup(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        phalanx([*command, "--help"])
    assert exit_.value.code == 0
    assert "``" not in capsys.readouterr().out
