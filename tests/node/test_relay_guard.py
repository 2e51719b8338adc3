"""Relayed transactions from one peer: a few verified at once, the next ones wait their turn
within a byte bound, and only past it (or past the peer's rate) are they dropped."""

from __future__ import annotations

import asyncio

from node.p2p.guard import RELAY_BYTES_WAITING_MAX, RELAYS_IN_FLIGHT_MAX, PeerGuard


def guard(drops: list[str]) -> PeerGuard:
    return PeerGuard(lambda pubkey, reason, amount=1.0: False, drops.append)


def test_relays_past_the_in_flight_limit_wait_instead_of_being_dropped() -> None:
    drops: list[str] = []
    g = guard(drops)
    inside = 0
    most = 0

    async def relay() -> None:
        nonlocal inside, most
        assert g.relay_admit("peer", 250, 100_000)
        try:
            async with g.relay_slot("peer"):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1
        finally:
            g.relay_done("peer", 100_000, [None] * 250)

    async def main() -> None:
        await asyncio.gather(*(relay() for _ in range(3 * RELAYS_IN_FLIGHT_MAX)))

    asyncio.run(main())
    assert drops == []
    assert most == RELAYS_IN_FLIGHT_MAX


def test_relays_waiting_past_the_byte_bound_are_dropped_until_some_are_done() -> None:
    drops: list[str] = []
    g = guard(drops)
    frame = RELAY_BYTES_WAITING_MAX // 4
    for _ in range(4):
        assert g.relay_admit("peer", 10, frame)
    assert not g.relay_admit("peer", 10, frame)
    assert drops == ["relay_busy"]
    assert g.relay_admit("other", 10, frame)  # the bound is per peer
    g.relay_done("peer", frame, [None] * 10)
    assert g.relay_admit("peer", 10, frame)


def test_the_relay_rate_still_bounds_a_peer() -> None:
    drops: list[str] = []
    g = PeerGuard(lambda pubkey, reason, amount=1.0: False, drops.append, 10.0, 100.0)
    assert g.relay_admit("peer", 100, 1_000)
    assert not g.relay_admit("peer", 100, 1_000)
    assert drops == ["relay_rate"]
