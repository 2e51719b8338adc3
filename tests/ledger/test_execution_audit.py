"""``phalanx audit`` and the spec §5 roots: it replays every block's state and results roots,
checks them against the stored ones and the stored execution certificates, and the stored state
tree against the replay; each damage is reported with its seq."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.audit import audit_ledger
from ledger.audit.checks import LedgerReport
from tests.audit.builder import build_ledger, flip_bit, rewrite, seq8


def _checks(report: LedgerReport) -> set[tuple[int | None, str]]:
    return {(f.seq, f.check) for f in report.failures}


def test_sound_ledger_checks_every_execution_certificate(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "l")
    report = audit_ledger(built.path)
    assert report.ok, report.failures
    assert report.executions == report.blocks == 7


def test_altered_stored_roots_are_reported_with_their_seq(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "l")
    rewrite(built.path, "block_roots", seq8(3), flip_bit(5))  # state_root
    rewrite(built.path, "block_roots", seq8(5), flip_bit(40))  # results_root
    failures = audit_ledger(built.path).failures
    assert any(f.seq == 3 and f.check == "roots" and "state_root" in f.detail for f in failures)
    assert any(f.seq == 5 and f.check == "roots" and "results_root" in f.detail for f in failures)


def test_altered_result_breaks_the_certified_results_root(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "l")
    key = seq8(2)

    def certify_other_result(value: bytes) -> bytes:
        certificate = json.loads(value)
        certificate["results_root"] = "00" * 32
        return json.dumps(certificate, separators=(",", ":"), sort_keys=True).encode()

    rewrite(built.path, "block_execution", key, certify_other_result)
    failures = audit_ledger(built.path).failures
    assert any(
        f.seq == 2 and f.check == "execution" and "results_root" in f.detail for f in failures
    )


def test_a_bad_vote_in_a_stored_execution_certificate_fails_it(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "l")

    def spoil_one_vote(value: bytes) -> bytes:
        certificate = json.loads(value)
        first = sorted(certificate["signatures"])[0]
        certificate["signatures"][first] = "00" * 64
        return json.dumps(certificate, separators=(",", ":"), sort_keys=True).encode()

    rewrite(built.path, "block_execution", seq8(4), spoil_one_vote)
    assert (4, "execution") in _checks(audit_ledger(built.path))


def test_altered_state_tree_is_reported(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "l")
    root_position = (0).to_bytes(2, "big")
    rewrite(built.path, "state_tree", root_position, flip_bit(10))
    assert (None, "state_tree") in _checks(audit_ledger(built.path))
