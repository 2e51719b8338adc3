"""PBFT peer messages (Castro & Liskov, OSDI'99 §4), as frozen values validated at the boundary.

Every message names its ``chain_id``, its ``sender`` (a validator public key, hex) and carries the
sender's Ed25519 ``signature`` over ``signed_body()`` under the message's own tag
``phalanx/<name>/v1`` (spec §1: no two uses share a tag). Two choices matter:

* A COMMIT's signature *is* the spec's commit vote (``commit_vote_body`` under ``TAG_COMMIT``), so
  a commit certificate (``consensus.output.Certificate``) is made of COMMIT signatures directly.
* A PRE-PREPARE carries the whole batch but signs only ``{chain_id, view, seq, digest}``: the
  digest commits to the batch (spec §4), so prepared certificates inside VIEW-CHANGE and the
  re-proposals inside NEW-VIEW stay small (``batch`` is None there). A replica that lacks a batch
  fetches it by digest with BATCH-REQUEST; batches are self-certifying, so any peer may answer.

``decode_message`` is the only way a peer's dict becomes a message: it checks every field's type,
hex length, integer range and list size and raises ``MalformedMessage`` with a short reason.
Signatures are *not* checked here (that needs the validator set); see ``verify_message``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from consensus.batch import Batch, KnownTx, Tx, commit_vote_body
from consensus.errors import MalformedMessage
from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, check_json_value
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.signing import TAG_COMMIT, Signer, Verifier

TAG_PRE_PREPARE = "phalanx/pre-prepare/v1"
TAG_PREPARE = "phalanx/prepare/v1"
TAG_CHECKPOINT = "phalanx/checkpoint/v1"
TAG_VIEW_CHANGE = "phalanx/view-change/v1"
TAG_NEW_VIEW = "phalanx/new-view/v1"
TAG_BATCH_REQUEST = "phalanx/batch-request/v1"
TAG_BATCH_RESPONSE = "phalanx/batch-response/v1"

# Size limits of the wire format itself ("put a limit on everything"). The replica applies the
# tighter, configuration-dependent limits (batch_size_max, watermark window, n) on top.
CHAIN_ID_LEN_MAX = 128
BATCH_TXS_MAX = 10_000
BATCH_REQUEST_DIGESTS_MAX = 64
BATCH_RESPONSE_BATCHES_MAX = 64
PREPARED_CERTS_MAX = 4_096  # prepared certificates in one VIEW-CHANGE (at most L are legitimate)
VOTES_MAX = 1_024  # messages in one quorum proof (at most n are useful)
NEW_VIEW_PRE_PREPARES_MAX = 4_096


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


class _Signed(ABC):
    """What every signed message shares: on the wire it is its type, the body its sender
    signed, and who signed it. PRE-PREPARE and BATCH-RESPONSE add what the signature leaves
    out (the batches, which certify themselves by digest)."""

    __slots__ = ()

    TYPE: ClassVar[str]
    sender: str
    signature: str

    @abstractmethod
    def signed_body(self) -> dict[str, Any]:
        """The object signed under the message's TAG."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            **self.signed_body(),
            "sender": self.sender,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class PrePrepare(_Signed):
    """<PRE-PREPARE, v, n, d>_p with the batch m attached (OSDI'99 §4.2)."""

    TYPE: ClassVar[str] = "pre_prepare"
    TAG: ClassVar[str] = TAG_PRE_PREPARE

    chain_id: str
    view: int
    seq: int
    digest: str
    batch: Batch | None  # None inside VIEW-CHANGE / NEW-VIEW, where only the digest matters
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "view": self.view,
            "seq": self.seq,
            "digest": self.digest,
        }

    def without_batch(self) -> PrePrepare:
        return dataclasses.replace(self, batch=None)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            **self.signed_body(),
            "batch": None if self.batch is None else self.batch.to_wire(),
            "sender": self.sender,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class Prepare(_Signed):
    """<PREPARE, v, n, d, i>_i (OSDI'99 §4.2)."""

    TYPE: ClassVar[str] = "prepare"
    TAG: ClassVar[str] = TAG_PREPARE

    chain_id: str
    view: int
    seq: int
    digest: str
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "view": self.view,
            "seq": self.seq,
            "digest": self.digest,
        }


@dataclass(frozen=True, slots=True)
class Commit(_Signed):
    """<COMMIT, v, n, d, i>_i (OSDI'99 §4.2); its signature is the spec §4 commit vote."""

    TYPE: ClassVar[str] = "commit"
    TAG: ClassVar[str] = TAG_COMMIT

    chain_id: str
    view: int
    seq: int
    digest: str
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return commit_vote_body(self.chain_id, self.seq, self.view, self.digest)


@dataclass(frozen=True, slots=True)
class Checkpoint(_Signed):
    """<CHECKPOINT, n, d, i>_i (OSDI'99 §4.3); the state digest is the chained block_hash."""

    TYPE: ClassVar[str] = "checkpoint"
    TAG: ClassVar[str] = TAG_CHECKPOINT

    chain_id: str
    seq: int
    block_hash: str
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq, "block_hash": self.block_hash}


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """The set P_m of OSDI'99 §4.4: a pre-prepare (without its batch) and matching PREPAREs from
    distinct backups, together showing that (view, seq, digest) prepared somewhere."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]

    @property
    def view(self) -> int:
        return self.pre_prepare.view

    @property
    def seq(self) -> int:
        return self.pre_prepare.seq

    @property
    def digest(self) -> str:
        return self.pre_prepare.digest

    def to_wire(self) -> dict[str, Any]:
        return {
            "pre_prepare": self.pre_prepare.to_wire(),
            "prepares": [p.to_wire() for p in self.prepares],
        }


@dataclass(frozen=True, slots=True)
class ViewChange(_Signed):
    """<VIEW-CHANGE, v+1, n, C, P, i>_i (OSDI'99 §4.4): the stable checkpoint ``stable_seq`` with
    its proof C (q CHECKPOINTs; empty for the genesis checkpoint 0) and P, a prepared certificate
    for every seq above it that prepared at this replica."""

    TYPE: ClassVar[str] = "view_change"
    TAG: ClassVar[str] = TAG_VIEW_CHANGE

    chain_id: str
    view: int  # the view being moved to
    stable_seq: int
    stable_block_hash: str
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedCert, ...]
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "view": self.view,
            "stable_seq": self.stable_seq,
            "stable_block_hash": self.stable_block_hash,
            "checkpoint_proof": [c.to_wire() for c in self.checkpoint_proof],
            "prepared": [p.to_wire() for p in self.prepared],
        }


@dataclass(frozen=True, slots=True)
class NewView(_Signed):
    """<NEW-VIEW, v+1, V, O>_p (OSDI'99 §4.4): q VIEW-CHANGEs and the re-proposals O, each a
    PRE-PREPARE (without batch) signed by the new primary, null batches filling the gaps."""

    TYPE: ClassVar[str] = "new_view"
    TAG: ClassVar[str] = TAG_NEW_VIEW

    chain_id: str
    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "view": self.view,
            "view_changes": [v.to_wire() for v in self.view_changes],
            "pre_prepares": [p.to_wire() for p in self.pre_prepares],
        }


@dataclass(frozen=True, slots=True)
class BatchRequest(_Signed):
    """Ask a peer for batches by digest (after a NEW-VIEW re-proposed batches we never saw)."""

    TYPE: ClassVar[str] = "batch_request"
    TAG: ClassVar[str] = TAG_BATCH_REQUEST

    chain_id: str
    digests: tuple[str, ...]
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "digests": list(self.digests)}


@dataclass(frozen=True, slots=True)
class BatchResponse(_Signed):
    """Batches answering a BATCH-REQUEST. They certify themselves by digest, so the signature
    covers only the digests (it identifies the sender, it does not vouch for the contents)."""

    TYPE: ClassVar[str] = "batch_response"
    TAG: ClassVar[str] = TAG_BATCH_RESPONSE

    chain_id: str
    batches: tuple[Batch, ...]
    sender: str = ""
    signature: str = ""

    def signed_body(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "digests": [b.digest for b in self.batches]}

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "chain_id": self.chain_id,
            "batches": [b.to_wire() for b in self.batches],
            "sender": self.sender,
            "signature": self.signature,
        }


Message = (
    PrePrepare | Prepare | Commit | Checkpoint | ViewChange | NewView | BatchRequest | BatchResponse
)
M = TypeVar("M", bound=Message)


def sign_message(signer: Signer, message: M) -> M:
    """Return ``message`` with ``sender`` set to the signer's key and signed under its tag."""
    with_sender = dataclasses.replace(message, sender=signer.public_key)
    return dataclasses.replace(
        with_sender, signature=signer.sign(message.TAG, with_sender.signed_body())
    )


def verify_message(verifier: Verifier, message: Message) -> bool:
    """True if ``message.signature`` is ``message.sender``'s signature over its body and tag.
    Nested messages (inside VIEW-CHANGE / NEW-VIEW) are verified by the replica, one by one."""
    return verifier.verify(message.sender, message.TAG, message.signed_body(), message.signature)


# --------------------------------------------------------------------------------------------
# Decoding: strict shape validation of untrusted dicts
# --------------------------------------------------------------------------------------------

_SIGNED_FIELDS = ("sender", "signature")


def _fail(reason: str, detail: str = "") -> MalformedMessage:
    return MalformedMessage(reason, detail)


def _exact_keys(wire: Any, keys: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(wire, Mapping):
        raise _fail("not_an_object", f"{what} must be a JSON object")
    got = set(wire)
    if got != keys:
        missing, extra = sorted(keys - got), sorted(got - keys)
        raise _fail("bad_fields", f"{what}: missing {missing}, unexpected {extra}")
    return wire


def _int(wire: Mapping[str, Any], key: str, low: int = 0, high: int = MAX_SAFE_INTEGER) -> int:
    value = wire[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail("bad_int", f"{key} must be an integer")
    if not low <= value <= high:
        raise _fail("int_out_of_range", f"{key}={value} is outside [{low}, {high}]")
    return value


def _hex(wire: Mapping[str, Any], key: str, length: int) -> str:
    value = wire[key]
    if not is_hex(value, length):
        raise _fail("bad_hex", f"{key} must be {length} lowercase hex characters")
    return str(value)


def _chain_id(wire: Mapping[str, Any]) -> str:
    value = wire["chain_id"]
    if not isinstance(value, str) or not 1 <= len(value) <= CHAIN_ID_LEN_MAX:
        raise _fail(
            "bad_chain_id", f"chain_id must be a string of 1 to {CHAIN_ID_LEN_MAX} characters"
        )
    return value


def _list(wire: Mapping[str, Any], key: str, length_max: int) -> list[Any]:
    value = wire[key]
    if not isinstance(value, list):
        raise _fail("bad_list", f"{key} must be a list")
    if len(value) > length_max:
        raise _fail("list_too_long", f"{key} holds {len(value)} items, at most {length_max}")
    return value


def _signed(wire: Mapping[str, Any]) -> tuple[str, str]:
    return _hex(wire, "sender", KEY_HEX_LEN), _hex(wire, "signature", SIGNATURE_HEX_LEN)


def _typed(wire: Any, type_name: str, keys: frozenset[str]) -> Mapping[str, Any]:
    checked = _exact_keys(wire, keys, type_name)
    if checked["type"] != type_name:
        raise _fail("wrong_type", f"expected a {type_name}, got {checked['type']!r}")
    return checked


_HEADER_KEYS = frozenset({"chain_id", "seq", "time_ms", "tx_count", "tx_root"})


def decode_batch(wire: Any, known_tx: KnownTx | None = None) -> Batch:
    """A batch's wire form ``{"header", "txs"}``; the header must match the transactions.
    ``known_tx`` (see :data:`KnownTx`) spares hashing the transactions this node decoded
    before."""
    batch = _exact_keys(wire, frozenset({"header", "txs"}), "batch")
    header = _exact_keys(batch["header"], _HEADER_KEYS, "batch header")
    chain_id = _chain_id(header)
    seq = _int(header, "seq", 1)
    time_ms = _int(header, "time_ms")
    tx_count = _int(header, "tx_count", 0, BATCH_TXS_MAX)
    tx_root = _hex(header, "tx_root", HASH_HEX_LEN)
    raw_txs = _list(batch, "txs", BATCH_TXS_MAX)
    if len(raw_txs) != tx_count:
        raise _fail("tx_count_mismatch", f"header says {tx_count}, batch holds {len(raw_txs)}")
    txs: list[Tx] = []
    for raw in raw_txs:
        known = known_tx(raw) if known_tx is not None else None
        if known is not None:
            txs.append(known)
            continue
        try:
            check_json_value(raw)
            txs.append(Tx.from_wire(raw))
        except (CanonicalJsonError, ValueError) as exc:
            raise _fail("bad_tx", str(exc)) from exc
    decoded = Batch(chain_id, seq, time_ms, tuple(txs))
    if decoded.tx_root != tx_root:
        raise _fail("tx_root_mismatch", "tx_root does not match the transactions")
    if tx_count == 0 and time_ms != 0:
        raise _fail("bad_null_batch", "a null batch has time_ms 0")
    return decoded


def _vote_fields(wire: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (
        _chain_id(wire),
        _int(wire, "view"),
        _int(wire, "seq", 1),
        _hex(wire, "digest", HASH_HEX_LEN),
    )


_VOTE_KEYS = frozenset({"type", "chain_id", "view", "seq", "digest", *_SIGNED_FIELDS})


def _decode_pre_prepare(wire: Any, known_tx: KnownTx | None = None) -> PrePrepare:
    checked = _typed(wire, PrePrepare.TYPE, _VOTE_KEYS | {"batch"})
    chain_id, view, seq, digest = _vote_fields(checked)
    batch = None if checked["batch"] is None else decode_batch(checked["batch"], known_tx)
    if batch is not None:
        if batch.chain_id != chain_id or batch.seq != seq:
            raise _fail("batch_mismatch", "the batch header names another chain or seq")
        if batch.digest != digest:
            raise _fail("digest_mismatch", "digest is not the hash of the batch header")
    return PrePrepare(chain_id, view, seq, digest, batch, *_signed(checked))


def _decode_prepare(wire: Any) -> Prepare:
    checked = _typed(wire, Prepare.TYPE, _VOTE_KEYS)
    return Prepare(*_vote_fields(checked), *_signed(checked))


def _decode_commit(wire: Any) -> Commit:
    checked = _typed(wire, Commit.TYPE, _VOTE_KEYS)
    return Commit(*_vote_fields(checked), *_signed(checked))


def _decode_checkpoint(wire: Any) -> Checkpoint:
    keys = frozenset({"type", "chain_id", "seq", "block_hash", *_SIGNED_FIELDS})
    checked = _typed(wire, Checkpoint.TYPE, keys)
    return Checkpoint(
        _chain_id(checked),
        _int(checked, "seq", 1),
        _hex(checked, "block_hash", HASH_HEX_LEN),
        *_signed(checked),
    )


def _decode_prepared_cert(wire: Any) -> PreparedCert:
    checked = _exact_keys(wire, frozenset({"pre_prepare", "prepares"}), "prepared certificate")
    pre_prepare = _decode_pre_prepare(checked["pre_prepare"])
    if pre_prepare.batch is not None:
        raise _fail("batch_in_certificate", "a prepared certificate carries digests, not batches")
    prepares = tuple(_decode_prepare(p) for p in _list(checked, "prepares", VOTES_MAX))
    return PreparedCert(pre_prepare, prepares)


def decode_prepared_cert(wire: Any) -> PreparedCert:
    """A prepared certificate's wire form (as kept in the replica's records)."""
    return _decode_prepared_cert(wire)


def decode_checkpoint(wire: Any) -> Checkpoint:
    return _decode_checkpoint(wire)


def _decode_view_change(wire: Any) -> ViewChange:
    keys = frozenset(
        {
            "type",
            "chain_id",
            "view",
            "stable_seq",
            "stable_block_hash",
            "checkpoint_proof",
            "prepared",
        }
        | set(_SIGNED_FIELDS)
    )
    checked = _typed(wire, ViewChange.TYPE, keys)
    proof = tuple(_decode_checkpoint(c) for c in _list(checked, "checkpoint_proof", VOTES_MAX))
    prepared = tuple(
        _decode_prepared_cert(p) for p in _list(checked, "prepared", PREPARED_CERTS_MAX)
    )
    return ViewChange(
        _chain_id(checked),
        _int(checked, "view", 1),
        _int(checked, "stable_seq"),
        _hex(checked, "stable_block_hash", HASH_HEX_LEN),
        proof,
        prepared,
        *_signed(checked),
    )


def _decode_new_view(wire: Any) -> NewView:
    keys = frozenset({"type", "chain_id", "view", "view_changes", "pre_prepares", *_SIGNED_FIELDS})
    checked = _typed(wire, NewView.TYPE, keys)
    view_changes = tuple(_decode_view_change(v) for v in _list(checked, "view_changes", VOTES_MAX))
    pre_prepares = tuple(
        _decode_pre_prepare(p) for p in _list(checked, "pre_prepares", NEW_VIEW_PRE_PREPARES_MAX)
    )
    if any(p.batch is not None for p in pre_prepares):
        raise _fail("batch_in_new_view", "NEW-VIEW re-proposes digests, not batches")
    return NewView(
        _chain_id(checked), _int(checked, "view", 1), view_changes, pre_prepares, *_signed(checked)
    )


def _decode_batch_request(wire: Any) -> BatchRequest:
    keys = frozenset({"type", "chain_id", "digests", *_SIGNED_FIELDS})
    checked = _typed(wire, BatchRequest.TYPE, keys)
    raw = _list(checked, "digests", BATCH_REQUEST_DIGESTS_MAX)
    digests = tuple(_hex({"digest": d}, "digest", HASH_HEX_LEN) for d in raw)
    return BatchRequest(_chain_id(checked), digests, *_signed(checked))


def _decode_batch_response(wire: Any) -> BatchResponse:
    keys = frozenset({"type", "chain_id", "batches", *_SIGNED_FIELDS})
    checked = _typed(wire, BatchResponse.TYPE, keys)
    batches = tuple(decode_batch(b) for b in _list(checked, "batches", BATCH_RESPONSE_BATCHES_MAX))
    return BatchResponse(_chain_id(checked), batches, *_signed(checked))


_DECODERS: dict[str, Callable[[Any], Message]] = {
    PrePrepare.TYPE: _decode_pre_prepare,
    Prepare.TYPE: _decode_prepare,
    Commit.TYPE: _decode_commit,
    Checkpoint.TYPE: _decode_checkpoint,
    ViewChange.TYPE: _decode_view_change,
    NewView.TYPE: _decode_new_view,
    BatchRequest.TYPE: _decode_batch_request,
    BatchResponse.TYPE: _decode_batch_response,
}


def decode_message(wire: Any, known_tx: KnownTx | None = None) -> Message:
    """Turn an untrusted wire dict into a message, or raise MalformedMessage saying why.
    ``known_tx`` serves a PRE-PREPARE's transactions this node decoded before."""
    if not isinstance(wire, Mapping):
        raise _fail("not_an_object", "a message must be a JSON object")
    type_name = wire.get("type")
    decoder = _DECODERS.get(type_name) if isinstance(type_name, str) else None
    if decoder is None:
        raise _fail("unknown_type", f"unknown message type {type_name!r}")
    try:
        if type_name == PrePrepare.TYPE and known_tx is not None:
            return _decode_pre_prepare(wire, known_tx)
        return decoder(wire)
    except MalformedMessage:
        raise
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        # Defensive: every field is checked above, but a shape we did not foresee must still be
        # the peer's fault (dropped), not ours (raised).
        raise _fail("malformed", f"{type(exc).__name__}: {exc}") from exc
