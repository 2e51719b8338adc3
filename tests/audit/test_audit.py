"""``phalanx audit`` on real ledgers: a sound ledger passes; every single damaged byte is found."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.audit import audit, audit_ledger
from ledger.audit.checks import Failure, LedgerReport
from node.cli import main
from tests.audit.builder import (
    GENESIS_ACCOUNTS,
    Built,
    copy_ledger,
    entries,
    flip_bit,
    rekey,
    replace_once,
    rewrite,
    seq8,
)
from tests.ledger.helpers import ALICE, BOB, CAROL, VALIDATORS


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def has(report: LedgerReport, seq: int | None, check: str, text: str = "") -> bool:
    return any(f.seq == seq and f.check == check and text in f.detail for f in report.failures)


def describe(report: LedgerReport) -> str:
    return "\n".join(f"{f.seq} {f.check}: {f.detail}" for f in report.failures)


# -- a sound ledger ---------------------------------------------------------------------------


def test_sound_ledger_passes(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(built.path))
    assert code == 0, out
    assert "OK: every check passed" in out and "audit OK" in out
    assert err == ""  # no progress bar: stderr is not a terminal here
    report = audit_ledger(built.path)
    assert report.ok, describe(report)
    assert report.head_seq == report.blocks == 7
    assert report.txs == sum(len(t) for t in built.blocks.values()) == 25
    # Every tx signature and every vote: 7 certificates of 3 votes, one of 4.
    assert report.signatures == 25 + 7 * 3 + 1
    assert report.state_keys == 11 and report.balances == 3
    assert report.genesis_hash == built.genesis.genesis_hash


@pytest.mark.parametrize("processes", [True, False])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_any_workers_give_the_same_report(built: Built, workers: int, processes: bool) -> None:
    report = audit_ledger(built.path, workers=workers, processes=processes)
    assert report.ok and report.signatures == 47


def test_the_standard_ledger_replays_owners_fees_and_every_code(built: Built) -> None:
    """The fixture holds every result code, and the audit's replay agrees with each."""
    from ledger.store import LedgerStore

    with LedgerStore.open(built.path, readonly=True) as store:
        codes = {r["error"] for b in store.iter_blocks() for r in b["results"]}
        gone, multi = store.get_state("gone"), store.get_state("multi")
        fees_paid = sum(GENESIS_ACCOUNTS.values()) - sum(
            store.balance(c.public_key) for c in (ALICE, BOB, CAROL)
        )
    assert codes == {
        None,
        "cas_mismatch",
        "duplicate",
        "forbidden",
        "insufficient_fee",
        "insufficient_funds",
        "not_found",
        "wrong_chain",
    }
    assert gone is None and multi is not None and multi["owner"] == CAROL.public_key
    assert fees_paid > 0  # burned
    assert audit_ledger(built.path).ok


def test_json_report_shape(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    genesis_file = built.write_genesis(tmp_path)
    code, out, _ = run_cli(capsys, str(built.path), "--genesis", str(genesis_file), "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {
        "ok",
        "genesis",
        "ledgers",
        "divergences",
        "elapsed_s",
        "checks",
        "tool",
        "generated_at",
    }
    assert doc["ok"] is True and doc["divergences"] == []
    assert doc["tool"]["name"] == "phalanx audit" and doc["tool"]["version"]
    assert "tx_signature" in doc["checks"] and doc["generated_at"].endswith("Z")
    assert doc["genesis"] == {
        "source": "file",
        "path": str(genesis_file),
        "genesis_hash": built.genesis.genesis_hash,
    }
    (ledger,) = doc["ledgers"]
    assert set(ledger) == {
        "data_dir",
        "ok",
        "complete",
        "genesis_hash",
        "chain_id",
        "head",
        "counts",
        "failures",
        "failures_total",
        "records",  # the consensus records, reported apart (issue 8)
    }
    assert ledger["records"]["ok"] is True
    assert ledger["head"]["seq"] == 7 and len(ledger["head"]["hash"]) == 64
    assert ledger["counts"] == {
        "blocks": 7,
        "txs": 25,
        "signatures": 47,
        "state_keys": 11,
        "balances": 3,
        "executions": 7,
    }
    assert ledger["failures"] == [] and ledger["failures_total"] == 0


def test_empty_ledger_passes(tmp_path: Path) -> None:
    from tests.audit.builder import build_ledger

    built = build_ledger(tmp_path / "empty", blocks=[])
    report = audit_ledger(built.path)
    assert report.ok, describe(report)
    assert report.head_seq == 0 and report.head_hash == built.genesis.genesis_hash


# -- one damaged byte -------------------------------------------------------------------------


def _sig_of(built: Built, seq: int, index: int) -> str:
    sig: str = built.blocks[seq][index].wire["sig"]
    return sig


def _other_hex(sig: str) -> bytes:
    return (("1" if sig[0] == "0" else "0") + sig[1:]).encode()


def _vote(built: Built, seq: int, validator: int) -> tuple[bytes, bytes]:
    rows = dict(entries(built.path, "blocks"))
    record = json.loads(rows[seq8(seq)])
    sig = record["certificate"]["signatures"][VALIDATORS[validator].public_key]
    return sig.encode(), _other_hex(sig)


Case = tuple[str, Callable[[Built], tuple[bytes, Callable[[bytes], bytes]]], int | None, str, str]

CASES: list[Case] = [
    (
        "block_txs",
        lambda b: (seq8(3), replace_once(b'"late"', b'"lbte"')),
        3,
        "tx_ids",
        "tx 1: stored tx_id",
    ),
    (
        "block_txs",
        lambda b: (seq8(5), replace_once(_sig_of(b, 5, 0).encode(), _other_hex(_sig_of(b, 5, 0)))),
        5,
        "tx_signature",
        "tx 0",
    ),
    (
        "block_results",
        lambda b: (seq8(1), replace_once(b"insufficient_funds", b"insufficient_fundt")),
        1,
        "results",
        "tx 2: stored result",
    ),
    (
        "blocks",
        lambda b: (seq8(4), replace_once(b"1764000000004", b"1764000000005")),
        4,
        "chain",
        "is not block_hash(4)",
    ),
    (
        "blocks",
        lambda b: (seq8(3), replace_once(*_vote(b, 3, 1))),
        3,
        "certificate",
        f"the commit vote of node1 ({VALIDATORS[1].public_key})",
    ),
    (
        "blocks",
        lambda b: (seq8(2), replace_once(*_vote(b, 2, 0))),
        2,
        "certificate",
        "holds 2 valid commit votes; a quorum is 3",
    ),
    (
        "block_tx_ids",
        lambda b: (seq8(6), flip_bit(5)),
        6,
        "tx_ids",
        "tx 0: stored tx_id",
    ),
    (
        "tx_index",
        lambda b: (bytes.fromhex(b.blocks[3][2].tx_id), flip_bit(11)),
        3,
        "tx_index",
        "points to seq 3 index 3; the tx is first at seq 3 index 2",
    ),
    (
        "state",
        lambda b: (b"k", replace_once(b'"version":2', b'"version":3')),
        3,
        "state",
        "key 'k': stored",
    ),
    (
        "state",
        lambda b: (
            b"multi",
            replace_once(CAROL.public_key.encode(), BOB.public_key.encode()),
        ),
        4,
        "state",
        "key 'multi': stored",
    ),
    (
        "balances",
        lambda b: (bytes.fromhex(CAROL.public_key), flip_bit(7)),
        4,
        "balances",
        f"account {CAROL.public_key}: stored balance",
    ),
    (
        "meta",
        lambda b: (b"head", replace_once(b'"seq":7', b'"seq":6')),
        None,
        "meta",
        "the head is seq 6, the last block 7",
    ),
]


@pytest.mark.parametrize(
    ("db", "target", "seq", "check", "text"),
    CASES,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_one_changed_byte_is_found_with_its_seq(
    built: Built,
    tmp_path: Path,
    db: str,
    target: Callable[[Built], tuple[bytes, Callable[[bytes], bytes]]],
    seq: int | None,
    check: str,
    text: str,
) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    key, change = target(built)
    rewrite(path, db, key, change)
    report = audit_ledger(path)
    assert not report.ok
    assert has(report, seq, check, text), describe(report)
    if seq is not None:
        # The damage is reported where it is, not at every later block.
        assert {f.seq for f in report.failures} <= {seq, None}, describe(report)


def test_changed_transaction_byte_fails_signature_and_root_too(
    built: Built, tmp_path: Path
) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    rewrite(path, "block_txs", seq8(3), replace_once(b'"late"', b'"lbte"'))
    report = audit_ledger(path)
    assert has(report, 3, "tx_signature", "tx 1")
    assert has(report, 3, "tx_root", "is not the Merkle root of the tx_ids")


def test_changed_header_voids_the_votes(built: Built, tmp_path: Path) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    rewrite(path, "blocks", seq8(4), replace_once(b"1764000000004", b"1764000000005"))
    report = audit_ledger(path)
    assert has(report, 4, "certificate", "holds 0 valid commit votes")


def test_moved_index_entry_is_found_both_ways(built: Built, tmp_path: Path) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    tx_id = bytes.fromhex(built.blocks[5][0].tx_id)
    moved = bytes([tx_id[0] ^ 1]) + tx_id[1:]
    rekey(path, "tx_index", tx_id, moved)
    report = audit_ledger(path)
    assert has(report, 5, "tx_index", f"tx {tx_id.hex()} (seq 5 index 0) is not in the index")
    assert has(report, 5, "tx_index", f"the index holds {moved.hex()}")


def test_damaged_stored_genesis_is_found(built: Built, tmp_path: Path) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    rewrite(path, "meta", b"genesis", replace_once(b'"node2"', b'"node3"'))
    report = audit_ledger(path)
    assert has(report, None, "genesis", "the stored genesis document is damaged")
    # Checked against the right genesis, the rest of the ledger still holds.
    report = audit_ledger(path, built.genesis)
    assert [f.check for f in report.failures] == ["genesis"], describe(report)


def test_truncated_data_file_is_a_failure(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    data = path / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, out, _ = run_cli(capsys, str(path))
    assert code == 1
    assert "ledger: meta:" in out and "truncated" in out


def test_changed_byte_exits_1_and_names_it(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_ledger(built.path, tmp_path / "damaged")
    rewrite(
        path, "block_results", seq8(1), replace_once(b"insufficient_funds", b"insufficient_fundt")
    )
    code, out, _ = run_cli(capsys, str(path))
    assert code == 1
    assert "FAILED: 1 problem(s)" in out
    assert "seq 1: results: tx 2: stored result" in out and "audit FAILED" in out


def test_every_random_bit_flip_is_found(built: Built, tmp_path: Path) -> None:
    """Seeded sweep: one flipped bit anywhere in any value of the audited databases."""
    rng = random.Random(20240601)
    dbs = ["blocks", "block_txs", "block_results", "block_tx_ids", "tx_index", "state", "balances"]
    rows = {db: [r for r in entries(built.path, db) if r[1]] for db in dbs}
    for trial in range(60):
        db = dbs[trial % len(dbs)]
        key, value = rng.choice(rows[db])
        offset, bit = rng.randrange(len(value)), rng.randrange(8)
        path = copy_ledger(built.path, tmp_path / f"flip{trial}")
        rewrite(path, db, key, flip_bit(offset, bit))
        report = audit_ledger(path)
        assert not report.ok, f"{db} {key.hex()} byte {offset} bit {bit} went unnoticed"


# -- what honest nodes never store, but the audit must still judge ---------------------------


def test_malformed_transactions_are_failures_and_replay_still_agrees(tmp_path: Path) -> None:
    from consensus.batch import Tx
    from tests.audit.builder import build_ledger
    from tests.ledger.helpers import ALICE, CHAIN_ID, sign_tx, tx

    good = tx(ALICE, 0, {"op": "set", "key": "a", "value": 1})
    extra_field = sign_tx(ALICE, 1, [{"op": "set", "key": "b", "value": 2, "extra": 0}])
    bad_sig = sign_tx(ALICE, 2, [{"op": "set", "key": "c", "value": 3}])
    bad_sig["sig"] = sign_tx(BOB, 2, [{"op": "set", "key": "c", "value": 3}])["sig"]
    float_value = {
        "body": {
            "chain_id": CHAIN_ID,
            "client": ALICE.public_key,
            "nonce": 3,
            "ops": [{"op": "set", "key": "d", "value": 1.5}],
        },
        "sig": "00" * 64,
    }
    no_sig = {"body": {"chain_id": CHAIN_ID, "client": ALICE.public_key, "nonce": 4, "ops": []}}
    huge = sign_tx(ALICE, 5, [{"op": "set", "key": "e", "value": "x" * 70_000}])
    blocks = [
        [good, Tx.from_wire(extra_field), Tx.from_wire(bad_sig)],
        [Tx("ab" * 32, float_value), Tx.from_wire(no_sig), Tx.from_wire(huge), good],
    ]
    built = build_ledger(tmp_path / "odd", blocks=blocks)
    report = audit_ledger(built.path)
    checks = {(f.seq, f.check) for f in report.failures}
    assert checks == {(1, "tx"), (1, "tx_signature"), (2, "tx")}, describe(report)
    assert has(report, 1, "tx", "tx 1")
    assert has(report, 1, "tx", "unknown field(s) extra")
    assert has(report, 1, "tx_signature", "tx 2")
    assert has(report, 2, "tx", "the float 1.5")
    assert has(report, 2, "tx", "tx 0 (abab")
    assert has(report, 2, "tx", "lacks field(s) sig")
    assert has(report, 2, "tx", "more than 65536")
    # The stored results (the store's own execution) agree with the audit's replay.
    assert not any(f.check in {"results", "state", "balances", "tx_index"} for f in report.failures)


# -- several ledgers --------------------------------------------------------------------------


def _fork(built: Built, path: Path, at: int) -> Built:
    from tests.audit.builder import build_ledger
    from tests.ledger.helpers import CAROL, tx

    blocks = [built.blocks[s] for s in range(1, at)]
    blocks.append([tx(CAROL, 99, {"op": "set", "key": "fork", "value": at})])
    return build_ledger(path, blocks=blocks, genesis=built.genesis)


def test_forked_ledgers_diverge_at_the_fork(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fork = _fork(built, tmp_path / "fork", at=4)
    report = audit([built.path, fork.path])
    assert all(r.ok for r in report.ledgers)
    (divergence,) = report.divergences
    assert divergence.seq == 4
    assert divergence.data_dirs == (str(built.path), str(fork.path))
    a, b = report.ledgers
    assert divergence.hashes == (a.block_hashes[3], b.block_hashes[3])
    assert divergence.hashes[0] != divergence.hashes[1]
    code, out, _ = run_cli(capsys, str(built.path), str(fork.path))
    assert code == 1
    assert f"DIVERGED at seq 4: {built.path} has block hash {divergence.hashes[0]}" in out
    code, out, _ = run_cli(capsys, str(built.path), str(fork.path), "--json")
    assert json.loads(out)["divergences"] == [
        {
            "seq": 4,
            "data_dirs": [str(built.path), str(fork.path)],
            "hashes": list(divergence.hashes),
        }
    ]


def test_a_prefix_is_not_a_divergence(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.audit.builder import build_ledger

    behind = build_ledger(tmp_path / "behind", [built.blocks[s] for s in (1, 2, 3)], built.genesis)
    code, out, _ = run_cli(capsys, str(built.path), str(behind.path), str(built.path))
    assert code == 0, out
    assert f"{behind.path}: head seq 3" in out and f"{built.path}: head seq 7" in out
    assert "no divergence: all ledgers agree up to seq 3" in out


def test_three_ledgers_name_the_odd_one(built: Built, tmp_path: Path) -> None:
    fork = _fork(built, tmp_path / "fork", at=6)
    report = audit([built.path, fork.path, built.path])
    pairs = {(d.data_dirs, d.seq) for d in report.divergences}
    assert pairs == {
        ((str(built.path), str(fork.path)), 6),
        ((str(fork.path), str(built.path)), 6),
    }


def test_ledgers_of_different_genesis(built: Built, tmp_path: Path) -> None:
    from tests.audit.builder import build_ledger
    from tests.ledger.helpers import make_genesis

    other = build_ledger(tmp_path / "other", [[]], make_genesis(chain_id="another-chain"))
    report = audit([built.path, other.path])
    assert [d.seq for d in report.divergences] == [0]
    # Against a given genesis, the other chain's ledger fails on its own.
    report = audit([built.path, other.path], genesis=built.genesis)
    assert report.ledgers[0].ok
    other_report = report.ledgers[1]
    assert not other_report.complete
    assert has(other_report, None, "genesis", "belongs to another chain")


# -- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["{missing}"],
        ["{ledger}", "{missing}"],
        ["{file}"],
        ["{empty}"],
        ["{ledger}", "--workers", "0"],
        ["{ledger}", "--workers", "65"],
        ["{ledger}", "--genesis", "{missing}"],
        ["{ledger}", "--genesis", "{file}"],
        ["verify-receipt"],
        ["verify-receipt", "{receipt}"],
        ["verify-receipt", "{receipt}", "{receipt}", "--genesis", "{genesis}"],
        ["verify-receipt", "{missing}", "--genesis", "{genesis}"],
        ["verify-receipt", "{receipt}", "--genesis", "{missing}"],
    ],
)
def test_usage_errors_exit_2(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a ledger")
    (tmp_path / "receipt.json").write_text("{}")
    names = {
        "missing": str(tmp_path / "missing"),
        "ledger": str(built.path),
        "file": str(tmp_path / "file"),
        "empty": str(tmp_path / "empty"),
        "receipt": str(tmp_path / "receipt.json"),
        "genesis": str(built.write_genesis(tmp_path)),
    }
    code, out, err = run_cli(capsys, *(a.format(**names) for a in argv))
    assert code == 2
    assert out == ""
    assert "phalanx audit: error:" in err and "usage:" in err


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["audit"])
    assert info.value.code == 2
    assert "DATA_DIR" in capsys.readouterr().err


def test_a_directory_named_verify_receipt_can_be_audited(
    built: Built,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy_ledger(built.path, tmp_path / "verify-receipt")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "./verify-receipt")
    assert code == 0, out


# -- receipts -------------------------------------------------------------------------------


def _receipt(built: Built, seq: int, index: int) -> dict[str, Any]:
    from ledger.store import LedgerStore

    with LedgerStore.open(built.path, readonly=True) as store:
        receipt = store.receipt(built.blocks[seq][index].tx_id)
    assert receipt is not None
    return receipt


def test_verify_receipt_good_and_bad(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    genesis = str(built.write_genesis(tmp_path))
    receipt = _receipt(built, 3, 2)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(receipt))
    code, out, _ = run_cli(capsys, "verify-receipt", str(good), "--genesis", genesis)
    assert code == 0, out
    assert f"receipt valid: tx {receipt['tx_id']} committed at seq 3 index 2" in out
    code, out, _ = run_cli(capsys, "verify-receipt", str(good), "--genesis", genesis, "--json")
    answer = json.loads(out)
    assert "commit_certificate" in answer.pop("checks")
    assert answer.pop("tool")["name"] == "phalanx audit" and answer.pop("generated_at")
    assert answer == {
        "ok": True,
        "tx_id": receipt["tx_id"],
        "seq": 3,
        "index": 2,
        "failures": [],
        "tx_bound": False,
    }

    bad = dict(receipt, index=1)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    code, out, _ = run_cli(capsys, "verify-receipt", str(path), "--genesis", genesis)
    assert code == 1
    assert "INVALID" in out and "proof does not lead from tx_id to batch.tx_root" in out

    forged = dict(receipt, batch=dict(receipt["batch"], time_ms=1))
    path.write_text(json.dumps(forged))
    code, out, _ = run_cli(capsys, "verify-receipt", str(path), "--genesis", genesis, "--json")
    assert code == 1
    failures = json.loads(out)["failures"]
    assert "certificate holds 0 valid commit votes; a quorum is 3" in failures

    path.write_text('{"tx_id": 1.5}')
    code, out, _ = run_cli(capsys, "verify-receipt", str(path), "--genesis", genesis)
    assert code == 1 and "not Phalanx JSON" in out


def test_receipt_of_another_chain_is_invalid(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.ledger.helpers import make_genesis

    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(make_genesis(chain_id="elsewhere").document)))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_receipt(built, 1, 0)))
    code, out, _ = run_cli(capsys, "verify-receipt", str(path), "--genesis", str(other))
    assert code == 1 and "is not 'elsewhere'" in out


# -- output ---------------------------------------------------------------------------------


def test_progress_bar_draws_and_clears() -> None:
    import io

    from node.cli.audit import _ProgressBar

    quiet = io.StringIO()
    bar = _ProgressBar(quiet)  # a short audit shows nothing
    bar.update("node0/data", 1, 10)
    bar.update("node0/data", 10, 10)
    bar.clear()
    assert quiet.getvalue() == ""

    stream = io.StringIO()
    bar = _ProgressBar(stream, delay_s=0)
    bar.update("node0/data", 5, 10)
    bar.update("node0/data", 6, 10)  # too soon: skipped
    bar.update("node0/data", 10, 10)  # the last one is always drawn
    bar.clear()
    text = stream.getvalue()
    assert "node0/data [###############...............] 5/10 blocks" in text
    assert "6/10" not in text
    assert "10/10 blocks" in text and text.endswith("\r\033[K")


def test_failures_are_capped_but_counted(built: Built, tmp_path: Path) -> None:
    from ledger.audit.checks import FAILURES_KEPT_MAX

    report = LedgerReport("x")
    for i in range(FAILURES_KEPT_MAX + 5):
        report.fail(i, "tx", "x")
    assert (
        len(report.failures) == FAILURES_KEPT_MAX and report.failures_total == FAILURES_KEPT_MAX + 5
    )
    assert report.to_json()["failures_total"] == FAILURES_KEPT_MAX + 5
    assert Failure(1, "tx", "d").to_json() == {"seq": 1, "check": "tx", "detail": "d"}
