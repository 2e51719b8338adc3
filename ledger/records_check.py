"""Verification of the consensus records: what a node signed and must not forget (issue 8, 7).

LMDB has no checksums: a flipped byte inside a stored PRE-PREPARE, vote or batch reads back as
plausible data, and a replica restarting from it could sign from a state nobody can vouch for.
Every record is checked against its key scheme (``consensus.records``): it decodes; each signed
message inside (our votes, checkpoints, VIEW-CHANGE, NEW-VIEW, the certificates we keep) carries
a valid signature of a validator of this chain; a batch matches its header (``tx_count``,
``tx_root``) and the digest its key names. The start-up checks (``ledger.store``) refuse to
start on any problem; ``phalanx audit`` reports them beside the ledger's own failures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consensus import records as rec
from consensus.errors import MalformedMessage
from consensus.messages import (
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode_batch,
    decode_checkpoint,
    decode_message,
    decode_prepared_cert,
    verify_message,
)
from consensus.output import Record
from crypto.hexcodec import HASH_HEX_LEN, is_hex
from crypto.signing import Verifier

_PHASE_TYPES: dict[str, type[Message]] = {
    rec.PHASE_PRE_PREPARE: PrePrepare,
    rec.PHASE_PREPARE: Prepare,
    rec.PHASE_COMMIT: Commit,
    rec.PHASE_CHECKPOINT: Checkpoint,
}


@dataclass(frozen=True, slots=True)
class RecordProblem:
    key: str
    detail: str

    def __str__(self) -> str:
        return f"consensus record {self.key!r}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "detail": self.detail}


class _Damaged(Exception):
    pass


def check_records(
    records: Iterable[Record],
    chain_id: str,
    validators: Sequence[str],
    verifier: Verifier,
) -> list[RecordProblem]:
    """Every problem found in ``records`` (empty: all sound)."""
    checker = _Checker(chain_id, frozenset(validators), verifier)
    problems: list[RecordProblem] = []
    for record in records:
        try:
            checker.check(record)
        except _Damaged as exc:
            problems.append(RecordProblem(record.key, str(exc)))
        except (MalformedMessage, KeyError, TypeError, ValueError, AttributeError) as exc:
            problems.append(RecordProblem(record.key, f"does not decode ({exc})"))
    return problems


@dataclass(frozen=True, slots=True)
class _Checker:
    chain_id: str
    validators: frozenset[str]
    verifier: Verifier

    def check(self, record: Record) -> None:
        key, value = record.key, record.value
        if not isinstance(value, dict):
            raise _Damaged("the value is not an object")
        if key == rec.KEY_VIEW:
            if not _is_int(value["view"]) or not isinstance(value["active"], bool):
                raise _Damaged("view must be an integer and active a boolean")
        elif key == rec.KEY_STABLE:
            self._check_stable(value)
        elif key == rec.KEY_VIEW_CHANGE:
            self._signed(decode_message(value["message"]), ViewChange)
        elif key == rec.KEY_NEW_VIEW:
            self._signed(decode_message(value["message"]), NewView)
        elif (digest := rec.parse_batch_key(key)) is not None:
            batch = decode_batch(value["batch"])  # checks tx_count and tx_root
            if batch.digest != digest:
                raise _Damaged(f"the batch's header digest is {batch.digest}, not its key's")
            if value["seq"] != batch.seq:
                raise _Damaged(f"seq {value['seq']} but the batch is for seq {batch.seq}")
        elif (parsed := rec.parse_seq_key(key)) is not None:
            self._check_seq(parsed[0], parsed[1], value)
        else:
            raise _Damaged("unknown key")

    def _check_stable(self, value: dict[str, Any]) -> None:
        seq, block = value["stable_seq"], value["block_hash"]
        if not _is_int(seq) or not isinstance(block, str) or not is_hex(block, HASH_HEX_LEN):
            raise _Damaged("stable_seq must be an integer and block_hash a hash")
        for wire in value["proof"]:
            checkpoint = decode_checkpoint(wire)
            if (checkpoint.seq, checkpoint.block_hash) != (seq, block):
                raise _Damaged(f"a CHECKPOINT of the proof is for seq {checkpoint.seq}")
            self._signed(checkpoint, Checkpoint)

    def _check_seq(self, seq: int, phase: str, value: dict[str, Any]) -> None:
        if value["seq"] != seq:
            raise _Damaged(f"holds seq {value['seq']}")
        if phase == rec.PHASE_PREPARED:
            cert = decode_prepared_cert(value["certificate"])
            if cert.seq != seq:
                raise _Damaged(f"the certificate is for seq {cert.seq}")
            self._signed(cert.pre_prepare, PrePrepare)
            for prepare in cert.prepares:
                if (prepare.view, prepare.seq, prepare.digest) != (cert.view, seq, cert.digest):
                    raise _Damaged("a PREPARE does not match the certificate's pre-prepare")
                self._signed(prepare, Prepare)
            return
        expected = _PHASE_TYPES.get(phase)
        if expected is None:
            raise _Damaged(f"unknown phase {phase!r}")
        message = decode_message(value["message"])
        self._signed(message, expected)
        if getattr(message, "seq", None) != seq:
            raise _Damaged(f"the message is for seq {getattr(message, 'seq', None)}")
        # Records from before batches had their own key carry the batch here.
        if (
            isinstance(message, PrePrepare)
            and message.batch is not None
            and message.batch.digest != message.digest
        ):
            raise _Damaged("the batch does not match the pre-prepare's digest")

    def _signed(self, message: Message, expected: type[Message]) -> None:
        if not isinstance(message, expected):
            raise _Damaged(f"holds a {message.TYPE}, not a {expected.TYPE}")
        if message.chain_id != self.chain_id:
            raise _Damaged(f"the {message.TYPE} is for chain {message.chain_id!r}")
        if message.sender not in self.validators:
            raise _Damaged(f"the {message.TYPE} is signed by {message.sender}, not a validator")
        if not verify_message(self.verifier, message):
            raise _Damaged(f"the {message.TYPE}'s signature by {message.sender} does not verify")
        if isinstance(message, ViewChange):
            self._check_view_change(message)
        elif isinstance(message, NewView):
            for vc in message.view_changes:
                self._signed(vc, ViewChange)
            for pre_prepare in message.pre_prepares:
                self._signed(pre_prepare, PrePrepare)

    def _check_view_change(self, vc: ViewChange) -> None:
        for checkpoint in vc.checkpoint_proof:
            self._signed(checkpoint, Checkpoint)
        for cert in vc.prepared:
            self._signed(cert.pre_prepare, PrePrepare)
            for prepare in cert.prepares:
                self._signed(prepare, Prepare)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def first_problem(problems: Sequence[RecordProblem]) -> str | None:
    """A message naming the damage: the first problem and how many there are in all."""
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more damaged records)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"
