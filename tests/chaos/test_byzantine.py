"""The Byzantine behaviours, on real signed messages (no processes): what each sends instead,
what it records, and that the equivocations it commits are evidence the detector finds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from consensus.batch import Batch
from consensus.messages import Commit, Prepare, PrePrepare, decode_message, sign_message
from crypto.signing import TAG_EXECUTION
from ledger.evidence import EvidenceDetector, Statement, verify_evidence
from ledger.execution import ExecutionVote, sign_execution_vote
from tests.adversary.byzantine import BEHAVIOURS, Out
from tests.ledger.helpers import ALICE, CHAIN_ID, VALIDATORS, make_genesis, tx

GENESIS = make_genesis()
ME = VALIDATORS[0]
PEERS = sorted(v.public_key for v in VALIDATORS[1:])
D = "ab" * 32


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str | None, dict[str, Any]]] = []

    def out(self, record: Path | None = None, witness: bool = False) -> Out:
        return Out(
            send=lambda to, wire: self.sent.append((to, wire)),
            broadcast=lambda wire: self.sent.append((None, wire)),
            signer=ME,
            peers=PEERS,
            rng=random.Random(1),
            chain_id=CHAIN_ID,
            witness=witness,
            record_path=record,
        )


def commit() -> dict[str, Any]:
    return sign_message(ME, Commit(CHAIN_ID, 0, 4, D)).to_wire()


def test_honest_silent_selective() -> None:
    for name, expected in (("honest", [None]), ("silent", []), ("selective", [PEERS[0]])):
        wire = Wire()
        BEHAVIOURS[name](wire.out(), None, commit())
        assert [to for to, _ in wire.sent] == expected, name
    relay = {"type": "relay-txs", "txs": []}
    wire = Wire()
    BEHAVIOURS["silent"](wire.out(), None, relay)
    assert wire.sent == [(None, relay)]  # only consensus is withheld


def test_wrong_digest_signs_another_digest() -> None:
    wire = Wire()
    BEHAVIOURS["wrong-digest"](wire.out(), None, commit())
    [(_, sent)] = wire.sent
    message = decode_message(sent)
    assert message.digest != D and sent["signature"] != commit()["signature"]  # type: ignore[union-attr]


def test_equivocating_votes_are_recorded_and_are_evidence(tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    for kind, message in (
        ("commit", Commit(CHAIN_ID, 0, 4, D)),
        ("prepare", Prepare(CHAIN_ID, 0, 4, D)),
    ):
        wire = Wire()
        BEHAVIOURS[f"equivocate-{kind}s"](
            wire.out(record), None, sign_message(ME, message).to_wire()
        )
        assert len(wire.sent) == 2 and all(to is None for to, _ in wire.sent)
        detector = EvidenceDetector(GENESIS)
        found = [detector.observe_message(sent) for _, sent in wire.sent]
        assert found[0] is None and found[1] is not None and found[1].kind == kind
        verify_evidence(found[1].to_json(), GENESIS)
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert lines == [
        {"kind": "commit", "view": 0, "seq": 4, "to": None},
        {"kind": "prepare", "view": 0, "seq": 4, "to": None},
    ]


def test_equivocating_primary_splits_the_peers() -> None:
    batch = Batch(
        CHAIN_ID, 4, 1_764_000_000_000, (tx(ALICE, 1, {"op": "set", "key": "k", "value": 1}),)
    )
    wire_in = sign_message(ME, PrePrepare(CHAIN_ID, 0, 4, batch.digest, batch)).to_wire()
    wire = Wire()
    BEHAVIOURS["equivocating-primary"](wire.out(witness=True), None, wire_in)
    by_peer: dict[str, list[str]] = {}
    for to, sent in wire.sent:
        assert to is not None
        by_peer.setdefault(to, []).append(sent["digest"])
    digests = {d for ds in by_peer.values() for d in ds}
    assert len(digests) == 2 and batch.digest in digests
    assert len(set(by_peer[PEERS[0]])) == 2  # the witness sees both...
    detector = EvidenceDetector(GENESIS)
    found = [detector.observe_message(sent) for to, sent in wire.sent if to == PEERS[0]]
    assert found[-1] is not None and found[-1].kind == "pre_prepare"
    # ...and every PRE-PREPARE sent is one an honest backup would decode.
    for _, sent in wire.sent:
        decoded = decode_message(sent)
        assert isinstance(decoded, PrePrepare) and decoded.batch is not None
    # A null batch (nothing to equivocate about) passes unchanged.
    null = Batch.null(CHAIN_ID, 5)
    wire = Wire()
    plain = sign_message(ME, PrePrepare(CHAIN_ID, 0, 5, null.digest, null)).to_wire()
    BEHAVIOURS["equivocating-primary"](wire.out(), None, plain)
    assert wire.sent == [(None, plain)]


def test_equivocating_execution_votes_are_evidence() -> None:
    vote = sign_execution_vote(ME, CHAIN_ID, 6, D, D, D)
    wire = Wire()
    message = {"type": "execution-vote", "vote": vote.to_wire(), "reply": False}
    BEHAVIOURS["equivocate-execution"](wire.out(), None, message)
    assert len(wire.sent) == 2
    detector = EvidenceDetector(GENESIS)
    statements = [
        Statement(TAG_EXECUTION, v.body(CHAIN_ID), v.signature, v.validator)
        for v in (ExecutionVote.from_wire(sent["vote"]) for _, sent in wire.sent)
    ]
    found = [detector.observe(s) for s in statements]
    assert found[1] is not None and found[1].kind == "execution"
    verify_evidence(found[1].to_json(), GENESIS)
    # Replies (answers to a restarted peer) are passed on alone.
    wire = Wire()
    BEHAVIOURS["equivocate-execution"](wire.out(), PEERS[0], {**message, "reply": True})
    assert len(wire.sent) == 1
