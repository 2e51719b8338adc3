"""The seed sweep: every seed must keep safety after every tick and liveness after the faults.

A failing seed is reported with its scenario and the command that replays it alone; fix the
bug, then pin the seed in REGRESSION_SEEDS with a note of what it found."""

from __future__ import annotations

import pytest

from consensus.sim import SimResult, run_seed, scenario_for_seed
from consensus.sim.scenario import BYZANTINE_CHOICES, TWIN
from tests.sim.runner import failure_report, run_seeds
from tests.sim.test_mutants import mutants

SWEEP_SEEDS = range(0, 500)
CHUNK = 50
ED25519_SEEDS = (1, 2, 3, 6, 9)  # real signatures: a Byzantine forger, crashes, n = 7

# Seeds that once failed, with what they found. They run on every change.
REGRESSION_SEEDS = {
    11: (
        "ForgingReplica answered a BATCH-REQUEST with the batch's transactions carrying forged "
        "signatures (same tx_ids, so the same digest) and replicas executed them. Fixed: batches "
        "fetched by digest and blocks fetched by state transfer have their transactions checked "
        "(Replica._txs_signed)."
    ),
    55: (
        "A tx_id committed at two seqs: prepared at seq 4 in view 2, batched again at seq 2 in "
        "view 4 (whose VIEW-CHANGE quorum held no certificate for seq 4), both re-proposed later. "
        "Spec §3 allows it (the repeat is recorded as duplicate, not executed): the checker now "
        "follows that rule and counts repeats."
    ),
    0: (
        "A replica that missed the last COMMITs before traffic stopped never executed the last "
        "requests: no further checkpoint came. Fixed: idle replicas announce their executed head "
        "(Replica._announce_head); f + 1 matching ones trigger a state transfer."
    ),
    42: "Same as seed 0, for a replica that had not even seen the request (pending 0).",
    448: (
        "Simulator bug: a crashed host admitted client requests into its pool, so after its "
        "restart the retransmissions were deduplicated away and never reached the replica."
    ),
    493: (
        "Three honest replicas stuck in view changes for good: one timed out of view 1 into view "
        "2 before its VIEW-CHANGE for view 1 reached the others, who waited for q VIEW-CHANGEs "
        "for view 1. Fixed: the timer counts VIEW-CHANGEs for our view or a higher one "
        "(Replica._view_change_support)."
    ),
    2398: (
        "A replica stuck in view 1 while the others ran in view 5: its VIEW-CHANGE for an old view "
        "got no answer. Fixed (Replica._help_laggard): the primary of the current view answers a "
        "VIEW-CHANGE for any older view with its NEW-VIEW."
    ),
    26487: (
        "Two honest replicas never executed the last seq: the only honest replica ahead of them "
        "announced its head, the faulty one a wrong hash, so f + 1 never agreed. Fixed: after a "
        "timeout without progress, a lone claim is tried (Replica._transfer_target)."
    ),
    26604: "Same as seed 26487, with K = 2 and the faulty replica in another seat.",
    29766: (
        "Same fix, no lie needed: the honest replicas ahead had stopped at different seqs (2 and "
        "3), so no f + 1 of them announced the same head."
    ),
}


@pytest.fixture(scope="module")
def sweep() -> dict[int, SimResult]:
    return run_seeds(SWEEP_SEEDS)


@pytest.mark.parametrize("start", range(SWEEP_SEEDS.start, SWEEP_SEEDS.stop, CHUNK))
def test_seed_sweep(sweep: dict[int, SimResult], start: int) -> None:
    results = [sweep[seed] for seed in range(start, start + CHUNK)]
    report = failure_report(results)
    assert not report, f"failing seeds:\n{report}"


@pytest.mark.parametrize("seed", sorted(REGRESSION_SEEDS))
def test_regression_seed(seed: int) -> None:
    result = run_seed(seed)
    assert result.ok, f"{REGRESSION_SEEDS[seed]}\n{failure_report([result])}"


def test_real_ed25519_seeds() -> None:
    """The fake HMAC signatures must not hide anything: a few seeds with real Ed25519."""
    results = run_seeds(ED25519_SEEDS, ed25519=True)
    assert not failure_report(results.values(), " --ed25519"), failure_report(
        results.values(), " --ed25519"
    )


def test_the_sweep_covers_every_fault() -> None:
    """The 500 seeds draw every Byzantine kind, every cluster size and every fault type."""
    scenarios = [scenario_for_seed(seed) for seed in SWEEP_SEEDS]
    kinds = {kind for s in scenarios for kind in s.byzantine.values()}
    assert kinds == set(BYZANTINE_CHOICES)
    assert {s.n for s in scenarios} == {4, 5, 7}
    assert any(len(s.byzantine) == 2 for s in scenarios), "f = 2 Byzantine replicas in n = 7"
    for fault in (
        "loss_p",
        "duplicate_p",
        "delay_ticks_max",
        "partitions",
        "clogs",
        "crashes",
        "lone_certificate_tick",
    ):
        assert sum(1 for s in scenarios if getattr(s, fault)) > 50, fault


SPLIT_SEEDS_MIN = 10  # seeds 0-299 held 24 such seeds when the schedule was added


def test_the_sweep_splits_a_seq_between_two_certificates(sweep: dict[int, SimResult]) -> None:
    """The lone-certificate schedule makes some NEW-VIEWs carry, for one seq, certificates for
    different batches from different views: the only place where OSDI'99 §4.4's "highest view"
    rule matters. On the first such seed with a Byzantine replica (the seeds scripts/mutants
    runs), a plan that picks the lowest view is caught: the run with the `plan_lowest_view`
    mutant is identical until that NEW-VIEW, whose re-proposals the checker refuses."""
    split = [seed for seed, result in sorted(sweep.items()) if result.split_new_views]
    scheduled = [seed for seed in split if scenario_for_seed(seed).lone_certificate_tick]
    assert len(scheduled) >= SPLIT_SEEDS_MIN, (scheduled, split)
    seed = next(
        s for s in split if any(kind != TWIN for kind in scenario_for_seed(s).byzantine.values())
    )
    (mutant,) = [m for m in mutants.MUTANTS if m.name == "plan_lowest_view"]
    outcome = mutants.run_mutant(mutant, seeds=1, start=seed)
    assert outcome.killed and f"seed {seed}" in outcome.detail, outcome.detail
    assert "re-proposals differ" in outcome.detail, outcome.detail
