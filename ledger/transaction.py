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
from typing import Any, cast

from consensus.batch import Tx
from crypto.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJsonError,
    canonical_json,
    canonical_json_parsed,
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


# The decoded forms are slotted dataclasses but not frozen: a frozen one is built through one
# object.__setattr__ call per field, which cost ~2 us per transaction on the node's hot path
# (a profile under load put these constructors at ~10% of the primary's CPU). Nothing assigns
# to them after decoding; treat them as immutable.


@dataclass(slots=True)
class SetOp:
    key: str
    value: Any


@dataclass(slots=True)
class DeleteOp:
    key: str


@dataclass(slots=True)
class CasOp:
    key: str
    expect: int
    value: Any


@dataclass(slots=True)
class ChownOp:
    key: str
    to: str


@dataclass(slots=True)
class TransferOp:
    to: str
    amount: int


Op = SetOp | DeleteOp | CasOp | ChownOp | TransferOp


@dataclass(slots=True)
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


@dataclass(slots=True)
class _Shape:
    """What :func:`_check_shape` found in a transaction of valid shape."""

    chain_id: str
    client: str
    nonce: int
    ops: tuple[Op, ...]
    sig: str
    # True when every value the shape check did not type is a string, bool, null or safe
    # integer: the body then holds no float, huge integer or non-string key, and its JCS needs
    # no parse-back (crypto.canonical.canonical_json_parsed).
    plain: bool


def parse_transaction(data: bytes | str) -> ValidTx:
    """Parse JSON text (floats, NaN and duplicate keys refused) and check its shape."""
    if len(data) > 4 * BODY_BYTES_MAX:
        # Bounds the parser's work; any accepted body fits well within this (escapes aside).
        raise TxError(TOO_LARGE, f"a transaction must be smaller than {4 * BODY_BYTES_MAX} bytes")
    try:
        wire = parse_json(data)
    except CanonicalJsonError as exc:
        raise TxError(MALFORMED, str(exc)) from exc
    return _decode(wire, None, parsed=True)


def decode_transaction(wire: Any) -> ValidTx:
    """Check the shape of a parsed transaction against spec §3; the signature is not checked."""
    return _decode(wire, None, parsed=False)


def decode_for_execution(wire: Any, tx_id: str) -> ValidTx:
    """Shape check for a transaction of a committed batch, whose ``tx_id`` consensus computed.

    The body is serialised once more, because the fee depends on ``len(JCS(body))``; that also
    checks every value. The id is not hashed again (consensus computed it) and the size limit
    was settled when the batch was built and checked by a quorum. The result has no
    ``body_jcs`` and cannot be given to :func:`verify_transaction`.
    """
    return _decode(wire, tx_id, parsed=False)


def _decode(wire: Any, tx_id: str | None, parsed: bool) -> ValidTx:
    """Decode ``wire``; with ``tx_id`` given, for execution (see :func:`decode_for_execution`).

    The refusals come in the order of the spec's checks: the envelope, then the body's JCS
    (a value outside the Phalanx space), then its size, then the body's shape. The shape is
    checked first all the same, because a body of valid shape whose values are all scalars can
    be serialised without looking for floats and huge integers (about 3 us less); a shape
    error is held back until the JCS and the size have had their say.
    """
    body = _body_of(wire)
    problem: TxError | None = None
    try:
        shape: _Shape | None = _check_shape(wire, body, values_checked=True)
    except TxError as exc:
        problem, shape = exc, None
    try:
        if parsed or (shape is not None and shape.plain):
            body_jcs = canonical_json_parsed(body)
        else:
            body_jcs = canonical_json(body)
    except (CanonicalJsonError, RecursionError) as exc:
        raise TxError(MALFORMED, f"body: {exc}") from exc
    if tx_id is None:
        if len(body_jcs) > BODY_BYTES_MAX:
            raise TxError(
                TOO_LARGE,
                f"the canonical body is {len(body_jcs)} bytes, more than {BODY_BYTES_MAX}",
            )
        if shape is None:
            raise cast(TxError, problem)
        return _valid_tx(wire, shape, sha256_hex(body_jcs), body_jcs, len(body_jcs))
    if shape is None:
        raise cast(TxError, problem)
    return _valid_tx(wire, shape, tx_id, None, len(body_jcs))


def _body_of(wire: Any) -> Mapping[str, Any]:
    if type(wire) is not dict and not isinstance(wire, Mapping):  # the ABC check is slow
        raise TxError(MALFORMED, "a transaction must be an object with body and sig")
    _exact_fields(wire, _TX_FIELDS, "transaction")
    body = wire["body"]
    if type(body) is not dict and not isinstance(body, Mapping):
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
    """The shape check of a body whose JCS is known (``body_jcs``) or whose size is
    (``body_size``); with ``values_checked`` false, each op's value is checked too."""
    shape = _check_shape(wire, body, values_checked)
    if body_size is None:
        if body_jcs is None:
            raise ValueError("the body's size must be known to decode a transaction")
        body_size = len(body_jcs)
    return _valid_tx(wire, shape, tx_id, body_jcs, body_size)


def _valid_tx(
    wire: Mapping[str, Any], shape: _Shape, tx_id: str, body_jcs: bytes | None, body_size: int
) -> ValidTx:
    return ValidTx(
        tx_id,
        shape.chain_id,
        shape.client,
        shape.nonce,
        shape.ops,
        shape.sig,
        body_size,
        body_jcs,
        wire,
    )


def _check_shape(wire: Mapping[str, Any], body: Mapping[str, Any], values_checked: bool) -> _Shape:
    _exact_fields(body, _BODY_FIELDS, "body")
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
    plain = True
    decoded: list[Op] = []
    for i, op in enumerate(ops):
        one = _decode_op(op, i, values_checked)
        decoded.append(one)
        if plain and isinstance(one, (SetOp, CasOp)):
            plain = _is_scalar(one.value)
    return _Shape(chain_id, client, nonce, tuple(decoded), sig, plain)


def _is_scalar(value: Any) -> bool:
    """True for a string, bool, null or integer within ±(2^53 - 1): a value whose JCS the C
    encoder writes exactly. Containers answer False (the full check looks inside them)."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    return kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


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


# Each op kind's fields, as a set (the fast comparison) and in the order errors name them.
_OP_FIELDS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    kind: (frozenset(names), names)
    for kind, names in (
        ("set", ("op", "key", "value")),
        ("delete", ("op", "key")),
        ("cas", ("op", "key", "expect", "value")),
        ("chown", ("op", "key", "to")),
        ("transfer", ("op", "to", "amount")),
    )
}
_TX_FIELDS = (frozenset(("body", "sig")), ("body", "sig"))
_BODY_FIELDS = (
    frozenset(("chain_id", "client", "nonce", "ops")),
    ("chain_id", "client", "nonce", "ops"),
)


def _where(i: int) -> str:
    return f"body.ops[{i}]"


def _decode_op(op: Any, i: int, values_checked: bool) -> Op:
    if type(op) is not dict and not isinstance(op, Mapping):
        raise TxError(MALFORMED, f"{_where(i)} must be an object")
    kind = op.get("op")
    fields = _OP_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise TxError(MALFORMED, f"{_where(i)}.op must be one of set, delete, cas, chown, transfer")
    if op.keys() != fields[0]:
        _exact_fields(op, fields, _where(i))
    if kind == "set" and values_checked:  # the common case first
        return SetOp(_key(op["key"], i), op["value"])
    if kind == "transfer":
        to, amount = op["to"], op["amount"]
        if not isinstance(to, str) or not _valid_key(to):
            raise TxError(MALFORMED, f"{_where(i)}.to must be a valid Ed25519 public key (hex)")
        if not _is_int(amount) or not 0 < amount <= MAX_SAFE_INTEGER:
            raise TxError(MALFORMED, f"{_where(i)}.amount must be a positive integer")
        return TransferOp(to, amount)
    key = _key(op["key"], i)
    if kind == "chown":
        to = op["to"]
        if not isinstance(to, str) or not _valid_key(to):
            raise TxError(MALFORMED, f"{_where(i)}.to must be a valid Ed25519 public key (hex)")
        return ChownOp(key, to)
    if kind != "delete" and not values_checked:
        try:
            check_json_value(op["value"])
        except (CanonicalJsonError, RecursionError) as exc:
            raise TxError(MALFORMED, f"{_where(i)}.value: {exc}") from exc
    if kind == "set":
        return SetOp(key, op["value"])
    if kind == "delete":
        return DeleteOp(key)
    expect = op["expect"]
    if not _is_int(expect) or not 0 <= expect <= MAX_SAFE_INTEGER:
        raise TxError(MALFORMED, f"{_where(i)}.expect must be a non-negative integer")
    return CasOp(key, expect, op["value"])


def _key(key: Any, i: int) -> str:
    if not isinstance(key, str):
        raise TxError(MALFORMED, f"{_where(i)}.key must be a string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise TxError(MALFORMED, f"{_where(i)}.key is not valid UTF-8") from exc
    if not KEY_BYTES_MIN <= size <= KEY_BYTES_MAX:
        raise TxError(
            MALFORMED, f"{_where(i)}.key must be {KEY_BYTES_MIN} to {KEY_BYTES_MAX} UTF-8 bytes"
        )
    return key


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _exact_fields(
    obj: Mapping[str, Any], fields: tuple[frozenset[str], tuple[str, ...]], what: str
) -> None:
    """Refuse ``obj`` unless its keys are exactly ``fields`` (a set, and the same names in the
    order a refusal lists missing ones)."""
    if obj.keys() == fields[0]:  # one C-level comparison; the details only for a refusal
        return
    expected = fields[1]
    missing = [k for k in expected if k not in obj]
    if missing:
        raise TxError(MALFORMED, f"{what} lacks field(s) {', '.join(missing)}")
    unknown = sorted(str(k) for k in obj if k not in expected)
    if unknown:
        raise TxError(MALFORMED, f"{what} has unknown field(s) {', '.join(unknown)}")
