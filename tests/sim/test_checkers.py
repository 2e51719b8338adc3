"""The safety checkers bite: each property, broken on purpose in a finished run's ledgers, is
reported. (The negative control shows the same for a real fork.)"""

from __future__ import annotations

import dataclasses

import pytest

from consensus.batch import Batch
from consensus.output import Certificate, Committed
from consensus.sim import Simulation, scenario_for_seed
from consensus.sim.checkers import SafetyChecker
from consensus.sim.keys import forge_tx, with_bad_sig

SEED = 2  # a run without Byzantine replicas that commits many batches


@pytest.fixture()
def sim() -> Simulation:
    simulation = Simulation(scenario_for_seed(SEED))
    assert simulation.run().ok
    return simulation


def _checker(sim: Simulation, forged: set[str] | None = None) -> SafetyChecker:
    return SafetyChecker(sim.config, sim.verifier, sim.tx_checker, forged or set(), sim.hosts)


def _replace_batch(sim: Simulation, host: int, seq: int, batch: Batch) -> None:
    ledger = sim.hosts[host].ledger
    ledger[seq - 1] = dataclasses.replace(ledger[seq - 1], batch=batch)


def _with_txs(batch: Batch, txs: tuple) -> Batch:  # type: ignore[type-arg]
    return Batch(batch.chain_id, batch.seq, batch.time_ms, txs)


def test_a_clean_run_passes(sim: Simulation) -> None:
    checker = _checker(sim)
    assert checker.check(1) == [] and checker.check_prefixes() == []


def test_a_fork_is_reported(sim: Simulation) -> None:
    batch = sim.hosts[1].ledger[0].batch
    _replace_batch(sim, 1, 1, _with_txs(batch, batch.txs[:-1]))
    found = _checker(sim).check(1)
    assert any("AGREEMENT violated" in v and "host 1 seq 1" in v for v in found), found


def test_ledgers_that_are_not_prefixes_are_reported(sim: Simulation) -> None:
    ledger = sim.hosts[2].ledger
    ledger[0], ledger[1] = ledger[1], ledger[0]
    checker = _checker(sim)
    assert any("not contiguous" in v for v in checker.check(1))
    assert any("hosts 0 and 2 are not prefixes" in v for v in checker.check_prefixes())


def test_an_uncertified_block_is_reported(sim: Simulation) -> None:
    ledger = sim.hosts[0].ledger
    certificate = ledger[0].certificate
    few = dict(list(certificate.signatures.items())[: sim.config.q - 1])
    ledger[0] = Committed(ledger[0].batch, Certificate(certificate.view, few))
    assert any("without a valid commit certificate" in v for v in _checker(sim).check(1))


def test_a_transaction_without_its_clients_signature_is_reported(sim: Simulation) -> None:
    batch = sim.hosts[0].ledger[0].batch
    _replace_batch(sim, 0, 1, _with_txs(batch, (with_bad_sig(batch.txs[0], "ab" * 64),)))
    found = _checker(sim).check(1)
    assert any("without its client's signature" in v for v in found), found


def test_a_forged_transaction_is_reported(sim: Simulation) -> None:
    forged = forge_tx(sim.clients[0], sim.hosts[0].signer, 10**9, "k0")
    batch = sim.hosts[0].ledger[0].batch
    _replace_batch(sim, 0, 1, _with_txs(batch, (*batch.txs, forged)))
    found = _checker(sim, {forged.tx_id}).check(1)
    assert any("executed forged transaction" in v for v in found), found


def test_a_transaction_executed_twice_is_reported(sim: Simulation) -> None:
    host = sim.hosts[3]
    host.executed.append(host.executed[0])
    assert any("executed twice" in v for v in _checker(sim).check(1))
