"""A tiny deterministic in-memory cluster for unit tests (not the simulator in consensus/sim/).

Replicas exchange wire dicts through one FIFO queue; a test may drop or rewrite messages with a
filter, crash and restart replicas from their persisted records, and tick the virtual clock.
Outputs are carried out in the order ``consensus.output`` prescribes: persist, send, execute.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consensus.batch import Tx, TxChecker, block_hash
from consensus.config import ReplicaConfig
from consensus.output import Committed, Output, Record, StateTransfer
from consensus.replica import Replica
from consensus.sim.hosts import last_batch_time
from crypto.signing import Ed25519Signer, Ed25519Verifier

CHAIN_ID = "phalanx-test"
GENESIS_HASH = "ab" * 32
START_MS = 1_764_000_000_000
TICK_MS = 10

# (sender index, receiver index, wire) -> keep the message?
Filter = Callable[[int, int, dict[str, Any]], bool]


def make_tx(nonce: int, client: str = "c") -> Tx:
    return Tx.from_wire({"body": {"client": client, "nonce": nonce, "ops": []}, "sig": "00" * 64})


def accept_all(tx: Tx) -> bool:
    return True


def record_seq(value: dict[str, Any]) -> int | None:
    """The ledger store's rule (ledger.store.record_seq): records with an int "seq" may be GC'd."""
    seq = value.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


@dataclass
class Node:
    """One replica plus what its driver would keep: the ledger and the persisted records."""

    replica: Replica | None
    ledger: list[Committed] = field(default_factory=list)
    records: dict[str, Record] = field(default_factory=dict)
    transfers: list[StateTransfer] = field(default_factory=list)
    committed_ids: set[str] = field(default_factory=set)

    @property
    def head_hash(self) -> str:
        head = GENESIS_HASH
        for block in self.ledger:
            head = block_hash(block.batch.seq, head, block.batch.digest)
        return head


VIEW_CHANGE_TIMEOUT = 5  # ticks: short, so view-change tests run in few steps


class Cluster:
    def __init__(self, n: int = 4, tx_checker: TxChecker = accept_all, **params: Any) -> None:
        self.signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(n)]
        self.keys = [s.public_key for s in self.signers]
        self.config = ReplicaConfig(CHAIN_ID, GENESIS_HASH, tuple(self.keys), **params)
        self.tx_checker = tx_checker
        self.now_ms = START_MS
        self.queue: deque[tuple[int, int | None, dict[str, Any]]] = deque()
        self.filters: list[Filter] = []
        self.nodes: list[Node] = [Node(None) for _ in range(n)]
        self.outputs: list[tuple[int, Output]] = []  # every output carried out, for inspection
        self.relays: list[tuple[int, list[Tx]]] = []  # requests relayed, delivered after sends
        for i in range(n):
            self.nodes[i].replica = self._make_replica(i)

    # --- construction and restart -------------------------------------------------------

    def _make_replica(self, i: int) -> Replica:
        node = self.nodes[i]
        return Replica(
            self.config,
            self.signers[i],
            Ed25519Verifier(),
            self.tx_checker,
            node.committed_ids.intersection,
            records=sorted(node.records.values(), key=lambda r: r.key),
            last_executed_seq=len(node.ledger),
            head_hash=node.head_hash if node.ledger else None,
            last_exec_time_ms=last_batch_time(node.ledger),
            executed_batch=lambda seq: (
                node.ledger[seq - 1].batch if 1 <= seq <= len(node.ledger) else None
            ),
        )

    def crash(self, i: int) -> None:
        self.nodes[i].replica = None

    def restart(self, i: int) -> Replica:
        replica = self._make_replica(i)
        self.nodes[i].replica = replica
        return replica

    def replica(self, i: int) -> Replica:
        replica = self.nodes[i].replica
        assert replica is not None, f"replica {i} is down"
        return replica

    def index_of(self, key: str) -> int:
        return self.keys.index(key)

    # --- carrying out outputs -----------------------------------------------------------

    def apply(self, i: int, output: Output) -> None:
        node = self.nodes[i]
        self.outputs.append((i, output))
        for record in output.persist:
            node.records[record.key] = record
        if output.discard_below is not None:
            for key, record in list(node.records.items()):
                seq = record_seq(record.value)
                if seq is not None and seq < output.discard_below:
                    del node.records[key]
        for send in output.sends:
            self.queue.append(
                (i, None if send.to is None else self.index_of(send.to), send.message)
            )
        if output.relay:
            self.relays.append((i, list(output.relay)))
        for committed in output.committed:
            assert committed.batch.seq == len(node.ledger) + 1, "executed out of order"
            node.ledger.append(committed)
            node.committed_ids.update(tx.tx_id for tx in committed.batch.txs)
        if output.state_transfer is not None:
            node.transfers.append(output.state_transfer)

    def deliver(self, steps_max: int = 100_000) -> int:
        """Deliver queued messages until the queue is empty; returns how many were delivered."""
        delivered = 0
        while self.queue or self.relays:
            assert delivered < steps_max, "message storm"
            if not self.queue:
                # A relay goes to every other replica, as the node's RELAY frame does.
                # Filters see it as {"type": "relay", "txs": [...]}.
                sender, txs = self.relays.pop(0)
                relay = {"type": "relay", "txs": [dict(tx.wire) for tx in txs]}
                for j, other in enumerate(self.nodes):
                    if j == sender or other.replica is None:
                        continue
                    if all(keep(sender, j, relay) for keep in self.filters):
                        delivered += 1
                        self.apply(j, other.replica.on_requests(txs))
                continue
            sender, to, wire = self.queue.popleft()
            targets = [to] if to is not None else [j for j in range(len(self.nodes)) if j != sender]
            for j in targets:
                replica = self.nodes[j].replica
                if replica is None or not all(keep(sender, j, wire) for keep in self.filters):
                    continue
                delivered += 1
                self.apply(j, replica.on_message(wire))
        return delivered

    def inject(self, to: int, wire: dict[str, Any]) -> Output:
        output = self.replica(to).on_message(wire)
        self.apply(to, output)
        return output

    # --- inputs ---------------------------------------------------------------------------

    def submit(self, txs: Sequence[Tx], to: Sequence[int] | None = None) -> None:
        for i in range(len(self.nodes)) if to is None else to:
            replica = self.nodes[i].replica
            if replica is not None:
                self.apply(i, replica.on_requests(txs))
        self.deliver()

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.now_ms += TICK_MS
            for i, node in enumerate(self.nodes):
                if node.replica is not None:
                    self.apply(i, node.replica.on_tick(self.now_ms))
            self.deliver()

    def run_until(self, done: Callable[[], bool], ticks_max: int = 2_000) -> int:
        for ticks in range(ticks_max):
            if done():
                return ticks
            self.tick()
        raise AssertionError(f"condition not reached within {ticks_max} ticks")

    # --- observations ---------------------------------------------------------------------

    def executed(self, i: int) -> int:
        return len(self.nodes[i].ledger)

    def tx_order(self, i: int) -> list[str]:
        return [tx.tx_id for block in self.nodes[i].ledger for tx in block.batch.txs]

    def assert_persisted_before_sent(self) -> None:
        """Persist-before-send (ARCHITECTURE point 2): every vote, checkpoint, VIEW-CHANGE and
        NEW-VIEW a replica sends was in the persist list of that Output or an earlier one."""
        durable: dict[int, set[str]] = {i: set() for i in range(len(self.nodes))}
        for i, output in self.outputs:
            for record in output.persist:
                message = record.value.get("message")
                if isinstance(message, dict):
                    durable[i].add(message["signature"])
            for send in output.sends:
                if send.message["type"] not in {"batch_request", "batch_response"}:
                    assert send.message["signature"] in durable[i], send.message["type"]

    def drops(self, i: int, reason: str) -> int:
        return sum(c for (_, r), c in self.replica(i).dropped.items() if r == reason)


def view_change_cluster(**params: Any) -> Cluster:
    """A started cluster for view-change tests: one request per batch, a short timer."""
    settings: dict[str, Any] = {
        "batch_size_max": 1,
        "view_change_timeout_ticks": VIEW_CHANGE_TIMEOUT,
    }
    settings.update(params)
    cluster = Cluster(**settings)
    cluster.tick()
    return cluster
