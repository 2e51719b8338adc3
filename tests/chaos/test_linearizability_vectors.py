"""The checker reproduces every verdict of shared/vectors/linearizability (Porcupine's test data:
102 Jepsen etcd register histories and 6 key/value histories), both ways."""

from __future__ import annotations

import json

import pytest

from tests.adversary.linearizability import Verdict, check_operations
from tests.chaos.vectors import ETCD_MODEL, KV_APPEND_MODEL, VECTORS, parse_etcd, parse_kv

if not VECTORS.is_dir():  # pragma: no cover - the shared folder is beside every clone
    pytest.skip(f"no linearizability vectors at {VECTORS}", allow_module_level=True)

EXPECTED = json.loads((VECTORS / "expected_verdicts.json").read_text())


def _verdict(ok: bool) -> Verdict:
    return Verdict.OK if ok else Verdict.ILLEGAL


def test_every_etcd_verdict() -> None:
    cases = EXPECTED["etcd_register"]
    assert len(cases) == 102
    wrong = {}
    for name, linearizable in cases.items():
        result = check_operations(ETCD_MODEL, parse_etcd(VECTORS / name), timeout_s=20)
        if result.verdict is not _verdict(linearizable):
            wrong[name] = result.verdict
    assert not wrong
    assert sum(cases.values()) == 23  # both verdicts are exercised


@pytest.mark.parametrize("name", sorted(EXPECTED["kv_append"]))
def test_kv_verdict(name: str) -> None:
    ops = parse_kv(VECTORS / name)
    result = check_operations(KV_APPEND_MODEL, ops, timeout_s=20)
    assert result.verdict is _verdict(EXPECTED["kv_append"][name])
    assert len(result.partitions) == len({op.input[1] for op in ops})  # one per key


def test_illegal_partition_decides_before_a_costly_one() -> None:
    # c50-bad holds keys whose proof of linearizability costs millions of steps, and keys
    # found illegal in thousands: taking turns finds the latter within a small budget.
    result = check_operations(
        KV_APPEND_MODEL, parse_kv(VECTORS / "kv/c50-bad.txt"), steps_max=400_000
    )
    assert result.verdict is Verdict.ILLEGAL
    failed = [p for p in result.partitions if p.verdict is Verdict.ILLEGAL]
    assert failed and "NOT linearizable" in failed[0].explain(KV_APPEND_MODEL)


def test_budget_gives_unknown_not_a_hang() -> None:
    ops = parse_kv(VECTORS / "kv/c50-ok.txt")
    result = check_operations(KV_APPEND_MODEL, ops, steps_max=50_000)
    assert result.verdict is Verdict.UNKNOWN
    assert result.steps <= 50_000 + 16 * 4_096 * 10  # one slice per partition at most beyond
    timed = check_operations(KV_APPEND_MODEL, ops, timeout_s=0.05)
    assert timed.verdict is Verdict.UNKNOWN
    assert timed.elapsed_s < 2.0
