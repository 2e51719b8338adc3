"""PeerNetwork.lost_peers: what the runtime tells the replica about dropped links (a backup whose
primary is lost asks for a view change at once)."""

from __future__ import annotations

import asyncio

from tests.node.test_peers import Cluster, run, until


def test_a_crashed_peer_is_lost_at_once_when_its_port_refuses() -> None:
    """A stopped network (its listener closed, as after kill -9) drops our link, and our first
    redial is refused: that is evidence enough, long before ``for_s``."""

    async def go() -> None:
        c = Cluster(3)
        await c.start()
        try:
            await until(c.all_connected)
            assert c.nets[0].lost_peers(0.0) == frozenset()
            await c.nets[2].stop()
            await until(lambda: c.nets[0].lost_peers(60.0) == {c.keys[2]})
            await until(lambda: c.nets[1].lost_peers(60.0) == {c.keys[2]})
        finally:
            await c.nets[0].stop()
            await c.nets[1].stop()

    run(go())


def test_a_peer_back_is_no_longer_lost_and_one_never_reached_is_not_reported() -> None:
    async def go() -> None:
        c = Cluster(3)
        await c.nets[0].start()
        await c.nets[1].start()
        try:
            await until(lambda: c.keys[1] in c.nets[0].connected_peers())
            await asyncio.sleep(0.2)
            # Peer 2 never came up: no link ever dropped, so no evidence against it.
            assert c.nets[0].lost_peers(0.0) == frozenset()
            await c.nets[1].stop()
            await until(lambda: c.nets[0].lost_peers(60.0) == {c.keys[1]})
            c.nets[1] = c.make(1)
            await c.nets[1].start()
            await until(lambda: c.keys[1] in c.nets[0].connected_peers())
            assert c.nets[0].lost_peers(0.0) == frozenset()
        finally:
            for net in c.nets[:2]:
                await net.stop()

    run(go())
