"""Client transactions at the trust boundary (spec §3).

A transaction arrives as ``{"body": {"chain_id", "client", "nonce", "ops"}, "sig"}``.
:func:`decode_transaction` checks its shape against every limit of the spec and returns a
:class:`ValidTx`; :func:`verify_transaction` then checks the signature and :func:`check_chain`
that the body names this node's chain. Each refusal is a :class:`TxError` with a stable ``code``
(for the API's ``{"error", "detail"}`` body) and a human ``detail``:

==================  ======  ==============================================================
code                HTTP    meaning
==================  ======  ==============================================================
``malformed_tx``    400     not JSON, wrong shape, a float, an unknown field, a bad limit
``too_large``       413     ``JCS(body)`` is longer than 65,536 bytes
``bad_signature``   400     ``sig`` is not ``client``'s Ed25519 signature over ``body``
``wrong_chain``     400     ``body.chain_id`` names another network (checked after the sig)
==================  ======  ==============================================================

The pool adds ``insufficient_fee`` (400) at admission: see ``node/pool.py``.
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
from ledger.genesis import CHAIN_ID_RE

BODY_BYTES_MAX = 65_536
OPS_MIN = 1
OPS_MAX = 64
KEY_BYTES_MIN = 1
KEY_BYTES_MAX = 256
NONCE_LIMIT = 2**53  # 0 <= nonce < 2^53

MALFORMED = "malformed_tx"
TOO_LARGE = "too_large"
BAD_SIGNATURE = "bad_signature"
WRONG_CHAIN = "wrong_chain"
INSUFFICIENT_FEE = "insufficient_fee"

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
class ChownOp:
    key: str
    to: str


@dataclass(frozen=True, slots=True)
class TransferOp:
    to: str
    amount: int


Op = SetOp | DeleteOp | CasOp | ChownOp | TransferOp


@dataclass(frozen=True, slots=True)
class ValidTx:
    """A transaction of valid shape; :func:`verify_transaction` checks its signature."""

    tx_id: str
    chain_id: str
    client: str
    nonce: int
    ops: tuple[Op, ...]
    sig: str
    # len(JCS(body)): the fee is fee_per_byte times this (spec §3).
    body_size: int
    # JCS(body), hashed for tx_id and signed under TAG_TX; None when decoded for execution only.
    body_jcs: bytes | None = field(repr=False)
    wire: Mapping[str, Any] = field(repr=False, compare=False)  # {"body", "sig"} as received

    def to_consensus_tx(self) -> Tx:
        # {"body":<JCS>,"sig":"<128 hex>"} as the peers will see it in a PRE-PREPARE.
        size = self.body_size + len(self.sig) + 18 if self.body_jcs is not None else 0
        return Tx(self.tx_id, self.wire, size)

    def fee(self, fee_per_byte: int) -> int:
        """What this transaction pays: ``fee_per_byte * len(JCS(body))``."""
        return fee_per_byte * self.body_size


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

    The body is serialised once more, because the fee depends on ``len(JCS(body))``; that also
    checks every value. The id is not hashed again (consensus computed it) and the size limit
    was settled when the batch was built and checked by a quorum. The result has no
    ``body_jcs`` and cannot be given to :func:`verify_transaction`.
    """
    body = _body_of(wire)
    try:
        body_size = len(canonical_json(body))
    except (CanonicalJsonError, RecursionError) as exc:
        raise TxError(MALFORMED, f"body: {exc}") from exc
    return _decode_checked(wire, body, tx_id, None, values_checked=True, body_size=body_size)


def _body_of(wire: Any) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise TxError(MALFORMED, "a transaction must be an object with body and sig")
    _exact_fields(wire, ("body", "sig"), "transaction")
    body = wire["body"]
    if not isinstance(body, Mapping):
        raise TxError(MALFORMED, "body must be an object with chain_id, client, nonce and ops")
    return body


def _decode_checked(
    wire: Mapping[str, Any],
    body: Mapping[str, Any],
    tx_id: str,
    body_jcs: bytes | None,
    values_checked: bool,
    body_size: int | None = None,
) -> ValidTx:
    _exact_fields(body, ("chain_id", "client", "nonce", "ops"), "body")
    chain_id = body["chain_id"]
    if not isinstance(chain_id, str) or not CHAIN_ID_RE.fullmatch(chain_id):
        raise TxError(
            MALFORMED, "body.chain_id must be 1 to 64 characters of [a-z0-9._-] (the network's)"
        )
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
    if body_size is None:
        if body_jcs is None:
            raise ValueError("the body's size must be known to decode a transaction")
        body_size = len(body_jcs)
    return ValidTx(
        tx_id=tx_id,
        chain_id=chain_id,
        client=client,
        nonce=nonce,
        ops=decoded,
        sig=sig,
        body_size=body_size,
        body_jcs=body_jcs,
        wire=wire,
    )


@lru_cache(maxsize=65_536)
def _valid_key(pubkey: str) -> bool:
    # The curve check costs ~80 us; clients and recipients repeat, and the answer never changes.
    return is_valid_public_key(pubkey)


def verify_transaction(tx: ValidTx) -> None:
    """Raise ``TxError("bad_signature")`` unless ``tx.sig`` is ``tx.client``'s strict Ed25519
    signature over the signing input of the body under ``phalanx/tx/v2``."""
    if tx.body_jcs is None:
        raise ValueError("a transaction decoded for execution has no body bytes to verify")
    if not verify_bytes(tx.client, _TAG_PREFIX + tx.body_jcs, tx.sig):
        raise TxError(BAD_SIGNATURE, "sig is not a valid signature of body by body.client")


def check_chain(tx: ValidTx, chain_id: str) -> None:
    """Raise ``TxError("wrong_chain")`` unless ``tx`` was signed for the chain ``chain_id``."""
    if tx.chain_id != chain_id:
        raise TxError(
            WRONG_CHAIN,
            f"body.chain_id is {tx.chain_id!r} but this network is {chain_id!r}: the "
            "transaction was signed for another network; sign it again with this chain_id "
            "(GET /v1/status shows it)",
        )


def check_transaction(wire: Any, chain_id: str) -> ValidTx:
    """:func:`decode_transaction`, :func:`verify_transaction`, then :func:`check_chain`."""
    tx = decode_transaction(wire)
    verify_transaction(tx)
    check_chain(tx, chain_id)
    return tx


_OP_FIELDS: dict[str, tuple[str, ...]] = {
    "set": ("op", "key", "value"),
    "delete": ("op", "key"),
    "cas": ("op", "key", "expect", "value"),
    "chown": ("op", "key", "to"),
    "transfer": ("op", "to", "amount"),
}


def _decode_op(op: Any, i: int, values_checked: bool) -> Op:
    where = f"body.ops[{i}]"
    if not isinstance(op, Mapping):
        raise TxError(MALFORMED, f"{where} must be an object")
    kind = op.get("op")
    if not isinstance(kind, str) or kind not in _OP_FIELDS:
        raise TxError(MALFORMED, f"{where}.op must be one of set, delete, cas, chown, transfer")
    _exact_fields(op, _OP_FIELDS[kind], where)
    if kind == "transfer":
        to, amount = op["to"], op["amount"]
        if not isinstance(to, str) or not _valid_key(to):
            raise TxError(MALFORMED, f"{where}.to must be a valid Ed25519 public key (hex)")
        if not _is_int(amount) or not 0 < amount <= MAX_SAFE_INTEGER:
            raise TxError(MALFORMED, f"{where}.amount must be a positive integer")
        return TransferOp(to, amount)
    key = _key(op["key"], where)
    if kind == "chown":
        to = op["to"]
        if not isinstance(to, str) or not _valid_key(to):
            raise TxError(MALFORMED, f"{where}.to must be a valid Ed25519 public key (hex)")
        return ChownOp(key, to)
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
