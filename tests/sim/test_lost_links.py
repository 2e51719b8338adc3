"""Lost-link reports in the simulator (consensus/sim/lost_links.py): a crashed primary reported
lost is replaced without waiting for the request timer, and reports that wrongly name a live
primary (often, during the fault window) cost neither safety nor liveness."""

from __future__ import annotations

import dataclasses

from consensus.sim.faults import Crash, Restart
from consensus.sim.lost_links import LOST_AFTER_TICKS
from consensus.sim.scenario import Scenario, scenario_for_seed
from consensus.sim.simulator import START_MS, TICK_MS, Simulation
from tests.sim.runner import failure_report

TIMEOUT = 20


def _crash_primary(lost_links: bool) -> int:
    """Ticks from a crash of the view-0 primary until every other replica is active in view 1,
    with the clients submitting throughout."""
    scenario = Scenario(
        seed=7,
        n=4,
        params={
            "checkpoint_interval": 4,
            "watermark_window": 16,
            "batch_size_max": 4,
            "batch_bytes_max": 4 * 1024 * 1024,
            "pipeline_depth_max": 2,
            "view_change_timeout_ticks": TIMEOUT,
        },
        fault_window_ticks=200,
        clients=3,
        tx_total=150,
        forged_total=0,
        lost_links=lost_links,
    )
    sim = Simulation(scenario)
    crash_tick = 30
    sim.faults = {crash_tick: [Crash(0, None)], 190: [Restart(0)]}
    sim._set_conditions(faulty=True)
    for tick in range(1, 190):
        sim.tick = tick
        assert sim._step() is None
        assert sim.safety.check(tick, START_MS + tick * TICK_MS) == []
        backups = [h.replica for h in sim.hosts[1:]]
        if tick > crash_tick and all(
            r is not None and r.view == 1 and not r.in_view_change for r in backups
        ):
            return tick - crash_tick
    raise AssertionError("the backups never installed view 1")


def test_a_crashed_primary_reported_lost_is_replaced_before_the_timer_fires() -> None:
    with_reports = _crash_primary(lost_links=True)
    without = _crash_primary(lost_links=False)
    assert with_reports <= LOST_AFTER_TICKS + 5, with_reports
    assert without >= TIMEOUT, without  # the request timer: at least one timeout


def test_false_reports_cost_no_safety_and_no_liveness() -> None:
    results = []
    for seed in range(6):
        scenario = dataclasses.replace(
            scenario_for_seed(seed), lost_links=True, lost_link_lie_p=0.1
        )
        results.append(Simulation(scenario).run())
    assert all(r.ok for r in results), failure_report(results)
    assert sum(r.lost_link_lies for r in results) > 100  # the lies were told
