"""The pending pool: client transactions verified once, deduplicated, bounded, until committed.

Every transaction that reaches the node (from a client over HTTP, or relayed by a peer) goes
through :meth:`Pool.submit`, whose admission checks run in the spec's order (§3):

1. shape (:func:`ledger.transaction.decode_transaction`): ``malformed_tx``/``too_large``;
2. signature, in a thread pool (PyNaCl releases the GIL, so verification runs beside the event
   loop): ``bad_signature``;
3. chain: a body for another network is ``wrong_chain``;
4. already known: pending or committed answers its status (idempotent; pays nothing more);
5. fee: the client's committed balance, less the fees of its other transactions pending here
   (submitted or relayed), must cover ``fee_per_byte * len(JCS(body))``, else
   ``insufficient_fee``. A throwaway key with nothing in its account cannot queue anything.

A verified ``(tx_id, sig)`` of this chain is remembered in a bounded LRU, so the replica's
synchronous :meth:`Pool.tx_checker` is a cache hit for every transaction this node has seen,
and no transaction is verified twice. The checker refuses another chain's transactions too.

Newly accepted transactions are handed, as :class:`consensus.batch.Tx`, to the ``on_accepted``
callback (the runtime gives them to the replica and relays them to the peers). Committed
transactions leave the pool through :meth:`Pool.remove`.

Bounds: at most ``capacity`` pending transactions (past it, :class:`PoolFull`, which the API
answers with 429); at most ``verified_max`` remembered signatures; pending entries older than
``pending_ttl_s`` are dropped when room is needed (the replica keeps its own copy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from consensus.batch import Tx
from ledger.state_machine import ChainRules
from ledger.transaction import (
    INSUFFICIENT_FEE,
    MALFORMED,
    TxError,
    ValidTx,
    check_chain,
    decode_transaction,
    verify_transaction,
)

CAPACITY_DEFAULT = 100_000
VERIFIED_MAX_DEFAULT = 262_144
PENDING_TTL_S_DEFAULT = 600.0
WORKERS_DEFAULT = 2
# Transactions verified per thread-pool task: large enough to amortise the hand-off, small
# enough that a batch of 1,000 spreads over every worker.
VERIFY_CHUNK = 64
INLINE_VERIFY_MAX = 2  # up to this many signatures are checked on the caller's thread
SUBMITTED_TIMES_MAX = 65_536  # submission times kept for latency after removal

POOL_FULL = "pool_full"

STATUS_PENDING = "pending"
STATUS_COMMITTED = "committed"

_log = logging.getLogger("phalanx.pool")


class PoolFull(Exception):
    """The pending pool holds ``capacity`` transactions; the client should retry later (429)."""

    code = POOL_FULL

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"the pending pool is full ({capacity} transactions); retry after some commit"
        )
        self.detail = str(self)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The fate of one submitted transaction: accepted (``status``) or refused (``error``)."""

    tx_id: str | None = None
    status: str | None = None  # "pending" or "committed"
    error: str | None = None  # a TxError code, "insufficient_fee" or "pool_full"
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_wire(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error, "detail": self.detail or self.error}
        return {"tx_id": self.tx_id, "status": self.status}


def _refused(exc: TxError | PoolFull) -> SubmitResult:
    return SubmitResult(error=exc.code, detail=exc.detail)


@dataclass(frozen=True, slots=True)
class _Pending:
    tx: Tx
    valid: ValidTx  # what admission decoded from tx.wire, reused at execution
    at: float  # monotonic submission time
    client: str
    fee: int


class Pool:
    """Pending client transactions of one node. All methods run on the event loop's thread."""

    def __init__(
        self,
        rules: ChainRules,
        balances_of: Callable[[Collection[str]], Mapping[str, int]],
        capacity: int = CAPACITY_DEFAULT,
        on_accepted: Callable[[list[Tx], bool], None] | None = None,
        committed_among: Callable[[Collection[str]], Collection[str]] | None = None,
        *,
        verified_max: int = VERIFIED_MAX_DEFAULT,
        pending_ttl_s: float = PENDING_TTL_S_DEFAULT,
        workers: int = WORKERS_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or verified_max < 1 or workers < 1:
            raise ValueError("pool capacity, verified_max and workers must be positive")
        self.capacity = capacity
        self._rules = rules
        # Clients' balances as of the last executed block (one read snapshot per submission).
        self._balances_of = balances_of
        self._on_accepted = on_accepted
        # Which of these tx_ids the ledger holds (one read snapshot for a whole submission).
        self._committed_among = committed_among if committed_among is not None else _none
        self._verified_max = verified_max
        self._pending_ttl_s = pending_ttl_s
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # oldest first
        # client -> sum of the fees of its pending transactions (absent: none pending)
        self._pending_fees: dict[str, int] = {}
        # sig -> tx_id of each verified transaction (LRU). Keyed by signature so that a
        # proposal's transactions verified before (relayed to us) are recognised without
        # hashing their bodies again; a hit still needs the tx_id to match.
        self._verified: OrderedDict[str, str] = OrderedDict()
        self._removed_times: OrderedDict[str, float] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tx-verify")
        # The primary's proposals are verified on their own thread, so that a flood of client
        # submissions queued on the shared workers cannot hold up consensus (issue 10).
        self._consensus_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tx-verify-consensus"
        )
        self._closed = False

    # ---- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def size(self) -> int:
        return len(self._pending)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._pending

    def contains(self, tx_id: str) -> bool:
        return tx_id in self._pending

    def pending_txs(self) -> list[Tx]:
        """The pending transactions, oldest first (for a replica restarted with a warm pool)."""
        return [entry.tx for entry in self._pending.values()]

    def pending_fees(self, client: str) -> int:
        """The fees of ``client``'s transactions pending here, which admission reserves."""
        return self._pending_fees.get(client, 0)

    def submitted_at(self, tx_ids: Iterable[str]) -> list[float]:
        """Monotonic submission times of those ``tx_ids`` this node accepted (also recently
        removed ones), for the commit latency histogram."""
        times: list[float] = []
        for tx_id in tx_ids:
            entry = self._pending.get(tx_id)
            if entry is not None:
                times.append(entry.at)
            else:
                at = self._removed_times.get(tx_id)
                if at is not None:
                    times.append(at)
        return times

    # ---- submitting -------------------------------------------------------------------------

    async def submit(self, wires: Sequence[Any], relay: bool = True) -> list[SubmitResult]:
        """Check, verify and add parsed transactions; one result per item, in order.

        Accepted transactions (new ones only) are handed to ``on_accepted`` with ``relay``.
        Duplicates of a pending transaction answer ``pending``; committed ones ``committed``
        (after the signature and chain checks: a known body with a bad signature is refused).
        """
        if self._closed:
            raise RuntimeError("the pool is closed")
        results: list[SubmitResult | None] = [None] * len(wires)
        to_verify: list[tuple[int, ValidTx]] = []
        for i, wire in enumerate(wires):
            results[i] = self._precheck(wire, to_verify, i)
        accepted: list[Tx] = []
        if to_verify:
            verdicts = await self._verify_many([tx for _, tx in to_verify])
            # Decided after the await, against the pool and the ledger as they are now.
            fresh = [
                tx
                for (_, tx), error in zip(to_verify, verdicts, strict=True)
                if error is None and tx.tx_id not in self._pending
            ]
            committed = self._committed_among([tx.tx_id for tx in fresh])
            payers = {tx.client for tx in fresh if tx.fee(self._rules.fee_per_byte)}
            balances = self._balances_of(payers) if payers else {}
            for (i, tx), error in zip(to_verify, verdicts, strict=True):
                if error is None:
                    error = self._chain_error(tx)
                if error is None:
                    self._remember_verified(tx.tx_id, tx.sig)
                    results[i] = self._admit(tx, accepted, committed, balances)
                else:
                    results[i] = _refused(error)
        if accepted and self._on_accepted is not None:
            self._on_accepted(accepted, relay)
        final: list[SubmitResult] = []
        for result in results:
            if result is None:  # every item was decided above
                raise AssertionError("a submitted transaction was left undecided")
            final.append(result)
        return final

    def _precheck(
        self, wire: Any, to_verify: list[tuple[int, ValidTx]], i: int
    ) -> SubmitResult | None:
        """Refuse a bad shape now; queue the rest for the signature check (a cached signature
        is not verified again)."""
        if isinstance(wire, ValidTx):  # decoded off the loop by the caller (node.api.app)
            to_verify.append((i, wire))
            return None
        try:
            tx = decode_transaction(wire)
        except TxError as exc:
            return _refused(exc)
        except RecursionError:
            return SubmitResult(error=MALFORMED, detail="the transaction nests too deeply")
        to_verify.append((i, tx))
        return None

    def _chain_error(self, tx: ValidTx) -> TxError | None:
        try:
            check_chain(tx, self._rules.chain_id)
        except TxError as exc:
            return exc
        return None

    def _admit(
        self,
        tx: ValidTx,
        accepted: list[Tx],
        committed: Collection[str],
        balances: Mapping[str, int],
    ) -> SubmitResult:
        """Add a verified transaction of this chain, unless it is already pending or committed
        (in ``committed``), if its client can pay its fee (``balances``: committed balances of
        the paying clients) beside its other pending ones."""
        if tx.tx_id in self._pending:
            return SubmitResult(tx.tx_id, STATUS_PENDING)
        if tx.tx_id in committed:
            return SubmitResult(tx.tx_id, STATUS_COMMITTED)
        fee = tx.fee(self._rules.fee_per_byte)
        if fee:
            balance = balances[tx.client]
            reserved = self._pending_fees.get(tx.client, 0)
            if balance - reserved < fee:
                return SubmitResult(
                    error=INSUFFICIENT_FEE,
                    detail=f"the fee is {fee} ({self._rules.fee_per_byte} per byte of the "
                    f"{tx.body_size}-byte canonical body) but {tx.client[:16]}... has "
                    f"{balance}, of which {reserved} is reserved by its {self._count(tx.client)} "
                    "other pending transaction(s); fund the account (a transfer from a funded "
                    "client) or wait for its pending transactions to commit",
                )
        if len(self._pending) >= self.capacity and not self._expire_one():
            return _refused(PoolFull(self.capacity))
        consensus_tx = tx.to_consensus_tx()
        self._pending[tx.tx_id] = _Pending(consensus_tx, tx, self._clock(), tx.client, fee)
        if fee:
            self._pending_fees[tx.client] = self._pending_fees.get(tx.client, 0) + fee
        accepted.append(consensus_tx)
        return SubmitResult(tx.tx_id, STATUS_PENDING)

    def _count(self, client: str) -> int:
        # Only for the refusal's message: a linear scan is fine there.
        return sum(1 for entry in self._pending.values() if entry.client == client)

    def _drop(self, tx_id: str) -> _Pending | None:
        """Take ``tx_id`` out of the pending set and release its reserved fee."""
        entry = self._pending.pop(tx_id, None)
        if entry is not None and entry.fee:
            left = self._pending_fees[entry.client] - entry.fee
            if left:
                self._pending_fees[entry.client] = left
            else:
                del self._pending_fees[entry.client]
        return entry

    def _expire_one(self) -> bool:
        """Drop the oldest pending transaction if it outlived ``pending_ttl_s``."""
        if not self._pending:
            return False
        tx_id, entry = next(iter(self._pending.items()))
        if self._clock() - entry.at < self._pending_ttl_s:
            return False
        self._drop(tx_id)
        _log.info("pending_tx_expired", extra={"tx_id": tx_id})
        return True

    async def _verify_many(
        self, txs: list[ValidTx], executor: ThreadPoolExecutor | None = None
    ) -> list[TxError | None]:
        """Signature checks in the thread pool, skipping those already verified."""
        verdicts: list[TxError | None] = [None] * len(txs)
        first: dict[tuple[str, str], int] = {}  # a repeat within one call is verified once
        repeats: list[tuple[int, int]] = []
        todo: list[int] = []
        for i, tx in enumerate(txs):
            if self._verified.get(tx.sig) == tx.tx_id:
                continue
            key = (tx.tx_id, tx.sig)
            if key in first:
                repeats.append((i, first[key]))
            else:
                first[key] = i
                todo.append(i)
        if not todo:
            return verdicts
        if len(todo) <= INLINE_VERIFY_MAX:
            # One or two signatures cost less than the hand-off to a thread and back.
            for i, verdict in zip(todo, _verify_chunk([txs[i] for i in todo]), strict=True):
                verdicts[i] = verdict
            for i, j in repeats:
                verdicts[i] = verdicts[j]
            return verdicts
        loop = asyncio.get_running_loop()
        chunks = [todo[k : k + VERIFY_CHUNK] for k in range(0, len(todo), VERIFY_CHUNK)]
        futures = [
            loop.run_in_executor(executor or self._executor, _verify_chunk, [txs[i] for i in chunk])
            for chunk in chunks
        ]
        for chunk, chunk_verdicts in zip(chunks, await asyncio.gather(*futures), strict=True):
            for i, verdict in zip(chunk, chunk_verdicts, strict=True):
                verdicts[i] = verdict
        for i, j in repeats:
            verdicts[i] = verdicts[j]
        return verdicts

    async def preverify(self, wires: Sequence[Any]) -> None:
        """Verify, off the loop, the transactions a peer proposes, so that the replica's
        :meth:`tx_checker` finds them in the cache. Invalid ones are simply not cached."""
        txs: list[ValidTx] = []
        for wire in wires:
            sig = wire.get("sig") if isinstance(wire, Mapping) else None
            if isinstance(sig, str) and sig in self._verified:
                # Seen before (its tx_id is matched by tx_checker, which verifies on a mismatch).
                continue
            try:
                txs.append(decode_transaction(wire))
            except (TxError, RecursionError):
                continue
        if not txs:
            return
        verdicts = await self._verify_many(txs, self._consensus_executor)
        for tx, error in zip(txs, verdicts, strict=True):
            if error is None and tx.chain_id == self._rules.chain_id:
                self._remember_verified(tx.tx_id, tx.sig)

    # ---- the replica's check ----------------------------------------------------------------

    def known_tx(self, wire: Any) -> Tx | None:
        """The pending :class:`Tx` of exactly this verified wire form, or None (the replica's
        :data:`consensus.batch.KnownTx`): a proposal's transactions relayed to us before are
        not serialised and hashed once more."""
        if type(wire) is not dict or len(wire) != 2:
            return None
        sig = wire.get("sig")
        tx_id = self._verified.get(sig) if type(sig) is str else None
        entry = self._pending.get(tx_id) if tx_id is not None else None
        if entry is None:
            return None
        known = entry.tx.wire
        if known.get("sig") != sig or known.get("body") != wire.get("body"):
            return None
        return entry.tx

    def tx_checker(self, tx: Tx) -> bool:
        """True if ``tx`` is well formed, validly signed and of this chain: a cache hit for any
        transaction this node verified before (only this chain's are cached), else a
        synchronous check (which is then cached)."""
        wire = tx.wire
        if isinstance(wire, Mapping) and len(wire) == 2:
            sig = wire.get("sig")
            if isinstance(sig, str) and self._verified.get(sig) == tx.tx_id:
                self._verified.move_to_end(sig)
                return True
        try:
            valid = decode_transaction(wire)
            if valid.tx_id != tx.tx_id:
                return False
            verify_transaction(valid)
            check_chain(valid, self._rules.chain_id)
        except (TxError, RecursionError):
            return False
        self._remember_verified(valid.tx_id, valid.sig)
        return True

    def predecoded(self, tx: Tx) -> ValidTx | None:
        """What admission decoded from this very Tx (the ledger's
        :data:`~ledger.state_machine.Predecoded`): execution does not decode it again."""
        entry = self._pending.get(tx.tx_id)
        return entry.valid if entry is not None and entry.tx is tx else None

    def _remember_verified(self, tx_id: str, sig: str) -> None:
        self._verified[sig] = tx_id
        self._verified.move_to_end(sig)
        while len(self._verified) > self._verified_max:
            self._verified.popitem(last=False)

    # ---- committing -------------------------------------------------------------------------

    def remove(self, tx_ids: Iterable[str]) -> None:
        """Drop committed transactions from the pool (their submission time is kept a while)."""
        for tx_id in tx_ids:
            entry = self._drop(tx_id)
            if entry is not None:
                self._removed_times[tx_id] = entry.at
        while len(self._removed_times) > SUBMITTED_TIMES_MAX:
            self._removed_times.popitem(last=False)

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._consensus_executor.shutdown(wait=False, cancel_futures=True)


def _none(_tx_ids: Collection[str]) -> Collection[str]:
    return ()


def _verify_chunk(txs: list[ValidTx]) -> list[TxError | None]:
    """Runs in a worker thread: only pure computation, no pool state."""
    verdicts: list[TxError | None] = []
    for tx in txs:
        try:
            verify_transaction(tx)
        except TxError as exc:
            verdicts.append(exc)
        else:
            verdicts.append(None)
    return verdicts
