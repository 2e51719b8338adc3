"""``phalanx audit verify-evidence FILE --genesis G [--json]``: check evidence (spec §7).

FILE holds one evidence object, or ``{"evidence": [...]}`` as ``GET /v1/evidence`` answers. Every
item must prove that a genesis validator signed two conflicting statements (see
``ledger/evidence.py`` for the rules of each kind); one item that does not makes the file fail.
An empty list proves nothing and fails too.

``--json`` prints ``{"ok", "items": [{"index", "ok", "kind", "validator", "validator_name",
"slot", "failure"}], "checks", "tool", "generated_at"}``. Exit codes as ``phalanx audit``: 0 every
item verified, 1 something failed, 2 usage (unreadable file or genesis).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crypto.canonical import CanonicalJsonError, parse_json
from ledger.evidence import RULES, EvidenceError, evidence_items, verify_evidence
from ledger.genesis import Genesis

VERIFY_EVIDENCE = "verify-evidence"
EVIDENCE_CHECKS = (
    "evidence_shape",
    "genesis_validator",
    "chain_id",
    "tag",
    "conflict",
    "signatures",
)


def verify_evidence_file(
    path: Path,
    genesis: Genesis,
    as_json: bool,
    emit: Callable[[str], None],
    provenance: dict[str, Any],
) -> bool:
    """Verify every item of ``path`` and report on stdout through ``emit``; True if all are
    valid. Raises OSError if the file cannot be read."""
    data = path.read_bytes()
    try:
        items = evidence_items(parse_json(data))
        problem = None if items else "the file holds no evidence (an empty list proves nothing)"
    except (CanonicalJsonError, EvidenceError) as exc:
        items, problem = [], f"the file is not Phalanx evidence JSON: {exc}"
    reports = [_check(index, item, genesis) for index, item in enumerate(items)]
    ok = problem is None and all(r["ok"] for r in reports)
    if as_json:
        result = {
            "ok": ok,
            "failure": problem,
            "items": reports,
            "checks": list(EVIDENCE_CHECKS),
            **provenance,
        }
        emit(json.dumps(result, indent=2) + "\n")
        return ok
    lines = [] if problem is None else [f"evidence {path} is INVALID: {problem}"]
    for r in reports:
        who = r["validator_name"] or (r["validator"] or "?")[:16]
        if r["ok"]:
            lines.append(f"item {r['index']}: valid {r['kind']} evidence against {who} {r['slot']}")
        else:
            lines.append(f"item {r['index']}: INVALID: {r['failure']}")
    verdict = "valid" if ok else "INVALID"
    lines.append(
        f"evidence {verdict}: {sum(r['ok'] for r in reports)}/{len(reports)} items verified"
    )
    emit("\n".join(lines) + "\n")
    return ok


def _check(index: int, item: Any, genesis: Genesis) -> dict[str, Any]:
    report: dict[str, Any] = {
        "index": index,
        "ok": False,
        "kind": item.get("kind") if isinstance(item, dict) else None,
        "validator": item.get("validator") if isinstance(item, dict) else None,
        "validator_name": None,
        "slot": None,
        "failure": None,
    }
    try:
        evidence = verify_evidence(item, genesis)
    except EvidenceError as exc:
        report["failure"] = str(exc)
        return report
    rule = RULES[evidence.kind]
    report.update(
        ok=True,
        validator_name=genesis.validator_name(evidence.validator),
        slot={name: evidence.a.object[name] for name in rule.slot},
    )
    return report
