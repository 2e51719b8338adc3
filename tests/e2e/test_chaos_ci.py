"""The CI subset of the chaos scenarios (issue 14), on real processes in network namespaces:
a Byzantine primary, delay with loss, and twins with their negative control (the partition of
the primary is tests/e2e/test_chaos_partition.py). The rest runs with ``scripts/chaos``. Each
scenario is shortened (a few seconds per phase) so that the whole subset stays within about
three minutes on two busy cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adversary.linearizability import Verdict
from tests.adversary.netns import ensure_nftables, unavailable_reason
from tests.adversary.scenario import RECOVERY_BOUND_S, run_named
from tests.adversary.twins import run_twins

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REASON = unavailable_reason()


@pytest.fixture(autouse=True)
def _namespaces() -> None:
    if REASON is not None:
        pytest.skip(REASON)
    reason = ensure_nftables()
    if reason is not None:
        pytest.skip(reason)


def test_byzantine_equivocating_primary(tmp_path: Path) -> None:
    """The primary sends two batches per slot; every equivocation becomes verified evidence on
    the honest nodes, and nothing forks."""
    report = run_named("byzantine-equivocating-primary", tmp_path, seed=5, fault_s=4, load_s=2)
    print(report.line())
    assert report.passed, (report.line(), report.notes)
    assert report.evidence > 0
    assert report.recovered_after_heal_s is not None
    assert report.recovered_after_heal_s < RECOVERY_BOUND_S


def test_delay_with_loss(tmp_path: Path) -> None:
    """Every link delayed by a relay (no netem here) with 10% loss into every node."""
    report = run_named("delay-loss", tmp_path, seed=5, fault_s=5, load_s=2)
    print(report.line())
    assert report.passed, (report.line(), report.notes)
    assert report.counts["ok"] > 0 and report.proven_reads > 0


def test_twins_one_key_never_fork(tmp_path: Path) -> None:
    """n = 4, f = 1: node3 runs twice, one process on each side of changing partitions."""
    report = run_twins(tmp_path, twinned=(3,), seed=5, phase_s=4)
    print(report.line())
    assert report.fork is None, report.line()
    assert report.linearizable == Verdict.OK.value, report.line()
    assert report.counts["ok"] > 0
    assert set(report.evidence_against) <= {"node3"}, report.line()


def test_twins_two_keys_fork_is_reported(tmp_path: Path) -> None:
    """Negative control: two keys twinned (f + 1 faulty) let both sides commit; the fork check
    must say so (otherwise the test above proves nothing)."""
    report = run_twins(tmp_path, twinned=(2, 3), seed=5, phase_s=4)
    print(report.line())
    assert report.fork is not None, report.line()
