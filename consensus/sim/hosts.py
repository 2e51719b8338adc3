"""A simulated node: one ``Replica`` plus what the real node keeps around it.

``HonestHost`` does what ``node.runtime`` does with an Output, in its order: persist the records,
send the messages, execute the committed blocks into its ledger, then fetch blocks for a state
transfer. Like the node, it verifies client transactions once in a pool (forged ones stop
there), relays new ones to every peer, and serves its committed blocks to peers that ask. A
crash loses everything but the records and the ledger; a restart rebuilds the replica from them.
Byzantine hosts (``consensus.sim.byzantine``) are subclasses that rewrite what goes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from consensus.batch import Batch, Tx, TxChecker, block_hash
from consensus.config import ReplicaConfig
from consensus.output import Committed, Output, Record
from consensus.replica import Replica
from consensus.sim.network import ConsensusWire, FetchReply, FetchRequest, Payload, Relay
from crypto.signing import Signer, Verifier

FETCH_BLOCKS_MAX = 64  # blocks per FetchReply, like node.p2p.block_sync's chunks

Target = int | str | None  # a host index (a reply), a validator key, or None: every other key


@dataclass(frozen=True, slots=True)
class Envelope:
    to: Target
    payload: Payload


class HonestHost:
    """Runs the replica exactly as the node would. ``honest`` says whether the checkers may hold
    this host to the protocol; ``twin`` marks a host that shares its key with another."""

    honest: ClassVar[bool] = True
    kind: ClassVar[str] = "honest"

    def __init__(
        self,
        index: int,
        config: ReplicaConfig,
        signer: Signer,
        verifier: Verifier,
        tx_checker: TxChecker,
        twin: bool = False,
    ) -> None:
        self.index = index
        self.config = config
        self.signer = signer
        self.key = signer.public_key
        self.twin = twin
        self._verifier = verifier
        self._tx_checker = tx_checker
        self.records: dict[str, Record] = {}
        self.ledger: list[Committed] = []
        self.committed_ids: set[str] = set()  # every tx_id in the ledger
        self.executed: list[str] = []  # tx_ids in execution order, repeats left out (spec §3)
        self.duplicates = 0  # committed repeats of an executed tx_id, recorded as "duplicate"
        self.pool: dict[str, Tx] = {}  # verified, not yet committed (volatile)
        self._fetch_turn = 0
        self._torn: float | None = None  # crash inside the next Output, after this share of sends
        self.lost_peers: frozenset[str] = frozenset()  # what the links report (lost_links.py)
        self.replica: Replica | None = self._new_replica()

    # --- life cycle ------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.replica is not None

    def crash(self, torn: float | None = None) -> None:
        """kill -9: whatever was not persisted (the pool, the replica's memory) is gone. With
        ``torn``, the kill lands inside the next Output instead: after its records are persisted
        and that share of its sends went out, before its blocks reach the ledger."""
        if torn is not None:
            self._torn = torn
            return
        self.replica = None
        self.pool = {}

    def restart(self) -> None:
        self.replica = self._new_replica()

    def _new_replica(self) -> Replica:
        head = self.config.genesis_hash
        for block in self.ledger:
            head = block_hash(block.batch.seq, head, block.batch.digest)
        return Replica(
            self.config,
            self.signer,
            self._verifier,
            self._tx_checker,
            self.committed_ids.intersection,
            records=sorted(self.records.values(), key=lambda r: r.key),
            last_executed_seq=len(self.ledger),
            head_hash=head if self.ledger else None,
            last_exec_time_ms=last_batch_time(self.ledger),
            executed_batch=self._executed_batch,
        )

    def _executed_batch(self, seq: int) -> Batch | None:
        """What the node reads from its ledger: the batch executed at ``seq``."""
        return self.ledger[seq - 1].batch if 1 <= seq <= len(self.ledger) else None

    # --- inputs ----------------------------------------------------------------------------

    def on_client_txs(self, txs: Sequence[Tx]) -> list[Envelope]:
        """A client's submission: verify, keep the new ones, give them to the replica, relay."""
        if self.replica is None:
            return []  # a crashed node takes no requests (nor keeps them in its pool)
        fresh = self._admit(txs)
        if not fresh:
            return []
        out = self._carry_out(self.replica.on_requests(fresh))
        return [*out, *self._outgoing([Envelope(None, Relay(tuple(fresh)))])]

    def on_packet(self, src: int, payload: Payload) -> list[Envelope]:
        replica = self.replica
        if replica is None:
            return []
        match payload:
            case ConsensusWire(wire):
                return self._carry_out(replica.on_message(wire))
            case Relay(txs):
                fresh = self._admit(txs)  # relayed transactions are not relayed again
                return self._carry_out(replica.on_requests(fresh)) if fresh else []
            case FetchRequest(from_seq, to_seq):
                reply = Envelope(src, FetchReply(self._serve_fetch(from_seq, to_seq)))
                return self._outgoing([reply])
            case FetchReply(blocks):
                return self._carry_out(replica.on_blocks_fetched(blocks))
        return []

    def on_tick(self, now_ms: int) -> list[Envelope]:
        if self.replica is None:
            return []
        return self._carry_out(self.replica.on_tick(now_ms, self.lost_peers))

    # --- hooks for Byzantine subclasses ----------------------------------------------------

    def _outgoing(self, envelopes: list[Envelope]) -> list[Envelope]:
        """What actually leaves the host; an honest host sends what its replica asked."""
        return envelopes

    def _serve_fetch(self, from_seq: int, to_seq: int) -> tuple[Committed, ...]:
        last = min(to_seq, len(self.ledger), from_seq - 1 + FETCH_BLOCKS_MAX)
        return tuple(self.ledger[max(from_seq, 1) - 1 : last])

    # --- carrying out an Output, in the order consensus.output prescribes -----------------

    def _admit(self, txs: Sequence[Tx]) -> list[Tx]:
        fresh: list[Tx] = []
        for tx in txs:
            if tx.tx_id in self.pool or tx.tx_id in self.committed_ids:
                continue
            if self._tx_checker(tx):
                self.pool[tx.tx_id] = tx
                fresh.append(tx)
        return fresh

    def _carry_out(self, output: Output) -> list[Envelope]:
        for record in output.persist:
            self.records[record.key] = record
        if output.discard_below is not None:
            self._discard(output.discard_below)
        envelopes = [Envelope(send.to, ConsensusWire(send.message)) for send in output.sends]
        if output.relay:
            envelopes.append(Envelope(None, Relay(tuple(output.relay))))
        if self._torn is not None:
            sent = envelopes[: int(len(envelopes) * self._torn)]
            self._torn = None
            self.crash()
            return self._outgoing(sent)
        for committed in output.committed:
            self._execute(committed)
        transfer = output.state_transfer
        if transfer is not None and transfer.peers and transfer.seq > len(self.ledger):
            # Rotate over the peers that vouched, as node.p2p.block_sync does when one fails us.
            peer = transfer.peers[self._fetch_turn % len(transfer.peers)]
            self._fetch_turn += 1
            envelopes.append(Envelope(peer, FetchRequest(len(self.ledger) + 1, transfer.seq)))
        return self._outgoing(envelopes)

    def _discard(self, below: int) -> None:
        """The ledger store's rule: records whose value has an int ``seq`` below it go."""
        for key, record in list(self.records.items()):
            seq = record.value.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and seq < below:
                del self.records[key]

    def _execute(self, committed: Committed) -> None:
        seq = committed.batch.seq
        if seq != len(self.ledger) + 1:
            raise ExecutionOrderError(
                f"host {self.index} executed seq {seq} after {len(self.ledger)}"
            )
        self.ledger.append(committed)
        for tx in committed.batch.txs:
            # Spec §3, as the ledger applies it: a committed batch may repeat a tx_id that a
            # batch re-proposed by a view change also holds; the repeat is not executed.
            if tx.tx_id in self.committed_ids:
                self.duplicates += 1
            else:
                self.executed.append(tx.tx_id)
            self.committed_ids.add(tx.tx_id)
            self.pool.pop(tx.tx_id, None)


def last_batch_time(ledger: Sequence[Committed]) -> int:
    """The time of the latest executed non-null batch (null batches carry time 0)."""
    return next((b.batch.time_ms for b in reversed(ledger) if not b.batch.is_null), 0)


class ExecutionOrderError(Exception):
    """The replica asked to execute out of seq order: a bug the simulator reports."""
