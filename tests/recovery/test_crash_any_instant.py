"""kill -9 at any instant never makes an honest replica sign two conflicting things.

The node carries out each replica Output as: one durable write of its records, then the sends,
then the blocks. A SIGKILL can land before the write (nothing of the step survives), between
the write and the sends (the step is durable, nothing left the process), or after some sends.
These runs crash random replicas at random such points, restart them from exactly what was
durable, drop random messages, and check every message any replica ever sent: one digest per
(sender, phase, view, seq), one VIEW-CHANGE per (sender, view), one CHECKPOINT hash per
(sender, seq), and all ledgers one chain.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from consensus.output import Output
from tests.consensus.harness import Cluster, make_tx

SEEDS = range(12)
TICKS = 300


class CrashingCluster(Cluster):
    """Applies each Output like the node, but sometimes dies in the middle of it."""

    def __init__(
        self, rng: random.Random, send_before_persist: bool = False, **params: Any
    ) -> None:
        self.rng = rng
        self.send_before_persist = send_before_persist  # the bug the negative control plants
        self.signed: dict[tuple[str, str, int, int], str] = {}
        self.crashes = 0
        super().__init__(**params)

    def apply(self, i: int, output: Output) -> None:
        if self.rng.random() >= 0.01 or self.nodes[i].replica is None:
            for send in output.sends:
                self._note(send.message)
            super().apply(i, output)
            return
        self.crashes += 1
        durable = self.rng.random() < 0.5  # killed after the records' write, or before it
        kept = self.rng.randrange(len(output.sends) + 1) if durable else 0
        if self.send_before_persist:
            durable, kept = False, len(output.sends)
        partial = Output(
            persist=output.persist if durable else [],
            sends=output.sends[:kept],
            discard_below=output.discard_below if durable else None,
        )
        # The blocks of this step are not appended: the runtime appends them after the sends.
        # What was signed but never left the process binds nobody: only sent messages count.
        for send in partial.sends:
            self._note(send.message)
        super().apply(i, partial)
        self.crash(i)
        self.restart(i)

    def _note(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("pre_prepare", "prepare", "commit"):
            key = (message["sender"], kind, message["view"], message["seq"])
            value = message["digest"]
        elif kind == "view_change":
            key = (message["sender"], kind, message["view"], 0)
            value = repr(sorted(message.items()))
        elif kind == "checkpoint":
            key = (message["sender"], kind, 0, message["seq"])
            value = message["block_hash"]
        else:
            return
        known = self.signed.setdefault(key, value)
        assert known == value, f"{key} signed twice, differently"

    def refill(self) -> None:
        """What block sync does for a replica behind the longest ledger."""
        longest = max(self.nodes, key=lambda node: len(node.ledger)).ledger
        for i, node in enumerate(self.nodes):
            if node.replica is not None and len(node.ledger) < len(longest):
                self.apply(i, node.replica.on_blocks_fetched(longest[len(node.ledger) :]))


def _run(seed: int, send_before_persist: bool = False) -> CrashingCluster:
    rng = random.Random(seed)
    cluster = CrashingCluster(
        rng,
        send_before_persist,
        batch_size_max=2,
        view_change_timeout_ticks=6,
        checkpoint_interval=4,
        watermark_window=8,
    )
    cluster.filters.append(lambda s, r, w: rng.random() > 0.05)
    nonce = 0
    for _ in range(TICKS):
        if rng.random() < 0.3:
            txs = [make_tx(nonce + k) for k in range(rng.randrange(1, 4))]
            nonce += len(txs)
            cluster.submit(txs)
        cluster.tick()
        if rng.random() < 0.2:
            cluster.refill()
    return cluster


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crashes_at_any_point_of_a_step_never_make_a_replica_equivocate(
    seed: int,
) -> None:
    cluster = _run(seed)
    assert cluster.crashes > 0
    ledgers = [node.ledger for node in cluster.nodes]
    shortest = min(len(ledger) for ledger in ledgers)
    digests = [[block.batch.digest for block in ledger[:shortest]] for ledger in ledgers]
    assert all(d == digests[0] for d in digests), f"seed {seed}: ledgers fork"
    assert shortest > 0, f"seed {seed}: nothing committed"


def test_negative_control_sending_before_persisting_is_caught() -> None:
    """The checker can fail: with the messages of a step sent but its records lost in the
    crash, some seed makes a restarted replica sign a second, different message."""
    caught = 0
    for seed in SEEDS:
        try:
            _run(seed, send_before_persist=True)
        except AssertionError as exc:
            assert "signed twice" in str(exc)
            caught += 1
    assert caught > 0
