"""The v2 state machine (spec §3): keys with versions and owners, balances, fees, and the
executed-tx index.

The same code runs over any :class:`StateView`: the LMDB store gives one backed by its write
transaction, :class:`DictState` keeps everything in memory (audit replay, model-based tests).
Execution is deterministic: it depends only on the view's contents, the chain's
:class:`ChainRules` (from the genesis) and the ordered batch.

A transaction executes in this order:

1. a repeat of an executed ``tx_id`` is not executed (``duplicate``, pays nothing);
2. it is indexed at its position, even if it then fails (a failed transaction is recorded);
3. a body that does not decode is ``malformed_tx``, one for another chain ``wrong_chain``:
   neither pays anything (honest replicas never order them);
4. the fee ``fee_per_byte * len(JCS(body))`` is taken from the client's balance; if the balance
   is below it, ``insufficient_fee`` and nothing changes;
5. the ops run against a :class:`_TxOverlay` that buffers their writes; they reach the view only
   if every op succeeds (all or none), while the fee stays taken either way.

Per op, checks run in the spec's order: ``not_found``, then ``forbidden``, then
``cas_mismatch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from consensus.batch import Tx
from ledger.genesis import Genesis
from ledger.transaction import (
    INSUFFICIENT_FEE,
    MALFORMED,
    WRONG_CHAIN,
    CasOp,
    ChownOp,
    DeleteOp,
    SetOp,
    TransferOp,
    TxError,
    ValidTx,
    decode_for_execution,
)

CAS_MISMATCH = "cas_mismatch"
INSUFFICIENT_FUNDS = "insufficient_funds"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
DUPLICATE = "duplicate"

# Every code a committed transaction's result can carry.
RESULT_ERRORS = (
    CAS_MISMATCH,
    INSUFFICIENT_FUNDS,
    INSUFFICIENT_FEE,
    FORBIDDEN,
    NOT_FOUND,
    DUPLICATE,
    MALFORMED,
    WRONG_CHAIN,
)


def ok_result() -> dict[str, Any]:
    return {"ok": True, "error": None}


def error_result(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


@dataclass(frozen=True, slots=True)
class ChainRules:
    """What execution needs from the genesis: the chain's name and the fee per byte."""

    chain_id: str
    fee_per_byte: int

    @classmethod
    def of(cls, genesis: Genesis) -> ChainRules:
        return cls(genesis.chain_id, genesis.fee_per_byte)


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value, version (set/cas/chown writes since it was last absent) and owner (the
    public key, hex, of the client allowed to change, delete or hand it over)."""

    value: Any
    version: int
    owner: str


class StateView(Protocol):
    """What the state machine reads and writes. Absent keys and zero balances are not stored."""

    def get_entry(self, key: str) -> Entry | None: ...

    def put_entry(self, key: str, entry: Entry) -> None: ...

    def delete_entry(self, key: str) -> None: ...

    def get_balance(self, pubkey: str) -> int: ...

    def set_balance(self, pubkey: str, balance: int) -> None: ...

    def tx_location(self, tx_id: str) -> tuple[int, int] | None: ...

    def put_tx_location(self, tx_id: str, seq: int, index: int) -> None: ...


class DictState:
    """An in-memory :class:`StateView`, initialised from genesis accounts."""

    def __init__(self, accounts: Mapping[str, int] | None = None) -> None:
        self.entries: dict[str, Entry] = {}
        self.balances: dict[str, int] = {k: v for k, v in (accounts or {}).items() if v}
        self.locations: dict[str, tuple[int, int]] = {}

    def get_entry(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def put_entry(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry

    def delete_entry(self, key: str) -> None:
        self.entries.pop(key, None)

    def get_balance(self, pubkey: str) -> int:
        return self.balances.get(pubkey, 0)

    def set_balance(self, pubkey: str, balance: int) -> None:
        if balance:
            self.balances[pubkey] = balance
        else:
            self.balances.pop(pubkey, None)

    def tx_location(self, tx_id: str) -> tuple[int, int] | None:
        return self.locations.get(tx_id)

    def put_tx_location(self, tx_id: str, seq: int, index: int) -> None:
        self.locations[tx_id] = (seq, index)

    def items(self) -> Iterator[tuple[str, Entry]]:
        return iter(sorted(self.entries.items(), key=lambda kv: kv[0].encode("utf-8")))


class _TxOverlay:
    """Buffers one transaction's writes over a view; :meth:`flush` applies them all."""

    def __init__(self, base: StateView) -> None:
        self._base = base
        self._entries: dict[str, Entry | None] = {}  # None: deleted
        self._balances: dict[str, int] = {}

    def get_entry(self, key: str) -> Entry | None:
        if key in self._entries:
            return self._entries[key]
        return self._base.get_entry(key)

    def put_entry(self, key: str, entry: Entry) -> None:
        self._entries[key] = entry

    def delete_entry(self, key: str) -> None:
        self._entries[key] = None

    def get_balance(self, pubkey: str) -> int:
        if pubkey in self._balances:
            return self._balances[pubkey]
        return self._base.get_balance(pubkey)

    def set_balance(self, pubkey: str, balance: int) -> None:
        self._balances[pubkey] = balance

    def flush(self) -> None:
        for key, entry in self._entries.items():
            if entry is None:
                self._base.delete_entry(key)
            else:
                self._base.put_entry(key, entry)
        for pubkey, balance in self._balances.items():
            self._base.set_balance(pubkey, balance)


def apply_transaction(view: StateView, tx: ValidTx, rules: ChainRules) -> dict[str, Any]:
    """Check the chain, take the fee, then apply ``tx``'s ops in order, all or none; return its
    result. Does not index the tx (see :func:`execute_tx`)."""
    if tx.chain_id != rules.chain_id:
        return error_result(WRONG_CHAIN)
    fee = tx.fee(rules.fee_per_byte)
    balance = view.get_balance(tx.client)
    if balance < fee:
        return error_result(INSUFFICIENT_FEE)
    if fee:
        # Taken before the ops and kept if one fails: a failing transaction still costs.
        view.set_balance(tx.client, balance - fee)
    overlay = _TxOverlay(view)
    for op in tx.ops:
        error = _apply_op(overlay, tx.client, op)
        if error is not None:
            return error_result(error)
    overlay.flush()
    return ok_result()


def _apply_op(state: _TxOverlay, client: str, op: object) -> str | None:
    if isinstance(op, SetOp):
        current = state.get_entry(op.key)
        if current is None:
            state.put_entry(op.key, Entry(op.value, 1, client))
        elif current.owner != client:
            return FORBIDDEN
        else:
            state.put_entry(op.key, Entry(op.value, current.version + 1, client))
    elif isinstance(op, DeleteOp):
        current = state.get_entry(op.key)
        if current is None:
            return NOT_FOUND
        if current.owner != client:
            return FORBIDDEN
        state.delete_entry(op.key)
    elif isinstance(op, CasOp):
        current = state.get_entry(op.key)
        if current is not None and current.owner != client:
            return FORBIDDEN  # whatever the version: another's key is not ours to test
        version = current.version if current is not None else 0
        if version != op.expect:
            return CAS_MISMATCH
        state.put_entry(op.key, Entry(op.value, version + 1, client))
    elif isinstance(op, ChownOp):
        current = state.get_entry(op.key)
        if current is None:
            return NOT_FOUND
        if current.owner != client:
            return FORBIDDEN
        state.put_entry(op.key, Entry(current.value, current.version + 1, op.to))
    elif isinstance(op, TransferOp):
        balance = state.get_balance(client)  # the fee is already taken
        if balance < op.amount:
            return INSUFFICIENT_FUNDS
        state.set_balance(client, balance - op.amount)
        state.set_balance(op.to, state.get_balance(op.to) + op.amount)
    else:  # decode_transaction builds only the five op types above
        raise TypeError(f"unknown op {op!r}")
    return None


Predecoded = Callable[[Tx], ValidTx | None]
"""The :class:`ValidTx` the node decoded (and verified) from exactly this Tx, or None."""


def execute_tx(
    view: StateView,
    seq: int,
    index: int,
    tx: Tx,
    rules: ChainRules,
    predecoded: Predecoded | None = None,
) -> dict[str, Any]:
    """Execute the transaction at ``(seq, index)``: a repeat of an executed ``tx_id`` is not
    executed (result ``duplicate``, its index entry keeps the first position). ``predecoded``
    spares decoding a transaction the node decoded on admission (the same wire, so the same
    result)."""
    if view.tx_location(tx.tx_id) is not None:
        return error_result(DUPLICATE)
    view.put_tx_location(tx.tx_id, seq, index)
    known = predecoded(tx) if predecoded is not None else None
    if known is not None:
        return apply_transaction(view, known, rules)
    try:
        decoded = decode_for_execution(tx.wire, tx.tx_id)
    except TxError:
        # Honest replicas never order a malformed transaction; should a committed batch hold one,
        # it is recorded as failed so that every replica still agrees on the result.
        return error_result(MALFORMED)
    return apply_transaction(view, decoded, rules)


def execute_batch(
    view: StateView,
    seq: int,
    txs: Sequence[Tx],
    rules: ChainRules,
    predecoded: Predecoded | None = None,
) -> list[dict[str, Any]]:
    """Execute a committed batch in order; one result per transaction."""
    return [execute_tx(view, seq, i, tx, rules, predecoded) for i, tx in enumerate(txs)]
