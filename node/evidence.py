"""The node's misbehaviour evidence (spec §7): what it detects, keeps, counts, logs and serves.

The runtime hands :meth:`NodeEvidence.observe_message` every peer message before the replica
sees it, and execution votes to :meth:`NodeEvidence.observe_execution_vote`; the detector
(``ledger.evidence.EvidenceDetector``) finds conflicting signed statements, and each new piece
of evidence is stored durably in the ledger (bounded, ``ledger.evidence.EvidenceStore``), counted
in ``phalanx_evidence_total{kind}`` and logged once as ``misbehaviour_evidence`` with the
validator's name. ``GET /v1/evidence`` answers :meth:`NodeEvidence.all`.

Observing never raises into the runtime: evidence is a by-product, and a failure to store it
(the ledger full, say) is logged while the node goes on; the ledger write path reports such
failures on its own when it matters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from crypto.signing import TAG_EXECUTION
from ledger.evidence import (
    RULES,
    Evidence,
    EvidenceDetector,
    EvidenceStore,
    EvidenceTable,
    Statement,
    describe,
)
from ledger.execution import ExecutionVote
from ledger.genesis import Genesis

_log = logging.getLogger("phalanx.evidence")


class NodeEvidence:
    def __init__(
        self, genesis: Genesis, table: EvidenceTable, registry: CollectorRegistry | None = None
    ) -> None:
        self._genesis = genesis
        self._detector = EvidenceDetector(genesis)
        self._store = EvidenceStore(table)
        self._counter: Counter | None = None
        if registry is not None:
            self._counter = Counter(
                "phalanx_evidence",
                "Misbehaviour evidence this node detected and stored, by kind (spec §7)",
                ["kind"],
                registry=registry,
            )
            for kind in RULES:
                self._counter.labels(kind=kind)

    def observe_message(self, wire: Mapping[str, Any]) -> Evidence | None:
        """A peer message as received (and the votes a VIEW-CHANGE or NEW-VIEW carries); returns
        the message's own evidence when it newly proves misbehaviour."""
        try:
            found = self._detector.observe_message(wire)
            nested = self._detector.observe_nested(wire)
        except Exception:  # pragma: no cover - defensive: never let evidence stop consensus
            _log.exception("evidence_detector_failed")
            return None
        for evidence in nested:
            self._keep(evidence)
        return self._keep(found)

    def observe(self, statement: Statement) -> Evidence | None:
        """A signed statement from elsewhere (an execution vote)."""
        return self._keep(self._detector.observe(statement))

    def observe_execution_vote(self, wire: Mapping[str, Any]) -> Evidence | None:
        """A peer's ``execution-vote`` message (``node.execution_votes``); malformed ones are
        ignored here (that module drops and counts them)."""
        try:
            vote = ExecutionVote.from_wire(wire.get("vote"))
        except ValueError:
            return None
        body = vote.body(self._genesis.chain_id)
        return self.observe(Statement(TAG_EXECUTION, body, vote.signature, vote.validator))

    def all(self) -> list[dict[str, Any]]:
        return self._store.all()

    def __len__(self) -> int:
        return len(self._store)

    def _keep(self, found: Evidence | None) -> Evidence | None:
        if found is None:
            return None
        try:
            stored = self._store.add(found)
        except Exception:
            _log.exception("evidence_not_stored", extra={"kind": found.kind})
            return None
        if not stored:
            return None  # known already, or past the bound (counted by the store)
        if self._counter is not None:
            self._counter.labels(kind=found.kind).inc()
        _log.warning(
            "misbehaviour_evidence",
            extra={
                "kind": found.kind,
                "validator": found.validator,
                "validator_name": self._genesis.validator_name(found.validator),
                "detail": describe(found, self._genesis),
            },
        )
        return found
