"""The Phalanx key/value state (spec §3) as a sequential model for :mod:`.linearizability`.

One partition per key; the state of a key is ``(value, version)`` with ``value`` as canonical
JSON text (so any JSON value is hashable and compares like Phalanx compares) and ``None``
for an absent key (version 0). Ownership and fees are left out: a chaos run gives each key one
writing client, so ``forbidden`` never happens, and a fee changes no key.

Inputs (:class:`KvInput`) and outputs (:class:`KvOutput`):

=========  ===============================  ==========================================
op         ok                               fail (committed with an error)
=========  ===============================  ==========================================
set        applied: value, version + 1      no effect (e.g. insufficient_fee)
cas        version was ``expect``; applied  version was not ``expect`` (cas_mismatch)
delete     key was present; now absent      key was absent (not_found)
read       answer equals the state          (not used)
=========  ===============================  ==========================================

``status="unknown"`` (a timeout, a broken connection, 503) matches whatever the op would do from
the state: give such an op ``ret=None`` so it may also never take effect. An op that was refused
before it could be ordered (400, 413, 429) definitely did nothing: leave it out of the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from crypto.canonical import canonical_json
from tests.adversary.linearizability import Model

KvState = tuple[str | None, int]
Status = Literal["ok", "fail", "unknown"]
ABSENT: KvState = (None, 0)


@dataclass(frozen=True, slots=True)
class KvInput:
    op: Literal["set", "cas", "delete", "read"]
    key: str
    value: str | None = None  # canonical JSON text (see :func:`json_value`)
    expect: int | None = None  # cas only


@dataclass(frozen=True, slots=True)
class KvOutput:
    status: Status
    value: str | None = None  # read: canonical JSON text, None when absent
    version: int = 0  # read: the version answered (0 when absent)


def json_value(value: Any) -> str:
    """A JSON value as the model holds it: its RFC 8785 text."""
    return canonical_json(value).decode("utf-8")


def _step(state: KvState, inp: KvInput, out: KvOutput) -> tuple[bool, KvState]:
    value, version = state
    if inp.op == "read":
        if out.status != "ok":
            return True, state
        return (out.value, out.version) == state, state
    if inp.op == "set":
        applied = (inp.value, version + 1)
        if out.status == "ok":
            return True, applied
        return True, state if out.status == "fail" else applied
    if inp.op == "cas":
        matches = version == inp.expect
        applied = (inp.value, version + 1) if matches else state
        if out.status == "ok":
            return matches, applied
        if out.status == "fail":
            return not matches, state
        return True, applied
    if inp.op == "delete":
        present = value is not None
        if out.status == "ok":
            return present, ABSENT
        if out.status == "fail":
            return not present, state
        return True, ABSENT
    raise ValueError(f"unknown op {inp.op!r}")


def _describe(inp: KvInput, out: KvOutput) -> str:
    if inp.op == "read":
        answer = "absent" if out.value is None else f"{out.value} v{out.version}"
        return f"read({inp.key}) -> {answer if out.status == 'ok' else out.status}"
    if inp.op == "cas":
        return f"cas({inp.key}, expect v{inp.expect}, {inp.value}) -> {out.status}"
    if inp.op == "set":
        return f"set({inp.key}, {inp.value}) -> {out.status}"
    return f"delete({inp.key}) -> {out.status}"


def _partition(inp: KvInput) -> str:
    return inp.key


KV_MODEL: Model[KvState] = Model(
    init=lambda: ABSENT, step=_step, partition=_partition, describe=_describe
)
