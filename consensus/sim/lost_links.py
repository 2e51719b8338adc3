"""What each simulated node's peer links tell its replica: ``Replica.on_tick``'s ``lost_peers``.

The real node (``node.p2p.peers.PeerNetwork.lost_peers``) reports a validator once its link to
it dropped and stayed down for a while; a backup whose primary is reported lost asks for the next
view at once. Here, for the seeds that have it (``Scenario.lost_links``):

* a key all of whose hosts have been down (crashed) for ``LOST_AFTER_TICKS`` is reported lost to
  every other host: the true signal of a kill -9;
* inside the fault window, each host also reports, at each tick with probability
  ``Scenario.lost_link_lie_p``, its current primary lost while it is not (a flaky link, or a
  detector that is simply wrong). Safety must not care, and the heal ends the lies, after which
  the liveness bound holds as for every seed.

Drawn from a stream of its own, so that the network, the faults and the clients see the same
draws as without it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from consensus.sim.hosts import HonestHost
from consensus.sim.scenario import LOST_LINKS_STREAM

LOST_AFTER_TICKS = 3  # the node waits LINK_LOST_S for a link to come back; a few ticks here


class LostLinks:
    def __init__(self, seed: int, hosts: Sequence[HonestHost], lie_p: float, heal_tick: int):
        # Not the scenario's own stream (seed ^ LOST_LINKS_STREAM): these are later draws.
        self._rng = random.Random((seed ^ LOST_LINKS_STREAM) + 1)
        self._hosts = hosts
        self._lie_p = lie_p
        self._heal_tick = heal_tick
        self._down_since: dict[int, int] = {}  # host index -> tick it was first seen down
        self.lies = 0  # false reports of a live primary, for the run's summary

    def step(self, tick: int) -> None:
        """Set every host's ``lost_peers`` for this tick (before the hosts tick)."""
        for host in self._hosts:
            if host.up:
                self._down_since.pop(host.index, None)
            else:
                self._down_since.setdefault(host.index, tick)
        down_keys: dict[str, bool] = {}
        for host in self._hosts:  # a key is gone only when every host with it is
            gone = tick - self._down_since.get(host.index, tick) >= LOST_AFTER_TICKS
            down_keys[host.key] = down_keys.get(host.key, True) and gone
        gone_keys = frozenset(key for key, gone in down_keys.items() if gone)
        for host in self._hosts:
            lost = gone_keys - {host.key}
            replica = host.replica
            if (
                replica is not None
                and tick < self._heal_tick
                and self._lie_p > 0
                and self._rng.random() < self._lie_p
                and replica.primary != host.key
                and replica.primary not in lost
            ):
                lost = lost | {replica.primary}
                self.lies += 1
            host.lost_peers = lost
