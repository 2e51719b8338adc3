"""What the node lets an authenticated peer make it do, beyond what the link itself bounds.

- Only a decoded PRE-PREPARE of the current view from the current primary (as the transport
  authenticated it) gets its transactions verified ahead of the replica: anything else is left
  to the replica's own checks, which refuse it before looking at any transaction.
- Messages the replica (or the pool, for relays) finds *invalid* (a bad signature, a malformed
  body, another chain) are charged to the peer that sent them over its link, not to the
  validator they claim to come from; past the peer's budget the link is cut with a back-off
  (``PeerNetwork.penalize``). Honest validators never send those, whereas stale or duplicate
  messages (which honest ones do send) are not charged.
- Relayed transactions: at most ``RELAYS_IN_FLIGHT_MAX`` relay messages of one peer are verified
  at once, the next ones wait their turn up to ``RELAY_BYTES_WAITING_MAX`` frame bytes per peer,
  and at most ``relay_txs_per_s`` of its transactions per second are taken; the rest is dropped
  and counted. Relays wait rather than being dropped at once because under a flood a busy node
  shed most of them, and a request that only the node taking it from the client knows makes
  the others' request timers useless (the replica relays stale requests again, but late).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from node.p2p.budget import TokenBucket

PRE_PREPARE = "pre_prepare"
RELAYS_IN_FLIGHT_MAX = 2
RELAY_BYTES_WAITING_MAX = 8 * 1024 * 1024  # one peer's relay frames taken, not yet verified
RELAY_TXS_PER_S = 5_000.0
RELAY_TXS_BURST = 10_000.0
# Replica drop reasons an honest validator never causes (consensus/replica.py ``_drop``).
INVALID_REASONS = (
    "malformed",
    "wrong_chain",
    "not_validator",
    "own_key",
    "bad_signature",
    "bad_view_change",
    "bad_new_view",
    "batch_with_invalid_tx",
)
# Relay results that mean the relaying peer sent something no honest node relays.
INVALID_TX_ERRORS = frozenset({"malformed_tx", "bad_signature", "wrong_chain"})
# Benchmarks only (scripts/bench_load.py): measure what TLS costs. Not a config field.
PLAINTEXT_ENV = "PHALANX_INSECURE_BENCH_PLAINTEXT_LINKS"


def bench_plaintext_links(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(PLAINTEXT_ENV) == "1"


class _Penalize(Protocol):
    def __call__(self, pubkey: str, reason: str, amount: float = 1.0) -> bool: ...


def is_invalid(reason: str) -> bool:
    return reason.split(":", 1)[0] in INVALID_REASONS


class PeerGuard:
    def __init__(
        self,
        penalize: _Penalize,
        on_drop: Callable[[str], None],
        relay_txs_per_s: float = RELAY_TXS_PER_S,
        relay_txs_burst: float = RELAY_TXS_BURST,
    ) -> None:
        self._penalize = penalize
        self._on_drop = on_drop
        self._relay_rate = relay_txs_per_s
        self._relay_burst = relay_txs_burst
        self._relay_buckets: dict[str, TokenBucket] = {}
        self._relay_slots: dict[str, asyncio.Semaphore] = {}
        self._relay_bytes: Counter[str] = Counter()  # frame bytes taken, not yet done
        self._invalid_seen = 0  # invalid drops the replica had counted at the last look

    @staticmethod
    def proposal_txs(sender: str, wire: Mapping[str, Any], primary: str, view: int) -> list[Any]:
        """The transactions to verify ahead of the replica: those of a PRE-PREPARE of the
        current ``view`` sent by its ``primary`` over the primary's own link; else none."""
        if wire.get("type") != PRE_PREPARE or sender != primary or wire.get("sender") != sender:
            return []
        if wire.get("view") != view:
            return []
        batch = wire.get("batch")
        txs = batch.get("txs") if isinstance(batch, dict) else None
        return txs if isinstance(txs, list) else []

    def charge_drops(self, sender: str, dropped: Counter[tuple[str, str]], before: int) -> None:
        """After one replica step on ``sender``'s message: charge it for the invalid drops the
        step added (``before`` is ``dropped.total()`` taken just before the step)."""
        if dropped.total() == before:
            return
        # Only when something was dropped (rare for honest traffic) is the counter scanned.
        invalid = sum(count for (_, reason), count in dropped.items() if is_invalid(reason))
        added = invalid - self._invalid_seen
        self._invalid_seen = invalid
        if added > 0:
            self._penalize(sender, "replica_invalid", float(added))

    def relay_admit(self, sender: str, count: int, frame_bytes: int) -> bool:
        """May ``sender``'s relay of ``count`` transactions (a frame of ``frame_bytes``) be
        taken, to be verified in its turn (:meth:`relay_slot`)? Counts refusals."""
        if self._relay_bytes[sender] + frame_bytes > RELAY_BYTES_WAITING_MAX:
            self._on_drop("relay_busy")
            return False
        bucket = self._relay_buckets.get(sender)
        if bucket is None:
            bucket = self._relay_buckets[sender] = TokenBucket(self._relay_rate, self._relay_burst)
        if not bucket.spend(count):
            self._on_drop("relay_rate")
            return False
        self._relay_bytes[sender] += frame_bytes
        return True

    def relay_slot(self, sender: str) -> asyncio.Semaphore:
        """Hold it while verifying an admitted relay of ``sender``: RELAYS_IN_FLIGHT_MAX at once."""
        slot = self._relay_slots.get(sender)
        if slot is None:
            slot = self._relay_slots[sender] = asyncio.Semaphore(RELAYS_IN_FLIGHT_MAX)
        return slot

    def relay_done(self, sender: str, frame_bytes: int, errors: Sequence[str | None]) -> None:
        self._relay_bytes[sender] -= frame_bytes
        invalid = sum(1 for error in errors if error in INVALID_TX_ERRORS)
        if invalid:
            self._penalize(sender, "relay_invalid", float(invalid))
