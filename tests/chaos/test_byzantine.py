"""The Byzantine behaviours, on real signed messages (no processes): what each sends instead,
what it records, and that the equivocations it commits are evidence the detector finds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch, commit_vote_body
from consensus.messages import (
    Commit,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
    verify_message,
)
from consensus.view_change import check_view_change, plan_new_view
from crypto.signing import TAG_COMMIT, TAG_EXECUTION, Ed25519Verifier
from ledger.evidence import EvidenceDetector, Statement, verify_evidence
from ledger.execution import ExecutionVote, sign_execution_vote
from ledger.genesis import replica_config
from ledger.transaction import TxError, decode_transaction, verify_transaction
from node.p2p.block_sync import BadBlocks, verify_block
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


# ---- the behaviours ported from the simulator (consensus/sim/byzantine.py, adversaries.py) ----

CONFIG = replica_config(GENESIS)
VERIFIER = Ed25519Verifier()


def _verify(message: Any) -> bool:
    return verify_message(VERIFIER, message)


def _out_with_config(wire: Wire, record: Path | None = None) -> Out:
    out = wire.out(record)
    out.config = CONFIG
    return out


def _batch(seq: int) -> Batch:
    return Batch(
        CHAIN_ID, seq, 1_764_000_000_000, (tx(ALICE, seq, {"op": "set", "key": "k", "value": 1}),)
    )


def _prepared_cert(view: int, seq: int, digest: str) -> PreparedCert:
    """A real prepared certificate signed by the validators (the primary of ``view`` and
    q - 1 backups)."""
    by_key = {v.public_key: v for v in VALIDATORS}
    primary = by_key[CONFIG.primary(view)]
    pre = sign_message(primary, PrePrepare(CHAIN_ID, view, seq, digest, None))
    backups = [v for v in VALIDATORS if v is not primary][: CONFIG.q - 1]
    return PreparedCert(
        pre, tuple(sign_message(v, Prepare(CHAIN_ID, view, seq, digest)) for v in backups)
    )


def _view_change(signer: Any, view: int, prepared: tuple[PreparedCert, ...] = ()) -> ViewChange:
    return sign_message(signer, ViewChange(CHAIN_ID, view, 0, CONFIG.genesis_hash, (), prepared))


def test_forger_sends_nothing_that_verifies_under_another_name() -> None:
    wire = Wire()
    BEHAVIOURS["forger"](wire.out(), None, commit())
    assert len(wire.sent) == 2
    forged = [decode_message(sent) for _, sent in wire.sent]
    assert forged[1].sender != ME.public_key and not _verify(forged[1])
    # Its proposals carry the real tx_ids (same digest) under signatures nobody made.
    batch = _batch(4)
    proposal = sign_message(ME, PrePrepare(CHAIN_ID, 0, 4, batch.digest, batch)).to_wire()
    wire = Wire()
    BEHAVIOURS["forger"](wire.out(), None, proposal)
    sent = decode_message(wire.sent[0][1])
    assert isinstance(sent, PrePrepare) and sent.batch is not None and _verify(sent)
    assert sent.digest == batch.digest
    with pytest.raises(TxError):
        verify_transaction(decode_transaction(dict(sent.batch.txs[0].wire)))


def test_replayer_resends_what_it_received() -> None:
    wire = Wire()
    out = wire.out()
    old = sign_message(VALIDATORS[1], Prepare(CHAIN_ID, 0, 1, D)).to_wire()
    out.observe(old)
    for _ in range(20):
        BEHAVIOURS["replayer"](out, None, commit())
    assert any(sent == old for _, sent in wire.sent)


def test_view_change_hider_passes_the_replica_checks_without_its_certificates() -> None:
    cert = _prepared_cert(0, 1, D)
    wire = Wire()
    BEHAVIOURS["view-change-hider"](
        _out_with_config(wire), None, _view_change(ME, 1, (cert,)).to_wire()
    )
    [(_, sent)] = wire.sent
    hidden = decode_message(sent)
    assert isinstance(hidden, ViewChange) and hidden.prepared == () and _verify(hidden)
    assert check_view_change(CONFIG, _verify, hidden) is None  # indistinguishable from honest


def test_certificate_forger_vcs_are_refused_by_the_replica_checks() -> None:
    cert = _prepared_cert(0, 1, D)
    reasons = set()
    for seed in range(40):
        wire = Wire()
        out = _out_with_config(wire)
        out.rng = random.Random(seed)
        out.seq = 3
        out.observe(sign_message(VALIDATORS[2], Prepare(CHAIN_ID, 0, 2, D)).to_wire())
        BEHAVIOURS["certificate-forger"](out, None, _view_change(ME, 1, (cert,)).to_wire())
        [(_, sent)] = wire.sent
        forged = decode_message(sent)
        assert isinstance(forged, ViewChange) and _verify(forged)  # validly signed by itself
        reason = check_view_change(CONFIG, _verify, forged)
        assert reason is not None, forged
        reasons.add(reason)
    assert len(reasons) >= 4, reasons  # several different forgeries, each caught


def test_byzantine_new_primary_sends_a_new_view_that_does_not_follow_its_view_changes() -> None:
    vcs = [_view_change(v, 1, (_prepared_cert(0, 1, D),) if i == 0 else ()) for i, v in
           enumerate(VALIDATORS[1:])]  # fmt: skip
    plan = plan_new_view(CONFIG, vcs)
    me = next(v for v in VALIDATORS if v.public_key == CONFIG.primary(1))
    pre_prepares = tuple(
        sign_message(me, PrePrepare(CHAIN_ID, 1, s, d, None)) for s, d in plan.proposals
    )
    honest = sign_message(me, NewView(CHAIN_ID, 1, tuple(vcs), pre_prepares))
    for seed in range(12):
        sent_list: list[tuple[str | None, dict[str, Any]]] = []
        out = Out(
            send=lambda to, w, s=sent_list: s.append((to, w)),  # type: ignore[misc]
            broadcast=lambda w, s=sent_list: s.append((None, w)),  # type: ignore[misc]
            signer=me,
            peers=PEERS,
            rng=random.Random(seed),
            config=CONFIG,
        )
        BEHAVIOURS["byzantine-new-primary"](out, None, honest.to_wire())
        [(_, sent)] = sent_list
        nv = decode_message(sent)
        assert isinstance(nv, NewView) and _verify(nv)
        senders = [vc.sender for vc in nv.view_changes]
        proposals = [(p.seq, p.digest) for p in nv.pre_prepares]
        replanned = list(plan_new_view(CONFIG, nv.view_changes).proposals)
        # Either too few distinct VIEW-CHANGEs, or proposals that are not their plan.
        assert len(set(senders)) < CONFIG.q or proposals != replanned, (seed, proposals)


def _committed_block(seq: int) -> dict[str, Any]:
    batch = _batch(seq)
    body = commit_vote_body(CHAIN_ID, seq, 0, batch.digest)
    signatures = {v.public_key: v.sign(TAG_COMMIT, body) for v in VALIDATORS[: CONFIG.q]}
    return {
        "batch": batch.header,
        "txs": [dict(t.wire) for t in batch.txs],
        "certificate": {"view": 0, "signatures": signatures},
        "hash": D,
        "execution": None,
    }


def test_block_liar_serves_blocks_that_do_not_verify() -> None:
    real = [_committed_block(1), _committed_block(2)]
    for block, seq in zip(real, (1, 2), strict=True):
        verify_block(GENESIS, seq, block)  # the real ones do
    lies = 0
    for seed in range(20):
        wire = Wire()
        out = _out_with_config(wire)
        out.rng = random.Random(seed)
        BEHAVIOURS["block-liar"](out, PEERS[0], {"type": "blocks", "from_seq": 1, "blocks": real})
        [(_, sent)] = wire.sent
        blocks = sent["blocks"]
        if len(blocks) < len(real):  # a gap: the first block it sends is not block 1
            assert blocks[0]["batch"]["seq"] == 2
            continue
        for seq, block in enumerate(blocks, 1):
            with pytest.raises(BadBlocks):
                verify_block(GENESIS, seq, block)
            lies += 1
    assert lies > 0


def test_lying_heads_and_floods() -> None:
    wire = Wire()
    BEHAVIOURS["lying-heads"](wire.out(), None, {"type": "sync-head", "seq": 5, "hash": D})
    [(_, sent)] = wire.sent
    assert sent["seq"] > 5 and sent["hash"] != D
    # The early-buffer flooder proposes only in future views it leads (so the sender check
    # passes and the messages go to the early buffer), never twice for one slot.
    wire = Wire()
    out = _out_with_config(wire)
    for _ in range(30):
        BEHAVIOURS["early-buffer-flooder"](out, None, commit())
    floods = [decode_message(w) for _, w in wire.sent if w["type"] == "pre_prepare"]
    assert floods
    for pp in floods:
        assert (
            isinstance(pp, PrePrepare) and pp.view > 0 and CONFIG.primary(pp.view) == ME.public_key
        )
    slots = {(pp.view, pp.seq): pp.digest for pp in floods}  # type: ignore[union-attr]
    assert len(slots) == len({(pp.view, pp.seq, pp.digest) for pp in floods})  # type: ignore[union-attr]
    # The view-change flooder: VIEW-CHANGEs ahead of the view it is in.
    wire = Wire()
    out = _out_with_config(wire)
    for _ in range(30):
        BEHAVIOURS["view-change-flooder"](out, None, commit())
    vcs = [decode_message(w) for _, w in wire.sent if w["type"] == "view_change"]
    assert vcs and all(isinstance(vc, ViewChange) and vc.view > 0 for vc in vcs)


def test_amplification_abuser_replays_view_changes_and_asks_for_batches() -> None:
    wire = Wire()
    out = _out_with_config(wire)
    theirs = _view_change(VALIDATORS[1], 1).to_wire()
    out.observe(theirs)
    batch = _batch(3)
    out.observe(
        sign_message(VALIDATORS[1], PrePrepare(CHAIN_ID, 0, 3, batch.digest, batch)).to_wire()
    )
    for _ in range(10):
        BEHAVIOURS["amplification-abuser"](out, None, commit())
    assert sum(1 for _, w in wire.sent if w == theirs) >= 3
    requests = [decode_message(w) for _, w in wire.sent if w["type"] == "batch_request"]
    assert requests and all(batch.digest in r.digests for r in requests)  # type: ignore[union-attr]


def test_rogue_proposer_proposes_while_not_primary() -> None:
    wire = Wire()
    out = _out_with_config(wire)
    assert CONFIG.primary(0) != ME.public_key or CONFIG.primary(1) != ME.public_key
    out.view = 0 if CONFIG.primary(0) != ME.public_key else 1
    batch = _batch(3)
    out.observe(
        sign_message(
            VALIDATORS[1], PrePrepare(CHAIN_ID, out.view, 3, batch.digest, batch)
        ).to_wire()
    )
    for _ in range(40):
        BEHAVIOURS["rogue-proposer"](out, None, commit())
    rogue = [decode_message(w) for _, w in wire.sent if w["type"] == "pre_prepare"]
    assert rogue and all(pp.sender == ME.public_key and pp.seq > 3 for pp in rogue)  # type: ignore[union-attr]
