"""The audit of the consensus records (issue 8, 7): reported apart from the ledger's failures.

The ledger's checks prove what was committed; the records are what this node signed and will
rely on when it restarts (``consensus.records``). A damaged record does not make the ledger
wrong, but the node refuses to start on it (``ledger.store``), so the audit names it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import lmdb

from consensus.output import Record
from crypto.signing import Ed25519Verifier
from ledger.genesis import Genesis
from ledger.records_check import RecordProblem, check_records

RECORD_FAILURES_KEPT_MAX = 1_000


@dataclass
class RecordsReport:
    checked: int = 0
    failures: list[RecordProblem] = field(default_factory=list)
    failures_total: int = 0
    complete: bool = True  # False: no genesis to check the signatures against

    @property
    def ok(self) -> bool:
        return self.failures_total == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "complete": self.complete,
            "checked": self.checked,
            "failures": [f.to_json() for f in self.failures],
            "failures_total": self.failures_total,
        }


def audit_records(
    txn: lmdb.Transaction, dbs: dict[str, Any], genesis: Genesis | None
) -> RecordsReport:
    """Check every record in the ``records`` database of one read transaction."""
    report = RecordsReport()
    records: list[Record] = []
    problems: list[RecordProblem] = []
    with txn.cursor(db=dbs["records"]) as cursor:
        for raw_key, raw_value in cursor:
            report.checked += 1
            try:
                key = bytes(raw_key).decode("utf-8")
            except UnicodeDecodeError:
                problems.append(RecordProblem(bytes(raw_key).hex(), "the key is not UTF-8"))
                continue
            try:
                value = json.loads(bytes(raw_value))
            except ValueError as exc:
                problems.append(RecordProblem(key, f"the value is not JSON ({exc})"))
                continue
            records.append(Record(key, value))
    if genesis is None:
        report.complete = False
    else:
        problems.extend(
            check_records(records, genesis.chain_id, genesis.validator_keys, Ed25519Verifier())
        )
    problems.sort(key=lambda p: p.key)
    report.failures = problems[:RECORD_FAILURES_KEPT_MAX]
    report.failures_total = len(problems)
    return report
