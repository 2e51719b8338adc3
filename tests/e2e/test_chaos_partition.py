"""The first chaos scenario on real processes in network namespaces (issue 14): four nodes, the
primary cut off for a while under client load, then healed. The recorded history must be
linearizable (plain reads: sequentially consistent per node), the ledgers equal, the audit clean,
no evidence raised, and commits must resume during the partition. Negative control: one altered
read in the same recorded history is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.adversary.history import History
from tests.adversary.kv_model import KV_MODEL, KvOutput, json_value
from tests.adversary.linearizability import Verdict, check_operations
from tests.adversary.netns import ensure_nftables, unavailable_reason
from tests.adversary.scenario import run_partition_primary

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REASON = unavailable_reason()


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_partition_of_the_primary(tmp_path: Path) -> None:
    reason = ensure_nftables()
    if reason is not None:
        pytest.skip(reason)
    report = run_partition_primary(tmp_path / "run", seed=3, fault_s=6.0, load_s=2.0)
    print(report.line())
    assert report.passed, (report.line(), report.notes)
    assert report.counts["ok"] > 0
    assert report.resumed_after_fault_s is not None and report.resumed_after_fault_s < 30

    history = History.read_jsonl(tmp_path / "run" / "history.jsonl")
    strong = [e for e in history.entries if e.read_kind == "min_seq" and e.output is not None]
    strong = [e for e in strong if e.output is not None and e.output.status == "ok"]
    assert strong, "no min_seq read completed"
    victim = strong[-1]
    victim.output = dataclasses.replace(
        victim.output or KvOutput("ok"), value=json_value("never written"), version=99
    )
    assert check_operations(KV_MODEL, history.strong()).verdict is Verdict.ILLEGAL
