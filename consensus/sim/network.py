"""The seeded network: every packet between hosts goes through here.

It loses, delays (hence reorders) and duplicates packets, drops them across partitions
(symmetric or one-way), and holds them on *clogged* links until the link is restored (then
releases them late and shuffled). All randomness comes from the ``random.Random`` it is given.
Time is the simulator's tick counter; a packet due at tick t is delivered during tick t.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consensus.batch import Tx
from consensus.output import Committed

Link = tuple[int, int]  # (source host, destination host)

# A run that keeps more packets than this in flight is a message storm: the simulator reports it.
IN_FLIGHT_MAX = 200_000


@dataclass(frozen=True, slots=True)
class ConsensusWire:
    """A peer message of ``consensus.messages`` (a wire dict), as the node's peer links carry."""

    wire: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Relay:
    """Client transactions one node relays to the others (node.runtime RELAY)."""

    txs: tuple[Tx, ...]


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """State transfer: ask for committed blocks ``from_seq`` to ``to_seq`` (node.p2p.block_sync)."""

    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class FetchReply:
    blocks: tuple[Committed, ...]


Payload = ConsensusWire | Relay | FetchRequest | FetchReply
DropRule = Callable[[int, int, Payload], bool]  # (src, dst, payload) -> lose it


@dataclass(order=True, slots=True)
class Packet:
    due: int
    order: int  # tie-break: a total order, so the heap never compares payloads
    src: int = field(compare=False)
    dst: int = field(compare=False)
    payload: Payload = field(compare=False)


@dataclass(slots=True)
class Conditions:
    """How bad the network is right now. The simulator sets these per phase."""

    loss_p: float = 0.0
    duplicate_p: float = 0.0
    delay_ticks_max: int = 0
    delay_p: float = 0.0  # probability that a packet is delayed at all (else due this tick)


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    partitioned: int = 0
    duplicated: int = 0
    clogged: int = 0
    scripted: int = 0  # lost to a scripted schedule (``drop_rule``)


class Network:
    def __init__(self, rng: random.Random, host_count: int) -> None:
        self._rng = rng
        self._host_count = host_count
        self._queue: list[Packet] = []
        self._order = 0
        self.conditions = Conditions()
        self.stats = NetworkStats()
        self._blocked: set[Link] = set()  # partitions: packets are dropped
        self._pinned: set[Link] = set()  # blocked until heal() whatever else happens
        self._clogged: dict[Link, list[Packet]] = {}  # clogs: packets are held
        # A scripted schedule's choice of what to lose (consensus.sim.lone_certificate), asked
        # for every packet during the fault window; heal() removes it.
        self.drop_rule: DropRule | None = None

    # --- sending and delivering ----------------------------------------------------------

    def send(self, src: int, dst: int, payload: Payload, now: int) -> None:
        self.stats.sent += 1
        link = (src, dst)
        if link in self._blocked or link in self._pinned:
            self.stats.partitioned += 1
            return
        if self.drop_rule is not None and self.drop_rule(src, dst, payload):
            self.stats.scripted += 1
            return
        if self._rng.random() < self.conditions.loss_p:
            self.stats.lost += 1
            return
        copies = 1
        if self._rng.random() < self.conditions.duplicate_p:
            copies = 2
            self.stats.duplicated += 1
        for _ in range(copies):
            packet = Packet(now + self._delay(), self._next_order(), src, dst, payload)
            held = self._clogged.get(link)
            if held is not None:
                self.stats.clogged += 1
                held.append(packet)
            else:
                heapq.heappush(self._queue, packet)

    def due(self, now: int) -> list[Packet]:
        """Every packet due by ``now``, shuffled: packets sent in one tick arrive in any order."""
        batch: list[Packet] = []
        while self._queue and self._queue[0].due <= now:
            batch.append(heapq.heappop(self._queue))
        self._rng.shuffle(batch)
        self.stats.delivered += len(batch)
        return batch

    @property
    def in_flight(self) -> int:
        return len(self._queue) + sum(len(held) for held in self._clogged.values())

    def _delay(self) -> int:
        c = self.conditions
        if c.delay_ticks_max <= 0 or self._rng.random() >= c.delay_p:
            return 0
        return self._rng.randint(1, c.delay_ticks_max)

    def _next_order(self) -> int:
        self._order += 1
        return self._order

    # --- faults ----------------------------------------------------------------------------

    def partition(self, side_a: Iterable[int], side_b: Iterable[int], one_way: bool) -> None:
        """Drop packets from ``side_a`` to ``side_b`` (and back, unless ``one_way``)."""
        a, b = list(side_a), list(side_b)
        for i in a:
            for j in b:
                self._blocked.add((i, j))
                if not one_way:
                    self._blocked.add((j, i))

    def pin_partition(self, side_a: Iterable[int], side_b: Iterable[int]) -> None:
        """A symmetric partition that ``clear_partitions`` leaves in place (twins kept apart)."""
        for i in side_a:
            for j in side_b:
                self._pinned.update({(i, j), (j, i)})

    def clear_partitions(self) -> None:
        self._blocked.clear()

    def clog(self, link: Link) -> None:
        self._clogged.setdefault(link, [])

    def unclog(self, link: Link, now: int) -> None:
        """Release what the link held, late: each packet gets a fresh delay from now."""
        held = self._clogged.pop(link, [])
        for packet in held:
            packet.due, packet.order = now + self._delay(), self._next_order()
            heapq.heappush(self._queue, packet)

    @property
    def clogged_links(self) -> list[Link]:
        return list(self._clogged)

    def heal(self, now: int) -> None:
        """The fault window is over: no partitions, no clogs, no loss (delays stay bounded)."""
        self._blocked.clear()
        self._pinned.clear()
        self.drop_rule = None
        for link in list(self._clogged):
            self.unclog(link, now)
        self.conditions.loss_p = 0.0
