"""Authenticated, persistent links between validators (asyncio streams over TCP).

Each validator listens for peers and also dials every other validator, so a link comes back
whichever side restarts. On every new TCP connection both sides run the same handshake:

1. each sends ``{"type": "hello", "chain_id", "genesis_hash", "pubkey", "challenge"}`` where
   ``challenge`` is 32 fresh random bytes (hex);
2. each checks the other's hello: same chain and genesis, a pubkey of the validator set that is
   not its own, and, on a connection it dialed, the very key it dialed;
3. each answers ``{"type": "auth", "signature"}``: an Ed25519 signature under the tag
   ``phalanx/handshake/v1`` over ``{"chain_id", "genesis_hash", "challenge": <the other side's
   challenge>, "signer": <own pubkey>, "peer": <the other's pubkey>}``, and checks the other's.

A side that refuses sends ``{"type": "refused", "reason"}`` (to help whoever reads the other
log) and closes. After the handshake every frame carries one application message dict; the link
only authenticates the peer, the replica verifies message signatures itself.

Rules that make the behaviour predictable:

- **Duplicate links.** Both sides dial, so two links may exist for one pair. Between links of
  opposite directions the one dialed by the lower public key wins, on both sides alike. Between
  links of the same direction the newer wins: the older one is most likely left over from a peer
  that restarted.
- **Outgoing queues** are per peer, not per connection, bounded by ``queue_max`` frames, and
  survive reconnections. When full the **oldest** frame is dropped (``drops["queue_full"]``):
  consensus messages are superseded by newer ones (a later view, a later checkpoint), so a
  peer that comes back is better served by the newest.
- **Reconnection** waits ``min(backoff_max_s, backoff_base_s * 2**attempt)``, of which the
  second half is jitter drawn from the injected ``random.Random``; it resets once a handshake
  succeeds.
- **Bad input** (a frame over ``frame_max`` or a payload that is not a JSON object) disconnects
  the peer and is counted per peer and reason in ``metrics.bad_frames``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crypto.hexcodec import KEY_HEX_LEN, SIGNATURE_HEX_LEN, is_hex
from crypto.signing import Ed25519Verifier, Signer
from node.p2p.framing import FRAME_MAX_DEFAULT, FrameError, FrameTooLarge, encode_frame, read_frame

TAG_HANDSHAKE = "phalanx/handshake/v1"
CHALLENGE_LEN = 32
HANDSHAKE_FRAME_MAX = 4096  # hello/auth/refused frames are a few hundred bytes
_WRITE_CHUNK_BYTES = 1 << 20  # the writer moves up to about this much to the socket per drain

Address = tuple[str, int]
OnMessage = Callable[[str, dict[str, Any]], None]

_log = logging.getLogger("phalanx.peers")


class HandshakeRefused(Exception):
    """The handshake failed. ``reason`` is a short metric label (``bad_signature``, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class PeerMetrics:
    """Counters for the runtime to export. ``drops`` counts outgoing frames by reason:
    ``queue_full`` (oldest dropped to make room), ``frame_too_large`` (our own message over
    ``frame_max``), ``link_lost`` (taken from the queue but the write failed)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    bad_frames: Counter[tuple[str, str]] = field(default_factory=Counter)  # (peer, reason)
    handshakes_refused: Counter[str] = field(default_factory=Counter)  # reason
    dial_failures: int = 0
    connects: int = 0
    disconnects: int = 0
    duplicates_closed: int = 0
    handler_errors: int = 0


class _Link:
    """One authenticated connection to a peer, with its reader and writer tasks."""

    def __init__(
        self, peer: str, outbound: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.peer = peer
        self.outbound = outbound
        self.reader = reader
        self.writer = writer
        self.closed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.writer.close()
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()


@dataclass
class _Peer:
    pubkey: str
    address: Address | None
    queue: deque[bytes] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    link: _Link | None = None


class PeerNetwork:
    """Links from this validator (``my_signer``) to every other validator of ``validators``.

    ``validators`` maps every validator's public key (ours included) to the ``(host, port)`` it
    listens on for peers, or None for a peer we never dial (it must dial us); our own address is
    the default for ``listen``. ``on_message(sender,
    message)`` is called on the event loop for every frame received from an authenticated peer.
    Call ``await start()`` once, ``send``/``broadcast`` any time (they never block), and
    ``await stop()`` at the end.
    """

    def __init__(
        self,
        my_signer: Signer,
        validators: Mapping[str, Address | None],
        chain_id: str,
        genesis_hash: str,
        on_message: OnMessage,
        *,
        listen: Address | None = None,
        frame_max: int = FRAME_MAX_DEFAULT,
        queue_max: int = 10_000,
        handshake_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 5.0,
        handshakes_pending_max: int = 64,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.me = my_signer.public_key
        if self.me not in validators:
            raise ValueError(f"our key {self.me} is not in the validator set")
        if frame_max < 1 or queue_max < 1:
            raise ValueError("frame_max and queue_max must be positive")
        self._signer = my_signer
        self._verifier = Ed25519Verifier()
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self._on_message = on_message
        self._listen = listen if listen is not None else validators[self.me]
        self.frame_max = frame_max
        self.queue_max = queue_max
        self.handshake_timeout_s = handshake_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.write_timeout_s = write_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.handshakes_pending_max = handshakes_pending_max
        self._rng = rng if rng is not None else random.Random()
        self._log = logger if logger is not None else _log
        self._peers = {
            key: _Peer(key, address) for key, address in validators.items() if key != self.me
        }
        self.metrics = PeerMetrics()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes_pending = 0
        self._stopping = False

    # ---- public API -------------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """Where the server actually listens (resolves port 0 after ``start``)."""
        if self._server is not None and self._server.sockets:
            host, port = self._server.sockets[0].getsockname()[:2]
            return (host, port)
        if self._listen is None:
            raise RuntimeError("no listen address configured")
        return self._listen

    def connected_peers(self) -> list[str]:
        return sorted(p.pubkey for p in self._peers.values() if p.link is not None)

    def queue_len(self, pubkey: str) -> int:
        return len(self._peer(pubkey).queue)

    async def start(self) -> None:
        if self._listen is None:
            raise ValueError("no listen address: pass listen= or an address for our own key")
        host, port = self._listen
        self._server = await asyncio.start_server(self._on_inbound, host, port)
        self._log.info(
            "peer_listen", extra={"address": f"{host}:{self.listen_address[1]}", "me": self.me}
        )
        for peer in self._peers.values():
            if peer.address is not None:
                self._spawn(self._dial_loop(peer))

    async def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.link is not None:
                peer.link.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def send(self, pubkey: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for one peer. Never blocks; see the module notes on dropping."""
        peer = self._peer(pubkey)
        frame = self._encode(message)
        if frame is not None:
            self._enqueue(peer, frame)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for every other validator (encoded once)."""
        frame = self._encode(message)
        if frame is not None:
            for peer in self._peers.values():
                self._enqueue(peer, frame)

    # ---- outgoing -----------------------------------------------------------------------------

    def _peer(self, pubkey: str) -> _Peer:
        try:
            return self._peers[pubkey]
        except KeyError:
            raise ValueError(f"{pubkey!r} is not another validator") from None

    def _encode(self, message: dict[str, Any]) -> bytes | None:
        try:
            return encode_frame(message, self.frame_max)
        except FrameTooLarge as exc:
            self.metrics.drops["frame_too_large"] += 1
            self._log.error("peer_message_too_large", extra={"bytes": exc.length})
            return None

    def _enqueue(self, peer: _Peer, frame: bytes) -> None:
        if len(peer.queue) >= self.queue_max:
            peer.queue.popleft()
            self.metrics.drops["queue_full"] += 1
        peer.queue.append(frame)
        peer.wakeup.set()

    async def _write_loop(self, peer: _Peer, link: _Link) -> None:
        try:
            while True:
                if not peer.queue:
                    peer.wakeup.clear()
                    await peer.wakeup.wait()
                    continue
                # Write what is queued in one go, then wait for the socket once.
                frames = [peer.queue.popleft()]
                size = len(frames[0])
                while peer.queue and size < _WRITE_CHUNK_BYTES:
                    frames.append(peer.queue.popleft())
                    size += len(frames[-1])
                try:
                    for frame in frames:
                        link.writer.write(frame)
                    await asyncio.wait_for(link.writer.drain(), self.write_timeout_s)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    self.metrics.drops["link_lost"] += len(frames)
                    self._log.info(
                        "peer_write_failed", extra={"peer": peer.pubkey, "error": repr(exc)}
                    )
                    return
                self.metrics.frames_out += len(frames)
                self.metrics.bytes_out += size
        finally:
            self._drop_link(link)

    # ---- incoming -----------------------------------------------------------------------------

    async def _read_loop(self, peer: _Peer, link: _Link) -> None:
        try:
            while True:
                try:
                    message = await read_frame(link.reader, self.frame_max)
                except FrameError as exc:
                    self.metrics.bad_frames[(peer.pubkey, exc.reason)] += 1
                    self._log.warning(
                        "peer_bad_frame",
                        extra={"peer": peer.pubkey, "reason": exc.reason, "detail": exc.detail},
                    )
                    return
                except (asyncio.IncompleteReadError, OSError):
                    return
                self.metrics.frames_in += 1
                try:
                    self._on_message(peer.pubkey, message)
                except Exception:
                    self.metrics.handler_errors += 1
                    self._log.exception("peer_handler_error", extra={"peer": peer.pubkey})
        finally:
            self._drop_link(link)

    # ---- connections --------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def backoff_s(self, attempt: int) -> float:
        """Delay before dial ``attempt`` (0-based): half fixed, half jitter, capped."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 30)))
        return float(delay / 2 + self._rng.uniform(0, delay / 2))

    async def _dial_loop(self, peer: _Peer) -> None:
        assert peer.address is not None
        attempt = 0
        first = True
        while not self._stopping:
            if peer.link is not None:
                await peer.link.closed.wait()
                continue
            if not first:
                await asyncio.sleep(self.backoff_s(attempt))
                if peer.link is not None:
                    continue
            first = False
            if await self._dial(peer, peer.address):
                attempt = 0
            else:
                attempt += 1

    async def _dial(self, peer: _Peer, address: Address) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            self._dial_failed(peer, exc)
            return False
        try:
            _set_keepalive(writer)
            await asyncio.wait_for(
                self._handshake(reader, writer, expected=peer.pubkey), self.handshake_timeout_s
            )
        except HandshakeRefused as exc:
            self._refused(exc, writer, address, outbound=True)
            return False
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            self._dial_failed(peer, exc)
            writer.close()
            return False
        self._attach(peer, reader, writer, outbound=True)
        return True

    def _dial_failed(self, peer: _Peer, exc: Exception) -> None:
        self.metrics.dial_failures += 1
        self._log.debug("peer_dial_failed", extra={"peer": peer.pubkey, "error": repr(exc)})

    async def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopping or self._handshakes_pending >= self.handshakes_pending_max:
            writer.close()
            return
        self._handshakes_pending += 1
        try:
            _set_keepalive(writer)
            pubkey = await asyncio.wait_for(
                self._handshake(reader, writer, expected=None), self.handshake_timeout_s
            )
        except HandshakeRefused as exc:
            self._refused(exc, writer, writer.get_extra_info("peername"), outbound=False)
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            self.metrics.handshakes_refused["incomplete"] += 1
            self._log.debug("peer_inbound_incomplete", extra={"error": repr(exc)})
            writer.close()
            return
        finally:
            self._handshakes_pending -= 1
        if self._stopping:
            writer.close()
            return
        self._attach(self._peers[pubkey], reader, writer, outbound=False)

    def _refused(
        self,
        exc: HandshakeRefused,
        writer: asyncio.StreamWriter,
        address: Any,
        outbound: bool,
    ) -> None:
        self.metrics.handshakes_refused[exc.reason] += 1
        self._log.warning(
            "peer_handshake_refused",
            extra={
                "reason": exc.reason,
                "detail": exc.detail,
                "address": str(address),
                "outbound": outbound,
            },
        )
        if exc.reason != "refused_by_peer":
            with contextlib.suppress(Exception):
                writer.write(encode_frame({"type": "refused", "reason": exc.reason}))
        writer.close()

    def _attach(
        self,
        peer: _Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        outbound: bool,
    ) -> None:
        old = peer.link
        if old is not None:
            if old.outbound != outbound:
                dialer = self.me if outbound else peer.pubkey
                keep_new = dialer == min(self.me, peer.pubkey)
            else:
                keep_new = True
            self.metrics.duplicates_closed += 1
            if not keep_new:
                writer.close()
                return
            old.close()
        link = _Link(peer.pubkey, outbound, reader, writer)
        peer.link = link
        self.metrics.connects += 1
        link.tasks = [
            self._spawn(self._read_loop(peer, link)),
            self._spawn(self._write_loop(peer, link)),
        ]
        self._log.info("peer_connected", extra={"peer": peer.pubkey, "outbound": outbound})

    def _drop_link(self, link: _Link) -> None:
        if link.closed.is_set():
            return
        link.close()
        peer = self._peers[link.peer]
        if peer.link is link:
            peer.link = None
            self.metrics.disconnects += 1
            self._log.info("peer_disconnected", extra={"peer": link.peer})

    # ---- handshake ----------------------------------------------------------------------------

    def _auth_object(self, challenge: str, signer: str, peer: str) -> dict[str, str]:
        return {
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash,
            "challenge": challenge,
            "signer": signer,
            "peer": peer,
        }

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expected: str | None
    ) -> str:
        """Run both halves of the handshake; returns the authenticated peer's key."""
        my_challenge = os.urandom(CHALLENGE_LEN).hex()
        writer.write(
            encode_frame(
                {
                    "type": "hello",
                    "chain_id": self.chain_id,
                    "genesis_hash": self.genesis_hash,
                    "pubkey": self.me,
                    "challenge": my_challenge,
                }
            )
        )
        await writer.drain()
        hello = await self._read_handshake_frame(
            reader, "hello", ("chain_id", "genesis_hash", "pubkey", "challenge")
        )
        if hello["chain_id"] != self.chain_id or hello["genesis_hash"] != self.genesis_hash:
            raise HandshakeRefused(
                "chain_mismatch",
                f"peer is on chain {hello['chain_id']!r} / {hello['genesis_hash']}",
            )
        pubkey = str(hello["pubkey"])
        if not is_hex(pubkey, KEY_HEX_LEN) or not is_hex(hello["challenge"], CHALLENGE_LEN * 2):
            raise HandshakeRefused(
                "malformed", "pubkey or challenge is not hex of the right length"
            )
        if pubkey == self.me:
            raise HandshakeRefused("self", "peer claims our own key")
        if pubkey not in self._peers:
            raise HandshakeRefused("unknown_validator", f"{pubkey} is not a validator")
        if expected is not None and pubkey != expected:
            raise HandshakeRefused("wrong_key", f"dialed {expected}, peer claims {pubkey}")
        signature = self._signer.sign(
            TAG_HANDSHAKE, self._auth_object(hello["challenge"], self.me, pubkey)
        )
        writer.write(encode_frame({"type": "auth", "signature": signature}))
        await writer.drain()
        auth = await self._read_handshake_frame(reader, "auth", ("signature",))
        if not is_hex(auth["signature"], SIGNATURE_HEX_LEN) or not self._verifier.verify(
            pubkey,
            TAG_HANDSHAKE,
            self._auth_object(my_challenge, pubkey, self.me),
            auth["signature"],
        ):
            raise HandshakeRefused("bad_signature", f"peer {pubkey} did not prove its key")
        return pubkey

    async def _read_handshake_frame(
        self, reader: asyncio.StreamReader, kind: str, fields: tuple[str, ...]
    ) -> dict[str, Any]:
        try:
            frame = await read_frame(reader, HANDSHAKE_FRAME_MAX)
        except FrameError as exc:
            raise HandshakeRefused("malformed", str(exc)) from exc
        if frame.get("type") == "refused":
            raise HandshakeRefused("refused_by_peer", str(frame.get("reason"))[:100])
        if frame.get("type") != kind or set(frame) != {"type", *fields}:
            raise HandshakeRefused("malformed", f"expected a {kind} frame")
        if not all(isinstance(frame[name], str) for name in fields):
            raise HandshakeRefused("malformed", f"{kind} fields must be strings")
        return frame


def _set_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
