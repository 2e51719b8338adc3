"""The replica's durable records: key scheme and encoding (persist-before-send).

Keys (a key written again replaces the old value):

    view                        {"view", "active"}         current view; active False while changing
    stable                      {"stable_seq", "block_hash", "proof"}   last stable checkpoint
    view_change                 {"message"}                the last VIEW-CHANGE we sent
    new_view                    {"message"}                the last NEW-VIEW we sent (as primary)
    seq/<seq:016d>/pre_prepare  {"seq", "message"}         the pre-prepare we accepted or sent
    seq/<seq:016d>/prepare      {"seq", "message"}         our PREPARE (latest view)
    seq/<seq:016d>/commit       {"seq", "message"}         our COMMIT (latest view)
    seq/<seq:016d>/prepared     {"seq", "certificate"}     highest-view prepared certificate
    seq/<seq:016d>/checkpoint   {"seq", "message"}         our CHECKPOINT
    batch/<digest>              {"seq", "batch"}           a batch we hold (any view), by digest

Batches are kept apart from the pre-prepares, by digest, so that accepting a NEW-VIEW's
pre-prepare (digest only) never overwrites the only durable copy of a batch that may be prepared
somewhere: a batch record lives until its seq falls below the stable checkpoint.

Per-seq values carry an integer ``"seq"`` field and the others do not: the ledger store deletes
exactly the records whose value's ``seq`` is below ``Output.discard_below`` (``ledger.store``).
Only the latest view matters per seq because views never go back and ``view`` is written before
anything signed in a new view.
"""

from __future__ import annotations

from typing import Any

from consensus.output import Record

KEY_VIEW = "view"
KEY_STABLE = "stable"
KEY_VIEW_CHANGE = "view_change"
KEY_NEW_VIEW = "new_view"

PHASE_PRE_PREPARE = "pre_prepare"
PHASE_PREPARE = "prepare"
PHASE_COMMIT = "commit"
PHASE_PREPARED = "prepared"
PHASE_CHECKPOINT = "checkpoint"


BATCH_PREFIX = "batch/"


def batch_key(digest: str) -> str:
    return f"{BATCH_PREFIX}{digest}"


def parse_batch_key(key: str) -> str | None:
    """The digest named by a batch record's key, or None for another key."""
    return key[len(BATCH_PREFIX) :] if key.startswith(BATCH_PREFIX) else None


def batch_record(seq: int, digest: str, batch_wire: dict[str, Any]) -> Record:
    return Record(batch_key(digest), {"seq": seq, "batch": batch_wire})


def seq_key(seq: int, phase: str) -> str:
    return f"seq/{seq:016d}/{phase}"


def parse_seq_key(key: str) -> tuple[int, str] | None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "seq" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


def seq_record(seq: int, phase: str, field: str, value: dict[str, Any]) -> Record:
    return Record(seq_key(seq, phase), {"seq": seq, field: value})


def view_record(view: int, active: bool) -> Record:
    return Record(KEY_VIEW, {"view": view, "active": active})
