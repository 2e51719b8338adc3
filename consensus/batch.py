"""Batches: what consensus orders. A batch is identified by the digest of its header (spec §4).

Consensus treats transactions as opaque signed objects: it needs only their ``tx_id`` (to build
``tx_root`` and to order each transaction at most once) and their wire form (to ship them).
Whether a transaction is well formed and correctly signed is decided outside, by the
``TxChecker`` the replica is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from crypto.hashing import hash_object
from crypto.merkle import merkle_root


@dataclass(frozen=True, slots=True)
class Tx:
    """A client transaction as signed: ``wire`` is ``{"body": ..., "sig": ...}``."""

    tx_id: str
    wire: Mapping[str, Any] = field(compare=False, repr=False)
    # Bytes of ``wire`` as JSON, measured where it was parsed (0 if unknown): lets the primary
    # keep a batch, hence its PRE-PREPARE, within what a peer link carries.
    size: int = field(default=0, compare=False, repr=False)

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Tx:
        """Compute ``tx_id = h(JCS(body))``; raises ValueError if ``wire`` has no JSON body."""
        if not isinstance(wire, Mapping) or "body" not in wire:
            raise ValueError("a transaction is an object with a body")
        return cls(hash_object(wire["body"]), wire)


class TxChecker(Protocol):
    """Decides whether a transaction may be ordered: well formed and validly signed.

    The node answers from its cache of transactions verified once in a thread pool; the
    simulator checks its fake client signatures.
    """

    def __call__(self, tx: Tx) -> bool: ...


class KnownTx(Protocol):
    """The :class:`Tx` this node already decoded for exactly this wire form, or None: spares
    hashing the transactions of a proposal that reached us before (relayed or submitted).

    It may answer only for ``{"body", "sig"}`` with the same ``sig`` and an equal body, and
    the Tx it gives is what gets ordered and stored. Should "equal" be loose (Python's
    ``True == 1``), the Tx's id was computed from its own wire, so a batch whose header was
    built from other bytes fails its ``tx_root`` check and is refused, never taken otherwise.
    """

    def __call__(self, wire: Any) -> Tx | None: ...


@dataclass(frozen=True)
class Batch:
    """One batch of transactions at one sequence number; a null batch holds none."""

    chain_id: str
    seq: int
    time_ms: int
    txs: tuple[Tx, ...]

    @classmethod
    def null(cls, chain_id: str, seq: int) -> Batch:
        return cls(chain_id, seq, 0, ())

    @property
    def is_null(self) -> bool:
        return not self.txs

    @cached_property
    def tx_root(self) -> str:
        return merkle_root([bytes.fromhex(tx.tx_id) for tx in self.txs]).hex()

    @cached_property
    def header(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "tx_count": len(self.txs),
            "tx_root": self.tx_root,
        }

    @cached_property
    def digest(self) -> str:
        return hash_object(self.header)

    def to_wire(self) -> dict[str, Any]:
        return {"header": self.header, "txs": [dict(tx.wire) for tx in self.txs]}


def block_hash(seq: int, prev_hash: str, digest: str) -> str:
    """``h(JCS({"seq", "prev_hash", "digest"}))`` (spec §4).

    ``prev_hash`` of seq 1 is the genesis_hash."""
    return hash_object({"seq": seq, "prev_hash": prev_hash, "digest": digest})


def commit_vote_body(chain_id: str, seq: int, view: int, digest: str) -> dict[str, Any]:
    """What a commit vote signs under ``phalanx/commit/v1`` (spec §4)."""
    return {"chain_id": chain_id, "seq": seq, "view": view, "digest": digest}


def tx_ids_of(txs: Sequence[Tx]) -> list[str]:
    return [tx.tx_id for tx in txs]
