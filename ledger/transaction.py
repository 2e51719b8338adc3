"""Client transactions at the trust boundary (spec §3).

A transaction arrives as ``{"body": {"client", "nonce", "ops"}, "sig"}``. :func:`decode_transaction`
checks its shape against every limit of the spec and returns a :class:`ValidTx`;
:func:`verify_transaction` then checks the signature. Each refusal is a :class:`TxError` with a
stable ``code`` (for the API's ``{"error", "detail"}`` body) and a human ``detail``:

==================  ======  ==============================================================
code                HTTP    meaning
==================  ======  ==============================================================
``malformed_tx``    400     not JSON, wrong shape, a float, an unknown field, a bad limit
``too_large``       413     ``JCS(body)`` is longer than 65,536 bytes
``bad_signature``   400     ``sig`` is not ``client``'s Ed25519 signature over ``body``
==================  ======  ==============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from consensus.batch import Tx
from crypto.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    canonical_json,
    check_json_value,
    parse_json,
)
from crypto.hashing import sha256_hex
from crypto.hexcodec import SIGNATURE_HEX_LEN, is_hex
from crypto.signing import TAG_TX, is_valid_public_key, verify_bytes

BODY_BYTES_MAX = 65_536
OPS_MIN = 1
OPS_MAX = 64
KEY_BYTES_MIN = 1
KEY_BYTES_MAX = 256
NONCE_LIMIT = 2**53  # 0 <= nonce < 2^53

MALFORMED = "malformed_tx"
TOO_LARGE = "too_large"
BAD_SIGNATURE = "bad_signature"

_TAG_PREFIX = TAG_TX.encode("utf-8") + b"\x00"


class TxError(ValueError):
    """A transaction refused at the boundary: ``code`` is stable, ``detail`` is for humans."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def to_wire(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class SetOp:
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str


@dataclass(frozen=True, slots=True)
class CasOp:
    key: str
    expect: int
    value: Any


@dataclass(frozen=True, slots=True)
class TransferOp:
    to: str
    amount: int


Op = SetOp | DeleteOp | CasOp | TransferOp


@dataclass(frozen=True, slots=True)
class ValidTx:
    """A transaction of valid shape; :func:`verify_transaction` checks its signature."""

    tx_id: str
    client: str
    nonce: int
    ops: tuple[Op, ...]
    sig: str
    # JCS(body), hashed for tx_id and signed under TAG_TX; None when decoded for execution only.
    body_jcs: bytes | None = field(repr=False)
    wire: Mapping[str, Any] = field(repr=False, compare=False)  # {"body", "sig"} as received

    def to_consensus_tx(self) -> Tx:
        # {"body":<JCS>,"sig":"<128 hex>"} as the peers will see it in a PRE-PREPARE.
        size = len(self.body_jcs) + len(self.sig) + 18 if self.body_jcs is not None else 0
        return Tx(self.tx_id, self.wire, size)


def parse_transaction(data: bytes | str) -> ValidTx:
    """Parse JSON text (floats, NaN and duplicate keys refused) and check its shape."""
    if len(data) > 4 * BODY_BYTES_MAX:
        # Bounds the parser's work; any accepted body fits well within this (escapes aside).
        raise TxError(TOO_LARGE, f"a transaction must be smaller than {4 * BODY_BYTES_MAX} bytes")
    try:
        wire = parse_json(data)
    except CanonicalJsonError as exc:
        raise TxError(MALFORMED, str(exc)) from exc
    return decode_transaction(wire)


def decode_transaction(wire: Any) -> ValidTx:
    """Check the shape of a parsed transaction against spec §3; the signature is not checked."""
    body = _body_of(wire)
    try:
        body_jcs = canonical_json(body)
    except (CanonicalJsonError, RecursionError) as exc:
        raise TxError(MALFORMED, f"body: {exc}") from exc
    if len(body_jcs) > BODY_BYTES_MAX:
        raise TxError(
            TOO_LARGE, f"the canonical body is {len(body_jcs)} bytes, more than {BODY_BYTES_MAX}"
        )
    return _decode_checked(wire, body, sha256_hex(body_jcs), body_jcs, values_checked=True)


def decode_for_execution(wire: Any, tx_id: str) -> ValidTx:
    """Shape check for a transaction of a committed batch, whose ``tx_id`` consensus computed.

    It skips re-serialising the body (the size limit and the id were settled when the batch
    was built and checked by a quorum) but checks everything else, values included. The result
    has no ``body_jcs`` and cannot be given to :func:`verify_transaction`.
    """
    body = _body_of(wire)
    return _decode_checked(wire, body, tx_id, None, values_checked=False)


def _body_of(wire: Any) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise TxError(MALFORMED, "a transaction must be an object with body and sig")
    _exact_fields(wire, ("body", "sig"), "transaction")
    body = wire["body"]
    if not isinstance(body, Mapping):
        raise TxError(MALFORMED, "body must be an object with client, nonce and ops")
    return body


def _decode_checked(
    wire: Mapping[str, Any],
    body: Mapping[str, Any],
    tx_id: str,
    body_jcs: bytes | None,
    values_checked: bool,
) -> ValidTx:
    _exact_fields(body, ("client", "nonce", "ops"), "body")
    client = body["client"]
    if not isinstance(client, str) or not _valid_key(client):
        raise TxError(MALFORMED, "body.client must be a valid Ed25519 public key in lowercase hex")
    nonce = body["nonce"]
    if not _is_int(nonce) or not 0 <= nonce < NONCE_LIMIT:
        raise TxError(MALFORMED, "body.nonce must be an integer with 0 <= nonce < 2^53")
    sig = wire["sig"]
    if not is_hex(sig, SIGNATURE_HEX_LEN):
        raise TxError(MALFORMED, f"sig must be {SIGNATURE_HEX_LEN} lowercase hex characters")
    ops = body["ops"]
    if not isinstance(ops, list) or not OPS_MIN <= len(ops) <= OPS_MAX:
        raise TxError(MALFORMED, f"body.ops must be a list of {OPS_MIN} to {OPS_MAX} operations")
    decoded = tuple(_decode_op(op, i, values_checked) for i, op in enumerate(ops))
    return ValidTx(
        tx_id=tx_id,
        client=client,
        nonce=nonce,
        ops=decoded,
        sig=sig,
        body_jcs=body_jcs,
        wire=wire,
    )


@lru_cache(maxsize=65_536)
def _valid_key(pubkey: str) -> bool:
    # The curve check costs ~80 us; clients and recipients repeat, and the answer never changes.
    return is_valid_public_key(pubkey)


def verify_transaction(tx: ValidTx) -> None:
    """Raise ``TxError("bad_signature")`` unless ``tx.sig`` is ``tx.client``'s strict Ed25519
    signature over the signing input of the body under ``phalanx/tx/v1``."""
    if tx.body_jcs is None:
        raise ValueError("a transaction decoded for execution has no body bytes to verify")
    if not verify_bytes(tx.client, _TAG_PREFIX + tx.body_jcs, tx.sig):
        raise TxError(BAD_SIGNATURE, "sig is not a valid signature of body by body.client")


def check_transaction(wire: Any) -> ValidTx:
    """:func:`decode_transaction` then :func:`verify_transaction`."""
    tx = decode_transaction(wire)
    verify_transaction(tx)
    return tx


_OP_FIELDS: dict[str, tuple[str, ...]] = {
    "set": ("op", "key", "value"),
    "delete": ("op", "key"),
    "cas": ("op", "key", "expect", "value"),
    "transfer": ("op", "to", "amount"),
}


def _decode_op(op: Any, i: int, values_checked: bool) -> Op:
    where = f"body.ops[{i}]"
    if not isinstance(op, Mapping):
        raise TxError(MALFORMED, f"{where} must be an object")
    kind = op.get("op")
    if not isinstance(kind, str) or kind not in _OP_FIELDS:
        raise TxError(MALFORMED, f"{where}.op must be one of set, delete, cas, transfer")
    _exact_fields(op, _OP_FIELDS[kind], where)
    if kind == "transfer":
        to, amount = op["to"], op["amount"]
        if not isinstance(to, str) or not _valid_key(to):
            raise TxError(MALFORMED, f"{where}.to must be a valid Ed25519 public key (hex)")
        if not _is_int(amount) or not 0 < amount <= MAX_SAFE_INTEGER:
            raise TxError(MALFORMED, f"{where}.amount must be a positive integer")
        return TransferOp(to, amount)
    key = _key(op["key"], where)
    if kind != "delete" and not values_checked:
        try:
            check_json_value(op["value"])
        except (CanonicalJsonError, RecursionError) as exc:
            raise TxError(MALFORMED, f"{where}.value: {exc}") from exc
    if kind == "set":
        return SetOp(key, op["value"])
    if kind == "delete":
        return DeleteOp(key)
    expect = op["expect"]
    if not _is_int(expect) or not 0 <= expect <= MAX_SAFE_INTEGER:
        raise TxError(MALFORMED, f"{where}.expect must be a non-negative integer")
    return CasOp(key, expect, op["value"])


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise TxError(MALFORMED, f"{where}.key must be a string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TxError(MALFORMED, f"{where}.key is not valid UTF-8") from exc
    if not KEY_BYTES_MIN <= size <= KEY_BYTES_MAX:
        raise TxError(
            MALFORMED, f"{where}.key must be {KEY_BYTES_MIN} to {KEY_BYTES_MAX} UTF-8 bytes"
        )
    return key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _exact_fields(obj: Mapping[str, Any], expected: tuple[str, ...], what: str) -> None:
    missing = [k for k in expected if k not in obj]
    if missing:
        raise TxError(MALFORMED, f"{what} lacks field(s) {', '.join(missing)}")
    unknown = sorted(str(k) for k in obj if k not in expected)
    if unknown:
        raise TxError(MALFORMED, f"{what} has unknown field(s) {', '.join(unknown)}")
