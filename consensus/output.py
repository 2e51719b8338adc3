"""What one step of the replica asks its driver to do, in this order:

1. **persist** every record in ``persist`` (and drop records below ``discard_below``) durably;
2. then **send** ``sends``, and relay ``relay`` (client requests, re-broadcast to every other
   validator as the node relays new requests: a backup whose request timer fired does so);
3. then **execute** ``committed`` into the ledger, strictly in seq order;
4. then act on ``state_transfer`` (fetch committed blocks from peers).

Persisting first is what keeps a replica that is killed and restarted from signing two different
things for the same (view, seq, phase): everything it signed is durable before anyone sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consensus.batch import Batch, Tx


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` (a wire dict, see ``consensus.messages``) to ``to``; None means all."""

    message: dict[str, Any]
    to: str | None = None  # a validator public key; None broadcasts to every other validator


@dataclass(frozen=True, slots=True)
class Certificate:
    """A commit certificate (spec §4): q or more commit votes for (seq, view, digest)."""

    view: int
    signatures: dict[str, str]  # validator public key -> signature hex

    def to_wire(self) -> dict[str, Any]:
        return {"view": self.view, "signatures": dict(sorted(self.signatures.items()))}


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch committed at ``batch.seq``, with the certificate that proves it."""

    batch: Batch
    certificate: Certificate


@dataclass(frozen=True, slots=True)
class StateTransfer:
    """The replica learned that ``seq`` is stable (with ``block_hash``) beyond what it can replay:
    the driver must fetch committed blocks up to ``seq`` from peers and hand them back through
    ``Replica.on_blocks_fetched``."""

    seq: int
    block_hash: str
    peers: tuple[str, ...]  # validators that vouched for it


@dataclass(frozen=True, slots=True)
class Record:
    """A piece of replica state that must survive a crash. ``key`` orders and replaces records:
    writing a key again overwrites it. Values are JSON-able dicts."""

    key: str
    value: dict[str, Any]


@dataclass(slots=True)
class Output:
    persist: list[Record] = field(default_factory=list)
    discard_below: int | None = None  # records for seqs below this may be deleted
    sends: list[Send] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)
    state_transfer: StateTransfer | None = None
    relay: list[Tx] = field(default_factory=list)

    def extend(self, other: Output) -> None:
        self.persist.extend(other.persist)
        if other.discard_below is not None:
            self.discard_below = max(self.discard_below or 0, other.discard_below)
        self.sends.extend(other.sends)
        self.relay.extend(other.relay)
        self.committed.extend(other.committed)
        if other.state_transfer is not None:
            self.state_transfer = other.state_transfer

    @property
    def is_empty(self) -> bool:
        return not (
            self.persist or self.sends or self.committed or self.state_transfer or self.relay
        )
