"""The checks and the computation of the PBFT view change (Castro & Liskov, OSDI'99 §4.4).

Pure functions over messages: the replica calls them both as the new primary (to build NEW-VIEW)
and as a backup (to recompute and check a NEW-VIEW it received). Each check returns None when the
proof holds, else a short reason that the replica counts as a drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from consensus.batch import Batch
from consensus.config import ReplicaConfig
from consensus.messages import Checkpoint, Message, PreparedCert, ViewChange

VerifyFn = Callable[[Message], bool]


def check_checkpoint_proof(
    config: ReplicaConfig,
    verify: VerifyFn,
    stable_seq: int,
    stable_hash: str,
    proof: Sequence[Checkpoint],
) -> str | None:
    """§4.3: a checkpoint is stable with q matching CHECKPOINTs from distinct replicas. The
    checkpoint 0 is the genesis, proved by nothing but the genesis hash every replica knows."""
    if stable_seq == 0:
        if stable_hash != config.genesis_hash or proof:
            return "bad_genesis_checkpoint"
        return None
    if stable_seq % config.checkpoint_interval:
        return "checkpoint_seq_not_multiple_of_k"
    senders: set[str] = set()
    for checkpoint in proof:
        if (checkpoint.chain_id, checkpoint.seq, checkpoint.block_hash) != (
            config.chain_id,
            stable_seq,
            stable_hash,
        ):
            return "checkpoint_proof_mismatch"
        if not config.is_validator(checkpoint.sender) or checkpoint.sender in senders:
            return "checkpoint_proof_bad_sender"
        if not verify(checkpoint):
            return "checkpoint_proof_bad_signature"
        senders.add(checkpoint.sender)
    if len(senders) < config.q:
        return "checkpoint_proof_short"
    return None


def check_prepared_cert(
    config: ReplicaConfig, verify: VerifyFn, cert: PreparedCert, view_change: ViewChange
) -> str | None:
    """§4.4: P_m holds a valid pre-prepare for (v, n, d) from the primary of v and 2f (q - 1)
    matching PREPAREs from distinct backups, with n above the sender's stable checkpoint."""
    pre_prepare = cert.pre_prepare
    if pre_prepare.chain_id != config.chain_id:
        return "prepared_wrong_chain"
    low = view_change.stable_seq
    if not low < pre_prepare.seq <= low + config.watermark_window:
        return "prepared_outside_watermarks"
    if pre_prepare.view >= view_change.view:
        return "prepared_view_not_older"
    if pre_prepare.sender != config.primary(pre_prepare.view) or not verify(pre_prepare):
        return "prepared_bad_pre_prepare"
    senders: set[str] = set()
    for prepare in cert.prepares:
        if (prepare.chain_id, prepare.view, prepare.seq, prepare.digest) != (
            pre_prepare.chain_id,
            pre_prepare.view,
            pre_prepare.seq,
            pre_prepare.digest,
        ):
            return "prepared_mismatch"
        if (
            not config.is_validator(prepare.sender)
            or prepare.sender == pre_prepare.sender
            or prepare.sender in senders
        ):
            return "prepared_bad_sender"
        if not verify(prepare):
            return "prepared_bad_signature"
        senders.add(prepare.sender)
    if len(senders) < config.q - 1:
        return "prepared_short"
    return None


def check_view_change(
    config: ReplicaConfig, verify: VerifyFn, view_change: ViewChange
) -> str | None:
    """Everything in a VIEW-CHANGE but its own signature (the caller checked that)."""
    if view_change.chain_id != config.chain_id:
        return "wrong_chain"
    reason = check_checkpoint_proof(
        config,
        verify,
        view_change.stable_seq,
        view_change.stable_block_hash,
        view_change.checkpoint_proof,
    )
    if reason is not None:
        return reason
    seqs = [cert.seq for cert in view_change.prepared]
    if len(set(seqs)) != len(seqs):
        return "prepared_duplicate_seq"
    for cert in view_change.prepared:
        reason = check_prepared_cert(config, verify, cert, view_change)
        if reason is not None:
            return reason
    return None


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW must contain, computed from its q VIEW-CHANGEs (§4.4)."""

    min_s: int  # the latest stable checkpoint among the VIEW-CHANGEs
    stable_block_hash: str
    checkpoint_proof: tuple[Checkpoint, ...]
    proposals: tuple[tuple[int, str], ...]  # (seq, digest) for every seq in (min_s, max_s]


def plan_new_view(config: ReplicaConfig, view_changes: Iterable[ViewChange]) -> NewViewPlan:
    """§4.4: min-s is the latest stable checkpoint in V and max-s the highest prepared seq; each
    seq between them is re-proposed with the digest prepared in the highest view, or a null
    batch if no VIEW-CHANGE holds a prepared certificate for it."""
    changes = list(view_changes)
    best = max(changes, key=lambda vc: vc.stable_seq)
    min_s = best.stable_seq
    chosen: dict[int, tuple[int, str]] = {}
    for vc in changes:
        for cert in vc.prepared:
            if cert.seq > min_s:
                # Two valid certificates for one (view, seq) with different digests need more than f
                # faulty replicas; the max keeps the choice deterministic even then.
                chosen[cert.seq] = max(chosen.get(cert.seq, (-1, "")), (cert.view, cert.digest))
    max_s = max(chosen, default=min_s)
    proposals = tuple(
        (seq, chosen[seq][1] if seq in chosen else Batch.null(config.chain_id, seq).digest)
        for seq in range(min_s + 1, max_s + 1)
    )
    return NewViewPlan(min_s, best.stable_block_hash, best.checkpoint_proof, proposals)
