"""The seeded adversarial simulator (in the manner of TigerBeetle's VOPR).

One seed names one whole run: a cluster of real ``consensus.replica.Replica`` objects driven by a
virtual clock through a seeded network that loses, delays, reorders, duplicates, partitions and
clogs; Byzantine replicas (``byzantine``) and twins; clients submitting signed and forged
transactions. Checkers (``checkers``) verify safety after every tick and liveness after the fault
window. Pure like the rest of ``consensus``: no I/O, no clock, only ``random.Random(seed)``.

Modules, one job each: ``keys`` (fake and real signatures), ``network``, ``faults`` (the fault
plan), ``lone_certificate`` (a scripted network schedule), ``hosts`` (a node around a replica),
``byzantine``, ``clients``, ``checkers``, ``scenario`` (what a seed simulates, and the liveness
bound), ``simulator`` (the loop), ``__main__`` (the ``scripts/sim`` command).
"""

from consensus.sim.scenario import Scenario, negative_control_scenario, scenario_for_seed
from consensus.sim.simulator import SimResult, Simulation, run_seed

__all__ = [
    "Scenario",
    "SimResult",
    "Simulation",
    "negative_control_scenario",
    "run_seed",
    "scenario_for_seed",
]
