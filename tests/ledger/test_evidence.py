"""Misbehaviour evidence (spec §7): the third-party verifier, the detector a node feeds with peer
messages, and the bounded durable store."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch
from consensus.messages import (
    Commit,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    sign_message,
)
from crypto.signing import TAG_COMMIT, TAG_EXECUTION, Ed25519Signer
from ledger.evidence import (
    NESTED_STATEMENTS_MAX,
    RULES,
    Evidence,
    EvidenceDetector,
    EvidenceError,
    EvidenceStore,
    Statement,
    describe,
    verify_evidence,
)
from ledger.genesis import Genesis
from ledger.store import LedgerStore
from tests.ledger.helpers import CHAIN_ID, VALIDATORS, make_genesis, signer

GENESIS = make_genesis()
BYZ = VALIDATORS[1]
D1, D2 = "11" * 32, "22" * 32


def signed(who: Ed25519Signer, kind: str, **obj: Any) -> dict[str, Any]:
    tag = RULES[kind].tag
    body = {"chain_id": CHAIN_ID, **obj}
    return {"tag": tag, "object": body, "sig": who.sign(tag, body)}


def vote(kind: str, who: Ed25519Signer = BYZ, **fields: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"view": 0, "seq": 5, "digest": D1}
    if kind == "execution":
        defaults = {"seq": 5, "block_hash": D1, "state_root": D1, "results_root": D1}
    return signed(who, kind, **{**defaults, **fields})


def evidence(kind: str, a: dict[str, Any], b: dict[str, Any], who: Ed25519Signer = BYZ) -> Any:
    return {"kind": kind, "validator": who.public_key, "a": a, "b": b}


def conflicting(kind: str) -> Any:
    if kind == "execution":
        return evidence(kind, vote(kind), vote(kind, state_root=D2))
    return evidence(kind, vote(kind), vote(kind, digest=D2))


# -- the verifier ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(RULES))
def test_valid_evidence_of_each_kind_verifies(kind: str) -> None:
    checked = verify_evidence(conflicting(kind), GENESIS)
    assert checked.kind == kind and checked.validator == BYZ.public_key
    assert "node1" in describe(checked, GENESIS)


@pytest.mark.parametrize("field", ["block_hash", "state_root", "results_root"])
def test_execution_conflict_in_any_root(field: str) -> None:
    changed: dict[str, Any] = {field: D2}
    verify_evidence(evidence("execution", vote("execution"), vote("execution", **changed)), GENESIS)


def refused(item: Any, genesis: Genesis = GENESIS) -> str:
    with pytest.raises(EvidenceError) as info:
        verify_evidence(item, genesis)
    return str(info.value)


def test_forged_signature_is_refused() -> None:
    item = conflicting("commit")
    item["b"] = vote("commit", who=VALIDATORS[2], digest=D2)  # signed by another validator
    assert "b.sig is not validator node1" in refused(item)
    item = conflicting("commit")
    sig = item["a"]["sig"]
    item["a"]["sig"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert "a.sig" in refused(item)


def test_non_conflicting_pairs_are_refused() -> None:
    same = evidence("commit", vote("commit"), vote("commit"))
    assert "do not conflict" in refused(same)
    other_view = evidence("commit", vote("commit"), vote("commit", view=1, digest=D2))
    assert "not for the same slot" in refused(other_view)
    other_seq = evidence("execution", vote("execution"), vote("execution", seq=6, state_root=D2))
    assert "not for the same slot" in refused(other_seq)


def test_foreign_validator_is_refused() -> None:
    stranger = signer("not-a-validator")
    item = evidence(
        "commit", vote("commit", stranger), vote("commit", stranger, digest=D2), stranger
    )
    assert "is not a validator" in refused(item)


def test_wrong_chain_is_refused() -> None:
    other = make_genesis(chain_id="another-chain")
    assert "not this genesis's" in refused(conflicting("commit"), other)


def test_mismatched_tag_is_refused() -> None:
    # Two statements that conflict as objects but were signed for different purposes.
    item = evidence("commit", vote("commit"), vote("prepare", digest=D2))
    assert "b.tag must be 'phalanx/commit/v1'" in refused(item)
    item = conflicting("prepare")
    item["kind"] = "pre_prepare"
    assert "a.tag must be 'phalanx/pre-prepare/v1'" in refused(item)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e.update(kind="checkpoint"), "kind must be one of"),
        (lambda e: e.update(extra=1), "unexpected fields ['extra']"),
        (lambda e: e["a"]["object"].update(seq=True), "a.object.seq must be an integer"),
        (lambda e: e["a"]["object"].update(seq=0), "a.object.seq must be an integer"),
        (lambda e: e["b"]["object"].update(digest="AB" * 32), "b.object.digest must be 64"),
        (lambda e: e["b"]["object"].pop("view"), "missing fields ['view']"),
        (lambda e: e.update(validator="zz"), "validator must be 64"),
    ],
)
def test_malformed_evidence_is_refused(mutate: Any, message: str) -> None:
    item = copy.deepcopy(conflicting("commit"))
    mutate(item)
    assert message in refused(item)


def test_pair_order_does_not_change_the_evidence() -> None:
    item = conflicting("commit")
    swapped = {**item, "a": item["b"], "b": item["a"]}
    assert verify_evidence(item, GENESIS).to_json() == verify_evidence(swapped, GENESIS).to_json()
    assert verify_evidence(item, GENESIS).key() == verify_evidence(swapped, GENESIS).key()


# -- the detector ---------------------------------------------------------------------------


def commit_wire(who: Ed25519Signer, digest: str, seq: int = 5, view: int = 0) -> dict[str, Any]:
    return sign_message(who, Commit(CHAIN_ID, view, seq, digest)).to_wire()


def test_detector_finds_conflicting_commits_once() -> None:
    detector = EvidenceDetector(GENESIS)
    assert detector.observe_message(commit_wire(BYZ, D1)) is None
    assert detector.observe_message(commit_wire(BYZ, D1)) is None  # a retransmission
    assert detector.observe_message(commit_wire(BYZ, D1, view=1)) is None  # another view
    found = detector.observe_message(commit_wire(BYZ, D2))
    assert found is not None and found.kind == "commit"
    verify_evidence(found.to_json(), GENESIS)  # what it returns is what a third party accepts
    assert detector.observe_message(commit_wire(BYZ, "33" * 32)) is None  # reported already
    # Honest validators voting for different digests at one slot are not evidence.
    assert detector.observe_message(commit_wire(VALIDATORS[2], D2)) is None


def test_detector_on_real_pre_prepares_and_prepares() -> None:
    detector = EvidenceDetector(GENESIS)
    batch_a = Batch(CHAIN_ID, 5, 1_764_000_000_000, ())
    batch_b = Batch(CHAIN_ID, 5, 0, ())
    for batch in (batch_a, batch_b):
        pre = sign_message(BYZ, PrePrepare(CHAIN_ID, 0, 5, batch.digest, batch)).to_wire()
        found = detector.observe_message(pre)
    assert found is not None and found.kind == "pre_prepare"
    assert found.a.object["digest"] != found.b.object["digest"]
    verify_evidence(found.to_json(), GENESIS)
    for digest in (D1, D2):
        found = detector.observe_message(
            sign_message(BYZ, Prepare(CHAIN_ID, 0, 5, digest)).to_wire()
        )
    assert found is not None and found.kind == "prepare"


def test_detector_is_not_fooled_by_forgeries() -> None:
    detector = EvidenceDetector(GENESIS)
    forged = commit_wire(BYZ, D1)
    forged["signature"] = VALIDATORS[3].sign(TAG_COMMIT, {"x": 1})
    # A forgery in BYZ's name is remembered first; BYZ's genuine vote then conflicts with it,
    # is no evidence, and replaces it...
    assert detector.observe_message(forged) is None
    assert detector.observe_message(commit_wire(BYZ, D2)) is None
    # ...so a genuine equivocation is still caught.
    found = detector.observe_message(commit_wire(BYZ, D1))
    assert found is not None
    assert {found.a.object["digest"], found.b.object["digest"]} == {D1, D2}
    # A forged second statement makes no evidence either.
    other = EvidenceDetector(GENESIS)
    assert other.observe_message(commit_wire(BYZ, D1)) is None
    forged_d2 = commit_wire(BYZ, D2)
    forged_d2["signature"] = forged["signature"]
    assert other.observe_message(forged_d2) is None


def test_detector_ignores_outsiders_and_garbage() -> None:
    detector = EvidenceDetector(GENESIS)
    stranger = signer("stranger")
    assert detector.observe_message(commit_wire(stranger, D1)) is None
    assert detector.observe_message(commit_wire(stranger, D2)) is None
    garbage: list[Any] = [{}, {"type": "commit"}, {"type": "view_change"}, {"type": 7}]
    garbage += [{"type": ["commit"]}, [], "commit", {**commit_wire(BYZ, D1), "seq": [1]}]
    for wire in garbage:
        assert detector.observe_message(wire) is None
    other_chain = sign_message(BYZ, Commit("other", 0, 5, D1)).to_wire()
    assert detector.observe_message(other_chain) is None


def test_detector_memory_is_bounded_per_validator() -> None:
    detector = EvidenceDetector(GENESIS, slots_max=2)
    for seq in (1, 2, 3):  # slot 1 is forgotten when slot 3 arrives
        detector.observe_message(commit_wire(BYZ, D1, seq=seq))
    assert detector.observe_message(commit_wire(BYZ, D2, seq=1)) is None
    assert detector.observe_message(commit_wire(BYZ, D2, seq=3)) is not None


def test_detector_takes_execution_votes() -> None:
    detector = EvidenceDetector(GENESIS)
    for root in (D1, D2):
        raw = vote("execution", results_root=root)
        found = detector.observe(
            Statement(TAG_EXECUTION, raw["object"], raw["sig"], BYZ.public_key)
        )
    assert found is not None and found.kind == "execution"


# -- the store ------------------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    store = LedgerStore.open(tmp_path / "ledger", GENESIS)
    yield store
    store.close()


def make_evidence(who: Ed25519Signer, seq: int) -> Evidence:
    item = evidence(
        "commit", vote("commit", who, seq=seq), vote("commit", who, seq=seq, digest=D2), who
    )
    return verify_evidence(item, GENESIS)


def test_store_is_durable_and_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with LedgerStore.open(path, GENESIS) as ledger:
        seen: list[Evidence] = []
        store = EvidenceStore(ledger, on_stored=seen.append)
        assert store.add(make_evidence(BYZ, 1))
        assert not store.add(make_evidence(BYZ, 1))  # the same slot again
        assert len(store) == 1 and len(seen) == 1
    with LedgerStore.open(path, GENESIS) as ledger:
        again = EvidenceStore(ledger)
        assert len(again) == 1
        [item] = again.all()
        assert verify_evidence(item, GENESIS).validator == BYZ.public_key
        assert not again.add(make_evidence(BYZ, 1))


def test_store_bounds(ledger: LedgerStore) -> None:
    store = EvidenceStore(ledger, per_validator_max=2, total_max=3)
    assert store.add(make_evidence(BYZ, 1)) and store.add(make_evidence(BYZ, 2))
    assert not store.add(make_evidence(BYZ, 3))  # BYZ's quota is full...
    assert store.add(make_evidence(VALIDATORS[2], 1))  # ...not another validator's
    assert not store.add(make_evidence(VALIDATORS[3], 1))  # the total is full
    assert len(store) == 3 and store.dropped == 2
    assert len(EvidenceStore(ledger).all()) == 3


# -- phalanx audit verify-evidence ----------------------------------------------------------


def run_cli(tmp_path: Path, document: Any, *extra: str) -> tuple[int, str, str]:
    genesis_path = tmp_path / "genesis.json"
    genesis_path.write_bytes(GENESIS.canonical_bytes())
    path = tmp_path / "evidence.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    argv = [sys.executable, "-m", "node.cli", "audit", "verify-evidence", str(path), *extra]
    done = subprocess.run(
        [*argv, "--genesis", str(genesis_path)], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def test_cli_verifies_one_object_and_a_list(tmp_path: Path) -> None:
    code, out, _ = run_cli(tmp_path, conflicting("commit"))
    assert code == 0, out
    assert "valid commit evidence against node1" in out
    listed = {"evidence": [conflicting(k) for k in sorted(RULES)]}
    code, out, _ = run_cli(tmp_path, listed, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and len(report["items"]) == 4
    assert {i["validator_name"] for i in report["items"]} == {"node1"}


def test_cli_refuses_if_any_item_fails(tmp_path: Path) -> None:
    forged = conflicting("commit")
    forged["b"]["sig"] = forged["a"]["sig"]
    code, out, _ = run_cli(tmp_path, {"evidence": [conflicting("prepare"), forged]})
    assert code == 1
    assert "item 0: valid" in out and "item 1: INVALID: b.sig" in out
    code, out, _ = run_cli(tmp_path, {"evidence": []})
    assert code == 1 and "holds no evidence" in out
    code, out, _ = run_cli(tmp_path, "not json")
    assert code == 1 and "not Phalanx evidence JSON" in out


def test_cli_usage_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "verify-evidence", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "needs --genesis FILE" in done.stderr
    code, _, err = run_cli(tmp_path, conflicting("commit"), str(tmp_path / "second.json"))
    assert code == 2 and "exactly one EVIDENCE.json" in err


# -- statements relayed inside VIEW-CHANGE and NEW-VIEW -------------------------------------


def _pre_prepare(who: Ed25519Signer, view: int, seq: int, digest: str) -> PrePrepare:
    return sign_message(who, PrePrepare(CHAIN_ID, view, seq, digest, None))


def test_nested_pre_prepare_in_a_view_change_conflicts_with_the_one_seen() -> None:
    detector = EvidenceDetector(GENESIS)
    # BYZ, primary of view 0, sent us digest D1 for seq 5...
    assert detector.observe_message(_pre_prepare(BYZ, 0, 5, D1).to_wire()) is None
    # ...and an honest replica's VIEW-CHANGE shows it proposed D2 for the same slot elsewhere.
    prepares = tuple(sign_message(v, Prepare(CHAIN_ID, 0, 5, D2)) for v in VALIDATORS[2:4])
    cert = PreparedCert(_pre_prepare(BYZ, 0, 5, D2), prepares)
    honest = VALIDATORS[2]
    view_change = sign_message(honest, ViewChange(CHAIN_ID, 1, 0, "00" * 32, (), (cert,)))
    assert detector.observe_message(view_change.to_wire()) is None  # not a vote itself
    [found] = detector.observe_nested(view_change.to_wire())
    assert found.kind == "pre_prepare" and found.validator == BYZ.public_key
    verify_evidence(found.to_json(), GENESIS)


def test_new_primary_reproposal_conflicting_with_its_pre_prepare() -> None:
    detector = EvidenceDetector(GENESIS)
    new_view = sign_message(BYZ, NewView(CHAIN_ID, 1, (), (_pre_prepare(BYZ, 1, 6, D1),)))
    assert detector.observe_nested(new_view.to_wire()) == []
    found = detector.observe_message(_pre_prepare(BYZ, 1, 6, D2).to_wire())
    assert found is not None and found.kind == "pre_prepare"


def test_nested_statements_are_bounded() -> None:
    detector = EvidenceDetector(GENESIS)
    many = tuple(sign_message(VALIDATORS[2], Prepare(CHAIN_ID, 0, 5, D1)) for _ in range(2))
    certs = tuple(
        PreparedCert(_pre_prepare(BYZ, 0, seq, D1), many) for seq in range(1, NESTED_STATEMENTS_MAX)
    )
    view_change = sign_message(VALIDATORS[3], ViewChange(CHAIN_ID, 1, 0, "00" * 32, (), certs))
    detector.observe_nested(view_change.to_wire())
    remembered = sum(len(slots) for slots in detector._seen.values())
    # 3 votes per certificate were offered; at most the bound were looked at.
    assert remembered <= NESTED_STATEMENTS_MAX
    # The first certificates were looked at: a conflict with one of them is caught.
    assert detector.observe_message(_pre_prepare(BYZ, 0, 1, D2).to_wire()) is not None
