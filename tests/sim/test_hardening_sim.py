"""The simulator's additions for issue 8: restarts during a view change (one, several, all honest
replicas), the checkers of batch times and of honest replicas' evidence, and the new adversaries
in the sweep."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.batch import Batch, Tx
from consensus.config import ReplicaConfig
from consensus.messages import PreparedCert, PrePrepare, ViewChange, sign_message
from consensus.output import Certificate, Committed
from consensus.sim import run_seed, scenario_for_seed
from consensus.sim.adversaries import NEW_KINDS
from consensus.sim.keys import make_tx
from consensus.sim.scenario import TIME_SKEW_MAX_MS
from consensus.sim.simulator import START_MS, Simulation


@pytest.mark.parametrize(("seed", "mode"), [(24, "one"), (19, "several"), (2, "all")])
def test_restarts_during_a_view_change(seed: int, mode: str) -> None:
    scenario = scenario_for_seed(seed)
    honest = [i for i in range(scenario.n) if i not in scenario.byzantine]
    expected = {"one": 1, "all": len(honest)}.get(mode)
    if expected is not None:
        assert len(scenario.view_change_crash) == expected
    else:
        assert 1 < len(scenario.view_change_crash) < len(honest)
    result = run_seed(seed)
    assert result.ok, (result.violations, result.liveness_failures)
    assert result.view_change_restarts == len(scenario.view_change_crash)


def test_the_sweep_draws_the_new_adversaries_and_the_skewed_clocks() -> None:
    scenarios = [scenario_for_seed(seed) for seed in range(500)]
    kinds = {kind for s in scenarios for kind in s.byzantine.values()}
    assert set(NEW_KINDS) <= kinds
    assert sum(1 for s in scenarios if s.clock_skews) > 100
    assert all(abs(ms) <= TIME_SKEW_MAX_MS // 3 for s in scenarios for ms in s.clock_skews.values())
    assert ReplicaConfig("c", "00" * 32, ("k",)).time_skew_max_ms == TIME_SKEW_MAX_MS


def _simulation() -> Simulation:
    return Simulation(dataclasses.replace(scenario_for_seed(3), byzantine={}))


def test_the_checker_refuses_batch_times_going_back_or_from_the_future() -> None:
    sim = _simulation()
    host = sim.hosts[0]
    cert = Certificate(0, {})
    chain = sim.config.chain_id
    now = START_MS + 1_000
    host.ledger.append(Committed(Batch(chain, 1, now, ()), cert))  # null: time not checked
    host.ledger.append(Committed(Batch(chain, 2, now, (_tx(sim),)), cert))
    host.ledger.append(Committed(Batch(chain, 3, now - 1, (_tx(sim, 2),)), cert))
    far = now + sim.config.time_skew_max_ms + 1
    host.ledger.append(Committed(Batch(chain, 4, far, (_tx(sim, 3),)), cert))
    for block in host.ledger:  # each proposed in view 0, where it commits
        digest = block.batch.digest
        sim.safety.observe({"type": "pre_prepare", "view": 0, "digest": digest, "batch": {}})
    found = sim.safety.check(10, now)
    assert any("seq 3: batch time" in v and "before the previous" in v for v in found), found
    assert any("seq 4: batch time" in v and "in the future" in v for v in found), found
    assert not any("seq 2: batch time" in v for v in found)


def _tx(sim: Simulation, nonce: int = 1) -> Tx:
    return make_tx(sim.clients[0], nonce, "k")


def test_the_checker_refuses_invalid_evidence_from_an_honest_replica() -> None:
    """A VIEW-CHANGE that an honest replica sends must be what other honest replicas accept: a
    prepared certificate whose pre-prepare is not from its view's primary is not."""
    sim = _simulation()
    config = sim.config
    signer = sim.hosts[1].signer  # validator 1 is not the primary of view 0
    digest = Batch.null(config.chain_id, 1).digest
    pp = sign_message(signer, PrePrepare(config.chain_id, 0, 1, digest, None))
    vc = ViewChange(config.chain_id, 1, 0, config.genesis_hash, (), (PreparedCert(pp, ()),))
    wire = sign_message(signer, vc).to_wire()
    sim.safety.check_sent(1, wire, 5)
    (found,) = sim.safety.check(5, START_MS)
    assert "host 1 (honest) sent an invalid view_change" in found
    assert "prepared_bad_pre_prepare" in found
    valid = sign_message(signer, ViewChange(config.chain_id, 1, 0, config.genesis_hash, (), ()))
    sim.safety.check_sent(1, valid.to_wire(), 6)
    assert sim.safety.check(6, START_MS) == []
