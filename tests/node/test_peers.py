"""Peer links over real TCP on 127.0.0.1: handshake, delivery, refusals, reconnection, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from crypto.signing import Ed25519Signer
from node.p2p.framing import encode_frame, read_frame
from node.p2p.peers import TAG_HANDSHAKE, PeerNetwork

CHAIN = "phalanx-test"
GENESIS = "ab" * 32
FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "handshake_timeout_s": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Cluster:
    """n validators on free ports; ``inbox[i]`` collects (sender, message) for network i."""

    def __init__(self, n: int, **options: Any) -> None:
        self.signers = [Ed25519Signer.generate() for _ in range(n)]
        self.keys = [s.public_key for s in self.signers]
        self.validators: dict[str, tuple[str, int] | None] = {
            k: ("127.0.0.1", free_port()) for k in self.keys
        }
        self.options = options
        self.inbox: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(n)]
        self.nets = [self.make(i) for i in range(n)]

    def make(self, i: int, **overrides: Any) -> PeerNetwork:
        options = {**FAST, **self.options, **overrides}
        options.setdefault("rng", random.Random(i))
        inbox = self.inbox[i]
        return PeerNetwork(
            self.signers[i],
            self.validators,
            options.pop("chain_id", CHAIN),
            options.pop("genesis_hash", GENESIS),
            lambda sender, msg: inbox.append((sender, msg)),
            **options,
        )

    async def start(self) -> None:
        for net in self.nets:
            await net.start()

    async def stop(self) -> None:
        for net in self.nets:
            await net.stop()

    def all_connected(self) -> bool:
        return all(len(net.connected_peers()) == len(self.nets) - 1 for net in self.nets)


def test_two_networks_exchange_messages() -> None:
    async def go() -> None:
        c = Cluster(2)
        await c.start()
        try:
            await until(c.all_connected)
            c.nets[0].send(c.keys[1], {"type": "ping", "n": 1})
            c.nets[1].send(c.keys[0], {"type": "pong", "n": 2})
            await until(lambda: bool(c.inbox[0] and c.inbox[1]))
            assert c.inbox[1] == [(c.keys[0], {"type": "ping", "n": 1})]
            assert c.inbox[0] == [(c.keys[1], {"type": "pong", "n": 2})]
            assert c.nets[0].metrics.frames_out == 1 and c.nets[0].metrics.frames_in == 1
        finally:
            await c.stop()

    run(go())


def test_four_networks_broadcast_and_keep_one_link_per_pair() -> None:
    async def go() -> None:
        c = Cluster(4)
        await c.start()
        try:
            await until(c.all_connected)
            for i, net in enumerate(c.nets):
                for j in range(20):
                    net.broadcast({"from": i, "j": j})
            await until(lambda: all(len(box) == 60 for box in c.inbox))
            for i, box in enumerate(c.inbox):
                for sender_index, net in enumerate(c.nets):
                    if sender_index != i:
                        got = [m["j"] for s, m in box if s == net.me]
                        assert got == list(range(20)), "per-link order is preserved"
                        assert all(m["from"] == sender_index for s, m in box if s == net.me)
            # Let any duplicate links settle: both ends of each pair use one and the same link.
            await asyncio.sleep(0.3)
            assert c.all_connected()
            for a in c.nets:
                for b in c.nets:
                    if a is not b:
                        assert link_ends(a, b) == link_ends(b, a)[::-1]
        finally:
            await c.stop()

    run(go())


def link_ends(a: PeerNetwork, b: PeerNetwork) -> tuple[Any, Any]:
    """(local, remote) socket addresses of a's link to b."""
    link = a._peers[b.me].link
    assert link is not None
    return (link.writer.get_extra_info("sockname"), link.writer.get_extra_info("peername"))


def test_duplicate_links_keep_the_one_dialed_by_the_lower_key() -> None:
    async def go() -> None:
        c = Cluster(2)
        await c.start()
        try:
            await until(c.all_connected)
            low, high = sorted(c.nets, key=lambda net: net.me)
            # Force a second link from each side in turn; the lower key's outbound must win.
            for dialer in (low, high, low):
                other = high if dialer is low else low
                assert await dialer._dial(dialer._peers[other.me], other.listen_address)
                await asyncio.sleep(0.2)
                assert c.all_connected()
                assert link_ends(low, high) == link_ends(high, low)[::-1]
                low_link = low._peers[high.me].link
                assert low_link is not None and low_link.outbound
            assert low.metrics.duplicates_closed + high.metrics.duplicates_closed >= 3
            low.send(high.me, {"still": "works"})
            await until(
                lambda: any(m == {"still": "works"} for _, m in c.inbox[c.nets.index(high)])
            )
        finally:
            await c.stop()

    run(go())


def test_reconnects_after_the_other_side_restarts_and_delivers_queued_messages() -> None:
    async def go() -> None:
        c = Cluster(2)
        await c.start()
        try:
            await until(c.all_connected)
            await c.nets[1].stop()
            await until(lambda: not c.nets[0].connected_peers())
            c.nets[0].send(c.keys[1], {"while": "down"})
            assert c.nets[0].queue_len(c.keys[1]) == 1
            await asyncio.sleep(0.2)  # a few failed dials with backoff
            assert c.nets[0].metrics.dial_failures >= 1
            c.nets[1] = c.make(1)
            await c.nets[1].start()
            await until(c.all_connected)
            await until(lambda: c.inbox[1] == [(c.keys[0], {"while": "down"})])
            assert c.nets[0].metrics.connects >= 2
            assert c.nets[0].metrics.disconnects >= 1
        finally:
            await c.stop()

    run(go())


def test_queue_is_bounded_dropping_the_oldest() -> None:
    async def go() -> None:
        c = Cluster(2, queue_max=3)
        await c.nets[0].start()  # node 1 is not running yet
        try:
            for j in range(10):
                c.nets[0].send(c.keys[1], {"j": j})
            assert c.nets[0].queue_len(c.keys[1]) == 3
            assert c.nets[0].metrics.drops["queue_full"] == 7
            await c.nets[1].start()
            await until(lambda: len(c.inbox[1]) == 3)
            assert [m["j"] for _, m in c.inbox[1]] == [7, 8, 9]
        finally:
            await c.stop()

    run(go())


def test_own_oversize_message_is_dropped_and_counted() -> None:
    async def go() -> None:
        c = Cluster(2, frame_max=100)
        c.nets[0].send(c.keys[1], {"x": "a" * 200})
        c.nets[0].broadcast({"x": "a" * 200})
        assert c.nets[0].queue_len(c.keys[1]) == 0
        assert c.nets[0].metrics.drops["frame_too_large"] == 2
        with pytest.raises(ValueError):
            c.nets[0].send("cd" * 32, {"x": 1})
        with pytest.raises(ValueError):
            c.nets[0].send(c.keys[0], {"x": 1})

    run(go())


def test_backoff_doubles_is_capped_and_jittered() -> None:
    c = Cluster(2, backoff_base_s=0.1, backoff_max_s=2.0, rng=random.Random(7))
    net = c.nets[0]
    for attempt, nominal in [(0, 0.1), (1, 0.2), (3, 0.8), (5, 2.0), (60, 2.0)]:
        delays = {net.backoff_s(attempt) for _ in range(20)}
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(delays) > 1
    again = Cluster(2, rng=random.Random(7), backoff_base_s=0.1, backoff_max_s=2.0).nets[0]
    fresh = Cluster(2, rng=random.Random(7), backoff_base_s=0.1, backoff_max_s=2.0).nets[0]
    assert [again.backoff_s(i) for i in range(8)] == [fresh.backoff_s(i) for i in range(8)]


# ---- handshake refusals, driven by a hand-written client or server ------------------------------


def auth_object(challenge: str, signer: str, peer: str, chain: str = CHAIN) -> dict[str, str]:
    return {
        "chain_id": chain,
        "genesis_hash": GENESIS,
        "challenge": challenge,
        "signer": signer,
        "peer": peer,
    }


async def raw_client(
    port: int,
    claimed: str,
    auth_signer: Ed25519Signer,
    chain: str = CHAIN,
    hello_extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Connect, run the handshake as ``claimed`` signing with ``auth_signer``; return what the
    server sent until it closed (or until 0.5 s passed after a successful handshake)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received: list[dict[str, Any]] = []
    try:
        hello = {
            "type": "hello",
            "chain_id": chain,
            "genesis_hash": GENESIS,
            "pubkey": claimed,
            "challenge": os.urandom(32).hex(),
            **(hello_extra or {}),
        }
        writer.write(encode_frame(hello))
        server_hello = await read_frame(reader)
        received.append(server_hello)
        if server_hello["type"] != "hello":
            return received
        sig = auth_signer.sign(
            TAG_HANDSHAKE,
            auth_object(server_hello["challenge"], claimed, server_hello["pubkey"], chain),
        )
        writer.write(encode_frame({"type": "auth", "signature": sig}))
        while True:
            received.append(await asyncio.wait_for(read_frame(reader), 0.5))
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return received
    finally:
        writer.close()


def refusal_case(
    make_client: Callable[[Cluster, int], Awaitable[list[dict[str, Any]]]], reason: str
) -> None:
    async def go() -> None:
        c = Cluster(2)
        server = c.nets[0]
        await server.start()
        try:
            got = await make_client(c, server.listen_address[1])
            assert {"type": "refused", "reason": reason} in got
            assert server.metrics.handshakes_refused[reason] == 1
            assert server.connected_peers() == []
        finally:
            await server.stop()

    run(go())


def test_handshake_accepts_a_validator_that_proves_its_key() -> None:
    async def go() -> None:
        c = Cluster(2)
        await c.nets[0].start()
        try:
            task = asyncio.ensure_future(
                raw_client(c.nets[0].listen_address[1], c.keys[1], c.signers[1])
            )
            await until(lambda: c.nets[0].connected_peers() == [c.keys[1]])
            c.nets[0].send(c.keys[1], {"hi": 1})
            got = await task
            assert got[0]["type"] == "hello" and got[0]["pubkey"] == c.keys[0]
            assert got[1] == {"type": "auth", "signature": got[1]["signature"]}
            assert {"hi": 1} in got
        finally:
            await c.nets[0].stop()

    run(go())


def test_refuses_a_key_outside_the_validator_set() -> None:
    stranger = Ed25519Signer.generate()
    refusal_case(
        lambda c, port: raw_client(port, stranger.public_key, stranger), "unknown_validator"
    )


def test_refuses_a_validator_key_signed_by_someone_else() -> None:
    impostor = Ed25519Signer.generate()
    refusal_case(lambda c, port: raw_client(port, c.keys[1], impostor), "bad_signature")


def test_refuses_another_chain() -> None:
    refusal_case(
        lambda c, port: raw_client(port, c.keys[1], c.signers[1], chain="other-chain"),
        "chain_mismatch",
    )


def test_refuses_a_peer_claiming_our_own_key() -> None:
    refusal_case(lambda c, port: raw_client(port, c.keys[0], c.signers[0]), "self")


def test_refuses_a_malformed_hello() -> None:
    refusal_case(
        lambda c, port: raw_client(port, c.keys[1], c.signers[1], hello_extra={"extra": "x"}),
        "malformed",
    )


def test_refuses_a_signature_for_another_challenge() -> None:
    async def replayed(c: Cluster, port: int) -> list[dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                encode_frame(
                    {
                        "type": "hello",
                        "chain_id": CHAIN,
                        "genesis_hash": GENESIS,
                        "pubkey": c.keys[1],
                        "challenge": "00" * 32,
                    }
                )
            )
            await read_frame(reader)
            old = c.signers[1].sign(TAG_HANDSHAKE, auth_object("11" * 32, c.keys[1], c.keys[0]))
            writer.write(encode_frame({"type": "auth", "signature": old}))
            received = []
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    received.append(await read_frame(reader))
            return received
        finally:
            writer.close()

    refusal_case(replayed, "bad_signature")


def test_dialer_refuses_a_peer_that_claims_another_key() -> None:
    """Node 0 dials node 1's address, but whoever answers there is validator 2."""

    async def go() -> None:
        c = Cluster(3)
        impostor_seen: list[dict[str, Any]] = []

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(
                    encode_frame(
                        {
                            "type": "hello",
                            "chain_id": CHAIN,
                            "genesis_hash": GENESIS,
                            "pubkey": c.keys[2],
                            "challenge": "00" * 32,
                        }
                    )
                )
                impostor_seen.append(await read_frame(reader))
                impostor_seen.append(await read_frame(reader))
            except asyncio.IncompleteReadError:
                pass
            finally:
                writer.close()

        address = c.validators[c.keys[1]]
        assert address is not None
        server = await asyncio.start_server(impostor, *address)
        await c.nets[0].start()
        try:
            await until(lambda: c.nets[0].metrics.handshakes_refused["wrong_key"] >= 1)
            assert {"type": "refused", "reason": "wrong_key"} in impostor_seen
            assert c.keys[1] not in c.nets[0].connected_peers()
        finally:
            await c.nets[0].stop()
            server.close()
            await server.wait_closed()

    run(go())


def test_networks_on_different_genesis_never_connect() -> None:
    async def go() -> None:
        c = Cluster(2)
        c.nets[1] = c.make(1, genesis_hash="cd" * 32)
        await c.start()
        try:
            await until(
                lambda: all(n.metrics.handshakes_refused["chain_mismatch"] >= 1 for n in c.nets)
            )
            assert c.nets[0].connected_peers() == [] and c.nets[1].connected_peers() == []
        finally:
            await c.stop()

    run(go())


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        (struct.pack(">I", 10_000), "frame_too_large"),
        (struct.pack(">I", 3) + b"[1]", "undecodable"),
    ],
)
def test_bad_frame_after_handshake_disconnects_and_counts(junk: bytes, reason: str) -> None:
    async def go() -> None:
        c = Cluster(2, frame_max=1000)
        server = c.nets[0]
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.listen_address[1])
        try:
            writer.write(
                encode_frame(
                    {
                        "type": "hello",
                        "chain_id": CHAIN,
                        "genesis_hash": GENESIS,
                        "pubkey": c.keys[1],
                        "challenge": "00" * 32,
                    }
                )
            )
            hello = await read_frame(reader)
            sig = c.signers[1].sign(
                TAG_HANDSHAKE, auth_object(hello["challenge"], c.keys[1], c.keys[0])
            )
            writer.write(encode_frame({"type": "auth", "signature": sig}))
            await read_frame(reader)  # the server's auth
            await until(lambda: server.connected_peers() == [c.keys[1]])
            writer.write(junk)
            await until(lambda: server.connected_peers() == [])
            assert server.metrics.bad_frames[(c.keys[1], reason)] == 1
            assert await reader.read() == b""  # the server closed the connection
        finally:
            writer.close()
            await server.stop()

    run(go())
