"""Receipts (spec §6): built by the store, verified with the genesis alone (by the project's
verifier and by the independent one of tests/ledger/spec_verifier.py), tampering detected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch, commit_vote_body
from consensus.output import Certificate, Committed
from crypto.signing import TAG_COMMIT, TAG_TX
from ledger.genesis import Genesis
from ledger.receipt import verify_committed, verify_receipt
from ledger.store import LedgerStore
from tests.ledger import spec_verifier
from tests.ledger.helpers import (
    ALICE,
    BOB,
    VALIDATORS,
    certify,
    certify_execution,
    committed,
    make_genesis,
    signer,
    tx,
)


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def receipt(tmp_path_factory: pytest.TempPathFactory, genesis: Genesis) -> dict[str, Any]:
    path: Path = tmp_path_factory.mktemp("ledger")
    txs = [tx(ALICE, i, {"op": "set", "key": f"k{i}", "value": i}) for i in range(5)]
    with LedgerStore.open(path, genesis) as store:
        store.append_block(committed(genesis, 1))
        store.append_block(committed(genesis, 2, txs, view=1))
        assert store.receipt(txs[2].tx_id)["execution"] is None  # type: ignore[index]
        certify_execution(store, 2)
        r = store.receipt(txs[2].tx_id)
    assert r is not None
    return r


def test_valid_receipt(receipt: dict[str, Any], genesis: Genesis) -> None:
    assert verify_receipt(receipt, genesis) == []
    assert spec_verifier.receipt_ok(genesis.document, receipt)
    assert len(receipt["certificate"]["signatures"]) == genesis.q
    assert receipt["seq"] == 2 and receipt["index"] == 2
    assert receipt["certificate"]["view"] == 1


def flip(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


def first_sig_key(r: dict[str, Any]) -> str:
    key: str = next(iter(r["certificate"]["signatures"]))
    return key


TAMPERS: list[tuple[str, Any]] = [
    ("tx_id", lambda r: r.update(tx_id=flip(r["tx_id"]))),
    ("seq", lambda r: r.update(seq=3)),
    ("seq and batch.seq", lambda r: (r.update(seq=3), r["batch"].update(seq=3))),
    ("index", lambda r: r.update(index=1)),
    ("index beyond tx_count", lambda r: r.update(index=5)),
    ("proof element", lambda r: r["proof"].__setitem__(0, flip(r["proof"][0]))),
    ("proof truncated", lambda r: r["proof"].pop()),
    ("proof extended", lambda r: r["proof"].append("00" * 32)),
    ("proof reordered", lambda r: r["proof"].reverse()),
    ("batch.chain_id", lambda r: r["batch"].update(chain_id="other")),
    ("batch.seq", lambda r: r["batch"].update(seq=3)),
    ("batch.time_ms", lambda r: r["batch"].update(time_ms=r["batch"]["time_ms"] + 1)),
    ("batch.tx_count", lambda r: r["batch"].update(tx_count=6)),
    ("batch.tx_root", lambda r: r["batch"].update(tx_root=flip(r["batch"]["tx_root"]))),
    ("certificate.view", lambda r: r["certificate"].update(view=0)),
    (
        "a signature",
        lambda r: r["certificate"]["signatures"].update(
            {first_sig_key(r): flip(r["certificate"]["signatures"][first_sig_key(r)])}
        ),
    ),
    ("a signature removed", lambda r: r["certificate"]["signatures"].pop(first_sig_key(r))),
    (
        "signer replaced by a non-validator",
        lambda r: r["certificate"]["signatures"].update(
            {signer("mallory").public_key: r["certificate"]["signatures"].pop(first_sig_key(r))}
        ),
    ),
    ("unknown receipt field", lambda r: r.update(extra=1)),
    ("missing receipt field", lambda r: r.pop("proof")),
    ("unknown batch field", lambda r: r["batch"].update(prev_hash="00" * 32)),
    ("unknown certificate field", lambda r: r["certificate"].update(seq=2)),
    ("float", lambda r: r.update(seq=2.0)),
    ("bool index", lambda r: r.update(index=True)),
    ("tx_id upper hex", lambda r: r.update(tx_id=r["tx_id"].upper())),
    ("proof not a list", lambda r: r.update(proof="00" * 32)),
    ("signatures not an object", lambda r: r["certificate"].update(signatures=[])),
    ("result shape", lambda r: r.update(result={"ok": True})),
    ("result ok with error", lambda r: r.update(result={"ok": True, "error": "x"})),
    ("batch not an object", lambda r: r.update(batch=None)),
]


@pytest.mark.parametrize(("name", "change"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampered_receipt_fails(
    name: str, change: Any, receipt: dict[str, Any], genesis: Genesis
) -> None:
    r = copy.deepcopy(receipt)
    change(r)
    failures = verify_receipt(r, genesis)
    assert failures, f"tampering with {name} went unnoticed"
    assert all(isinstance(f, str) and f for f in failures)


def test_result_is_proven(receipt: dict[str, Any], genesis: Genesis) -> None:
    # v2: the result is covered by result_proof and the execution certificate.
    r = copy.deepcopy(receipt)
    r["result"] = {"ok": False, "error": "cas_mismatch"}
    assert any("results_root" in f for f in verify_receipt(r, genesis))
    assert not spec_verifier.receipt_ok(genesis.document, r)


def test_receipt_without_execution_does_not_prove_the_result(
    receipt: dict[str, Any], genesis: Genesis
) -> None:
    r = copy.deepcopy(receipt)
    r["execution"] = None
    failures = verify_receipt(r, genesis)
    assert len(failures) == 1 and "execution is null" in failures[0]


def test_not_an_object() -> None:
    assert verify_receipt([], make_genesis()) == ["a receipt must be a JSON object"]


def test_another_genesis_rejects_it(receipt: dict[str, Any]) -> None:
    other_validators = make_genesis(validators=[signer(f"other-{i}") for i in range(4)])
    assert verify_receipt(receipt, other_validators)
    assert verify_receipt(receipt, make_genesis(chain_id="other"))


def test_extra_bad_signature_beside_a_quorum_invalidates(
    receipt: dict[str, Any], genesis: Genesis
) -> None:
    # Spec v2 §4/§5: certificates are strict; one invalid entry makes the whole one invalid.
    for field in ("certificate", "execution"):
        r = copy.deepcopy(receipt)
        missing = next(v for v in VALIDATORS if v.public_key not in r[field]["signatures"])
        r[field]["signatures"][missing.public_key] = "00" * 64
        assert verify_receipt(r, genesis), field
        assert not spec_verifier.receipt_ok(genesis.document, r)


def test_votes_signed_under_the_wrong_tag_do_not_count(genesis: Genesis) -> None:
    batch = Batch(genesis.chain_id, 1, 5, (tx(ALICE, 0, {"op": "delete", "key": "k"}),))
    body = commit_vote_body(batch.chain_id, 1, 0, batch.digest)
    wrong = Certificate(0, {v.public_key: v.sign(TAG_TX, body) for v in VALIDATORS})
    assert verify_committed(genesis, Committed(batch, wrong))
    assert verify_committed(genesis, Committed(batch, certify(genesis, batch))) == []


def test_verify_committed_needs_quorum_and_chain(genesis: Genesis) -> None:
    batch = Batch(genesis.chain_id, 1, 5, (tx(BOB, 0, {"op": "delete", "key": "k"}),))
    short = certify(genesis, batch, signers=VALIDATORS[: genesis.q - 1])
    failures = verify_committed(genesis, Committed(batch, short))
    assert any("quorum" in f for f in failures)
    other = Batch("other", 1, 5, batch.txs)
    assert verify_committed(genesis, Committed(other, certify(genesis, other)))
    body = commit_vote_body(genesis.chain_id, 1, 0, batch.digest)
    twice = Certificate(0, {VALIDATORS[0].public_key: VALIDATORS[0].sign(TAG_COMMIT, body)})
    assert verify_committed(genesis, Committed(batch, twice))
