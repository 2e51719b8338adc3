"""The fault plan: which faults happen when, inside the fault window, drawn from one rng.

* partitions: symmetric (two sides that cannot talk) or one-way (one side is not heard);
* clogs: links clogged one by one, then restored one by one in a random order; a clogged link
  holds its packets and releases them late (FoundationDB-style "clogging");
* crashes: an honest host is killed and later restarted from its records and ledger.

At the end of the window the simulator heals everything (``Network.heal``, restarts).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from consensus.sim.network import Link


@dataclass(frozen=True, slots=True)
class Partition:
    side_a: tuple[int, ...]
    side_b: tuple[int, ...]
    one_way: bool  # only side_a -> side_b is cut


@dataclass(frozen=True, slots=True)
class EndPartition:
    pass


@dataclass(frozen=True, slots=True)
class Clog:
    link: Link


@dataclass(frozen=True, slots=True)
class Unclog:
    link: Link


@dataclass(frozen=True, slots=True)
class Crash:
    host: int
    torn: float | None  # None: between two steps; else inside one, after this share of sends


@dataclass(frozen=True, slots=True)
class Restart:
    host: int


Fault = Partition | EndPartition | Clog | Unclog | Crash | Restart


def plan_faults(
    rng: random.Random,
    hosts: int,
    crashable: list[int],
    window: int,
    partitions: int,
    clogs: int,
    crashes: int,
) -> dict[int, list[Fault]]:
    """Tick -> the faults that start at that tick, all strictly inside (0, window)."""
    plan: dict[int, list[Fault]] = {}

    def at(tick: int, fault: Fault) -> None:
        plan.setdefault(min(max(tick, 1), window - 1), []).append(fault)

    for _ in range(partitions):
        start = rng.randrange(1, window)
        at(start, _random_partition(rng, hosts))
        at(start + rng.randint(5, max(5, window // 2)), EndPartition())
    if clogs:
        links = [(a, b) for a in range(hosts) for b in range(hosts) if a != b]
        chosen = rng.sample(links, min(clogs, len(links)))
        tick = rng.randrange(1, window)
        for link in chosen:  # one by one...
            at(tick, Clog(link))
            tick += rng.randint(1, 10)
        rng.shuffle(chosen)
        for link in chosen:  # ...then restored in a random order
            tick += rng.randint(1, 20)
            at(tick, Unclog(link))
    for _ in range(crashes if crashable else 0):
        victim = rng.choice(crashable)
        start = rng.randrange(1, window)
        torn = rng.choice((None, rng.random()))
        at(start, Crash(victim, torn))
        at(start + rng.randint(1, max(1, window // 3)), Restart(victim))
    return plan


def _random_partition(rng: random.Random, hosts: int) -> Partition:
    members = list(range(hosts))
    rng.shuffle(members)
    cut = rng.randint(1, hosts - 1)
    return Partition(tuple(members[:cut]), tuple(members[cut:]), one_way=rng.random() < 0.3)


def twin_sides(
    rng: random.Random, twin_pairs: list[tuple[int, int]], others: list[int]
) -> tuple[list[int], list[int]]:
    """Two sides that keep each pair of twins apart; the other hosts are split at random."""
    side_a = [a for a, _ in twin_pairs]
    side_b = [b for _, b in twin_pairs]
    shuffled = list(others)
    rng.shuffle(shuffled)
    cut = rng.randint(0, len(shuffled)) if len(twin_pairs) == 1 else len(shuffled) // 2
    return side_a + shuffled[:cut], side_b + shuffled[cut:]
