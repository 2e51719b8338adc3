"""Peer messages: round trips, strict decoding, and the commit vote (spec §4; OSDI'99 §4.2)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consensus.batch import Batch, commit_vote_body
from consensus.errors import MalformedMessage
from consensus.messages import (
    BatchRequest,
    BatchResponse,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
    verify_message,
)
from crypto.signing import TAG_COMMIT, Ed25519Signer, Ed25519Verifier
from tests.consensus.harness import CHAIN_ID, GENESIS_HASH, make_tx

SIGNER = Ed25519Signer(b"\x07" * 32)
OTHER = Ed25519Signer(b"\x08" * 32)
VERIFIER = Ed25519Verifier()
BATCH = Batch(CHAIN_ID, 3, 1_764_000_000_000, (make_tx(1), make_tx(2)))


def _all_messages() -> list[Message]:
    pre_prepare = sign_message(SIGNER, PrePrepare(CHAIN_ID, 2, 3, BATCH.digest, BATCH))
    prepare = sign_message(OTHER, Prepare(CHAIN_ID, 2, 3, BATCH.digest))
    checkpoint = sign_message(SIGNER, Checkpoint(CHAIN_ID, 128, "cd" * 32))
    cert = PreparedCert(pre_prepare.without_batch(), (prepare,))
    view_change = sign_message(
        SIGNER, ViewChange(CHAIN_ID, 3, 128, "cd" * 32, (checkpoint,), (cert,))
    )
    return [
        pre_prepare,
        prepare,
        sign_message(SIGNER, Commit(CHAIN_ID, 2, 3, BATCH.digest)),
        checkpoint,
        view_change,
        sign_message(SIGNER, NewView(CHAIN_ID, 3, (view_change,), (pre_prepare.without_batch(),))),
        sign_message(SIGNER, BatchRequest(CHAIN_ID, (BATCH.digest,))),
        sign_message(SIGNER, BatchResponse(CHAIN_ID, (BATCH,))),
    ]


@pytest.mark.parametrize("message", _all_messages(), ids=lambda m: type(m).__name__)
def test_round_trip_and_signature(message: Message) -> None:
    """Every message survives to_wire/decode unchanged and verifies under its own tag."""
    wire = message.to_wire()
    assert wire["type"] == message.TYPE
    decoded = decode_message(copy.deepcopy(wire))
    assert decoded == message
    assert verify_message(VERIFIER, decoded)
    assert message.signed_body()["chain_id"] == CHAIN_ID


def test_tags_are_distinct() -> None:
    """Spec §1: no two uses share a signing tag."""
    tags = {type(m).TAG for m in _all_messages()}
    assert len(tags) == 8
    assert Commit.TAG == TAG_COMMIT


def test_commit_signature_is_the_spec_commit_vote() -> None:
    """Spec §4: a COMMIT's signature is Ed25519 over commit_vote_body under phalanx/commit/v1,
    so certificates are assembled from COMMIT messages directly."""
    commit = sign_message(SIGNER, Commit(CHAIN_ID, 5, 9, BATCH.digest))
    body = commit_vote_body(CHAIN_ID, 9, 5, BATCH.digest)
    assert VERIFIER.verify(SIGNER.public_key, TAG_COMMIT, body, commit.signature)


def test_pre_prepare_signs_only_the_digest() -> None:
    """OSDI'99 §4.2 (requests not included in the pre-prepare's signed part): the batch can be
    detached, and the signature still verifies, keeping prepared certificates compact."""
    pre_prepare = sign_message(SIGNER, PrePrepare(CHAIN_ID, 0, 3, BATCH.digest, BATCH))
    assert verify_message(VERIFIER, pre_prepare.without_batch())


def test_tampered_signature_fails() -> None:
    prepare = sign_message(SIGNER, Prepare(CHAIN_ID, 0, 1, BATCH.digest))
    forged = Prepare(CHAIN_ID, 0, 2, BATCH.digest, prepare.sender, prepare.signature)
    assert not verify_message(VERIFIER, forged)


def _pre_prepare_wire() -> dict[str, Any]:
    # Deep copy: Batch.to_wire shares the transactions' dicts, which the mutations must not touch.
    return copy.deepcopy(
        sign_message(SIGNER, PrePrepare(CHAIN_ID, 0, 3, BATCH.digest, BATCH)).to_wire()
    )


def _mutations() -> list[tuple[str, Any, str]]:
    def set_(path: list[Any], value: Any) -> Any:
        def mutate(wire: dict[str, Any]) -> None:
            target = wire
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value

        return mutate

    def delete(key: str) -> Any:
        return lambda wire: wire.pop(key)

    return [
        ("not an object", lambda w: None, "not_an_object"),
        ("unknown type", set_(["type"], "gossip"), "unknown_type"),
        ("extra field", set_(["extra"], 1), "bad_fields"),
        ("missing field", delete("view"), "bad_fields"),
        ("bool as int", set_(["view"], True), "bad_int"),
        ("negative view", set_(["view"], -1), "int_out_of_range"),
        ("seq zero", set_(["seq"], 0), "int_out_of_range"),
        ("huge seq", set_(["seq"], 2**60), "int_out_of_range"),
        ("short digest", set_(["digest"], "ab"), "bad_hex"),
        ("uppercase sender", set_(["sender"], "AB" * 32), "bad_hex"),
        ("short signature", set_(["signature"], "00" * 10), "bad_hex"),
        ("wrong digest", set_(["digest"], "00" * 32), "digest_mismatch"),
        ("tx_root lie", set_(["batch", "header", "tx_root"], "00" * 32), "tx_root_mismatch"),
        ("tx_count lie", set_(["batch", "header", "tx_count"], 5), "tx_count_mismatch"),
        ("tx without body", set_(["batch", "txs", 0], {"sig": "x"}), "bad_tx"),
        ("float in tx", set_(["batch", "txs", 0, "body", "nonce"], 1.5), "bad_tx"),
        ("empty chain id", set_(["chain_id"], ""), "bad_chain_id"),
        ("batch not an object", set_(["batch"], [1]), "not_an_object"),
    ]


@pytest.mark.parametrize(("what", "mutate", "reason"), _mutations(), ids=lambda x: str(x)[:20])
def test_decode_rejects_malformed(what: str, mutate: Any, reason: str) -> None:
    """Peer input is validated strictly at the boundary and fails with a countable reason."""
    wire = _pre_prepare_wire()
    result = mutate(wire)
    if what == "not an object":
        wire = result
    with pytest.raises(MalformedMessage) as caught:
        decode_message(wire)
    assert caught.value.reason == reason, caught.value


def test_decode_rejects_oversized_lists() -> None:
    wire = sign_message(SIGNER, BatchRequest(CHAIN_ID, (BATCH.digest,))).to_wire()
    wire["digests"] = [BATCH.digest] * 65
    with pytest.raises(MalformedMessage) as caught:
        decode_message(wire)
    assert caught.value.reason == "list_too_long"


def test_nested_batches_refused_in_view_change() -> None:
    """Prepared certificates carry digests only (the batch travels in PRE-PREPARE)."""
    messages = _all_messages()
    view_change = messages[4].to_wire()
    view_change["prepared"][0]["pre_prepare"] = messages[0].to_wire()  # with its batch
    with pytest.raises(MalformedMessage) as caught:
        decode_message(view_change)
    assert caught.value.reason == "batch_in_certificate"


def test_null_batch_round_trip() -> None:
    null = Batch.null(CHAIN_ID, 4)
    wire = sign_message(SIGNER, PrePrepare(CHAIN_ID, 1, 4, null.digest, null)).to_wire()
    decoded = decode_message(wire)
    assert isinstance(decoded, PrePrepare) and decoded.batch == null
    assert GENESIS_HASH  # the harness constants are shared with the replica tests
