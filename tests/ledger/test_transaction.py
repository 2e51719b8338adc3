"""Client transactions at the trust boundary (spec §3): shape, limits, tx_id, signature, chain."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from crypto.canonical import MAX_SAFE_INTEGER, canonical_json, canonical_json_reference
from crypto.hashing import sha256_hex
from crypto.signing import TAG_COMMIT, signing_input
from ledger.transaction import (
    BAD_SIGNATURE,
    BODY_BYTES_MAX,
    MALFORMED,
    TOO_LARGE,
    WRONG_CHAIN,
    CasOp,
    ChownOp,
    DeleteOp,
    SetOp,
    TransferOp,
    TxError,
    ValidTx,
    check_chain,
    check_transaction,
    decode_for_execution,
    decode_transaction,
    parse_transaction,
    verify_transaction,
)
from tests.ledger.helpers import ALICE, BOB, CHAIN_ID, sign_tx

SMALL_ORDER_KEY = "01" + "00" * 31


def wire(*ops: dict[str, Any], nonce: int = 0) -> dict[str, Any]:
    return sign_tx(ALICE, nonce, list(ops) or [{"op": "set", "key": "k", "value": 1}])


def code_of(value: Any) -> str:
    with pytest.raises(TxError) as info:
        check_transaction(value, CHAIN_ID)
    assert info.value.detail  # always a human sentence
    return info.value.code


def test_all_five_ops_decode_and_verify() -> None:
    ops: list[dict[str, Any]] = [
        {"op": "set", "key": "a", "value": {"nested": [1, "x", None, True]}},
        {"op": "delete", "key": "b"},
        {"op": "cas", "key": "a", "expect": 0, "value": "v"},
        {"op": "chown", "key": "a", "to": BOB.public_key},
        {"op": "transfer", "to": BOB.public_key, "amount": 5},
    ]
    w = wire(*ops, nonce=7)
    tx = check_transaction(w, CHAIN_ID)
    assert tx.tx_id == sha256_hex(canonical_json(w["body"]))
    assert tx.client == ALICE.public_key and tx.nonce == 7 and tx.chain_id == CHAIN_ID
    assert tx.body_size == len(canonical_json(w["body"]))
    assert tx.fee(3) == 3 * tx.body_size
    assert tx.ops == (
        SetOp("a", {"nested": [1, "x", None, True]}),
        DeleteOp("b"),
        CasOp("a", 0, "v"),
        ChownOp("a", BOB.public_key),
        TransferOp(BOB.public_key, 5),
    )
    consensus_tx = tx.to_consensus_tx()
    assert consensus_tx.tx_id == tx.tx_id
    # Its size is the wire form's, as a PRE-PREPARE will carry it (batches are cut by bytes).
    assert consensus_tx.size == len(canonical_json(w))


def test_tx_id_ignores_the_signature_and_key_order() -> None:
    w = wire()
    reordered = {"sig": w["sig"], "body": dict(reversed(list(w["body"].items())))}
    assert decode_transaction(reordered).tx_id == decode_transaction(w).tx_id


def test_parse_transaction_from_bytes() -> None:
    w = wire()
    assert parse_transaction(json.dumps(w).encode()).tx_id == decode_transaction(w).tx_id


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"body": 1.5, "sig": "00"}',
        '{"body": {}, "body": {}, "sig": ""}',
        "NaN",
    ],
)
def test_parse_rejects_bad_json(text: str) -> None:
    with pytest.raises(TxError) as info:
        parse_transaction(text)
    assert info.value.code == MALFORMED


def test_signature_is_over_the_v2_tag_and_the_chain_id() -> None:
    w = wire()
    assert ALICE.sign("phalanx/tx/v2", w["body"]) == w["sig"]
    assert signing_input("phalanx/tx/v2", w["body"]).startswith(b"phalanx/tx/v2\x00{")
    v1 = {**w, "sig": ALICE.sign("phalanx/tx/v1", w["body"])}
    assert code_of(v1) == BAD_SIGNATURE
    # The chain is inside the signed bytes: renaming it breaks the signature.
    renamed = copy.deepcopy(w)
    renamed["body"]["chain_id"] = "another-chain"
    assert code_of(renamed) == BAD_SIGNATURE


def test_a_body_for_another_chain_is_wrong_chain() -> None:
    w = sign_tx(ALICE, 0, [{"op": "set", "key": "k", "value": 1}], chain_id="another-chain")
    tx = decode_transaction(w)
    verify_transaction(tx)  # validly signed, but for another network
    assert code_of(w) == WRONG_CHAIN
    with pytest.raises(TxError) as info:
        check_chain(tx, CHAIN_ID)
    assert "another-chain" in info.value.detail and CHAIN_ID in info.value.detail
    check_chain(tx, "another-chain")


def test_bad_signature_is_reported_before_wrong_chain() -> None:
    w = sign_tx(ALICE, 0, [{"op": "set", "key": "k", "value": 1}], chain_id="another-chain")
    w["sig"] = "ab" * 64
    assert code_of(w) == BAD_SIGNATURE


def test_bad_signature() -> None:
    w = wire()
    w["sig"] = ("0" if w["sig"][0] != "0" else "1") + w["sig"][1:]
    assert code_of(w) == BAD_SIGNATURE


def test_signature_by_another_key_is_bad() -> None:
    w = wire()
    w["sig"] = sign_tx(BOB, 0, w["body"]["ops"])["sig"]
    assert code_of(w) == BAD_SIGNATURE


def test_signature_under_another_tag_is_bad() -> None:
    w = wire()
    w["sig"] = ALICE.sign(TAG_COMMIT, w["body"])
    assert code_of(w) == BAD_SIGNATURE


def test_modified_body_is_bad_signature() -> None:
    w = wire()
    w["body"]["nonce"] = 1
    assert code_of(w) == BAD_SIGNATURE


def test_non_canonical_s_is_rejected() -> None:
    # S + L is the same signature to a lax verifier; strict verification refuses it.
    L = 2**252 + 27742317777372353535851937790883648493
    w = wire()
    sig = bytes.fromhex(w["sig"])
    s = int.from_bytes(sig[32:], "little") + L
    w["sig"] = (sig[:32] + s.to_bytes(32, "little")).hex()
    assert code_of(w) == BAD_SIGNATURE


def test_verify_transaction_alone() -> None:
    tx = decode_transaction(wire())
    verify_transaction(tx)
    forged = decode_transaction({**wire(), "sig": "ab" * 64})
    with pytest.raises(TxError) as info:
        verify_transaction(forged)
    assert info.value.code == BAD_SIGNATURE
    assert info.value.to_wire()["error"] == BAD_SIGNATURE


def _shape(change: Any) -> dict[str, Any]:
    w = copy.deepcopy(wire())
    change(w)
    return w


MALFORMED_CASES: list[tuple[str, Any]] = [
    ("not an object", lambda w: None),
    ("unknown top-level field", lambda w: w.update(extra=1)),
    ("missing sig", lambda w: w.pop("sig")),
    ("missing body", lambda w: w.pop("body")),
    ("body not object", lambda w: w.update(body=[1])),
    ("unknown body field", lambda w: w["body"].update(fee=1)),
    ("missing nonce", lambda w: w["body"].pop("nonce")),
    ("missing client", lambda w: w["body"].pop("client")),
    ("missing ops", lambda w: w["body"].pop("ops")),
    ("missing chain_id", lambda w: w["body"].pop("chain_id")),
    ("chain_id empty", lambda w: w["body"].update(chain_id="")),
    ("chain_id upper", lambda w: w["body"].update(chain_id="Phalanx")),
    ("chain_id 65 chars", lambda w: w["body"].update(chain_id="a" * 65)),
    ("chain_id space", lambda w: w["body"].update(chain_id="a b")),
    ("chain_id not str", lambda w: w["body"].update(chain_id=7)),
    ("chown missing to", lambda w: w["body"].update(ops=[{"op": "chown", "key": "k"}])),
    (
        "chown bad to",
        lambda w: w["body"].update(ops=[{"op": "chown", "key": "k", "to": "00" * 32}]),
    ),
    (
        "chown extra field",
        lambda w: w["body"].update(
            ops=[{"op": "chown", "key": "k", "to": BOB.public_key, "value": 1}]
        ),
    ),
    ("chown empty key", lambda w: w["body"].update(ops=[{"op": "chown", "key": "", "to": "ab"}])),
    ("client upper hex", lambda w: w["body"].update(client=w["body"]["client"].upper())),
    ("client short", lambda w: w["body"].update(client="ab" * 31)),
    ("client small order", lambda w: w["body"].update(client=SMALL_ORDER_KEY)),
    ("client not str", lambda w: w["body"].update(client=5)),
    ("nonce negative", lambda w: w["body"].update(nonce=-1)),
    ("nonce 2^53", lambda w: w["body"].update(nonce=2**53)),
    ("nonce bool", lambda w: w["body"].update(nonce=True)),
    ("nonce str", lambda w: w["body"].update(nonce="1")),
    ("nonce float", lambda w: w["body"].update(nonce=1.0)),
    ("sig short", lambda w: w.update(sig="ab" * 63)),
    ("sig upper", lambda w: w.update(sig=w["sig"].upper())),
    ("sig not str", lambda w: w.update(sig=None)),
    ("ops empty", lambda w: w["body"].update(ops=[])),
    ("ops 65", lambda w: w["body"].update(ops=[{"op": "delete", "key": "k"}] * 65)),
    ("ops not list", lambda w: w["body"].update(ops={"op": "delete"})),
    ("op not object", lambda w: w["body"].update(ops=["set"])),
    ("unknown op", lambda w: w["body"].update(ops=[{"op": "mint", "amount": 1}])),
    ("op missing kind", lambda w: w["body"].update(ops=[{"key": "k"}])),
    ("set missing value", lambda w: w["body"].update(ops=[{"op": "set", "key": "k"}])),
    (
        "set extra field",
        lambda w: w["body"].update(ops=[{"op": "set", "key": "k", "value": 1, "x": 1}]),
    ),
    (
        "set float value",
        lambda w: w["body"].update(ops=[{"op": "set", "key": "k", "value": [0.5]}]),
    ),
    ("set huge int", lambda w: w["body"].update(ops=[{"op": "set", "key": "k", "value": 2**53}])),
    ("key empty", lambda w: w["body"].update(ops=[{"op": "delete", "key": ""}])),
    ("key 257 bytes", lambda w: w["body"].update(ops=[{"op": "delete", "key": "k" * 257}])),
    (
        "key 129 two-byte chars",
        lambda w: w["body"].update(ops=[{"op": "delete", "key": "é" * 129}]),
    ),
    ("key not str", lambda w: w["body"].update(ops=[{"op": "delete", "key": 1}])),
    ("key lone surrogate", lambda w: w["body"].update(ops=[{"op": "delete", "key": "\ud800"}])),
    ("cas missing expect", lambda w: w["body"].update(ops=[{"op": "cas", "key": "k", "value": 1}])),
    (
        "cas negative expect",
        lambda w: w["body"].update(ops=[{"op": "cas", "key": "k", "expect": -1, "value": 1}]),
    ),
    (
        "cas bool expect",
        lambda w: w["body"].update(ops=[{"op": "cas", "key": "k", "expect": False, "value": 1}]),
    ),
    (
        "transfer zero",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": BOB.public_key, "amount": 0}]),
    ),
    (
        "transfer negative",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": BOB.public_key, "amount": -5}]),
    ),
    (
        "transfer float",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": BOB.public_key, "amount": 5.0}]),
    ),
    (
        "transfer bool",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": BOB.public_key, "amount": True}]),
    ),
    (
        "transfer str",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": BOB.public_key, "amount": "5"}]),
    ),
    (
        "transfer bad to",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": "00" * 32, "amount": 5}]),
    ),
    (
        "transfer small-order to",
        lambda w: w["body"].update(ops=[{"op": "transfer", "to": SMALL_ORDER_KEY, "amount": 5}]),
    ),
    (
        "transfer with key",
        lambda w: w["body"].update(
            ops=[{"op": "transfer", "to": BOB.public_key, "amount": 5, "key": "k"}]
        ),
    ),
    (
        "non-str object key in value",
        lambda w: w["body"].update(ops=[{"op": "set", "key": "k", "value": {1: 2}}]),
    ),
]


@pytest.mark.parametrize(("name", "change"), MALFORMED_CASES, ids=[c[0] for c in MALFORMED_CASES])
def test_malformed(name: str, change: Any) -> None:
    w = None if name == "not an object" else _shape(change)
    assert code_of(w) == MALFORMED


def test_limits_at_the_edge_are_accepted() -> None:
    ops = [{"op": "delete", "key": "k" * 256}] * 64
    check_transaction(sign_tx(ALICE, 2**53 - 1, ops), CHAIN_ID)
    check_transaction(sign_tx(ALICE, 0, [{"op": "delete", "key": "é" * 128}]), CHAIN_ID)
    check_transaction(sign_tx(ALICE, 0, [{"op": "delete", "key": "😀" * 64}]), CHAIN_ID)
    check_transaction(
        sign_tx(ALICE, 0, [{"op": "transfer", "to": BOB.public_key, "amount": 2**53 - 1}]),
        CHAIN_ID,
    )
    long_chain = "a" * 64
    w = sign_tx(ALICE, 0, [{"op": "delete", "key": "k"}], chain_id=long_chain)
    check_transaction(w, long_chain)


def _sized_body_wire(size: int) -> dict[str, Any]:
    """A signed transaction whose JCS(body) is exactly ``size`` bytes."""
    base = {
        "chain_id": CHAIN_ID,
        "client": ALICE.public_key,
        "nonce": 0,
        "ops": [{"op": "set", "key": "k", "value": ""}],
    }
    filler = size - len(canonical_json(base))
    ops = [{"op": "set", "key": "k", "value": "x" * filler}]
    w = sign_tx(ALICE, 0, ops)
    assert len(canonical_json(w["body"])) == size
    return w


def test_body_of_exactly_65536_bytes_is_accepted() -> None:
    check_transaction(_sized_body_wire(BODY_BYTES_MAX), CHAIN_ID)


def test_body_of_65537_bytes_is_too_large() -> None:
    assert code_of(_sized_body_wire(BODY_BYTES_MAX + 1)) == TOO_LARGE


def test_size_counts_canonical_bytes_not_characters() -> None:
    # Each "é" is 2 UTF-8 bytes: 40,000 characters are 80,000 bytes.
    w = sign_tx(ALICE, 0, [{"op": "set", "key": "k", "value": "é" * 40_000}])
    assert code_of(w) == TOO_LARGE


def test_huge_input_text_is_too_large_before_parsing() -> None:
    with pytest.raises(TxError) as info:
        parse_transaction(b" " * (4 * BODY_BYTES_MAX + 1))
    assert info.value.code == TOO_LARGE


def test_decode_for_execution_checks_shape_but_trusts_the_id() -> None:
    w = wire()
    tx = decode_for_execution(w, "cd" * 32)
    assert tx.tx_id == "cd" * 32 and tx.body_jcs is None
    assert tx.body_size == len(canonical_json(w["body"]))  # the fee needs it
    with pytest.raises(ValueError, match="no body bytes"):
        verify_transaction(tx)
    bad = copy.deepcopy(w)
    bad["body"]["ops"][0]["value"] = {"x": [1.5]}
    with pytest.raises(TxError) as info:
        decode_for_execution(bad, "cd" * 32)
    assert info.value.code == MALFORMED


# ---- the order of refusals (spec §3): JCS of the body, then its size, then its shape ---------
# decode_transaction checks the shape first (a body of valid shape with scalar values is
# serialised without the parse-back), so these pin that a shape error is held back.


def _detail(value: Any, decode: Any = decode_transaction) -> tuple[str, str]:
    with pytest.raises(TxError) as info:
        decode(value)
    return info.value.code, info.value.detail


def _for_execution(value: Any) -> ValidTx:
    return decode_for_execution(value, "cd" * 32)


def _unsigned(*ops: dict[str, Any]) -> dict[str, Any]:
    """A transaction whose body could not be signed (no JCS form): the shape is what counts."""
    body = {"chain_id": CHAIN_ID, "client": ALICE.public_key, "nonce": 0, "ops": list(ops)}
    return {"body": body, "sig": "00" * 64}


@pytest.mark.parametrize("decode", [decode_transaction, _for_execution])
def test_a_value_outside_jcs_is_reported_before_a_shape_error(decode: Any) -> None:
    w = _unsigned({"op": "set", "key": "k", "value": {"x": [1.5]}})
    w["body"]["extra"] = 1
    assert _detail(w, decode) == (
        MALFORMED,
        "body: floats are not allowed in Phalanx values; use integers",
    )
    w = _unsigned({"op": "set", "key": "k", "value": {1: "non-string key"}})
    assert _detail(w, decode) == (MALFORMED, "body: object key 1 is not a string")
    w = _unsigned({"op": "cas", "key": "k", "expect": 2**53, "value": 1})
    assert _detail(w, decode) == (
        MALFORMED,
        "body: integer 9007199254740992 is outside ±(2^53 - 1)",
    )


def test_too_large_is_reported_before_a_shape_error() -> None:
    w = wire({"op": "set", "key": "k", "value": "x" * BODY_BYTES_MAX})
    w["body"]["nonce"] = -1
    assert _detail(w)[0] == TOO_LARGE
    # For execution the size was settled by consensus: the shape error is what remains.
    assert _detail(w, _for_execution) == (
        MALFORMED,
        "body.nonce must be an integer with 0 <= nonce < 2^53",
    )


@pytest.mark.parametrize(
    "value",
    ["s", 7, True, None, MAX_SAFE_INTEGER, {"b": [1, {"c": None}], "a": "\U0001f600\ufb33"}],
)
def test_scalar_and_container_values_serialise_as_the_reference(value: Any) -> None:
    w = wire(
        {"op": "set", "key": "k", "value": value},
        {"op": "cas", "key": "j", "expect": 0, "value": value},
    )
    tx = decode_transaction(w)
    assert tx.body_jcs == canonical_json_reference(w["body"])
    assert tx.tx_id == sha256_hex(canonical_json_reference(w["body"]))
    assert tx.ops == (SetOp("k", value), CasOp("j", 0, value))
    assert parse_transaction(json.dumps(w).encode()) == tx
