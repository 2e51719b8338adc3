"""Transactions of fetched blocks checked in worker processes, and the replica's view of them.

A node catching up verifies every transaction of every block it fetches (node/p2p/block_sync.py).
Threads do not spread that work over the cores: libsodium releases the GIL, but decoding a
transaction (its canonical body, the tx_id hashed from it, the shape checks) is Python and holds
it, and the same interpreter has to execute the blocks as well. :class:`VerifyWorkers` sends
big chunks of transactions to a pool of worker processes, one per core, created the first time
it is needed and let go when the fetch is over (and with the node); each worker decodes its
share (spec §3 shape, tx_id = h(JCS(body)), this chain's id) and checks the Ed25519 signature,
and answers with the tx_ids and sizes only. What crosses the process boundary is the
transactions' plain JSON values (``{"body", "sig"}`` as received) going out and short strings
coming back: pickling those costs a few microseconds a transaction, decoding them in the node
about ten times as much.

:class:`FetchedTxs` remembers, for the chunks handed to the replica and not yet applied, which
transactions the workers verified, so that the replica's own check of the fetched blocks (its
``TxChecker``) answers from it rather than verifying each transaction again on the event loop;
anything else goes to the checker it wraps (the pool's).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from consensus.batch import Tx
from ledger.transaction import TxError, check_transaction

# Below this many transactions a chunk is checked in threads: a worker hand-off costs more than
# it saves, and a node that lags by a block or two should not start processes for it.
PROCESS_MIN_TXS = 256
# Each worker's share is cut in parts of at most this many, so that the first answers come back
# (and the next chunk's parts queue up) while the last are still being checked.
PART_TXS_MAX = 512

_log = logging.getLogger("phalanx.block_sync")


@dataclass(frozen=True, slots=True)
class BadTx:
    """The first transaction of a part that does not verify: its index in what was sent."""

    index: int
    reason: str


def check_part(chain_id: str, wires: Sequence[Any]) -> tuple[list[str], list[int]] | BadTx:
    """Runs in a worker process: decode and verify ``wires``; their tx_ids and consensus sizes,
    or the first that is malformed, of another chain, or not validly signed."""
    tx_ids: list[str] = []
    sizes: list[int] = []
    for index, wire in enumerate(wires):
        try:
            valid = check_transaction(wire, chain_id)
        except (TxError, ValueError, TypeError, RecursionError) as exc:
            return BadTx(index, str(exc))
        consensus_tx = valid.to_consensus_tx()
        tx_ids.append(consensus_tx.tx_id)
        sizes.append(consensus_tx.size)
    return tx_ids, sizes


def _warm() -> int:
    """A job that makes a worker start (and import this module) before the first real one."""
    return os.getpid()


class VerifyWorkers:
    """A lazily created pool of ``workers`` processes (default: one per core) checking
    transactions with :func:`check_part`."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self.parts_checked = 0  # parts answered by a worker process (for tests and metrics)

    def warm(self) -> None:
        """Start the processes now (a fetch is beginning), without waiting for them."""
        executor = self._pool()
        if executor is not None:
            for _ in range(self.workers):
                executor.submit(_warm)

    async def check(self, chain_id: str, wires: Sequence[Any]) -> list[Tx] | BadTx | None:
        """The transactions ``wires`` decoded and verified by the workers (as consensus
        :class:`Tx`, in order), the first bad one, or None if the workers cannot be used (the
        caller checks in-process instead: closed, a broken pool, or values that do not pickle)."""
        executor = self._pool()
        if executor is None:
            return None
        loop = asyncio.get_running_loop()
        per_worker = -(-len(wires) // self.workers)
        size = max(1, min(PART_TXS_MAX, per_worker))
        starts = range(0, len(wires), size)
        try:
            futures = [
                loop.run_in_executor(executor, check_part, chain_id, list(wires[s : s + size]))
                for s in starts
            ]
            answers = await asyncio.gather(*futures)
        except BrokenProcessPool as exc:
            # A worker died (killed, out of memory): start afresh next time; this chunk is
            # checked in-process.
            _log.warning("verify_workers_broken", extra={"detail": str(exc)[:200]})
            self._drop_pool()
            return None
        except Exception as exc:
            # Values pickle cannot carry (nesting too deep), or a worker failing in a way
            # check_part does not expect: the same chunk checked in-process says what is wrong.
            _log.warning(
                "verify_workers_refused",
                extra={"error": type(exc).__name__, "detail": str(exc)[:200]},
            )
            return None
        txs: list[Tx] = []
        for start, answer in zip(starts, answers, strict=True):
            if isinstance(answer, BadTx):
                return BadTx(start + answer.index, answer.reason)
            tx_ids, sizes = answer
            for offset, (tx_id, tx_size) in enumerate(zip(tx_ids, sizes, strict=True)):
                txs.append(Tx(tx_id, wires[start + offset], tx_size))
            self.parts_checked += 1
        return txs

    @property
    def running(self) -> bool:
        """Whether worker processes exist now."""
        return self._executor is not None

    def release(self) -> None:
        """The catch-up is over: let the processes go (a node in step needs none, and each
        holds tens of MiB); the next big chunk starts them again."""
        self._drop_pool()

    def close(self) -> None:
        self._closed = True
        self._drop_pool()

    def _pool(self) -> ProcessPoolExecutor | None:
        if self._closed:
            return None
        if self._executor is None:
            # forkserver, not fork: the node has threads (peer I/O, HTTP, LMDB) that a forked
            # child would inherit half-way through their work.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._executor

    def _drop_pool(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class FetchedTxs:
    """The transactions of fetched chunks verified by the workers, until they are applied; the
    replica's ``TxChecker`` answers from here first, then from ``fallback``."""

    def __init__(self, fallback: Callable[[Tx], bool]) -> None:
        self._fallback = fallback
        self._chunks: dict[int, dict[str, str]] = {}  # last seq of a chunk -> sig -> tx_id
        self._by_sig: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_sig)

    def add(self, last_seq: int, txs: Sequence[Tx], applied_seq: int) -> None:
        """Remember the verified ``txs`` of a chunk ending at ``last_seq``, and forget the
        chunks the ledger now holds (up to ``applied_seq``)."""
        for seq in [s for s in self._chunks if s <= applied_seq]:
            for sig in self._chunks.pop(seq):
                self._by_sig.pop(sig, None)
        chunk = {tx.wire["sig"]: tx.tx_id for tx in txs}
        self._chunks[last_seq] = chunk
        self._by_sig.update(chunk)

    def clear(self) -> None:
        self._chunks.clear()
        self._by_sig.clear()

    def check(self, tx: Tx) -> bool:
        """True if ``tx`` is one the workers verified (same signature, same tx_id computed from
        its body), else what ``fallback`` says."""
        if self._by_sig:
            wire = tx.wire
            if isinstance(wire, Mapping) and len(wire) == 2:
                sig = wire.get("sig")
                if isinstance(sig, str) and self._by_sig.get(sig) == tx.tx_id:
                    return True
        return self._fallback(tx)
