"""The checker's view of NEW-VIEWs: a NEW-VIEW an honest replica *installs* must be valid
evidence (not only one it sends), and prepared certificates are checked by the checker's own
code, so a weakened ``consensus.view_change`` cannot weaken the oracle."""

from __future__ import annotations

import dataclasses

import pytest

from consensus import view_change
from consensus.batch import Batch
from consensus.messages import NewView, PreparedCert, PrePrepare, ViewChange, sign_message
from consensus.sim import scenario_for_seed
from consensus.sim.simulator import START_MS, Simulation


def _simulation() -> Simulation:
    return Simulation(dataclasses.replace(scenario_for_seed(3), byzantine={}))


def _view_changes(sim: Simulation, view: int) -> tuple[ViewChange, ...]:
    config = sim.config
    return tuple(
        sign_message(h.signer, ViewChange(config.chain_id, view, 0, config.genesis_hash, (), ()))
        for h in sim.hosts[: config.q]
    )


def _new_view(sim: Simulation, view: int, vcs: tuple[ViewChange, ...], seqs: int) -> NewView:
    config = sim.config
    primary = next(h for h in sim.hosts if h.key == config.primary(view))
    pps = tuple(
        sign_message(
            primary.signer,
            PrePrepare(config.chain_id, view, s, Batch.null(config.chain_id, s).digest, None),
        )
        for s in range(1, seqs + 1)
    )
    return sign_message(primary.signer, NewView(config.chain_id, view, vcs, pps))


def test_an_installed_new_view_must_hold_what_its_view_changes_imply() -> None:
    sim = _simulation()
    vcs = _view_changes(sim, 1)
    sim.safety.check_installed(2, _new_view(sim, 1, vcs, 0).to_wire(), 7)
    assert sim.safety.check(7, START_MS) == []
    # A null re-proposal no VIEW-CHANGE implies: a faulty primary chose what the view holds.
    sim.safety.check_installed(2, _new_view(sim, 1, vcs, 1).to_wire(), 8)
    (found,) = sim.safety.check(8, START_MS)
    assert "host 2 (honest) installed an invalid new_view for view 1" in found
    assert "re-proposals differ" in found


def test_an_installed_new_view_with_an_altered_view_change_is_reported() -> None:
    sim = _simulation()
    vcs = list(_view_changes(sim, 1))
    vcs[0] = dataclasses.replace(vcs[0], stable_block_hash="ab" * 32)  # its signature now fails
    sim.safety.check_installed(2, _new_view(sim, 1, tuple(vcs), 0).to_wire(), 7)
    (found,) = sim.safety.check(7, START_MS)
    assert "installed an invalid new_view" in found and "VIEW-CHANGE of" in found


def test_a_certificate_without_prepares_is_refused_even_if_view_change_accepts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = _simulation()
    config = sim.config
    primary = next(h for h in sim.hosts if h.key == config.primary(0))
    digest = Batch.null(config.chain_id, 1).digest
    pp = sign_message(primary.signer, PrePrepare(config.chain_id, 0, 1, digest, None))
    vc = ViewChange(config.chain_id, 1, 0, config.genesis_hash, (), (PreparedCert(pp, ()),))
    wire = sign_message(primary.signer, vc).to_wire()
    # The replica's own check weakened (as the prepared_cert_short mutant does): still caught.
    monkeypatch.setattr(view_change, "check_prepared_cert", lambda *_: None)
    sim.safety.check_sent(0, wire, 5)
    (found,) = sim.safety.check(5, START_MS)
    assert "sent an invalid view_change" in found and "0 valid PREPAREs" in found


def test_the_simulator_checks_every_new_view_an_honest_replica_installs() -> None:
    sim = Simulation(scenario_for_seed(58))  # a Byzantine new primary; views change
    seen: list[int] = []
    original = sim.safety.check_installed

    def spy(index: int, wire: dict, tick: int) -> None:  # type: ignore[type-arg]
        seen.append(wire["view"])
        original(index, wire, tick)

    sim.safety.check_installed = spy  # type: ignore[method-assign]
    result = sim.run()
    assert result.ok, result.violations
    assert max(result.views) > 0 and seen and min(seen) > 0
