"""A real node process with a Byzantine hook on what leaves it (dev/test only).

    python -m tests.adversary.byzantine --behaviour NAME [--seed S] [--record FILE] \
        -m node.cli node run ...

runs the module as ``python -m`` would, after replacing ``PeerNetwork.send`` and
``PeerNetwork.broadcast`` (``node/p2p/peers.py``) with a behaviour that decides what really goes
out. The node itself is unchanged: its replica, ledger and API are the real ones, and it signs
with its own validator key; only the messages it sends are rewritten. Nothing in the node imports
this module, and ``phalanx node run`` has no option that reaches it.

A behaviour is a function ``(out, to, wire)``: ``to`` is the peer a message was sent to (None for
a broadcast) and ``wire`` the message; it sends whatever it likes through ``out`` (the original
methods, and the node's signer to forge *its own* statements). Every equivocation a behaviour
commits is written to ``--record`` as a JSON line ``{"kind", "view", "seq", "to"}``, so a test
can check that each one shows up as evidence on the honest nodes; the other behaviours record
what they did the same way (kinds not evidence kinds), so a run shows that they acted.

==========================  ====================================================================
behaviour                   what leaves the node
==========================  ====================================================================
``honest``                  everything, unchanged (the control)
``silent``                  no consensus message at all (relays and block sync still flow)
``selective``               consensus messages to the first other validator only (sorted keys)
``wrong-digest``            COMMITs and PREPAREs for random digests instead of the real ones
``equivocate-commits``      each COMMIT, then a second COMMIT for the same slot with another
                            digest, both to every peer (evidence kind ``commit``)
``equivocate-prepares``     the same with PREPAREs (evidence kind ``prepare``)
``equivocating-primary``    as primary, each PRE-PREPARE of a non-empty batch goes to half of
                            the peers; the other half get a PRE-PREPARE of another batch (same
                            transactions, batch time + 1 ms) for the same slot; with
                            ``--witness`` the first peer is sent both (kind ``pre_prepare``)
``equivocate-execution``    each execution vote, then one for the same block with another
                            ``state_root`` (kind ``execution``; recorded with view 0)
``forger``                  its own messages with garbage signatures, copies in other
                            validators' names, PRE-PREPAREs / batches / blocks whose transactions
                            carry forged signatures (same tx_ids, so same digests)
``replayer``                what it sends, plus old messages it received (signed by others)
``view-change-hider``       VIEW-CHANGEs without their prepared certificates, half of them
                            claiming the genesis checkpoint
``view-change-flooder``     with what it sends, VIEW-CHANGEs for views ahead and votes in them
``byzantine-new-primary``   validly signed NEW-VIEWs corrupted: the VIEW-CHANGE holding the
                            highest certificate dropped (re-planned), one VIEW-CHANGE twice, a
                            re-proposal's digest swapped, a null re-proposal skipped
``certificate-forger``      VIEW-CHANGEs carrying short, forged-signature or mixed prepared
                            certificates, or empty/short/duplicate/mismatched/forged
                            checkpoint proofs
``rogue-proposer``          PRE-PREPAREs (and its PREPARE) while not the primary, some far
                            beyond the watermarks; as primary, batch times far off
``block-liar``              block-sync answers with bad blocks (gap, garbage certificate, null
                            batch under a real certificate, forged tx signatures) and heads a
                            little ahead
``lying-heads``             head announcements far ahead with hashes nobody has
``early-buffer-flooder``    PRE-PREPAREs for future views it will lead
``amplification-abuser``    replays others' VIEW-CHANGEs and sends BATCH-REQUESTs for every
                            batch it saw, many times over
==========================  ====================================================================

The hook also watches what the node *receives* (``Out.inbox`` and friends), read-only, so that
replays and mixed certificates use real messages signed by others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import runpy
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.batch import Batch, Tx, commit_vote_body
from consensus.config import ReplicaConfig
from consensus.errors import MalformedMessage
from consensus.messages import (
    BatchRequest,
    BatchResponse,
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    sign_message,
)
from consensus.view_change import plan_new_view
from crypto.signing import TAG_COMMIT, Signer
from ledger.execution import ExecutionVote, sign_execution_vote

CONSENSUS_TYPES = frozenset(
    {"pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view"}
)
INBOX_MAX = 256  # received consensus messages kept (a uniform sample) for replays
VIEWS_AHEAD = 5  # how far ahead floods go (beyond what an honest replica buffers)


@dataclass
class Out:
    """What a behaviour may use: the real send and broadcast, the node's own signer, the other
    validators (sorted), a seeded random source and the record of equivocations."""

    send: Callable[[str, dict[str, Any]], None]
    broadcast: Callable[[dict[str, Any]], None]
    signer: Signer
    peers: list[str]
    rng: random.Random
    chain_id: str = ""
    witness: bool = False
    record_path: Path | None = None
    config: ReplicaConfig | None = None  # the node's own, captured as it starts
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # What the node received (read-only copies), for replays and mixed certificates.
    inbox: list[dict[str, Any]] = field(default_factory=list)
    inbox_seen: int = 0
    view_changes: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    prepares: dict[str, Prepare] = field(default_factory=dict)  # latest real one per sender
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)
    last_batch: PrePrepare | None = None  # the latest PRE-PREPARE with a non-empty batch
    digests: list[str] = field(default_factory=list)  # batch digests seen, newest last
    view: int = 0  # the highest view seen in a message
    seq: int = 0  # the highest seq seen in a message
    flood: dict[tuple[str, int, int], str] = field(default_factory=dict)  # never self-equivocate

    def observe(self, wire: dict[str, Any]) -> None:
        """Remember a received consensus message (called from the node's read loop)."""
        kind = wire.get("type")
        if kind not in CONSENSUS_TYPES and kind != "batch_request":
            return
        with self._lock:
            self.inbox_seen += 1
            if len(self.inbox) < INBOX_MAX:
                self.inbox.append(wire)
            else:  # reservoir sampling: a uniform sample of the whole run in bounded memory
                slot = self.rng.randrange(self.inbox_seen)
                if slot < INBOX_MAX:
                    self.inbox[slot] = wire
        message = _decode(wire)
        self._note(message)
        if isinstance(message, Prepare):
            self.prepares[message.sender] = message
        elif isinstance(message, Checkpoint):
            self.checkpoints[message.sender] = message
        elif isinstance(message, ViewChange):
            self.view_changes[(message.sender, message.view)] = wire
            if len(self.view_changes) > 64:
                self.view_changes.pop(next(iter(self.view_changes)))

    def _note(self, message: Message | None) -> None:
        view = getattr(message, "view", None)
        seq = getattr(message, "seq", None)
        if type(view) is int:
            self.view = max(self.view, view)
        if type(seq) is int and seq < 2**40:
            self.seq = max(self.seq, seq)
        if isinstance(message, PrePrepare) and message.batch is not None:
            if not message.batch.is_null:
                self.last_batch = message
            self.digests = [*self.digests[-31:], message.digest]

    def sign(self, message: Message) -> dict[str, Any]:
        return sign_message(self.signer, message).to_wire()

    def cfg(self) -> ReplicaConfig:
        if self.config is None:
            raise RuntimeError("the node's replica config was not captured")
        return self.config

    def me(self) -> str:
        return self.signer.public_key

    def to(self, to: str | None, wire: dict[str, Any]) -> None:
        if to is None:
            self.broadcast(wire)
        else:
            self.send(to, wire)

    def record(self, kind: str, view: int, seq: int, to: str | None) -> None:
        if self.record_path is None:
            return
        line = json.dumps({"kind": kind, "view": view, "seq": seq, "to": to}) + "\n"
        with self._lock, self.record_path.open("a") as f:
            f.write(line)

    def digest(self) -> str:
        return self.rng.randbytes(32).hex()


Behaviour = Callable[[Out, "str | None", dict[str, Any]], None]


def honest(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)


def silent(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") not in CONSENSUS_TYPES:
        out.to(to, wire)


def selective(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") not in CONSENSUS_TYPES:
        out.to(to, wire)
    elif to is None or to == out.peers[0]:
        out.send(out.peers[0], wire)


def _vote(wire: dict[str, Any]) -> Commit | Prepare | None:
    if wire.get("type") not in ("commit", "prepare"):
        return None
    try:
        message = decode_message(wire)
    except MalformedMessage:
        return None
    return message if isinstance(message, Commit | Prepare) else None


def wrong_digest(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    vote = _vote(wire)
    if vote is None:
        out.to(to, wire)
        return
    out.to(to, sign_message(out.signer, dataclasses.replace(vote, digest=out.digest())).to_wire())


def _equivocate_votes(kind: str) -> Behaviour:
    def behave(out: Out, to: str | None, wire: dict[str, Any]) -> None:
        out.to(to, wire)
        vote = _vote(wire)
        if vote is None or wire.get("type") != kind:
            return
        other = dataclasses.replace(vote, digest=out.digest())
        out.to(to, sign_message(out.signer, other).to_wire())
        out.record(kind, vote.view, vote.seq, to)

    return behave


def equivocating_primary(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") != "pre_prepare" or to is not None:
        out.to(to, wire)
        return
    try:
        message = decode_message(wire)
    except MalformedMessage:
        out.to(to, wire)
        return
    if not isinstance(message, PrePrepare) or message.batch is None or message.batch.is_null:
        out.to(to, wire)
        return
    batch = message.batch
    twin = Batch(batch.chain_id, batch.seq, batch.time_ms + 1, batch.txs)
    other = sign_message(
        out.signer, PrePrepare(message.chain_id, message.view, message.seq, twin.digest, twin)
    ).to_wire()
    half = len(out.peers) // 2 or 1
    for i, peer in enumerate(out.peers):
        out.send(peer, wire if i < half else other)
    if out.witness:
        out.send(out.peers[0], other)
    out.record("pre_prepare", message.view, message.seq, out.peers[0] if out.witness else None)


def equivocate_execution(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    """Each execution vote, then another for the same block with a different state_root."""
    out.to(to, wire)
    if wire.get("type") != "execution-vote" or wire.get("reply") is True:
        return
    try:
        vote = ExecutionVote.from_wire(wire.get("vote"))
    except ValueError:
        return
    other = sign_execution_vote(
        out.signer, out.chain_id, vote.seq, vote.block_hash, out.digest(), vote.results_root
    )
    out.to(to, {**wire, "vote": other.to_wire()})
    out.record("execution", 0, vote.seq, to)


def _decode(wire: Any) -> Message | None:
    try:
        return decode_message(wire)
    except (MalformedMessage, ValueError, TypeError, KeyError):
        return None


def _bad_sig_txs(out: Out, txs: tuple[Tx, ...]) -> tuple[Tx, ...]:
    """The same bodies (same tx_ids, so the same batch digest) under signatures nobody made."""
    return tuple(Tx(tx.tx_id, {**tx.wire, "sig": out.digest() * 2}, tx.size) for tx in txs)


def forger(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    kind = wire.get("type")
    if kind == "blocks":  # block sync: the same blocks, every transaction's signature forged
        blocks = [
            {**b, "txs": [{**tx, "sig": out.digest() * 2} for tx in b.get("txs", [])]}
            for b in wire.get("blocks", [])
        ]
        out.to(to, {**wire, "blocks": blocks})
        return
    message = _decode(wire) if kind in CONSENSUS_TYPES or kind == "batch_response" else None
    if message is None:
        out.to(to, wire)
        return
    if isinstance(message, PrePrepare) and message.batch is not None and message.batch.txs:
        batch = message.batch
        forged = Batch(batch.chain_id, batch.seq, batch.time_ms, _bad_sig_txs(out, batch.txs))
        out.to(to, out.sign(dataclasses.replace(message, batch=forged)))
    elif isinstance(message, BatchResponse):
        batches = tuple(
            Batch(b.chain_id, b.seq, b.time_ms, _bad_sig_txs(out, b.txs)) for b in message.batches
        )
        out.to(to, out.sign(dataclasses.replace(message, batches=batches)))
    elif out.rng.random() < 0.5:
        out.to(to, wire)
    else:  # our own message under a signature of garbage
        out.to(to, {**wire, "signature": out.digest() * 2})
    # The same message in another validator's name (signed by us, so not by them).
    out.to(to, {**wire, "sender": out.rng.choice(out.peers)})
    out.record("forged", int(wire.get("view", 0) or 0), int(wire.get("seq", 0) or 0), to)


def replayer(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)
    if not out.inbox or out.rng.random() < 0.5:
        return
    for _ in range(out.rng.randint(1, 3)):
        old = out.rng.choice(out.inbox)
        out.to(out.rng.choice([None, *out.peers]), old)
    out.record("replayed", 0, 0, None)


def view_change_hider(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    message = _decode(wire) if wire.get("type") == "view_change" else None
    if not isinstance(message, ViewChange):
        out.to(to, wire)
        return
    hidden = dataclasses.replace(message, prepared=())
    if out.rng.random() < 0.5:
        config = out.cfg()
        hidden = dataclasses.replace(
            hidden, stable_seq=0, stable_block_hash=config.genesis_hash, checkpoint_proof=()
        )
    out.to(to, out.sign(hidden))
    out.record("view_change_hidden", message.view, message.stable_seq, to)


def _flood_digest(out: Out, kind: str, view: int, seq: int) -> str:
    """One digest per (kind, view, seq): floods are noise, never equivocation."""
    return out.flood.setdefault((kind, view, seq), out.digest())


def view_change_flooder(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)
    out._note(_decode(wire) if wire.get("type") in CONSENSUS_TYPES else None)
    if out.rng.random() < 0.7:
        return
    config = out.cfg()
    for _ in range(out.rng.randint(1, 6)):
        view = out.view + out.rng.randint(1, VIEWS_AHEAD + 2)
        flood: Message = ViewChange(config.chain_id, view, 0, config.genesis_hash, (), ())
        if out.rng.random() < 0.3:
            vote = out.rng.choice((Prepare, Commit))
            seq = out.seq + out.rng.randint(1, 4)
            digest = _flood_digest(out, vote.TYPE, view, seq)
            flood = vote(config.chain_id, view, seq, digest)
        out.broadcast(out.sign(flood))
    out.record("view_change_flood", out.view, out.seq, None)


def byzantine_new_primary(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    message = _decode(wire) if wire.get("type") == "new_view" else None
    if not isinstance(message, NewView):
        out.to(to, wire)
        return
    how = out.rng.choice(("drop_top", "duplicate", "swap", "skip_null"))
    corrupted = _corrupt_new_view(out, message, how)
    out.to(to, out.sign(corrupted))
    out.record(f"new_view_{how}", message.view, 0, to)


def _corrupt_new_view(out: Out, nv: NewView, how: str) -> NewView:
    config = out.cfg()
    vcs = list(nv.view_changes)
    proposals = [(p.seq, p.digest) for p in nv.pre_prepares]
    if how == "drop_top" and len(vcs) > 1:
        top = max(vcs, key=lambda vc: max((c.view for c in vc.prepared), default=-1))
        vcs.remove(top)
        proposals = list(plan_new_view(config, vcs).proposals)
    elif how == "duplicate" and len(vcs) > 1:
        vcs[-1] = vcs[0]
    else:
        nulls = [i for i, (s, d) in enumerate(proposals) if d == Batch.null(nv.chain_id, s).digest]
        real = [i for i in range(len(proposals)) if i not in nulls]
        if how == "skip_null" and nulls:
            del proposals[out.rng.choice(nulls)]
        elif real:  # swap a re-proposal for the null batch
            i = out.rng.choice(real)
            proposals[i] = (proposals[i][0], Batch.null(nv.chain_id, proposals[i][0]).digest)
        elif proposals:
            i = out.rng.randrange(len(proposals))
            proposals[i] = (proposals[i][0], out.digest())
        else:  # nothing to re-propose: claim a batch nobody has
            proposals.append((max((vc.stable_seq for vc in vcs), default=0) + 1, out.digest()))
    pre_prepares = tuple(
        sign_message(out.signer, PrePrepare(nv.chain_id, nv.view, seq, digest, None))
        for seq, digest in proposals
    )
    return dataclasses.replace(nv, view_changes=tuple(vcs), pre_prepares=pre_prepares)


def _own_view_below(config: ReplicaConfig, me: str, view: int) -> int:
    """The highest view below ``view`` that ``me`` leads (its pre-prepare then passes the
    sender check), else ``view - 1``."""
    for candidate in range(view - 1, max(-1, view - 1 - config.n), -1):
        if config.primary(candidate) == me:
            return candidate
    return max(view - 1, 0)


CERT_FORGERIES = (
    "short_cert",
    "forged_cert",
    "mixed_cert",
    "empty_proof",
    "short_proof",
    "duplicate_proof",
    "mismatched_proof",
    "forged_proof",
)


def certificate_forger(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    message = _decode(wire) if wire.get("type") == "view_change" else None
    if not isinstance(message, ViewChange):
        out.to(to, wire)
        return
    how = out.rng.choice(CERT_FORGERIES)
    forged = (
        _forge_cert(out, message, how) if how.endswith("_cert") else _forge_proof(out, message, how)
    )
    out.to(to, out.sign(forged))
    out.record(how, message.view, message.stable_seq, to)


def _forge_cert(out: Out, vc: ViewChange, how: str) -> ViewChange:
    config = out.cfg()
    view = _own_view_below(config, out.me(), vc.view)
    low, high = vc.stable_seq + 1, vc.stable_seq + config.watermark_window
    if out.rng.random() < 0.5:  # the null batch at a seq that committed: a fork if it wins
        seq = min(max(out.seq, low), high)
        digest = Batch.null(config.chain_id, seq).digest
    else:  # a digest nobody holds above every prepared seq: a halt if it is re-proposed
        top = max((c.seq for c in vc.prepared), default=min(max(out.seq, low), high))
        seq = min(top + 1, high)
        digest = out.digest()
    primary = config.primary(view)
    others = [k for k in config.validators if k not in (out.me(), primary)]
    prepares: tuple[Prepare, ...] = ()
    if how == "forged_cert":
        prepares = tuple(
            Prepare(config.chain_id, view, seq, digest, sender=k, signature=out.digest() * 2)
            for k in others[: config.q - 1]
        )
    elif how == "mixed_cert":  # real PREPAREs, of other views and seqs
        prepares = tuple(p for k, p in sorted(out.prepares.items()) if k != primary)
        prepares = prepares[: config.q - 1]
    pre_prepare = sign_message(out.signer, PrePrepare(config.chain_id, view, seq, digest, None))
    cert = PreparedCert(pre_prepare, prepares)
    prepared = (*tuple(c for c in vc.prepared if c.seq != seq), cert)
    return dataclasses.replace(vc, prepared=prepared)


def _forge_proof(out: Out, vc: ViewChange, how: str) -> ViewChange:
    config = out.cfg()
    seq = vc.stable_seq + config.checkpoint_interval * out.rng.randint(1, 2)
    block = out.digest()
    own = sign_message(out.signer, Checkpoint(config.chain_id, seq, block))
    proof: tuple[Checkpoint, ...] = ()
    if how == "short_proof":
        proof = (own,)
    elif how == "duplicate_proof":
        proof = (own,) * config.q
    elif how == "mismatched_proof":
        proof = (own, *(c for k, c in sorted(out.checkpoints.items()) if k != out.me()))
    elif how == "forged_proof":
        proof = (
            own,
            *(
                Checkpoint(config.chain_id, seq, block, sender=k, signature=out.digest() * 2)
                for k in config.validators
                if k != out.me()
            ),
        )
    prepared = tuple(c for c in vc.prepared if seq < c.seq <= seq + config.watermark_window)
    return dataclasses.replace(
        vc, stable_seq=seq, stable_block_hash=block, checkpoint_proof=proof, prepared=prepared
    )


def rogue_proposer(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    config = out.cfg()
    message = _decode(wire) if wire.get("type") == "pre_prepare" else None
    if isinstance(message, PrePrepare) and message.batch is not None and message.batch.txs:
        # As the primary: batch times far in the future or going back.
        batch = message.batch
        skew = config.time_skew_max_ms
        if out.rng.random() < 0.5:
            time_ms = batch.time_ms + skew * out.rng.randint(2, 1000)
        else:
            time_ms = max(1, batch.time_ms - out.rng.randint(skew // 4, skew // 2))
        skewed = Batch(batch.chain_id, batch.seq, time_ms, batch.txs)
        out.to(to, out.sign(dataclasses.replace(message, digest=skewed.digest, batch=skewed)))
        return
    out.to(to, wire)
    seen = out.last_batch
    if seen is None or config.primary(out.view) == out.me() or out.rng.random() < 0.7:
        return
    # Not the primary: propose the transactions we saw last at the next seqs, or far beyond
    # the watermarks, with our own PREPARE to go with them.
    seq = out.seq + out.rng.randint(1, 2)
    if out.rng.random() < 0.2:
        seq += config.watermark_window * out.rng.randint(1, 10**6)
    assert seen.batch is not None
    batch = Batch(config.chain_id, seq, seen.batch.time_ms, seen.batch.txs)
    view = out.view
    digest = out.flood.setdefault(("rogue", view, seq), batch.digest)
    if digest != batch.digest:
        return  # already proposed something else there: no equivocation of our own
    out.broadcast(out.sign(PrePrepare(config.chain_id, view, seq, batch.digest, batch)))
    out.record("rogue_pre_prepare", view, seq, None)


def block_liar(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    kind = wire.get("type")
    if kind == "sync-head" and type(wire.get("seq")) is int and out.rng.random() < 0.5:
        out.to(to, {**wire, "seq": wire["seq"] + out.rng.randint(1, 3), "hash": out.digest()})
        return
    if kind != "blocks" or not wire.get("blocks"):
        out.to(to, wire)
        return
    blocks: list[dict[str, Any]] = list(wire["blocks"])
    if len(blocks) > 1 and out.rng.random() < 0.2:
        out.to(to, {**wire, "blocks": blocks[1:]})  # real blocks after a gap
        out.record("block_gap", 0, wire.get("from_seq", 0), to)
        return
    lied: list[dict[str, Any]] = []
    for block in blocks:
        how = out.rng.randrange(4)
        cert = block.get("certificate") or {}
        header = block.get("batch") or {}
        if how == 0:  # a null batch under the real certificate
            null = Batch.null(header.get("chain_id", ""), header.get("seq", 0))
            lied.append({**block, "batch": null.header, "txs": []})
        elif how == 1:  # the real batch under a certificate of garbage signatures
            garbage = {k: out.digest() * 2 for k in cert.get("signatures", {})}
            lied.append({**block, "certificate": {**cert, "signatures": garbage}})
        elif how == 2:  # a null batch under a certificate holding our own vote only
            null = Batch.null(header.get("chain_id", ""), header.get("seq", 0))
            body = commit_vote_body(null.chain_id, null.seq, cert.get("view", 0), null.digest)
            vote = out.signer.sign(TAG_COMMIT, body)
            own = {"view": cert.get("view", 0), "signatures": {out.me(): vote}}
            lied.append({**block, "batch": null.header, "txs": [], "certificate": own})
        else:  # the transactions' signatures forged (same tx_ids, so the same header)
            txs = [{**tx, "sig": out.digest() * 2} for tx in block.get("txs", [])]
            lied.append({**block, "txs": txs})
    out.to(to, {**wire, "blocks": lied})
    out.record("bad_blocks", 0, wire.get("from_seq", 0), to)


def lying_heads(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    if wire.get("type") != "sync-head" or type(wire.get("seq")) is not int:
        out.to(to, wire)
        return
    ahead = wire["seq"] + out.rng.choice((1, 5, 40, 10_000, 2**40))
    out.to(to, {**wire, "seq": ahead, "hash": out.digest()})
    out.record("lying_head", 0, ahead, to)


def early_buffer_flooder(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)
    out._note(_decode(wire) if wire.get("type") in CONSENSUS_TYPES else None)
    if out.rng.random() < 0.6:
        return
    config = out.cfg()
    led = [
        v for v in range(out.view + 1, out.view + 1 + config.n * 3) if config.primary(v) == out.me()
    ]
    # Real transactions (from the latest batch seen) when there are any, else null batches.
    seen = out.last_batch.batch if out.last_batch is not None else None
    txs, time_ms = (seen.txs, seen.time_ms) if seen is not None else ((), 0)
    for _ in range(out.rng.randint(1, 8)):
        view = out.rng.choice(led)
        seq = out.seq + out.rng.randint(1, 40)
        batch = Batch(config.chain_id, seq, time_ms, txs)
        digest = out.flood.setdefault(("pre_prepare", view, seq), batch.digest)
        if digest == batch.digest:
            out.broadcast(out.sign(PrePrepare(config.chain_id, view, seq, digest, batch)))
            out.record("early_pre_prepare", view, seq, None)


def amplification_abuser(out: Out, to: str | None, wire: dict[str, Any]) -> None:
    out.to(to, wire)
    if out.rng.random() < 0.5:
        return
    for vc in list(out.view_changes.values())[-4:]:  # others' VIEW-CHANGEs, again and again
        for _ in range(3):
            out.broadcast(vc)
        out.record("replayed_view_change", int(vc.get("view", 0)), 0, None)
    if out.digests:
        config = out.cfg()
        request = out.sign(BatchRequest(config.chain_id, tuple(out.digests[-8:])))
        for _ in range(5):
            out.broadcast(request)
        out.record("batch_requests", 0, 0, None)


BEHAVIOURS: dict[str, Behaviour] = {
    "honest": honest,
    "silent": silent,
    "selective": selective,
    "wrong-digest": wrong_digest,
    "equivocate-commits": _equivocate_votes("commit"),
    "equivocate-prepares": _equivocate_votes("prepare"),
    "equivocating-primary": equivocating_primary,
    "equivocate-execution": equivocate_execution,
    "forger": forger,
    "replayer": replayer,
    "view-change-hider": view_change_hider,
    "view-change-flooder": view_change_flooder,
    "byzantine-new-primary": byzantine_new_primary,
    "certificate-forger": certificate_forger,
    "rogue-proposer": rogue_proposer,
    "block-liar": block_liar,
    "lying-heads": lying_heads,
    "early-buffer-flooder": early_buffer_flooder,
    "amplification-abuser": amplification_abuser,
}


def install(behaviour: Behaviour, seed: int, record: Path | None, witness: bool) -> None:
    """Rewrite what every PeerNetwork made from now on in this process sends."""
    from ledger import genesis as genesis_module
    from node.p2p import peers as peers_module

    # Capture the replica config the node builds (node.runtime imports it by name later).
    captured: list[ReplicaConfig] = []
    original_replica_config = genesis_module.replica_config

    def replica_config(*args: Any, **kwargs: Any) -> ReplicaConfig:
        config = original_replica_config(*args, **kwargs)
        captured.append(config)
        return config

    genesis_module.replica_config = replica_config
    network = peers_module.PeerNetwork
    original_init = network.__init__
    original_send = network.send
    original_broadcast = network.broadcast

    def init(self: Any, my_signer: Signer, validators: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, my_signer, validators, *args, **kwargs)
        on_message = self._on_message

        def watched(sender: str, wire: dict[str, Any], frame_bytes: int) -> None:
            self._chaos_out.observe(wire)
            on_message(sender, wire, frame_bytes)

        self._on_message = watched
        self._chaos_out = Out(
            send=lambda pubkey, wire: original_send(self, pubkey, wire),
            broadcast=lambda wire: original_broadcast(self, wire),
            signer=my_signer,
            peers=sorted(k for k in validators if k != my_signer.public_key),
            rng=random.Random(seed),
            chain_id=self.chain_id,
            witness=witness,
            record_path=record,
            config=captured[-1] if captured else None,
        )

    def send(self: Any, pubkey: str, message: dict[str, Any]) -> None:
        behaviour(self._chaos_out, pubkey, message)

    def broadcast(self: Any, message: dict[str, Any]) -> None:
        behaviour(self._chaos_out, None, message)

    network.__init__ = init  # type: ignore[method-assign]
    network.send = send  # type: ignore[method-assign]
    network.broadcast = broadcast  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.adversary.byzantine", description=__doc__)
    parser.add_argument("--behaviour", choices=sorted(BEHAVIOURS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", type=Path, default=None, help="JSON lines of equivocations")
    parser.add_argument("--witness", action="store_true", help="equivocating-primary: see above")
    parser.add_argument("-m", dest="module", required=True, help="the module to run")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    install(BEHAVIOURS[args.behaviour], args.seed, args.record, args.witness)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
