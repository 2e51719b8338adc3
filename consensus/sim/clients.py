"""Clients: they submit signed transactions, a few forged ones, and retransmit like PBFT clients.

A client sends a new transaction to one replica (whose node relays it to the others, as
``node.runtime`` does). PBFT clients (OSDI'99 §4.1) that get no reply in time multicast the
request to all replicas; ours do so every ``retry_ticks`` until f + 1 replicas executed it.
Forged transactions (in a client's name, signed by someone else) are submitted too: the pools
must refuse them, and they must never be executed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from consensus.batch import Tx
from consensus.sim.keys import forge_tx, make_tx
from crypto.signing import Signer

KEYS = tuple(f"k{i}" for i in range(8))  # a small key space, so that writes collide


@dataclass(frozen=True, slots=True)
class Submission:
    to: int | None  # a host index; None multicasts to every host
    txs: tuple[Tx, ...]


class Workload:
    def __init__(
        self,
        rng: random.Random,
        clients: tuple[Signer, ...],
        tx_total: int,
        forged_total: int,
        submit_until_tick: int,
        retry_ticks: int,
        replies_needed: int,
    ) -> None:
        self._rng = rng
        self._retry_ticks = retry_ticks
        self._replies_needed = replies_needed
        self.valid: dict[str, int] = {}  # tx_id -> tick of its first submission
        self.forged: set[str] = set()
        self._txs: dict[str, Tx] = {}
        self._last_sent: dict[str, int] = {}
        self._schedule: dict[int, list[Tx]] = {}
        for nonce in range(tx_total):
            client = rng.choice(clients)
            tx = make_tx(client, nonce, rng.choice(KEYS))
            self._schedule.setdefault(rng.randint(1, submit_until_tick), []).append(tx)
        for nonce in range(tx_total, tx_total + forged_total):
            victim, forger = rng.sample(clients, 2) if len(clients) > 1 else (clients[0],) * 2
            tx = forge_tx(victim, forger, nonce, rng.choice(KEYS))
            if forger is victim:  # a single client: garble its signature instead
                tx = Tx.from_wire({"body": tx.wire["body"], "sig": "00" * 64})
            self.forged.add(tx.tx_id)
            self._schedule.setdefault(rng.randint(1, submit_until_tick), []).append(tx)
        self.last_submit_tick = max(self._schedule, default=0)

    def submissions(
        self, tick: int, host_count: int, replies: Callable[[str], int]
    ) -> list[Submission]:
        out: list[Submission] = []
        for tx in self._schedule.pop(tick, []):
            if tx.tx_id not in self.forged:
                self.valid[tx.tx_id] = tick
                self._txs[tx.tx_id] = tx
                self._last_sent[tx.tx_id] = tick
            out.append(Submission(self._rng.randrange(host_count), (tx,)))
        retry = [
            self._txs[tx_id]
            for tx_id, sent in self._last_sent.items()
            if tick - sent >= self._retry_ticks and replies(tx_id) < self._replies_needed
        ]
        for tx in retry:
            self._last_sent[tx.tx_id] = tick
        if retry:
            out.append(Submission(None, tuple(retry)))
        return out

    @property
    def done_submitting(self) -> bool:
        return not self._schedule
