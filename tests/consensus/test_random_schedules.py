"""Seeded random schedules (in the spirit of TigerBeetle's VOPR, at unit-test scale): messages
are reordered, dropped and duplicated, replicas crash and restart from their records, a primary
falls silent, or replica 0 is Byzantine and equivocates. Safety (Castro & Liskov OSDI'99 §4.2,
Theorem: all non-faulty replicas agree on the sequence of committed batches) must hold on every
seed, and no peer input may raise. The full-scale simulator lives in consensus/sim/."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from consensus.batch import Batch
from consensus.messages import Checkpoint, Commit, Prepare, PrePrepare, decode_message, sign_message
from tests.consensus.harness import Cluster, make_tx

STEPS = 150


class Schedule:
    def __init__(self, seed: int, byzantine: bool) -> None:
        self.rng = random.Random(seed)
        self.byzantine = byzantine
        self.cluster = Cluster(
            batch_size_max=3,
            checkpoint_interval=4,
            watermark_window=8,
            view_change_timeout_ticks=6,
            pipeline_depth_max=3,
        )
        self.drop_p = self.rng.choice([0.0, 0.05, 0.2])
        self.silent: int | None = None
        self.nonce = 0

    def corrupt(self, wire: dict[str, Any], to: int) -> dict[str, Any]:
        """Replica 0 tells odd-numbered replicas something else than the others."""
        if not self.byzantine or to % 2 == 0 or self.rng.random() < 0.5:
            return wire
        message = decode_message(wire)
        signer = self.cluster.signers[0]
        noise = f"{self.rng.getrandbits(256):064x}"
        if isinstance(message, PrePrepare) and message.batch is not None:
            txs = (*message.batch.txs[:-1], make_tx(10**6 + self.rng.randrange(10**6)))
            batch = Batch(message.chain_id, message.seq, message.batch.time_ms, txs)
            changed: PrePrepare | Prepare | Commit | Checkpoint = dataclasses.replace(
                message, digest=batch.digest, batch=batch
            )
        elif isinstance(message, Prepare | Commit):
            changed = dataclasses.replace(message, digest=noise)
        elif isinstance(message, Checkpoint):
            changed = dataclasses.replace(message, block_hash=noise)
        else:
            return wire
        signed: dict[str, Any] = sign_message(signer, changed).to_wire()
        return signed

    def deliver(self) -> None:
        cluster = self.cluster
        queued = list(cluster.queue)
        cluster.queue.clear()
        self.rng.shuffle(queued)
        for sender, to, wire in queued:
            targets = [to] if to is not None else [j for j in range(4) if j != sender]
            for j in targets:
                replica = cluster.nodes[j].replica
                if replica is None or sender == self.silent or self.rng.random() < self.drop_p:
                    continue
                message = self.corrupt(wire, j) if sender == 0 else wire
                cluster.apply(j, replica.on_message(message))
                if self.rng.random() < 0.05:
                    cluster.apply(j, replica.on_message(message))

    def serve_state_transfers(self) -> None:
        cluster = self.cluster
        honest = [j for j in range(4) if not (self.byzantine and j == 0)]
        source = max(honest, key=cluster.executed)
        for i, node in enumerate(cluster.nodes):
            if node.transfers and node.replica is not None:
                transfer = node.transfers.pop()
                blocks = cluster.nodes[source].ledger[len(node.ledger) : transfer.seq]
                cluster.apply(i, node.replica.on_blocks_fetched(blocks))

    def step(self) -> None:
        cluster, rng = self.cluster, self.rng
        roll = rng.random()
        if roll < 0.3:
            txs = [make_tx(self.nonce + k) for k in range(rng.randint(1, 4))]
            self.nonce += len(txs)
            for i, node in enumerate(cluster.nodes):  # the client multicasts (§4.1)
                if node.replica is not None:
                    cluster.apply(i, node.replica.on_requests(txs))
        elif roll < 0.33 and self.silent is None and not self.byzantine:
            self.silent = rng.randrange(4)
        elif roll < 0.36:
            self.silent = None
        elif roll < 0.38 and all(n.replica is not None for n in cluster.nodes):
            victim = 0 if self.byzantine else rng.randrange(4)
            cluster.crash(victim)
        elif roll < 0.42:
            for i, node in enumerate(cluster.nodes):
                if node.replica is None:
                    cluster.restart(i)
        cluster.now_ms += 10
        for i, node in enumerate(cluster.nodes):
            if node.replica is not None:
                cluster.apply(i, node.replica.on_tick(cluster.now_ms))
        self.deliver()
        self.serve_state_transfers()

    def check_agreement(self) -> None:
        cluster = self.cluster
        honest = [j for j in range(4) if not (self.byzantine and j == 0)]
        ledgers = [[b.batch.digest for b in cluster.nodes[j].ledger] for j in honest]
        shortest = min(len(ledger) for ledger in ledgers)
        assert shortest > 0, "nothing was committed at all"
        for ledger in ledgers:
            assert ledger[:shortest] == ledgers[0][:shortest], "replicas diverged"
        longest = max(honest, key=cluster.executed)
        tx_ids = cluster.tx_order(longest)
        assert len(tx_ids) == len(set(tx_ids)), "a transaction was ordered twice"
        cluster.assert_persisted_before_sent()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_crash_faults_and_lossy_network_keep_agreement(seed: int) -> None:
    """Crashes, restarts from records, loss, duplication, reordering, a silent primary."""
    schedule = Schedule(seed, byzantine=False)
    for _ in range(STEPS):
        schedule.step()
    schedule.check_agreement()


@pytest.mark.parametrize("seed", [11, 12])
def test_equivocating_replica_cannot_split_the_honest_ones(seed: int) -> None:
    """OSDI'99 §4.2: with at most f Byzantine replicas, prepared(m, v, n, i) at one honest
    replica excludes prepared(m', v, n, j) with another digest at any other, so an equivocating
    replica 0 (as primary and as backup) cannot make honest replicas commit different batches."""
    schedule = Schedule(seed, byzantine=True)
    for _ in range(STEPS):
        schedule.step()
    schedule.check_agreement()
