"""The lone-certificate schedule (consensus/sim/lone_certificate.py): what its scripted network
loses in each phase, and that seeds drawing it run only while the fault window lasts. That the
sweep reaches the split it aims at, and that this kills the `plan_lowest_view` mutant, is in
tests/sim/test_seeds.py (it needs the sweep's results)."""

from __future__ import annotations

import dataclasses

from consensus.sim import scenario_for_seed
from consensus.sim.lone_certificate import LoneCertificate, Target
from consensus.sim.network import ConsensusWire, Relay
from consensus.sim.simulator import Simulation


def _schedule() -> tuple[Simulation, LoneCertificate]:
    scenario = dataclasses.replace(scenario_for_seed(3), byzantine={}, lone_certificate_tick=1)
    sim = Simulation(scenario)
    assert sim.lone is not None and sim.network.drop_rule == sim.lone.drops
    return sim, sim.lone


def _vote(kind: str, view: int, seq: int) -> ConsensusWire:
    return ConsensusWire({"type": kind, "view": view, "seq": seq, "digest": "ab" * 32})


def test_arming_picks_the_primary_of_v_plus_2_as_the_lone_holder() -> None:
    sim, lone = _schedule()
    assert lone.phase == "waiting"
    lone.step(1)
    assert lone.phase == "lone"
    t = lone._target
    assert t is not None and t.view == 0 and t.seq is None
    assert sim.config.primary(t.view + 2) == sim.hosts[t.holder].key
    # The first PREPARE of v for a seq nobody executed names s.
    lone.observe(1, _vote("prepare", 0, 1).wire)
    assert lone._target == Target(0, t.holder, 1)


def test_phase_lone_delivers_the_prepares_of_the_seq_to_the_holder_only() -> None:
    _, lone = _schedule()
    lone.phase, lone._target = "lone", Target(view=3, holder=1, seq=7)
    assert lone.drops(0, 2, _vote("prepare", 3, 7))
    assert not lone.drops(0, 1, _vote("prepare", 3, 7))  # to the holder
    assert not lone.drops(0, 2, _vote("prepare", 3, 8))  # another seq
    assert not lone.drops(0, 2, _vote("prepare", 4, 7))  # another view
    assert not lone.drops(0, 2, _vote("commit", 3, 7))


def test_phase_hidden_cuts_the_holder_off_and_loses_later_commits_of_the_seq() -> None:
    _, lone = _schedule()
    lone.phase, lone._target = "hidden", Target(view=3, holder=1, seq=7, digest="cd" * 32)
    assert lone.drops(1, 2, _vote("view_change", 4, 0))
    assert lone.drops(2, 1, Relay(()))
    assert lone.drops(0, 2, _vote("commit", 4, 7))
    assert not lone.drops(0, 2, _vote("commit", 4, 6))
    assert not lone.drops(0, 2, _vote("prepare", 4, 7))  # the others prepare D2 in w


def test_phase_reveal_keeps_the_old_new_views_from_the_holder() -> None:
    _, lone = _schedule()
    lone.phase, lone._target = "reveal", Target(view=3, holder=1, seq=7, digest="cd" * 32)
    lone._w = 4
    assert not lone.drops(1, 2, _vote("view_change", 5, 0))  # the holder is back
    assert lone.drops(0, 1, _vote("new_view", 4, 0))
    assert not lone.drops(0, 1, _vote("new_view", 5, 0))
    assert not lone.drops(0, 2, _vote("new_view", 4, 0))
    assert lone.drops(0, 2, _vote("commit", 4, 7))
    lone.stop()
    assert not lone.drops(0, 2, _vote("commit", 4, 7))


def test_the_heal_ends_the_schedule() -> None:
    sim, lone = _schedule()
    sim.network.heal(5)
    assert sim.network.drop_rule is None
    sim._heal()
    assert lone.phase == "done"
