"""The end-of-scenario checks of scripts/chaos on made-up cluster answers (no processes): each
check can fail. Regression tests for what the first full runs showed: a Byzantine node banned by
its peers is not an honest ledger that must catch up; an equivocation sent to one witness is
evidence on that witness only; a Byzantine node that never acted proves nothing; evidence must
verify; the twins fork check finds differing blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consensus.messages import PrePrepare, sign_message
from ledger.evidence import EvidenceDetector
from tests.adversary.scenario import Report, Spec, _check_evidence
from tests.adversary.twins import find_fork
from tests.ledger.helpers import CHAIN_ID, VALIDATORS, genesis_document, make_genesis

GENESIS = make_genesis()
KEYS = [v.public_key for v in VALIDATORS]
D1, D2 = "ab" * 32, "cd" * 32


class FakeCluster:
    def __init__(self, workdir: Path, evidence: dict[int, list[Any]]) -> None:
        self.dir = workdir
        self.pubkeys = KEYS
        self.names = [f"node{i}" for i in range(4)]
        self.evidence = evidence
        self.blocks: dict[int, dict[int, str]] = {}
        self.head: dict[int, tuple[int, str] | None] = {}
        (workdir / "genesis.json").write_text(json.dumps(genesis_document()))

    def get(self, i: int, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
        if path == "/v1/evidence":
            return 200, {"evidence": self.evidence.get(i, [])}
        seq = int(path.rsplit("/", 1)[1])
        return 200, {"hash": self.blocks[i][seq]}

    def heads(self, nodes: Any) -> dict[int, tuple[int, str] | None]:
        return {i: self.head[i] for i in nodes}


def _pre_prepare_evidence() -> dict[str, Any]:
    """Node0 (Byzantine) signed two PRE-PREPAREs for view 0, seq 1."""
    detector = EvidenceDetector(GENESIS)
    found = None
    for digest in (D1, D2):
        wire = sign_message(VALIDATORS[0], PrePrepare(CHAIN_ID, 0, 1, digest, None)).to_wire()
        found = detector.observe_message({**wire, "batch": None}) or found
    assert found is not None
    return found.to_json()


def _record(path: Path, *lines: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


SPEC = Spec("t", "t", byzantine=(0, "equivocating-primary"), evidence_kind="pre_prepare")


def test_an_equivocation_sent_to_a_witness_is_expected_on_the_witness_only(tmp_path: Path) -> None:
    record = _record(
        tmp_path / "r.jsonl", {"kind": "pre_prepare", "view": 0, "seq": 1, "to": KEYS[3]}
    )
    evidence = _pre_prepare_evidence()
    report = Report("t", 1)
    _check_evidence(SPEC, FakeCluster(tmp_path, {3: [evidence]}), record, report)  # type: ignore[arg-type]
    assert report.evidence_ok and report.acts == 1, report.notes
    # Missing on the witness: caught.
    report = Report("t", 1)
    _check_evidence(SPEC, FakeCluster(tmp_path, {2: [evidence]}), record, report)  # type: ignore[arg-type]
    assert not report.evidence_ok
    # A broadcast equivocation ("to": null) must be evidence on every honest node.
    record = _record(tmp_path / "b.jsonl", {"kind": "pre_prepare", "view": 0, "seq": 1, "to": None})
    report = Report("t", 1)
    _check_evidence(SPEC, FakeCluster(tmp_path, {3: [evidence]}), record, report)  # type: ignore[arg-type]
    assert not report.evidence_ok
    report = Report("t", 1)
    everywhere = {i: [evidence] for i in (1, 2, 3)}
    _check_evidence(SPEC, FakeCluster(tmp_path, everywhere), record, report)  # type: ignore[arg-type]
    assert report.evidence_ok, report.notes


def test_evidence_that_does_not_verify_or_accuses_an_honest_node_fails(tmp_path: Path) -> None:
    record = _record(
        tmp_path / "r.jsonl", {"kind": "pre_prepare", "view": 0, "seq": 1, "to": KEYS[3]}
    )
    evidence = _pre_prepare_evidence()
    forged = {**evidence, "b": {**evidence["b"], "sig": "00" * 64}}
    report = Report("t", 1)
    _check_evidence(SPEC, FakeCluster(tmp_path, {3: [forged]}), record, report)  # type: ignore[arg-type]
    assert not report.evidence_ok and "fails" in report.notes[-1]
    # The same evidence, but the scenario's Byzantine node is node1: node0 is honest here.
    spec = Spec("t", "t", byzantine=(1, "forger"))
    report = Report("t", 1)
    _check_evidence(spec, FakeCluster(tmp_path, {3: [evidence]}), record, report)  # type: ignore[arg-type]
    assert not report.evidence_ok and "honest" in report.notes[-1]


def test_a_byzantine_node_that_never_acted_fails_the_scenario(tmp_path: Path) -> None:
    spec = Spec("t", "t", byzantine=(1, "lying-heads"))
    report = Report("t", 1)
    _check_evidence(spec, FakeCluster(tmp_path, {}), tmp_path / "none.jsonl", report)  # type: ignore[arg-type]
    assert report.acts == 0 and report.must_act and report.evidence_ok
    report.linearizable = report.per_node = "linearizable"
    report.ledgers_equal = report.audit_ok = True
    report.acked_missing = report.bad_proofs = 0
    report.resumed_after_fault_s = report.recovered_after_heal_s = 1.0
    report.converged_after_load_s = 0.0
    assert not report.passed
    report.acts = 1
    assert report.passed


def test_fork_check(tmp_path: Path) -> None:
    cluster = FakeCluster(tmp_path, {})
    cluster.head = {0: (5, "x"), 1: (3, "y"), 2: None}
    cluster.blocks = {0: {3: "h"}, 1: {3: "h"}}
    assert find_fork(cluster, [0, 1, 2]) is None  # type: ignore[arg-type]
    cluster.blocks[1][3] = "other"
    assert find_fork(cluster, [0, 1, 2]) == "node0 and node1 hold different blocks at seq 3"  # type: ignore[arg-type]
