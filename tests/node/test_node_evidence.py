"""The node's evidence: detected from peer messages and execution votes, kept in the ledger,
counted, logged with the validator's name and served at GET /v1/evidence."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from consensus.messages import Commit, PrePrepare, sign_message
from ledger.evidence import verify_evidence
from ledger.execution import sign_execution_vote
from node.evidence import NodeEvidence
from tests.api.harness import ApiHarness, run
from tests.ledger.helpers import VALIDATORS

BYZ = VALIDATORS[1]
D1, D2 = "11" * 32, "22" * 32


@pytest.fixture
def harness(tmp_path: Path) -> Any:
    h = ApiHarness(tmp_path / "ledger")
    yield h
    h.close()


def commit_wire(harness: ApiHarness, digest: str, seq: int = 3) -> dict[str, Any]:
    return sign_message(BYZ, Commit(harness.genesis.chain_id, 0, seq, digest)).to_wire()


def test_detected_evidence_is_stored_counted_logged_and_served(
    harness: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    evidence = NodeEvidence(harness.genesis, harness.store, harness.metrics.registry)
    harness.context.evidence = evidence.all
    assert evidence.observe_message(commit_wire(harness, D1)) is None
    with caplog.at_level(logging.WARNING, logger="phalanx.evidence"):
        found = evidence.observe_message(commit_wire(harness, D2))
        assert found is not None
        assert evidence.observe_message(commit_wire(harness, D2)) is None  # reported once
    [record] = [r for r in caplog.records if r.getMessage() == "misbehaviour_evidence"]
    assert record.__dict__["validator_name"] == "node1"
    assert record.__dict__["kind"] == "commit"

    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/v1/evidence")
        assert answer.status == 200
        body = await answer.json()
        assert len(body["evidence"]) == 1
        verify_evidence(body["evidence"][0], harness.genesis)  # a third party accepts it
        metrics = await (await client.get("/metrics")).text()
        assert 'phalanx_evidence_total{kind="commit"} 1.0' in metrics
        assert 'phalanx_evidence_total{kind="pre_prepare"} 0.0' in metrics
        bad = await client.get("/v1/evidence?limit=3")
        assert bad.status == 400 and (await bad.json())["error"] == "invalid_query"

    run(harness, scenario)


def test_evidence_survives_a_restart(tmp_path: Path) -> None:
    first = ApiHarness(tmp_path / "ledger")
    evidence = NodeEvidence(first.genesis, first.store)
    chain_id = first.genesis.chain_id
    for digest in (D1, D2):
        pre = sign_message(BYZ, PrePrepare(chain_id, 2, 9, digest, None)).to_wire()
        evidence.observe_message(pre)
    assert len(evidence) == 1
    first.close()
    second = ApiHarness(tmp_path / "ledger")
    try:
        again = NodeEvidence(second.genesis, second.store)
        [item] = again.all()
        assert item["kind"] == "pre_prepare" and item["validator"] == BYZ.public_key
    finally:
        second.close()


def test_execution_votes_are_watched(harness: ApiHarness) -> None:
    evidence = NodeEvidence(harness.genesis, harness.store)
    chain_id = harness.genesis.chain_id
    for root in (D1, D2):
        vote = sign_execution_vote(BYZ, chain_id, 4, D1, root, D1)
        found = evidence.observe_execution_vote({"type": "execution-vote", "vote": vote.to_wire()})
    assert found is not None and found.kind == "execution"
    assert evidence.observe_execution_vote({"type": "execution-vote", "vote": "junk"}) is None


def test_no_evidence_source_serves_an_empty_list(harness: ApiHarness) -> None:
    async def scenario(client: TestClient[Any, Any]) -> None:
        answer = await client.get("/v1/evidence")
        assert answer.status == 200 and await answer.json() == {"evidence": []}

    run(harness, scenario)
