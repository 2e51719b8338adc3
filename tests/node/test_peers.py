"""Peer links over real TLS on 127.0.0.1: authentication, delivery, refusals, attacks, bounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from crypto.signing import Ed25519Signer
from node.p2p.budget import PeerBudgets
from node.p2p.framing import encode_frame, read_frame
from node.p2p.peers import PeerNetwork
from node.p2p.tls import LinkTls

CHAIN = "phalanx-test"
GENESIS = "ab" * 32
FAST = {
    "backoff_base_s": 0.02,
    "backoff_max_s": 0.2,
    "handshake_timeout_s": 2.0,
    "hello_timeout_s": 2.0,
    "penalty_base_s": 0.5,
}


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
            lambda sender, msg, _bytes: inbox.append((sender, msg)),
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
            await asyncio.sleep(0.3)  # the simultaneous dials settle
            link = low._peers[high.me].link
            assert link is not None and link.outbound, "the lower key's outbound link won"
            # A second link from either side never displaces the live one dialed by low.
            for dialer in (low, high, low):
                other = high if dialer is low else low
                assert not await dialer._dial(dialer._peers[other.me], other.listen_address)
                await asyncio.sleep(0.1)
                assert c.all_connected()
                assert low._peers[high.me].link is link
                assert link_ends(low, high) == link_ends(high, low)[::-1]
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
            # A failed dial or more (backoff 0.05-0.1 s first): waited for, not slept on, since a
            # loaded machine may run the dial loop late (a fixed 0.2 s once saw none in CI).
            await until(lambda: c.nets[0].metrics.dial_failures >= 1)
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


def test_queue_is_bounded_in_bytes_dropping_the_oldest() -> None:
    async def go() -> None:
        c = Cluster(2, frame_max=2000, queue_bytes_max=5000)
        await c.nets[0].start()  # node 1 is not running yet
        try:
            for j in range(10):
                c.nets[0].send(c.keys[1], {"j": j, "pad": "x" * 1000})
            assert c.nets[0].queue_bytes(c.keys[1]) <= 5000
            assert c.nets[0].queue_len(c.keys[1]) == 4
            assert c.nets[0].metrics.drops["queue_full"] == 6
            await c.nets[1].start()
            await until(lambda: len(c.inbox[1]) == 4)
            assert [m["j"] for _, m in c.inbox[1]] == [6, 7, 8, 9]
            assert c.nets[0].queue_bytes(c.keys[1]) == 0
        finally:
            await c.stop()

    run(go())


# ---- attacks on the link set-up ---------------------------------------------------------------


async def read_all(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    data = b""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            data += chunk
    return data


def test_plaintext_handshake_of_the_old_protocol_is_refused_and_counted() -> None:
    async def go() -> None:
        c = Cluster(2)
        server = c.nets[0]
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.listen_address[1])
            hello = {
                "type": "hello",
                "chain_id": CHAIN,
                "genesis_hash": GENESIS,
                "pubkey": c.keys[1],
                "challenge": os.urandom(32).hex(),
            }
            writer.write(encode_frame(hello))
            got = await read_all(reader)
            writer.close()
            assert b"hello" not in got and b"auth" not in got  # nothing in the clear
            await until(lambda: server.metrics.handshakes_refused["plaintext"] == 1)
            assert server.connected_peers() == []
        finally:
            await server.stop()

    run(go())


async def tls_client(
    port: int, seed_of: Ed25519Signer, trusts: str, me: str, validators: list[str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS client presenting ``seed_of``'s link certificate and trusting ``trusts``."""
    tls = LinkTls(seed_of.seed, me, [*validators, trusts])
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client(trusts), server_hostname=""
    )


def test_tls_with_a_key_outside_the_validator_set_is_refused_and_counted() -> None:
    async def go() -> None:
        c = Cluster(2)
        server = c.nets[0]
        await server.start()
        stranger = Ed25519Signer.generate()
        try:
            # The TLS 1.3 client finishes before the server checks its certificate.
            reader, writer = await tls_client(
                server.listen_address[1], stranger, c.keys[0], stranger.public_key, c.keys
            )
            writer.write(encode_frame({"type": "hello"}))
            assert await read_all(reader) == b""
            writer.close()
            await until(lambda: server.metrics.handshakes_refused["wrong_key"] == 1)
            assert server.connected_peers() == []
        finally:
            await server.stop()

    run(go())


def test_tls_without_a_client_certificate_is_refused() -> None:
    async def go() -> None:
        import ssl

        c = Cluster(2)
        server = c.nets[0]
        await server.start()
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.listen_address[1], ssl=context, server_hostname=""
            )
            assert await read_all(reader) == b""
            writer.close()
            await until(lambda: server.metrics.handshakes_refused["no_certificate"] == 1)
            assert server.connected_peers() == []
        finally:
            await server.stop()

    run(go())


def test_dialer_refuses_a_validator_answering_at_another_validators_address() -> None:
    """Node 0 dials node 1's address, but validator 2 (a real validator) answers there."""

    async def go() -> None:
        c = Cluster(3)
        impostor = c.make(2, listen=c.validators[c.keys[1]])
        await impostor.start()
        await c.nets[0].start()
        try:
            await until(lambda: c.nets[0].metrics.handshakes_refused["wrong_key"] >= 1)
            assert c.keys[1] not in c.nets[0].connected_peers()
            assert not any(sender == c.keys[1] for sender, _ in c.inbox[0])
        finally:
            await c.nets[0].stop()
            await impostor.stop()

    run(go())


def test_reflecting_bytes_between_two_validators_links_nobody() -> None:
    """The impersonation of the security review: an attacker without a key connects to node 0
    and node 1 and relays each one's bytes to the other. Both are TLS servers on those
    connections, so neither handshake can complete; no link is installed for the attacker."""

    async def go() -> None:
        c = Cluster(2)
        # Neither node dials (no address to dial): only the attacker's connections exist.
        c.validators = {k: v for k, v in c.validators.items()}
        for net in c.nets:
            for peer in net._peers.values():
                peer.address = None
        await c.start()
        try:
            r0, w0 = await asyncio.open_connection("127.0.0.1", c.nets[0].listen_address[1])
            r1, w1 = await asyncio.open_connection("127.0.0.1", c.nets[1].listen_address[1])

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                w.close()

            # Opening move of the old attack: claim node 1 to node 0 and vice versa.
            for w, key in ((w0, c.keys[1]), (w1, c.keys[0])):
                w.write(encode_frame({"type": "hello", "chain_id": CHAIN, "pubkey": key}))
            await asyncio.wait_for(asyncio.gather(pipe(r0, w1), pipe(r1, w0)), 5)
            await asyncio.sleep(0.1)
            assert c.nets[0].connected_peers() == [] and c.nets[1].connected_peers() == []
            refused = sum(sum(n.metrics.handshakes_refused.values()) for n in c.nets)
            assert refused >= 2
            assert c.inbox == [[], []]
        finally:
            await c.stop()

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


def test_a_second_process_with_a_validators_key_never_displaces_its_live_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def go() -> None:
        c = Cluster(2)
        await c.start()
        twin = c.make(1, listen=("127.0.0.1", free_port()))
        try:
            await until(c.all_connected)
            original = c.nets[0]._peers[c.keys[1]].link
            await twin.start()  # dials node 0 as validator 1, again and again
            await until(lambda: c.nets[0].metrics.duplicate_validator_links >= 3, timeout=10)
            assert c.nets[0]._peers[c.keys[1]].link is original
            c.nets[1].send(c.keys[0], {"from": "the real one"})
            await until(lambda: (c.keys[1], {"from": "the real one"}) in c.inbox[0])
            logged = [r for r in caplog.records if r.getMessage() == "duplicate_validator_links"]
            assert len(logged) == 1
        finally:
            await twin.stop()
            await c.stop()

    run(go())


def test_a_dead_link_is_replaced_by_a_new_one() -> None:
    async def go() -> None:
        c = Cluster(2, probe_timeout_s=0.5, dead_after_s=30.0)
        await c.start()
        try:
            await until(c.all_connected)
            await asyncio.sleep(0.3)
            old_far_end = c.nets[1]._peers[c.keys[0]].link
            assert old_far_end is not None
            # Node 1's old link goes silent (like a frozen or vanished process): it neither
            # reads nor answers pings. A new link from a fresh process of node 1 replaces it.
            old_far_end.writer.transport.pause_reading()
            for task in old_far_end.tasks:
                task.cancel()
            c.nets[1]._peers[c.keys[0]].link = None
            fresh = c.make(1, listen=("127.0.0.1", free_port()))
            await fresh.start()
            await until(
                lambda: (
                    c.nets[0]._peers[c.keys[1]].link is not None
                    and c.nets[0]._peers[c.keys[1]].link.instance == fresh.instance
                )
            )
            assert c.nets[0].metrics.duplicate_validator_links == 0
            await fresh.stop()
        finally:
            await c.stop()

    run(go())


def test_idle_sockets_cannot_keep_a_validator_out() -> None:
    """300 idle TCP connections from another host (127.0.0.2) to node 0's peer port: the slots
    are bounded, the oldest are evicted, each dies at the hello deadline, and node 1 links."""

    async def go() -> None:
        c = Cluster(2, hello_timeout_s=1.0, pending_max=32, pending_per_ip_max=8)
        server = c.nets[0]
        await server.start()
        idle: list[socket.socket] = []
        try:
            loop = asyncio.get_running_loop()
            for _ in range(300):
                s = socket.socket()
                s.setblocking(False)
                s.bind(("127.0.0.2", 0))
                await loop.sock_connect(s, server.listen_address)
                idle.append(s)
            await asyncio.sleep(0.2)
            assert server.pending_handshakes <= 32 + 16
            assert server.metrics.pending_evicted["per_ip"] >= 250
            await c.nets[1].start()
            await until(lambda: server.connected_peers() == [c.keys[1]], timeout=5)
            await asyncio.sleep(1.2)
            assert server.pending_handshakes == 0  # the hello deadline closed the rest
        finally:
            for s in idle:
                s.close()
            await c.stop()

    run(go())


# ---- attacks by an authenticated validator --------------------------------------------------


async def validator_client(
    c: Cluster, i: int, server: PeerNetwork
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Validator ``i`` linked to ``server`` by hand (TLS and hello), to send what it likes."""
    tls = LinkTls(c.signers[i].seed, c.keys[i], c.keys)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.listen_address[1], ssl=tls.client(server.me), server_hostname=""
    )
    writer.write(
        encode_frame(
            {"type": "hello", "chain_id": CHAIN, "genesis_hash": GENESIS, "instance": "00" * 16}
        )
    )
    assert (await read_frame(reader))["type"] == "hello"
    await until(lambda: c.keys[i] in server.connected_peers())
    return reader, writer


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        (struct.pack(">I", 10_000), "frame_too_large"),
        (struct.pack(">I", 3) + b"[1]", "undecodable"),
    ],
)
def test_bad_frame_disconnects_counts_and_bans_for_a_while(junk: bytes, reason: str) -> None:
    async def go() -> None:
        c = Cluster(2, frame_max=1000, penalty_base_s=1.0)
        server = c.nets[0]
        server._peers[c.keys[1]].address = None  # do not dial the hand-made validator 1
        await server.start()
        try:
            reader, writer = await validator_client(c, 1, server)
            writer.write(junk)
            await until(lambda: server.connected_peers() == [])
            assert server.metrics.bad_frames[(c.keys[1], reason)] == 1
            assert server.metrics.penalties[(c.keys[1], f"bad_frame:{reason}")] == 1
            assert await read_all(reader) == b""
            writer.close()
            # Within the back-off the same validator is refused even with a valid link.
            with contextlib.suppress(AssertionError, ConnectionError):
                await validator_client(c, 1, server)
            assert server.connected_peers() == []
            assert server.metrics.handshakes_refused["backoff"] >= 1
            await asyncio.sleep(1.0)
            _, w2 = await validator_client(c, 1, server)
            w2.close()
        finally:
            await server.stop()

    run(go())


def test_a_validator_flooding_expensive_frames_is_cut_off_and_the_loop_stays_free() -> None:
    """Frames of a million ``{}`` each from an authenticated validator: decoding runs off the
    event loop and only through C code (the old checker took 1.5 s of loop per frame), and the
    decode budget ends the link after the first. The C parser holds the GIL while it runs, so
    frame_max bounds what one frame can stall the loop."""

    async def go() -> None:
        budgets = PeerBudgets(decode_cpu_per_s=0.01, decode_cpu_burst=0.1)
        c = Cluster(2, frame_max=8 * 1024 * 1024, budgets=budgets)
        server = c.nets[0]
        server._peers[c.keys[1]].address = None
        await server.start()
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = loop.time()
                gaps.append(now - last)
                last = now

        payload = b'{"a":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
        tls = LinkTls(c.signers[1].seed, c.keys[1], c.keys)
        context = tls.client(c.keys[0])
        port = server.listen_address[1]

        def attacker() -> None:
            # Its own thread: only the node's work shows in the loop's gaps.
            raw = socket.create_connection(("127.0.0.1", port))
            with context.wrap_socket(raw, server_hostname=None) as tls_sock:
                hello = {
                    "type": "hello",
                    "chain_id": CHAIN,
                    "genesis_hash": GENESIS,
                    "instance": "00" * 16,
                }
                tls_sock.sendall(encode_frame(hello))
                with contextlib.suppress(OSError):
                    for _ in range(4):
                        tls_sock.sendall(struct.pack(">I", len(payload)) + payload)
                    while tls_sock.recv(65536):
                        pass

        tick = asyncio.ensure_future(ticker())
        try:
            await asyncio.wait_for(asyncio.to_thread(attacker), 30)
            await until(lambda: server.connected_peers() == [], timeout=20)
            assert server.metrics.penalties[(c.keys[1], "decode_cpu_budget")] == 1, (
                server.metrics.penalties
            )
            assert server.metrics.frames_in <= 2
            assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f} s"
        finally:
            stop.set()
            await tick
            await server.stop()

    run(go())


def test_penalize_disconnects_a_peer_past_its_invalid_budget() -> None:
    async def go() -> None:
        c = Cluster(2, budgets=PeerBudgets(invalid_per_s=1.0, invalid_burst=5.0))
        await c.start()
        try:
            await until(c.all_connected)
            assert not any(c.nets[0].penalize(c.keys[1], "bad_signature") for _ in range(5))
            assert c.nets[0].penalize(c.keys[1], "bad_signature")
            assert c.nets[0].banned(c.keys[1])
            await until(lambda: c.nets[0].connected_peers() == [])
            assert c.nets[0].metrics.penalties[(c.keys[1], "invalid:bad_signature")] == 1
            await until(c.all_connected, timeout=5)  # back after the back-off
        finally:
            await c.stop()

    run(go())
