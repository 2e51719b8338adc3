"""Authenticated, persistent links between validators: TLS 1.3 over TCP, bound to validator keys.

Each validator listens for peers and also dials every other validator, so a link comes back
whichever side restarts. Every connection is TLS 1.3 with mutual authentication, where each
side's certificate holds its own Ed25519 validator key and is signed by it (``node.p2p.tls``,
``crypto.certs``). The dialing side trusts only the key of the validator it dials; the listening
side trusts only the other validators of the genesis and reads the proven key back from the
certificate. TLS binds the proof to this very connection, so nobody can relay another node's
proof (the reflection attack on the old challenge/response handshake). Then, inside TLS, each
side sends one ``{"type": "hello", "chain_id", "genesis_hash", "instance"}`` frame (``instance``
is random per process) and checks the other's chain and genesis. A plaintext connection, a
certificate of another key, or a peer that is too slow is refused and counted in
``metrics.handshakes_refused`` by reason (``plaintext``, ``wrong_key``, ``timeout``...).

Rules that make the behaviour predictable:

- **Accept slots.** A connection must finish TLS and the hello within ``hello_timeout_s``. At
  most ``pending_max`` handshakes wait at once (plus ``pending_reserved`` kept for the hosts of
  configured validators) and at most ``pending_per_ip_max`` from one address; past either
  bound the **oldest** pending handshake is closed, never the new one, so a flood of idle
  sockets cannot keep a validator out for longer than the deadline.
- **One link per peer.** Both sides dial, so two links of one process may meet: between links
  of opposite directions the one dialed by the lower public key wins, on both sides alike. Any
  other new link never displaces a live one: the old link is probed (a ping must come back)
  and only replaced if it is dead. Two live links for one key from two processes (different
  ``instance``) mean someone runs a validator twice: logged once per key, counted in
  ``metrics.duplicate_validator_links``, and the new link is refused.
- **Liveness.** An idle link sends a ping every ``ping_interval_s``; a link that received
  nothing for ``dead_after_s`` is closed.
- **Outgoing queues** are per peer, survive reconnections and are bounded by ``queue_max``
  frames and ``queue_bytes_max`` bytes. When full the **oldest** frames are dropped
  (``drops["queue_full"]``): consensus messages are superseded by newer ones.
- **Incoming frames** are decoded off the event loop (one at a time per link, so a peer cannot
  queue work), and each peer has budgets (``PeerBudgets``: bytes, frames, decoding CPU, invalid
  messages reported through :meth:`PeerNetwork.penalize`). A bad frame or an exhausted budget
  disconnects the peer and keeps it away for a back-off that doubles per offence
  (``metrics.penalties``).
- **Reconnection** waits ``min(backoff_max_s, backoff_base_s * 2**attempt)``, of which the
  second half is jitter drawn from the injected ``random.Random``; it resets once a link is up.
- **Logs** of refusals are throttled per reason and carry only clipped remote strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import ssl
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crypto.hexcodec import KEY_HEX_LEN, is_hex
from crypto.signing import Signer
from node.logging_setup import LogThrottle, clip
from node.p2p.budget import PeerBudgets, TokenBucket
from node.p2p.framing import (
    FRAME_MAX_DEFAULT,
    FrameError,
    FrameTooLarge,
    decode_payload,
    encode_frame,
    read_frame,
    read_payload,
)
from node.p2p.tls import LinkTls, peer_public_key

HANDSHAKE_FRAME_MAX = 4096  # the hello is a few hundred bytes
INSTANCE_LEN = 16
_WRITE_CHUNK_BYTES = 1 << 20  # the writer moves up to about this much to the socket per drain
_PING = encode_frame({"type": "link-ping"})
_PONG = encode_frame({"type": "link-pong"})
_PING_PAYLOAD = _PING[4:]
_PONG_PAYLOAD = _PONG[4:]
DECODE_WORKERS = 2
# Frames up to this size (votes, checkpoints, small proposals: most of consensus) are decoded
# on the loop: a decode of a few hundred microseconds at most is cheaper than the hand-off to a
# worker thread and back, which cost a commit several milliseconds per hop on a busy machine.
# Larger ones go to the workers; the peer is charged the decoding CPU either way.
INLINE_DECODE_BYTES_MAX = 16 * 1024
RETIRE_S = 2.0  # a link that lost a tie-break is closed for good after this

Address = tuple[str, int]
OnMessage = Callable[[str, dict[str, Any], int], None]  # (sender, message, frame bytes)

_log = logging.getLogger("phalanx.peers")


class HandshakeRefused(Exception):
    """The link set-up failed. ``reason`` is a short metric label (``wrong_key``, ...)."""

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
    pending_evicted: Counter[str] = field(default_factory=Counter)  # total / per_ip
    penalties: Counter[tuple[str, str]] = field(default_factory=Counter)  # (peer, reason)
    duplicate_validator_links: int = 0
    dial_failures: int = 0
    connects: int = 0
    disconnects: int = 0
    duplicates_closed: int = 0
    dead_links: int = 0
    handler_errors: int = 0


class _Link:
    """One authenticated connection to a peer, with its reader, writer and keep-alive tasks."""

    def __init__(
        self,
        peer: str,
        outbound: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        instance: str,
        address: str,
    ) -> None:
        self.peer = peer
        self.outbound = outbound
        self.reader = reader
        self.writer = writer
        self.instance = instance
        self.address = address
        self.closed = asyncio.Event()
        self.received = asyncio.Event()  # set on every frame (the probe waits on it)
        self.last_rx = time.monotonic()
        self.last_tx = time.monotonic()
        self.tasks: list[asyncio.Task[None]] = []
        self.retiring = False  # lost a tie-break: still read until the other end closes it

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _abort(self.writer)
            for task in self.tasks:
                if task is not asyncio.current_task():
                    task.cancel()


@dataclass
class _Peer:
    pubkey: str
    address: Address | None
    budgets: PeerBudgets
    queue: deque[bytes] = field(default_factory=deque)
    queue_bytes: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    link: _Link | None = None
    down_since: float | None = None  # monotonic time our link to it dropped; None while up
    refused: bool = False  # since the link dropped, a dial found nothing listening (a crash)
    banned_until: float = 0.0
    strikes: int = 0
    duplicate_logged: bool = False
    bytes_in: TokenBucket = field(init=False)
    frames_in: TokenBucket = field(init=False)
    decode_cpu: TokenBucket = field(init=False)
    invalid: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        b = self.budgets
        self.bytes_in = TokenBucket(b.bytes_per_s, b.bytes_burst)
        self.frames_in = TokenBucket(b.frames_per_s, b.frames_burst)
        self.decode_cpu = TokenBucket(b.decode_cpu_per_s, b.decode_cpu_burst)
        self.invalid = TokenBucket(b.invalid_per_s, b.invalid_burst)


@dataclass
class _Pending:
    ip: str
    reserved: bool
    task: asyncio.Task[None] | None = None  # the handshake; cancelling it closes the socket
    evicted: bool = False


def _timed_decode(payload: bytes) -> tuple[dict[str, Any] | FrameError, float]:
    """Decode; returns the message (or the error) and the CPU time of the calling thread."""
    start = time.thread_time()
    try:
        result: dict[str, Any] | FrameError = decode_payload(payload)
    except FrameError as exc:
        result = exc
    except RecursionError:
        result = FrameError("undecodable", "the payload nests too deeply")
    return result, time.thread_time() - start


def _ssl_reason(exc: BaseException) -> str:
    """A metric label for why a TLS handshake failed."""
    text = str(exc).upper()
    if "DID_NOT_RETURN" in text or "CERTIFICATE_REQUIRED" in text:
        return "no_certificate"
    if any(
        word in text
        for word in (
            "WRONG_VERSION",
            "HTTP_REQUEST",
            "UNEXPECTED_RECORD",
            "PACKET_LENGTH",
            "RECORD_LAYER",
            "UNKNOWN_PROTOCOL",
        )
    ):
        return "plaintext"
    if "CERTIFICATE" in text or "VERIFY" in text:
        return "wrong_key"
    if "VERSION" in text or "PROTOCOL" in text:
        return "tls_version"
    return "tls_failed"


class PeerNetwork:
    """Links from this validator (``my_signer``) to every other validator of ``validators``.

    ``validators`` maps every validator's public key (ours included) to the ``(host, port)`` it
    listens on for peers, or None for a peer we never dial (it must dial us); our own address is
    the default for ``listen``. ``on_message(sender, message)`` is called on the event loop for
    every frame received from an authenticated peer. Call ``await start()`` once,
    ``send``/``broadcast`` any time (they never block), and ``await stop()`` at the end.

    ``insecure_plaintext_links`` is for benchmarks that measure what TLS costs, and nothing
    else: peers are then identified by what they claim, so anyone can impersonate a validator.
    The node's configuration cannot turn it on.
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
        queue_bytes_max: int = 32 * 1024 * 1024,
        hello_timeout_s: float = 1.0,
        handshake_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 5.0,
        penalty_base_s: float = 1.0,
        penalty_max_s: float = 60.0,
        pending_max: int = 64,
        pending_reserved: int = 16,
        pending_per_ip_max: int = 8,
        ping_interval_s: float = 1.0,
        dead_after_s: float = 10.0,
        probe_timeout_s: float = 2.0,
        budgets: PeerBudgets | None = None,
        tls: LinkTls | None = None,
        insecure_plaintext_links: bool = False,
        rng: random.Random | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.me = my_signer.public_key
        if self.me not in validators:
            raise ValueError(f"our key {self.me} is not in the validator set")
        if frame_max < 1 or queue_max < 1 or queue_bytes_max < frame_max + 4:
            raise ValueError("frame_max and queue_max must be positive, queue_bytes_max >= frame")
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.instance = os.urandom(INSTANCE_LEN).hex()
        self._on_message = on_message
        self._listen = listen if listen is not None else validators[self.me]
        self.frame_max = frame_max
        self.queue_max = queue_max
        self.queue_bytes_max = queue_bytes_max
        self.hello_timeout_s = hello_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.write_timeout_s = write_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.penalty_base_s = penalty_base_s
        self.penalty_max_s = penalty_max_s
        self.pending_max = pending_max
        self.pending_reserved = pending_reserved
        self.pending_per_ip_max = pending_per_ip_max
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.probe_timeout_s = probe_timeout_s
        self.plaintext = insecure_plaintext_links
        if tls is None and not insecure_plaintext_links:
            seed = getattr(my_signer, "seed", None)
            if not isinstance(seed, bytes):
                raise ValueError("TLS links need the validator's Ed25519 seed (an Ed25519Signer)")
            tls = LinkTls(seed, self.me, validators)
        self._tls = tls
        self._rng = rng if rng is not None else random.Random()
        self._log = logger if logger is not None else _log
        self._throttle = LogThrottle()
        budgets = budgets if budgets is not None else PeerBudgets()
        self._peers = {
            key: _Peer(key, address, budgets)
            for key, address in validators.items()
            if key != self.me
        }
        self._validator_hosts = {
            address[0] for key, address in validators.items() if address is not None
        }
        self.metrics = PeerMetrics()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # oldest first
        self._pending_ids = 0
        self._decoder = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="frame-decode")
        self._stopping = False

    # ---- public API -------------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """Where the server actually listens (resolves port 0 after ``start``)."""
        if self._listener is not None:
            host, port = self._listener.getsockname()[:2]
            return (host, port)
        if self._listen is None:
            raise RuntimeError("no listen address configured")
        return self._listen

    def connected_peers(self) -> list[str]:
        return sorted(p.pubkey for p in self._peers.values() if p.link is not None)

    def lost_peers(self, for_s: float) -> frozenset[str]:
        """Peers we had a link to that dropped and has not come back: at least ``for_s`` ago
        (a cut cable, a hung host), or at once if a dial since found nothing listening (a
        crashed process: its port refuses). Peers never reached since we started are not
        listed: that is no evidence about them, only that we are new."""
        now = time.monotonic()
        return frozenset(
            p.pubkey
            for p in self._peers.values()
            if p.link is None
            and p.down_since is not None
            and (p.refused or now - p.down_since >= for_s)
        )

    def queue_len(self, pubkey: str) -> int:
        return len(self._peer(pubkey).queue)

    def queue_bytes(self, pubkey: str) -> int:
        return self._peer(pubkey).queue_bytes

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self._listen is None:
            raise ValueError("no listen address: pass listen= or an address for our own key")
        host, port = self._listen
        # Our own accept loop (not asyncio's server): an accept slot is taken, and may be
        # evicted, before any TLS work is spent on a connection.
        self._listener = socket.create_server((host, port), backlog=256, reuse_port=False)
        self._listener.setblocking(False)
        self._spawn(self._accept_loop(self._listener))
        self._log.info(
            "peer_listen",
            extra={
                "address": f"{host}:{self.listen_address[1]}",
                "me": self.me,
                "tls": not self.plaintext,
            },
        )
        if self.plaintext:
            self._log.warning("peer_links_plaintext_insecure", extra={"why": "benchmark only"})
        for peer in self._peers.values():
            if peer.address is not None:
                self._spawn(self._dial_loop(peer))

    async def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
        for peer in self._peers.values():
            if peer.link is not None:
                peer.link.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):  # let the aborted transports run their connection_lost callbacks
            await asyncio.sleep(0)
        self._decoder.shutdown(wait=False, cancel_futures=True)

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

    def penalize(self, pubkey: str, reason: str, amount: float = 1.0) -> bool:
        """Charge ``pubkey`` for ``amount`` invalid messages (a bad signature, a malformed
        relay...). Past its budget the peer is disconnected and kept away; returns True then."""
        peer = self._peers.get(pubkey)
        if peer is None:
            return False
        if peer.invalid.charge(amount):
            return False
        self._punish(peer, f"invalid:{reason}")
        return True

    def banned(self, pubkey: str) -> bool:
        return self._peer(pubkey).banned_until > time.monotonic()

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
        while peer.queue and (
            len(peer.queue) >= self.queue_max
            or peer.queue_bytes + len(frame) > self.queue_bytes_max
        ):
            peer.queue_bytes -= len(peer.queue.popleft())
            self.metrics.drops["queue_full"] += 1
        peer.queue.append(frame)
        peer.queue_bytes += len(frame)
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
                peer.queue_bytes -= size
                try:
                    for frame in frames:
                        link.writer.write(frame)
                    link.last_tx = time.monotonic()
                    await asyncio.wait_for(link.writer.drain(), self.write_timeout_s)
                except (OSError, TimeoutError, RuntimeError) as exc:
                    self.metrics.drops["link_lost"] += len(frames)
                    self._log.info(
                        "peer_write_failed", extra={"peer": peer.pubkey, "error": clip(exc)}
                    )
                    return
                self.metrics.frames_out += len(frames)
                self.metrics.bytes_out += size
        finally:
            self._drop_link(link)

    async def _keepalive_loop(self, link: _Link) -> None:
        try:
            while True:
                await asyncio.sleep(self.ping_interval_s / 2)
                now = time.monotonic()
                if now - link.last_rx > self.dead_after_s:
                    self.metrics.dead_links += 1
                    self._log.info("peer_link_dead", extra={"peer": link.peer})
                    return
                if now - link.last_tx >= self.ping_interval_s:
                    link.writer.write(_PING)
                    link.last_tx = now
        except (OSError, RuntimeError):
            return
        finally:
            self._drop_link(link)

    # ---- incoming -----------------------------------------------------------------------------

    async def _read_loop(self, peer: _Peer, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    payload = await read_payload(link.reader, self.frame_max)
                except FrameError as exc:
                    self._bad_frame(peer, exc)
                    return
                except (asyncio.IncompleteReadError, OSError, ssl.SSLError):
                    return
                link.last_rx = time.monotonic()
                link.received.set()
                if not peer.bytes_in.spend(len(payload) + 4):
                    self._punish(peer, "bytes_budget")
                    return
                if not peer.frames_in.spend(1):
                    self._punish(peer, "frames_budget")
                    return
                if payload == _PING_PAYLOAD:
                    if not link.retiring:
                        link.writer.write(_PONG)
                    continue
                if payload == _PONG_PAYLOAD:
                    continue
                # Big ones off the loop, one frame at a time per link: a peer cannot queue
                # decoding work.
                if len(payload) <= INLINE_DECODE_BYTES_MAX:
                    result, cpu = _timed_decode(payload)
                else:
                    result, cpu = await loop.run_in_executor(self._decoder, _timed_decode, payload)
                if not peer.decode_cpu.charge(cpu):
                    self._punish(peer, "decode_cpu_budget")
                    return
                if isinstance(result, FrameError):
                    self._bad_frame(peer, result)
                    return
                self.metrics.frames_in += 1
                try:
                    self._on_message(peer.pubkey, result, len(payload))
                except Exception:
                    self.metrics.handler_errors += 1
                    self._log.exception("peer_handler_error", extra={"peer": peer.pubkey})
        except RuntimeError:  # the decoder was shut down: we are stopping
            return
        finally:
            self._drop_link(link, force=True)

    def _bad_frame(self, peer: _Peer, exc: FrameError) -> None:
        self.metrics.bad_frames[(peer.pubkey, exc.reason)] += 1
        self._punish(peer, f"bad_frame:{exc.reason}", detail=exc.detail)

    def _punish(self, peer: _Peer, reason: str, detail: str = "") -> None:
        """Disconnect ``peer`` and keep it away for a back-off doubling per offence."""
        peer.strikes += 1
        delay = min(self.penalty_max_s, self.penalty_base_s * 2 ** min(peer.strikes - 1, 20))
        peer.banned_until = time.monotonic() + delay
        self.metrics.penalties[(peer.pubkey, reason)] += 1
        suppressed = self._throttle.allow(f"penalty:{peer.pubkey}:{reason}")
        if suppressed is not None:
            self._log.warning(
                "peer_penalized",
                extra={
                    "peer": peer.pubkey,
                    "reason": reason,
                    "detail": clip(detail),
                    "backoff_s": round(delay, 3),
                    "suppressed": suppressed,
                },
            )
        if peer.link is not None:
            peer.link.close()
            self._drop_link(peer.link)

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
            wait = peer.banned_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if await self._dial(peer, peer.address):
                attempt = 0
            else:
                attempt += 1

    async def _dial(self, peer: _Peer, address: Address) -> bool:
        try:
            if self._tls is None:
                connecting = asyncio.open_connection(*address)
            else:
                connecting = asyncio.open_connection(
                    *address,
                    ssl=self._tls.client(peer.pubkey),
                    server_hostname="",
                    ssl_handshake_timeout=self.handshake_timeout_s,
                )
            reader, writer = await asyncio.wait_for(
                connecting, self.connect_timeout_s + self.handshake_timeout_s
            )
        except ssl.SSLError as exc:
            self._refused(HandshakeRefused(_ssl_reason(exc), str(exc)), None, address, True)
            return False
        except (OSError, TimeoutError) as exc:
            self._dial_failed(peer, exc)
            return False
        try:
            _set_keepalive(writer)
            if self._tls is None:
                claimed, instance = await asyncio.wait_for(
                    self._plaintext_hello(reader, writer), self.handshake_timeout_s
                )
                if claimed != peer.pubkey:
                    raise HandshakeRefused("wrong_key", "the peer claims another key")
            else:
                instance = await asyncio.wait_for(
                    self._hello(reader, writer, expected=peer.pubkey), self.handshake_timeout_s
                )
        except HandshakeRefused as exc:
            self._refused(exc, writer, address, outbound=True)
            return False
        except (OSError, TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            self._dial_failed(peer, exc)
            _abort(writer)
            return False
        link = _Link(peer.pubkey, True, reader, writer, instance, f"{address[0]}:{address[1]}")
        return await self._attach(peer, link)

    def _dial_failed(self, peer: _Peer, exc: Exception) -> None:
        self.metrics.dial_failures += 1
        if isinstance(exc, ConnectionRefusedError) and peer.down_since is not None:
            peer.refused = True  # see lost_peers
        self._log.debug("peer_dial_failed", extra={"peer": peer.pubkey, "error": clip(exc)})

    # ---- accept slots -------------------------------------------------------------------------

    def _admit_pending(self, ip: str) -> tuple[int, _Pending]:
        """Take an accept slot for a new connection from ``ip``, closing the oldest pending
        handshake of the same pool (or of the same address) if there is no room."""
        reserved = ip in self._validator_hosts
        same_ip = [pid for pid, p in self._pending.items() if p.ip == ip]
        if len(same_ip) >= self.pending_per_ip_max:
            self._evict(same_ip[0], "per_ip")
        pool = [pid for pid, p in self._pending.items() if p.reserved == reserved]
        if len(pool) >= (self.pending_reserved if reserved else self.pending_max):
            self._evict(pool[0], "reserved" if reserved else "total")
        self._pending_ids += 1
        pending = _Pending(ip, reserved)
        self._pending[self._pending_ids] = pending
        return self._pending_ids, pending

    def _evict(self, pid: int, reason: str) -> None:
        pending = self._pending.pop(pid, None)
        if pending is not None:
            self.metrics.pending_evicted[reason] += 1
            pending.evicted = True
            if pending.task is not None:
                pending.task.cancel()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                conn, peername = await loop.sock_accept(listener)
            except OSError as exc:
                if self._stopping:
                    return
                # Out of descriptors or similar: say so (throttled) and keep accepting.
                if self._throttle.allow("accept_failed") is not None:
                    self._log.warning("peer_accept_failed", extra={"error": clip(exc)})
                await asyncio.sleep(0.05)
                continue
            ip = _normal_ip(str(peername[0]))
            pid, pending = self._admit_pending(ip)
            pending.task = self._spawn(self._on_inbound(conn, f"{ip}:{peername[1]}", pid))

    async def _on_inbound(self, conn: socket.socket, address: str, pid: int) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.hello_timeout_s):
                reader = asyncio.StreamReader(limit=2**16, loop=loop)
                protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    conn,
                    ssl=self._tls.server if self._tls is not None else None,
                    ssl_handshake_timeout=self.hello_timeout_s if self._tls is not None else None,
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                pubkey, instance = await self._accept_handshake(reader, writer)
        except HandshakeRefused as exc:
            self._refused(exc, writer, address, outbound=False)
            return
        except ssl.SSLError as exc:
            self._refused(HandshakeRefused(_ssl_reason(exc), str(exc)), writer, address, False)
            return
        except TimeoutError:
            self._refused(HandshakeRefused("timeout"), writer, address, outbound=False)
            return
        except asyncio.CancelledError:
            pending = self._pending.get(pid)
            if pending is None or not pending.evicted:
                if writer is not None:
                    _abort(writer)
                conn.close()
                raise
            self.metrics.handshakes_refused["evicted"] += 1
            if writer is not None:
                _abort(writer)
            return
        except (OSError, asyncio.IncompleteReadError, FrameError, RuntimeError) as exc:
            self.metrics.handshakes_refused["incomplete"] += 1
            self._log.debug("peer_inbound_incomplete", extra={"error": clip(exc)})
            if writer is not None:
                _abort(writer)
            return
        finally:
            self._pending.pop(pid, None)
            if writer is None:
                conn.close()  # no link came of it (a link's writer owns the socket otherwise)
        if self._stopping:
            _abort(writer)
            return
        await self._attach(
            self._peers[pubkey], _Link(pubkey, False, reader, writer, instance, address)
        )

    async def _accept_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, str]:
        if self._tls is not None:
            pubkey = peer_public_key(writer.get_extra_info("ssl_object"))
            if pubkey is None or pubkey == self.me or pubkey not in self._peers:
                raise HandshakeRefused(
                    "wrong_key", "the certificate holds no other validator's key"
                )
            instance = await self._hello(reader, writer, expected=pubkey)
            return pubkey, instance
        hello_key, instance = await self._plaintext_hello(reader, writer)
        return hello_key, instance

    def _refused(
        self,
        exc: HandshakeRefused,
        writer: asyncio.StreamWriter | None,
        address: Any,
        outbound: bool,
    ) -> None:
        self.metrics.handshakes_refused[exc.reason] += 1
        suppressed = self._throttle.allow(f"refused:{exc.reason}:{outbound}")
        if suppressed is not None:
            self._log.warning(
                "peer_handshake_refused",
                extra={
                    "reason": exc.reason,
                    "detail": clip(exc.detail),
                    "address": clip(address, 64),
                    "outbound": outbound,
                    "suppressed": suppressed,
                },
            )
        if writer is not None:
            # No goodbye frame: each side checks the other itself and logs its own reason, and
            # aborting (no TLS close_notify exchange) frees the socket at once.
            _abort(writer)

    async def _attach(self, peer: _Peer, link: _Link) -> bool:
        """Install ``link`` unless a live link to the same peer must be kept (module notes)."""
        if peer.banned_until > time.monotonic():
            self._refused(HandshakeRefused("backoff"), link.writer, link.address, link.outbound)
            return False
        old = peer.link
        if old is not None and old.instance == link.instance and old.outbound != link.outbound:
            # Both sides of one process dialed at once: keep the lower key's, on both sides.
            dialer = self.me if link.outbound else peer.pubkey
            self.metrics.duplicates_closed += 1
            if dialer != min(self.me, peer.pubkey):
                self._retire(peer, link, started=False)
                return False
            peer.link = None
            self._retire(peer, old, started=True)
        elif old is not None:
            if await self._alive(old):
                self.metrics.duplicates_closed += 1
                if old.instance != link.instance:
                    self._duplicate_validator(peer, old, link)
                self._refused(
                    HandshakeRefused("live_link_exists"), link.writer, link.address, link.outbound
                )
                return False
            old.close()
            self._drop_link(old)
            if peer.link is not None:  # another link won while we probed
                _abort(link.writer)
                return False
        peer.link = link
        peer.down_since, peer.refused = None, False
        self.metrics.connects += 1
        peer.wakeup.set()
        link.tasks = [
            self._spawn(self._read_loop(peer, link)),
            self._spawn(self._write_loop(peer, link)),
            self._spawn(self._keepalive_loop(link)),
        ]
        self._log.info("peer_connected", extra={"peer": peer.pubkey, "outbound": link.outbound})
        return True

    async def _alive(self, link: _Link) -> bool:
        """True if ``link`` still answers: something arrived very recently, or a ping now gets
        anything back within ``probe_timeout_s``."""
        if link.closed.is_set():
            return False
        if time.monotonic() - link.last_rx < min(0.5, self.ping_interval_s):
            return True
        link.received.clear()
        try:
            link.writer.write(_PING)
            await asyncio.wait_for(link.received.wait(), self.probe_timeout_s)
        except (TimeoutError, OSError, RuntimeError):
            return False
        return not link.closed.is_set()

    def _duplicate_validator(self, peer: _Peer, old: _Link, new: _Link) -> None:
        self.metrics.duplicate_validator_links += 1
        if not peer.duplicate_logged:
            peer.duplicate_logged = True  # once per key: the metric counts every occurrence
            self._log.error(
                "duplicate_validator_links",
                extra={
                    "peer": peer.pubkey,
                    "live_address": clip(old.address, 64),
                    "new_address": clip(new.address, 64),
                    "hint": "two processes run this validator's key; stop one of them",
                },
            )

    def _retire(self, peer: _Peer, link: _Link, started: bool) -> None:
        """Take ``link`` out of use after a tie-break without losing what either side already
        wrote on it: we stop writing on it, its reader keeps delivering, and it is closed
        ``RETIRE_S`` later (both sides resolve the same tie-break and do the same)."""
        link.retiring = True
        if started:
            for task in link.tasks[1:]:  # the writer and the keep-alive; the reader stays
                task.cancel()
        else:
            link.tasks = [self._spawn(self._read_loop(peer, link))]
        # Not closed at once: a TLS stream that we close stops handing us the other side's data.
        # The other side stops writing on it too; what is in flight arrives before the abort.
        asyncio.get_running_loop().call_later(RETIRE_S, link.close)

    def _drop_link(self, link: _Link, force: bool = False) -> None:
        if link.retiring and not force:
            return  # its reader ends it (see _retire)
        link.close()
        peer = self._peers[link.peer]
        if peer.link is link:
            peer.link = None
            peer.down_since, peer.refused = time.monotonic(), False
            self.metrics.disconnects += 1
            self._log.info("peer_disconnected", extra={"peer": link.peer})

    # ---- hello --------------------------------------------------------------------------------

    def _hello_frame(self, extra: Mapping[str, str] | None = None) -> bytes:
        return encode_frame(
            {
                "type": "hello",
                "chain_id": self.chain_id,
                "genesis_hash": self.genesis_hash,
                "instance": self.instance,
                **(extra or {}),
            }
        )

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expected: str
    ) -> str:
        """Inside TLS: exchange hellos; returns the peer's instance. ``expected`` is the key the
        TLS handshake proved (checked again here, whatever the trust store said)."""
        proven = peer_public_key(writer.get_extra_info("ssl_object"))
        if proven != expected:
            raise HandshakeRefused(
                "wrong_key", f"expected {expected[:16]}..., the link proved {str(proven)[:16]}..."
            )
        writer.write(self._hello_frame())
        await writer.drain()
        hello = await self._read_hello(reader, ("chain_id", "genesis_hash", "instance"))
        return str(hello["instance"])

    async def _plaintext_hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, str]:
        """Benchmark-only: the peer's key is whatever it claims."""
        writer.write(self._hello_frame({"pubkey": self.me}))
        await writer.drain()
        hello = await self._read_hello(reader, ("chain_id", "genesis_hash", "instance", "pubkey"))
        pubkey = hello["pubkey"]
        if pubkey not in self._peers:
            raise HandshakeRefused("unknown_validator", clip(pubkey, 70))
        return pubkey, hello["instance"]

    async def _read_hello(
        self, reader: asyncio.StreamReader, fields: tuple[str, ...]
    ) -> dict[str, Any]:
        try:
            frame = await read_frame(reader, HANDSHAKE_FRAME_MAX)
        except FrameError as exc:
            raise HandshakeRefused("malformed", exc.reason) from exc
        if frame.get("type") == "refused":
            raise HandshakeRefused("refused_by_peer", clip(frame.get("reason"), 40))
        if frame.get("type") != "hello" or set(frame) != {"type", *fields}:
            raise HandshakeRefused("malformed", "expected a hello frame")
        if not all(isinstance(frame[name], str) for name in fields):
            raise HandshakeRefused("malformed", "hello fields must be strings")
        if frame["chain_id"] != self.chain_id or frame["genesis_hash"] != self.genesis_hash:
            raise HandshakeRefused(
                "chain_mismatch",
                f"peer is on chain {clip(frame['chain_id'], 40)} "
                f"/ {clip(frame['genesis_hash'], 64)}",
            )
        if not is_hex(frame["instance"], INSTANCE_LEN * 2):
            raise HandshakeRefused("malformed", "instance is not hex of the right length")
        if "pubkey" in fields and not is_hex(frame["pubkey"], KEY_HEX_LEN):
            raise HandshakeRefused("malformed", "pubkey is not hex of the right length")
        return frame


def _normal_ip(ip: str) -> str:
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)
    return ip


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, without waiting for a TLS shutdown or for buffered data."""
    writer.transport.abort()


def _set_keepalive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
