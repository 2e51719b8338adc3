"""Byzantine hosts: each class is one kind of misbehaviour, and nothing else.

Each runs a real ``Replica`` inside (so it follows the protocol closely enough to be dangerous:
right views, right seqs, its own valid signature) and rewrites what leaves the host. A Byzantine
host holds only its own signer: like a real attacker, it cannot sign for anybody else.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any, ClassVar

from consensus.batch import Batch, TxChecker
from consensus.config import ReplicaConfig
from consensus.messages import (
    BatchResponse,
    Checkpoint,
    Commit,
    Message,
    Prepare,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
)
from consensus.output import Committed
from consensus.replica import VIEWS_AHEAD_MAX
from consensus.sim.hosts import Envelope, HonestHost, Target
from consensus.sim.keys import forge_tx, with_bad_sig
from consensus.sim.network import ConsensusWire, FetchReply
from crypto.signing import Signer, Verifier

REPLAY_LOG_MAX = 512  # old messages a replayer keeps to send again


class ByzantineHost(HonestHost):
    honest: ClassVar[bool] = False

    def __init__(
        self,
        index: int,
        config: ReplicaConfig,
        signer: Signer,
        verifier: Verifier,
        tx_checker: TxChecker,
        rng: random.Random,
        clients: tuple[Signer, ...],
    ) -> None:
        super().__init__(index, config, signer, verifier, tx_checker)
        self.rng = rng
        self.client_keys = tuple(c.public_key for c in clients)

    def _outgoing(self, envelopes: list[Envelope]) -> list[Envelope]:
        out: list[Envelope] = []
        for envelope in envelopes:
            payload = envelope.payload
            if isinstance(payload, ConsensusWire):
                wire = payload.wire
                out.extend(self._rewrite(envelope.to, wire, decode_message(wire)))
            elif isinstance(payload, FetchReply):
                out.append(Envelope(envelope.to, FetchReply(self._rewrite_blocks(payload.blocks))))
            else:
                out.append(envelope)
        return out

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        """The consensus messages actually sent in place of ``message`` (``wire`` decoded)."""
        return [_envelope(to, wire)]

    def _rewrite_blocks(self, blocks: tuple[Committed, ...]) -> tuple[Committed, ...]:
        return blocks

    def _sign(self, message: Message) -> dict[str, Any]:
        signed: dict[str, Any] = sign_message(self.signer, message).to_wire()
        return signed

    def _other_keys(self) -> list[str]:
        return [k for k in self.config.validators if k != self.key]

    def _per_destination(
        self, to: Target, variant: Callable[[str], dict[str, Any]]
    ) -> list[Envelope]:
        """Turn a broadcast into one message per peer key, each chosen by ``variant``."""
        keys = self._other_keys() if to is None else [to] if isinstance(to, str) else []
        return [_envelope(k, variant(k)) for k in keys]

    def _noise(self) -> str:
        return f"{self.rng.getrandbits(256):064x}"


class EquivocatingPrimary(ByzantineHost):
    """As primary, sends PRE-PREPAREs for one seq with different batches to different backups
    (and, as backup, PREPAREs and COMMITs for different digests to different peers)."""

    kind = "equivocating_primary"

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if isinstance(message, PrePrepare) and message.batch is not None:
            other = _other_batch(message.batch, self.rng)
            forked = self._sign(dataclasses.replace(message, digest=other.digest, batch=other))
            peers = self._other_keys()
            split = set(self.rng.sample(peers, k=len(peers) // 2))
            return self._per_destination(to, lambda k: forked if k in split else wire)
        if isinstance(message, Prepare | Commit) and self.rng.random() < 0.5:
            lie = self._sign(dataclasses.replace(message, digest=self._noise()))
            return self._per_destination(to, lambda k: lie if k < self.key else wire)
        return [_envelope(to, wire)]


def _other_batch(batch: Batch, rng: random.Random) -> Batch:
    """A batch for the same seq with another digest that honest backups would still accept."""
    txs = batch.txs
    if len(txs) > 1 and rng.random() < 0.5:
        txs = txs[:-1]  # the dropped request stays pending at the backups
    elif len(txs) > 1:
        txs = tuple(reversed(txs))
    time_ms = batch.time_ms + (0 if txs != batch.txs else 1)
    return Batch(batch.chain_id, batch.seq, time_ms, txs)


class SilentReplica(ByzantineHost):
    """Listens and follows, never says a word: no votes, no relays, no blocks for laggards."""

    kind = "silent"

    def _outgoing(self, envelopes: list[Envelope]) -> list[Envelope]:
        return []


class SelectiveReplica(ByzantineHost):
    """Sends each message to only some of its peers: as primary, a batch prepares at some
    backups and not at others, and a NEW-VIEW reaches part of the group. The view change must
    carry what prepared at the minority."""

    kind = "selective"

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if to is not None:
            return [_envelope(to, wire)] if self.rng.random() < 0.5 else []
        peers = self._other_keys()
        chosen = self.rng.sample(peers, self.rng.randint(1, len(peers)))
        return [_envelope(k, wire) for k in chosen]


class ForgingReplica(ByzantineHost):
    """Forges signatures: its own messages with broken signatures, messages in other validators'
    names, forged client transactions in its proposals, and batches and blocks it serves with the
    transactions' signatures swapped for garbage (same tx_ids, so the same digests)."""

    kind = "forger"

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        out: list[Envelope] = []
        if isinstance(message, PrePrepare) and message.batch is not None:
            batch = self._forge_batch(message.batch)
            message = dataclasses.replace(message, digest=batch.digest, batch=batch)
            out.append(_envelope(to, self._sign(message)))
        elif isinstance(message, BatchResponse):
            batches = tuple(self._swap_sigs(b) for b in message.batches)
            out.append(_envelope(to, self._sign(dataclasses.replace(message, batches=batches))))
        elif self.rng.random() < 0.5:
            out.append(_envelope(to, wire))
        else:  # our own message, but its signature is garbage
            out.append(_envelope(to, {**wire, "signature": self._noise() * 2}))
        # The same message in another validator's name (signed by us, so not by them).
        out.append(_envelope(to, {**wire, "sender": self.rng.choice(self._other_keys())}))
        return out

    def _forge_batch(self, batch: Batch) -> Batch:
        victim = self.rng.choice(self.client_keys)
        forged = forge_tx(
            _NamedSigner(victim, self.signer), self.signer, self.rng.getrandbits(40), "x"
        )
        txs = (*batch.txs, forged) if self.rng.random() < 0.5 else self._swap_sigs(batch).txs
        if txs == batch.txs and not txs:
            txs = (forged,)
        return Batch(batch.chain_id, batch.seq, batch.time_ms or 1, txs)

    def _swap_sigs(self, batch: Batch) -> Batch:
        txs = tuple(with_bad_sig(tx, self._noise() * 2) for tx in batch.txs)
        return Batch(batch.chain_id, batch.seq, batch.time_ms, txs)

    def _rewrite_blocks(self, blocks: tuple[Committed, ...]) -> tuple[Committed, ...]:
        return tuple(Committed(self._swap_sigs(b.batch), b.certificate) for b in blocks)


class _NamedSigner:
    """Claims ``public_key`` but signs with another key: how a forger makes a client's tx."""

    def __init__(self, public_key: str, real: Signer) -> None:
        self.public_key = public_key
        self._real = real

    def sign(self, tag: str, obj: Any) -> str:
        return self._real.sign(tag, obj)


class WrongDigestReplica(ByzantineHost):
    """Validly signed votes for digests that nobody proposed, checkpoints of states nobody has,
    and PRE-PREPAREs whose digest is not their batch's."""

    kind = "wrong_digest"

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        changed: Message
        if self.rng.random() < 0.3:
            return [_envelope(to, wire)]
        if isinstance(message, Prepare | Commit):
            changed = dataclasses.replace(message, digest=self._noise())
        elif isinstance(message, PrePrepare):
            # Signed, but the digest is not the batch's: the decoder must refuse it.
            signed = sign_message(self.signer, dataclasses.replace(message, digest=self._noise()))
            return [_envelope(to, {**signed.to_wire(), "batch": wire["batch"]})]
        elif isinstance(message, Checkpoint):
            changed = dataclasses.replace(message, block_hash=self._noise())
        else:
            return [_envelope(to, wire)]
        return [_envelope(to, self._sign(changed))]


class ReplayReplica(ByzantineHost):
    """Keeps a sample of every message it received (signed by others, so valid signatures) and
    sends old ones again later: old views, old checkpoints, old VIEW-CHANGEs and NEW-VIEWs."""

    kind = "replayer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log: list[dict[str, Any]] = []
        self._seen = 0

    def on_packet(self, src: int, payload: Any) -> list[Envelope]:
        if isinstance(payload, ConsensusWire):
            self._remember(payload.wire)
        return super().on_packet(src, payload)

    def _remember(self, wire: dict[str, Any]) -> None:
        # Reservoir sampling: a uniform sample of the whole run in bounded memory.
        self._seen += 1
        if len(self._log) < REPLAY_LOG_MAX:
            self._log.append(wire)
        else:
            slot = self.rng.randrange(self._seen)
            if slot < REPLAY_LOG_MAX:
                self._log[slot] = wire

    def on_tick(self, now_ms: int) -> list[Envelope]:
        out = super().on_tick(now_ms)
        if not self.up or not self._log:
            return out
        for _ in range(self.rng.randint(0, 4)):
            wire = self.rng.choice(self._log)
            to = self.rng.choice([None, *self._other_keys()])
            out.append(_envelope(to, wire))
        return out


class ViewChangeHider(ByzantineHost):
    """Its VIEW-CHANGEs hide every prepared certificate it holds, and sometimes claim the
    genesis checkpoint instead of its stable one: the new view must not lose a committed batch."""

    kind = "view_change_hider"

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if not isinstance(message, ViewChange):
            return [_envelope(to, wire)]
        hidden = dataclasses.replace(message, prepared=())
        if self.rng.random() < 0.5:
            hidden = dataclasses.replace(
                hidden,
                stable_seq=0,
                stable_block_hash=self.config.genesis_hash,
                checkpoint_proof=(),
            )
        return [_envelope(to, self._sign(hidden))]


class ViewChangeFlooder(ByzantineHost):
    """Every tick, valid VIEW-CHANGEs for a spread of future views, and votes in views nobody
    installed: alone (one of at most f) it must not drag the honest replicas out of a working
    view, nor crowd out their buffered messages."""

    kind = "view_change_flooder"

    def on_tick(self, now_ms: int) -> list[Envelope]:
        out = super().on_tick(now_ms)
        replica = self.replica
        if replica is None:
            return out
        chain_id = self.config.chain_id
        for _ in range(self.rng.randint(1, 6)):
            view = replica.view + self.rng.randint(1, VIEWS_AHEAD_MAX + 2)
            flood: Message = ViewChange(chain_id, view, 0, self.config.genesis_hash, (), ())
            if self.rng.random() < 0.3:
                vote = self.rng.choice((Prepare, Commit))
                seq = replica.last_executed_seq + self.rng.randint(1, 4)
                flood = vote(chain_id, view, seq, self._noise())
            out.append(_envelope(None, self._sign(flood)))
        return out


BYZANTINE_KINDS: dict[str, type[ByzantineHost]] = {
    cls.kind: cls
    for cls in (
        EquivocatingPrimary,
        SilentReplica,
        SelectiveReplica,
        ForgingReplica,
        WrongDigestReplica,
        ReplayReplica,
        ViewChangeHider,
        ViewChangeFlooder,
    )
}


def _envelope(to: Target, wire: dict[str, Any]) -> Envelope:
    return Envelope(to, ConsensusWire(wire))
