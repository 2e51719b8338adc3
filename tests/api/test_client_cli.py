"""node.client and `phalanx tx` against the API served on 127.0.0.1 from a thread, with blocks
committed by the harness (the part a replica would play)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.canonical import canonical_json
from node.cli import tx as tx_command
from node.client import (
    ApiError,
    Client,
    ClientError,
    ReceiptError,
    cas_op,
    chown_op,
    fee_of,
    make_tx,
    set_op,
    transfer_op,
    tx_id_of,
)
from tests.api.harness import ApiHarness, Served, serve_in_thread
from tests.ledger.helpers import ALICE, BOB, CAROL, CHAIN_ID, genesis_document

ACCOUNTS = {ALICE.public_key: 10**9, BOB.public_key: 10**9}


def main(argv: list[str]) -> int:
    """``phalanx ARGV`` with only the tx command registered (node.cli imports every command,
    some of which other engineers are still writing)."""
    parser = argparse.ArgumentParser(prog="phalanx")
    tx_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    h = ApiHarness(tmp_path / "ledger", fee_per_byte=1, accounts=ACCOUNTS)
    try:
        with serve_in_thread(h, auto_commit_s=0.02) as s:
            yield s
    finally:
        h.close()


def test_client_round_trip(served: Served) -> None:
    client = Client(served.url)
    genesis = served.harness.genesis
    assert client.chain_id() == CHAIN_ID
    ops = [set_op("a", {"x": [1, 2]}), cas_op("a", 1, "two")]
    tx = make_tx(ALICE, ops, nonce=5, chain_id=CHAIN_ID)
    answer = client.submit(tx, wait=True, timeout_ms=5_000)
    assert answer["status"] == "committed" and answer["tx_id"] == tx_id_of(tx)
    client.verify_receipt(answer["receipt"], genesis, answer["tx_id"])
    state = client.state("a")
    assert state is not None and state["seq"] >= 1
    assert {k: state[k] for k in ("key", "value", "version", "owner")} == {
        "key": "a",
        "value": "two",
        "version": 2,
        "owner": ALICE.public_key,
    }
    assert client.balance(ALICE.public_key) == 10**9 - fee_of(tx, 1)
    assert client.state("missing") is None
    handed = make_tx(ALICE, [chown_op("a", BOB.public_key)], chain_id=CHAIN_ID)
    assert client.submit(handed, wait=True)["receipt"]["result"]["ok"] is True
    assert (client.state("a") or {})["owner"] == BOB.public_key
    with pytest.raises(ValueError, match="chain_id"):
        make_tx(ALICE, ops, chain_id="Not A Chain")

    many = [make_tx(ALICE, [transfer_op(CAROL.public_key, 1)], chain_id=CHAIN_ID) for _ in range(3)]
    results = client.submit_many(many)
    assert [r["status"] for r in results] == ["pending"] * 3
    receipt = client.wait_for_receipt(results[-1]["tx_id"], timeout_s=5)
    client.verify_receipt(receipt, genesis)
    assert client.balance(CAROL.public_key) == 3
    status = client.status()
    assert status["seq"] >= 2 and status["chain_id"] == genesis.chain_id
    block = client.block(receipt["seq"])
    assert block["seq"] == receipt["seq"]
    assert client.receipt(results[0]["tx_id"]) is not None
    assert "phalanx_committed_seq" in client.metrics()
    events = client.events(from_seq=1, timeout_s=5)
    assert next(events)["seq"] == 1
    events.close()

    with pytest.raises(ReceiptError):
        bad = dict(receipt, index=receipt["index"] + 1)
        client.verify_receipt(bad, genesis)
    with pytest.raises(ApiError) as err:
        client.block(10_000)
    assert err.value.status == 404 and err.value.code == "unknown_block"
    with pytest.raises(ApiError) as err:
        client.submit({"body": {}, "sig": "00"})
    assert err.value.status == 400 and err.value.code == "malformed_tx"
    with pytest.raises(ClientError):
        Client("http://127.0.0.1:1", timeout_s=2).status()


def _files(tmp_path: Path, served: Served) -> tuple[Path, Path]:
    key = tmp_path / "client.key"
    key.write_text(ALICE.seed.hex() + "\n")
    os.chmod(key, 0o600)
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(canonical_json(genesis_document(accounts=ACCOUNTS, fee_per_byte=1)))
    return key, genesis


def test_tx_command(tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    key, genesis = _files(tmp_path, served)
    common = ["--url", served.url, "--key", str(key), "--genesis", str(genesis)]

    assert main(["tx", "set", "color", '{"rgb": [1, 2, 3]}', *common]) == 0
    captured = capsys.readouterr()
    # stdout is the receipt alone (so `> receipt.json` keeps it); the verdict goes to stderr.
    assert json.loads(captured.out)["result"] == {"ok": True, "error": None}
    assert captured.err.strip() == "receipt verified"

    assert main(["tx", "cas", "color", "1", '"red"', *common, "--nonce", "7"]) == 0
    capsys.readouterr()
    # A cas against the wrong version commits, but fails: exit 3 with a clear message.
    assert main(["tx", "cas", "color", "1", '"blue"', *common]) == 3
    assert "cas_mismatch" in capsys.readouterr().err
    assert main(["tx", "transfer", CAROL.public_key, "10", *common, "--quiet"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert len(quiet) == 1 and quiet[0].startswith("transfer ")
    assert quiet[0].endswith("receipt verified"), quiet
    assert main(["tx", "delete", "color", *common]) == 0
    assert served.harness.store.get_state("color") is None
    assert served.harness.store.balance(CAROL.public_key) == 10
    capsys.readouterr()

    # Funding a new client: TO may be its key file; chown hands a key over the same way.
    carol_key = tmp_path / "carol.key"
    carol_key.write_text(CAROL.seed.hex() + "\n")
    os.chmod(carol_key, 0o600)
    assert main(["tx", "transfer", str(carol_key), "5000", *common, "--quiet"]) == 0
    assert served.harness.store.balance(CAROL.public_key) == 5010
    assert main(["tx", "set", "gift", "1", *common, "--quiet"]) == 0
    assert main(["tx", "chown", "gift", str(carol_key), *common, "--quiet"]) == 0
    assert (served.harness.store.get_state("gift") or {})["owner"] == CAROL.public_key
    carol = ["--url", served.url, "--key", str(carol_key), "--genesis", str(genesis)]
    assert main(["tx", "set", "gift", "2", *carol, "--quiet"]) == 0
    assert main(["tx", "set", "gift", "3", *common]) == 3  # Alice handed it over
    assert "forbidden" in capsys.readouterr().err

    # --sign-only: the signed transaction, which any HTTP client can submit as it is.
    sign_only = ["--key", str(key), "--sign-only"]
    assert main(["tx", "set", "signed", "1", *sign_only, "--genesis", str(genesis)]) == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["body"]["chain_id"] == CHAIN_ID
    assert Client(served.url).submit(signed, wait=True)["status"] == "committed"
    assert served.harness.store.get_state("signed") is not None
    # The chain may also be named, or asked of the node; with none of these, a usage error.
    assert main(["tx", "set", "s2", "1", *sign_only, "--chain-id", CHAIN_ID]) == 0
    assert json.loads(capsys.readouterr().out)["body"]["chain_id"] == CHAIN_ID
    assert main(["tx", "set", "s3", "1", *sign_only, "--url", served.url]) == 0
    assert json.loads(capsys.readouterr().out)["body"]["chain_id"] == CHAIN_ID
    assert main(["tx", "set", "s4", "1", *sign_only]) == 2
    assert "--chain-id" in capsys.readouterr().err

    # Without --genesis the receipt is printed, unverified.
    assert main(["tx", "set", "k", "1", "--url", served.url, "--key", str(key)]) == 0
    captured = capsys.readouterr()
    assert "receipt not verified" in captured.err and "receipt verified" not in captured.out


def test_tx_command_failures(
    tmp_path: Path, served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _genesis = _files(tmp_path, served)
    common = ["--url", served.url, "--key", str(key)]
    assert main(["tx", "set", "k", "1.5", *common]) == 2
    assert "VALUE_JSON" in capsys.readouterr().err
    assert main(["tx", "set", "k" * 300, "1", *common]) == 1
    assert "malformed_tx" in capsys.readouterr().err
    assert main(["tx", "transfer", CAROL.public_key, "0", *common]) == 1
    assert main(["tx", "set", "k", "1", "--url", "http://127.0.0.1:1", "--key", str(key)]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["tx", "set", "k", "1", "--url", served.url, "--key", str(tmp_path / "no")]) == 2
    other = genesis_document(chain_id="another-chain")
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(canonical_json(other))
    # A genesis of another network: the transaction is signed for that chain, and this node
    # refuses it (400 wrong_chain) instead of executing it.
    assert main(["tx", "set", "k", "2", *common, "--genesis", str(wrong)]) == 1
    assert "wrong_chain" in capsys.readouterr().err
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(canonical_json(genesis_document()))
    assert main(["tx", "set", "k", "2", *common, "--genesis", str(genesis), "--chain-id", "x"]) == 2
    assert "is not the chain of --genesis" in capsys.readouterr().err
    assert main(["tx", "transfer", "not-a-key-or-file", "5", *common]) == 2
    assert "neither" in capsys.readouterr().err
    # A client with nothing cannot pay: refused at admission.
    carol_key = tmp_path / "carol.key"
    carol_key.write_text(CAROL.seed.hex() + "\n")
    os.chmod(carol_key, 0o600)
    assert main(["tx", "set", "k", "1", "--url", served.url, "--key", str(carol_key)]) == 1
    assert "insufficient_fee" in capsys.readouterr().err
