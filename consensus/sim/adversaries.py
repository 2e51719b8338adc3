"""Adversaries aimed at the view change, certificates, proposals, state transfer and clocks.

Each class is one kind of misbehaviour (see ``consensus.sim.byzantine`` for the older ones) and
exists so that removing or weakening one check of the replica makes some seed fail
(``scripts/mutants``). Like every Byzantine host, each holds only its own signer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from consensus.batch import Batch, commit_vote_body
from consensus.config import ReplicaConfig
from consensus.errors import MalformedMessage
from consensus.messages import (
    Checkpoint,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
)
from consensus.output import Certificate, Committed
from consensus.sim.byzantine import BYZANTINE_KINDS, ByzantineHost, _envelope
from consensus.sim.hosts import Envelope, HonestHost, Target
from consensus.sim.network import ConsensusWire, Payload
from consensus.view_change import plan_new_view
from crypto.signing import TAG_COMMIT

M = TypeVar("M", bound=Message)


def _null_digest(config: ReplicaConfig, seq: int) -> str:
    return Batch.null(config.chain_id, seq).digest


class ByzantineNewPrimary(ByzantineHost):
    """As the primary of a new view, sends a validly signed NEW-VIEW corrupted one way: without
    the VIEW-CHANGE holding the highest prepared certificate (re-planned from the rest), with a
    VIEW-CHANGE counted twice, with a re-proposal's digest swapped for a null batch's, with a
    null re-proposal skipped, or with its own VIEW-CHANGE replaced by one carrying a forged
    prepared certificate (re-planned, so the forged digest wins)."""

    kind = "byzantine_new_primary"
    CORRUPTIONS: ClassVar[tuple[str, ...]] = (
        "drop_top",
        "duplicate",
        "swap",
        "skip_null",
        "forged_vc",
        "unsigned_vc",
    )

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if not isinstance(message, NewView):
            return [_envelope(to, wire)]
        # Every corruption, one NEW-VIEW each, in a random order: a replica that accepts any of
        # them has a check missing.
        ways = list(self.CORRUPTIONS)
        self.rng.shuffle(ways)
        return [_envelope(to, self._sign(self._corrupt(message, how))) for how in ways]

    def _corrupt(self, nv: NewView, how: str) -> NewView:
        vcs = list(nv.view_changes)
        if how in ("drop_top", "duplicate"):
            top = max(vcs, key=lambda vc: max((c.view for c in vc.prepared), default=-1))
            vcs.remove(top)
            if how == "duplicate":
                vcs.append(vcs[0])
            return self._replanned(nv, vcs)
        if how == "forged_vc":
            own = next((vc for vc in vcs if vc.sender == self.key), vcs[0])
            vcs[vcs.index(own)] = self._forged_view_change(own)
            return self._replanned(nv, vcs)
        if how == "unsigned_vc":
            # Another validator's VIEW-CHANGE altered, so its signature no longer matches: its
            # certificates cut out, or a certificate for a digest nobody holds slipped in.
            top = max(vcs, key=lambda vc: (len(vc.prepared), vc.sender != self.key))
            if top.prepared and self.rng.random() < 0.3:
                altered = dataclasses.replace(top, prepared=())
            else:
                seq = max((c.seq for c in top.prepared), default=top.stable_seq) + 1
                seq = min(seq, top.stable_seq + self.config.watermark_window)
                view = _own_view_below(self, top.view)
                cert = _forged_cert(self, view, seq, self._noise(), ())
                altered = dataclasses.replace(
                    top, prepared=(*(c for c in top.prepared if c.seq != seq), cert)
                )
            vcs[vcs.index(top)] = altered
            return self._replanned(nv, vcs)
        proposals = [(p.seq, p.digest) for p in nv.pre_prepares]
        if how == "swap":
            real = [i for i, (s, d) in enumerate(proposals) if d != _null_digest(self.config, s)]
            if real and self.rng.random() < 0.3:  # a committed batch may be replaced: a fork
                i = self.rng.choice(real)
                proposals[i] = (proposals[i][0], _null_digest(self.config, proposals[i][0]))
            elif proposals:  # a batch nobody holds: the view can never execute it
                i = self.rng.randrange(len(proposals))
                proposals[i] = (proposals[i][0], self._noise())
            else:  # nothing to re-propose: claim a batch nobody has
                proposals.append((vcs[0].stable_seq + 1, self._noise()))
        else:  # skip_null
            nulls = [i for i, (s, d) in enumerate(proposals) if d == _null_digest(self.config, s)]
            if nulls:
                del proposals[self.rng.choice(nulls)]
            elif proposals:
                proposals.pop()
        return self._with_proposals(nv, nv.view_changes, proposals)

    def _forged_view_change(self, vc: ViewChange) -> ViewChange:
        seq = max((c.seq for c in vc.prepared), default=vc.stable_seq + 1)
        digest = _null_digest(self.config, seq)
        if self.rng.random() >= 0.3:  # a digest nobody holds, at a seq nobody prepared
            seq = min(seq + 1, vc.stable_seq + self.config.watermark_window)
            digest = self._noise()
        forged = _forged_cert(self, _own_view_below(self, vc.view), seq, digest, ())
        prepared = (*tuple(c for c in vc.prepared if c.seq != seq), forged)
        return dataclasses.replace(vc, prepared=prepared, sender=self.key)

    def _replanned(self, nv: NewView, vcs: list[ViewChange]) -> NewView:
        signed = tuple(vc if vc.sender != self.key else _signed(self, vc) for vc in vcs)
        proposals = list(plan_new_view(self.config, signed).proposals)
        return self._with_proposals(nv, signed, proposals)

    def _with_proposals(
        self, nv: NewView, vcs: tuple[ViewChange, ...], proposals: list[tuple[int, str]]
    ) -> NewView:
        pre_prepares = tuple(
            _signed(self, PrePrepare(self.config.chain_id, nv.view, seq, digest, None))
            for seq, digest in proposals
        )
        return dataclasses.replace(nv, view_changes=vcs, pre_prepares=pre_prepares)


def _signed(host: ByzantineHost, message: M) -> M:
    return sign_message(host.signer, message)


def _own_view_below(host: ByzantineHost, view: int) -> int:
    """The highest view below ``view`` that ``host`` leads (its pre-prepare then passes the
    sender check), else ``view - 1``."""
    n = host.config.n
    for candidate in range(view - 1, max(-1, view - 1 - n), -1):
        if host.config.primary(candidate) == host.key:
            return candidate
    return max(view - 1, 0)


def _forged_cert(
    host: ByzantineHost, view: int, seq: int, digest: str, prepares: tuple[Prepare, ...]
) -> PreparedCert:
    """A prepared certificate for (view, seq, digest) whose pre-prepare we sign ourselves (valid
    only if we are that view's primary) and whose PREPAREs are what the caller gives."""
    chain_id = host.config.chain_id
    return PreparedCert(
        _signed(host, PrePrepare(chain_id, max(view, 0), seq, digest, None)), prepares
    )


class CertificateForger(ByzantineHost):
    """Its VIEW-CHANGEs carry forged evidence, validly signed by itself: a prepared certificate
    (for the null batch at a seq that committed, in the highest view possible) that is short,
    has PREPAREs with forged signatures in others' names, or real PREPAREs from other views and
    seqs; or a checkpoint proof for a stable checkpoint nobody reached that is empty, one
    CHECKPOINT repeated, real CHECKPOINTs of another seq, or forged ones in others' names."""

    kind = "certificate_forger"
    FORGERIES: ClassVar[tuple[str, ...]] = (
        "short_cert",
        "forged_cert",
        "mixed_cert",
        "stale_cert",
        "empty_proof",
        "short_proof",
        "duplicate_proof",
        "mismatched_proof",
        "forged_proof",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepares: dict[str, Prepare] = {}  # latest real PREPARE per sender
        self._checkpoints: dict[str, Checkpoint] = {}  # latest real CHECKPOINT per sender
        self._oldest: dict[int, PreparedCert] = {}  # per seq, the oldest real certificate held

    def on_tick(self, now_ms: int) -> list[Envelope]:
        replica = self.replica
        if replica is not None:  # our own replica's certificates, read only
            for seq, cert in replica._prepared_certs.items():
                self._oldest.setdefault(seq, cert)
            stable = replica.stable_checkpoint
            self._oldest = {s: c for s, c in self._oldest.items() if s > stable}
        return super().on_tick(now_ms)

    def on_packet(self, src: int, payload: Payload) -> list[Envelope]:
        if isinstance(payload, ConsensusWire):
            kind = payload.wire.get("type")
            if kind in ("prepare", "checkpoint"):
                try:
                    message: Message | None = decode_message(payload.wire)
                except MalformedMessage:  # garbage from another faulty host
                    message = None
                if isinstance(message, Prepare):
                    self._prepares[message.sender] = message
                elif isinstance(message, Checkpoint):
                    self._checkpoints[message.sender] = message
        return super().on_packet(src, payload)

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if not isinstance(message, ViewChange):
            return [_envelope(to, wire)]
        return [_envelope(to, self._sign(self._forge(message)))]

    def _forge(self, vc: ViewChange) -> ViewChange:
        how = self.rng.choice(self.FORGERIES)
        if how == "stale_cert":
            # Real, validly signed certificates, but each the oldest we held for its seq: the
            # plan must prefer a later view's (a stale one may hold a digest that never
            # committed while a later one did).
            stale = tuple(self._oldest.get(c.seq, c) for c in vc.prepared)
            known = {c.seq for c in stale}
            extra = tuple(
                c
                for s, c in sorted(self._oldest.items())
                if s not in known
                and vc.stable_seq < s <= vc.stable_seq + self.config.watermark_window
            )
            return dataclasses.replace(vc, prepared=stale + extra)
        if how.endswith("_cert"):
            return self._forge_cert(vc, how)
        return self._forge_proof(vc, how)

    def _target_seq(self, vc: ViewChange) -> int:
        """A seq likely committed somewhere: what we executed last, if above the checkpoint."""
        replica = self.replica
        executed = replica.last_executed_seq if replica is not None else 0
        low, high = vc.stable_seq + 1, vc.stable_seq + self.config.watermark_window
        return min(max(executed, low), high)

    def _forge_cert(self, vc: ViewChange, how: str) -> ViewChange:
        # Either the null batch at a seq that committed (a fork if it wins), or a digest nobody
        # holds just above every prepared seq (a halt if it is re-proposed).
        view = _own_view_below(self, vc.view)
        if self.rng.random() < 0.5:
            seq = self._target_seq(vc)
            digest = _null_digest(self.config, seq)
        else:
            top = max((c.seq for c in vc.prepared), default=self._target_seq(vc))
            seq = min(top + 1, vc.stable_seq + self.config.watermark_window)
            digest = self._noise()
        primary = self.config.primary(view)
        others = [k for k in self.config.validators if k not in (self.key, primary)]
        prepares: tuple[Prepare, ...] = ()
        if how == "forged_cert":
            prepares = tuple(
                Prepare(
                    self.config.chain_id, view, seq, digest, sender=k, signature=self._noise() * 2
                )
                for k in others[: self.config.q - 1]
            )
        elif how == "mixed_cert":
            prepares = tuple(p for k, p in sorted(self._prepares.items()) if k != primary)
            prepares = prepares[: self.config.q - 1]
        cert = _forged_cert(self, view, seq, digest, prepares)
        prepared = (*tuple(c for c in vc.prepared if c.seq != seq), cert)
        return dataclasses.replace(vc, prepared=prepared)

    def _forge_proof(self, vc: ViewChange, how: str) -> ViewChange:
        k = self.config.checkpoint_interval
        seq = vc.stable_seq + k * self.rng.randint(1, 2)
        block = self._noise()
        own = _signed(self, Checkpoint(self.config.chain_id, seq, block))
        proof: tuple[Checkpoint, ...] = ()
        if how == "short_proof":
            proof = (own,)
        elif how == "duplicate_proof":
            proof = (own,) * self.config.q
        elif how == "mismatched_proof":
            proof = (own, *(c for s, c in sorted(self._checkpoints.items()) if s != self.key))
        elif how == "forged_proof":
            proof = (
                own,
                *tuple(
                    Checkpoint(
                        self.config.chain_id, seq, block, sender=key, signature=self._noise() * 2
                    )
                    for key in self.config.validators
                    if key != self.key
                ),
            )
        prepared = tuple(
            c for c in vc.prepared if seq < c.seq <= seq + self.config.watermark_window
        )
        return dataclasses.replace(
            vc, stable_seq=seq, stable_block_hash=block, checkpoint_proof=proof, prepared=prepared
        )


class RogueProposer(ByzantineHost):
    """Proposes while it is not the primary (PRE-PREPAREs of pending requests at the next seqs,
    with its own PREPARE to go with them), far beyond the watermarks, and, as the primary,
    stamps its batches far in the future or before the batch they follow. While a view change
    is on, it sends a NEW-VIEW of its own for a view it does not lead."""

    kind = "rogue_proposer"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._new_view_sent = -1

    def on_tick(self, now_ms: int) -> list[Envelope]:
        out = super().on_tick(now_ms)
        replica = self.replica
        if replica is not None and replica.in_view_change:
            out.extend(self._rogue_new_view(replica.view))
        if replica is None or replica.is_primary or self.rng.random() < 0.5:
            return out
        txs = tuple(list(self.pool.values())[: self.config.batch_size_max])
        if not txs:
            return out
        chain_id = self.config.chain_id
        seq = replica.last_executed_seq + self.rng.randint(1, 2)
        if self.rng.random() < 0.2:
            seq += self.config.watermark_window * self.rng.randint(1, 10**6)
        batch = Batch(chain_id, seq, now_ms, txs)
        view = replica.view + (1 if replica.in_view_change else 0)
        pre_prepare = _signed(self, PrePrepare(chain_id, view, seq, batch.digest, batch))
        prepare = _signed(self, Prepare(chain_id, view, seq, batch.digest))
        out.append(_envelope(None, pre_prepare.to_wire()))
        out.append(_envelope(None, prepare.to_wire()))
        return out

    def _rogue_new_view(self, view: int) -> list[Envelope]:
        """A NEW-VIEW for a view we do not lead, well formed but for its sender: q VIEW-CHANGEs
        we received and the re-proposals they imply, signed by us."""
        replica = self.replica
        if replica is None or view == self._new_view_sent or self.config.primary(view) == self.key:
            return []
        received = replica._view_changes.get(view, {})  # our own replica's state, read only
        if len(received) < self.config.q:
            return []
        self._new_view_sent = view
        vcs = tuple(received[k] for k in sorted(received)[: self.config.q])
        plan = plan_new_view(self.config, vcs)
        pre_prepares = tuple(
            _signed(self, PrePrepare(self.config.chain_id, view, seq, digest, None))
            for seq, digest in plan.proposals
        )
        nv = _signed(self, NewView(self.config.chain_id, view, vcs, pre_prepares))
        return [_envelope(None, nv.to_wire())]

    def _rewrite(self, to: Target, wire: dict[str, Any], message: Message) -> list[Envelope]:
        if not isinstance(message, PrePrepare) or message.batch is None or message.batch.is_null:
            return [_envelope(to, wire)]
        batch = message.batch
        skew = self.config.time_skew_max_ms
        if self.rng.random() < 0.5:
            time_ms = batch.time_ms + skew * self.rng.randint(2, 1000)  # far in the future
        else:
            time_ms = max(1, batch.time_ms - self.rng.randint(1, skew // 2))  # going back
        skewed = Batch(batch.chain_id, batch.seq, time_ms, batch.txs)
        changed = dataclasses.replace(message, digest=skewed.digest, batch=skewed)
        return [_envelope(to, self._sign(changed))]


class BlockLiar(ByzantineHost):
    """Serves state transfer with blocks whose certificates are bad: a null batch under the real
    block's certificate, the real batch under a certificate of garbage signatures, or under
    another block's certificate, or real blocks after a gap. It lures laggards with head
    announcements a little ahead."""

    kind = "block_liar"

    def _rewrite_blocks(self, blocks: tuple[Committed, ...]) -> tuple[Committed, ...]:
        if len(blocks) > 1 and self.rng.random() < 0.2:
            return blocks[1:]  # real blocks, but with a gap before them
        out = []
        for i, block in enumerate(blocks):
            batch, cert = block.batch, block.certificate
            how = self.rng.randrange(4)
            if how == 3:  # a null batch under a certificate holding our own vote only
                null = Batch.null(batch.chain_id, batch.seq)
                body = commit_vote_body(null.chain_id, null.seq, cert.view, null.digest)
                vote = self.signer.sign(TAG_COMMIT, body)
                out.append(Committed(null, Certificate(cert.view, {self.key: vote})))
            elif how == 0:
                out.append(Committed(Batch.null(batch.chain_id, batch.seq), cert))
            elif how == 1:
                garbage = {k: self._noise() * 2 for k in cert.signatures}
                out.append(Committed(batch, Certificate(cert.view, garbage)))
            else:
                other = blocks[(i + 1) % len(blocks)].certificate if len(blocks) > 1 else cert
                borrowed = Batch.null(batch.chain_id, batch.seq) if other is cert else batch
                out.append(Committed(borrowed, other))
        return tuple(out)

    def on_tick(self, now_ms: int) -> list[Envelope]:
        out = super().on_tick(now_ms)
        replica = self.replica
        if replica is None or self.rng.random() < 0.9:
            return out
        seq = replica.last_executed_seq + self.rng.randint(1, 3)
        head = _signed(self, Checkpoint(self.config.chain_id, seq, self._noise()))
        out.append(_envelope(None, head.to_wire()))
        return out


class SkewedClockHost(HonestHost):
    """An honest replica whose clock is off by ``clock_offset_ms`` (less than the tolerated
    skew): its batches are stamped, and others' judged, by its own clock."""

    kind = "skewed_clock"

    def __init__(self, *args: Any, clock_offset_ms: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock_offset_ms = clock_offset_ms

    def on_tick(self, now_ms: int) -> list[Envelope]:
        return super().on_tick(now_ms + self.clock_offset_ms)


NEW_KINDS: dict[str, type[ByzantineHost]] = {
    cls.kind: cls for cls in (ByzantineNewPrimary, CertificateForger, RogueProposer, BlockLiar)
}
ALL_KINDS: dict[str, type[ByzantineHost]] = {**BYZANTINE_KINDS, **NEW_KINDS}
