"""HTTP hardening: what one client (or all of them) can make the node's API server hold or do.

The API is served by aiohttp; :func:`start_http` wraps its server so that

- **connections** are capped in total and per client address (past a cap the new connection is
  closed at once and counted), so HTTP can never take the descriptors the peer links need (the
  cap is also kept below the process's descriptor limit, which is raised to its hard limit);
- **idle** connections are closed after ``keepalive_s`` (aiohttp's default was an hour), and a
  connection that has sent part of a request but not its whole header for ``header_timeout_s``
  is closed (slow-header clients);
- **over-long request lines and headers**, and anything aiohttp's parser refuses, get the spec's
  JSON error (``414``/``431`` ``too_large``, ``400`` ``malformed_request``) instead of aiohttp's
  plain text, and the parser's complaints stay out of the logs (``node.logging_setup``);
- **per-client limits** (:func:`limits_middleware`): at most ``requests_in_flight_per_ip``
  requests of one address are handled at once and at most ``txs_per_s_per_ip`` transactions
  submitted per second (both 429 ``overloaded``).

Request bodies are parsed off the event loop with a bound on their JSON structure
(:func:`parse_body`), in an executor of their own, so at most ``PARSE_WORKERS`` bodies are
parsed at once whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from node.config import ConfigError, NodeConfig
from node.io_metrics import IoMetrics
from node.p2p.budget import TokenBucket

# Structure bound of a request body: JSON objects and arrays (counted as '{' and '[' bytes, a
# safe over-estimate). A full POST /v1/txs of 1,000 ordinary transactions holds about 6,000.
JSON_CONTAINERS_MAX = 65_536
PARSE_WORKERS = 1
FD_RESERVE = 256  # descriptors kept for peer links, the ledger, logs and the rest
LINE_MAX = 8190  # aiohttp's request line / header field limit
REAP_INTERVAL_S = 1.0
IP_STATE_MAX = 65_536  # per-address rate state kept at most (oldest forgotten)

_log = logging.getLogger("phalanx.api")


@dataclass(frozen=True)
class HttpLimits:
    connections_max: int = 1024
    connections_per_ip_max: int = 64
    keepalive_s: float = 75.0
    header_timeout_s: float = 10.0
    requests_in_flight_per_ip: int = 16
    txs_per_s_per_ip: float = 10_000.0


def http_limits(config: NodeConfig) -> HttpLimits:
    limits = config.limits
    return HttpLimits(
        connections_max=limits.http_connections_max,
        connections_per_ip_max=limits.http_connections_per_ip_max,
        keepalive_s=limits.http_keepalive_s,
        header_timeout_s=limits.http_header_timeout_s,
        requests_in_flight_per_ip=limits.http_requests_in_flight_per_ip,
        txs_per_s_per_ip=limits.http_txs_per_s_per_ip,
    )


def http_ssl(config: NodeConfig) -> ssl.SSLContext | None:
    """The HTTPS context if the configuration names a certificate; else None (plain HTTP)."""
    if config.http_tls is None:
        return None
    try:
        return server_ssl_context(config.http_tls.cert_file, config.http_tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"http_tls: cannot load {config.http_tls.cert_file} / {config.http_tls.key_file}: "
            f"{exc}; give a PEM certificate and its private key"
        ) from exc


class BodyTooComplex(ValueError):
    """A request body holds more JSON objects and arrays than the node parses."""


def check_body_structure(data: bytes, containers_max: int = JSON_CONTAINERS_MAX) -> None:
    """Refuse before parsing a body whose JSON structure is larger than ``containers_max``
    (bytes.count runs in C: this costs microseconds where parsing costs up to a second)."""
    containers = data.count(b"{") + data.count(b"[")
    if containers > containers_max:
        raise BodyTooComplex(
            f"the body holds about {containers} JSON objects and arrays; at most "
            f"{containers_max} are accepted per request"
        )


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


class _Conn:
    __slots__ = ("ip", "partial_since", "protocol", "transport")

    def __init__(self, ip: str, protocol: RequestHandler, transport: asyncio.Transport) -> None:
        self.ip = ip
        self.protocol = protocol
        self.transport = transport
        self.partial_since: float | None = None


class ConnectionGuard:
    """Counts, caps and reaps the server's connections (see the module notes)."""

    def __init__(self, limits: HttpLimits, metrics: IoMetrics | None) -> None:
        fd_soft = raise_fd_limit()
        self.connections_max = max(1, min(limits.connections_max, fd_soft - FD_RESERVE))
        self.limits = limits
        self.metrics = metrics
        self.conns: dict[int, _Conn] = {}
        self.per_ip: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self._reaper: asyncio.Task[None] | None = None

    def wrap(self, server: web.Server) -> Callable[[], RequestHandler]:
        """The protocol factory: aiohttp's own ``server()``, as a :class:`_GuardedHandler`."""
        kwargs: dict[str, Any] = server._kwargs  # the handler arguments AppRunner was given
        loop = asyncio.get_running_loop()

        def make() -> RequestHandler:
            return _GuardedHandler(self, server, loop=loop, **kwargs)

        return make

    def count(self, reason: str) -> None:
        self.refused[reason] += 1
        if self.metrics is not None:
            self.metrics.http_refused.labels(reason=reason).inc()

    def start(self) -> None:
        self._reaper = asyncio.ensure_future(self._reap())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            deadline = time.monotonic() - self.limits.header_timeout_s
            for conn in list(self.conns.values()):
                if conn.partial_since is not None and conn.partial_since < deadline:
                    conn.partial_since = None
                    self.count("header_timeout")
                    conn.transport.abort()


class _GuardedHandler(RequestHandler):
    """aiohttp's request handler, counted and capped by a :class:`ConnectionGuard`, answering
    what its parser refuses with the spec's JSON errors instead of plain text."""

    __slots__ = ("_conn", "_guard")

    def __init__(self, guard: ConnectionGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if len(guard.conns) >= guard.connections_max:
            guard.count("total_cap")
            transport.abort()  # type: ignore[attr-defined]
            return
        if guard.per_ip[ip] >= guard.limits.connections_per_ip_max:
            guard.count("per_ip_cap")
            transport.abort()  # type: ignore[attr-defined]
            return
        self._conn = _Conn(ip, self, transport)  # type: ignore[arg-type]
        guard.conns[id(self)] = self._conn
        guard.per_ip[ip] += 1
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        conn = self._guard.conns.pop(id(self), None)
        if conn is None:
            return  # refused in connection_made: aiohttp never saw it
        per_ip = self._guard.per_ip
        per_ip[conn.ip] -= 1
        if per_ip[conn.ip] <= 0:
            del per_ip[conn.ip]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        conn = self._conn
        if conn is not None:
            if self._request_count != before:
                conn.partial_since = None  # a whole request head arrived
            elif conn.partial_since is None and self._current_request is None:
                # Part of a head. Bytes that arrive while a request is being handled are its
                # body (clients often send it after the head), not a slow header: a
                # wait=commit may rightly take up to a minute.
                conn.partial_since = time.monotonic()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        return _json_error(status, exc)


def _json_error(status: int, exc: BaseException | None) -> web.StreamResponse:
    """aiohttp answers what its parser refuses with plain text; the spec wants JSON."""
    if status >= 500:
        _log.error("api_server_error", extra={"status": status, "error": repr(exc)[:200]})
        code, detail = "internal_error", "the node failed to answer this request; a bug"
    elif isinstance(exc, LineTooLong):
        status = 431
        code = "too_large"
        detail = (
            f"the request line or a header is longer than {LINE_MAX} bytes; shorten the "
            "URL or the header"
        )
    elif isinstance(exc, BadHttpMessage):
        code, detail = "malformed_request", "the request is not valid HTTP/1.1"
    else:
        code, detail = "malformed_request", f"HTTP error {status}"
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":"))
    response = web.Response(status=status, text=body, content_type="application/json")
    response.force_close()
    return response


class ClientLimiter:
    """Per-address concurrency and transaction-rate limits for the request handlers."""

    def __init__(self, limits: HttpLimits, metrics: IoMetrics | None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.in_flight: Counter[str] = Counter()
        self._buckets: dict[str, TokenBucket] = {}

    def limited(self, reason: str) -> web.Response:
        if self.metrics is not None:
            self.metrics.http_limited.labels(reason=reason).inc()
        detail = {
            "in_flight": "too many requests of this client are being handled; retry shortly",
            "tx_rate": "this client submits transactions faster than the node accepts; slow down",
        }[reason]
        body = json.dumps({"error": "overloaded", "detail": detail}, separators=(",", ":"))
        return web.Response(
            status=429, text=body, content_type="application/json", headers={"Retry-After": "1"}
        )

    def take_txs(self, ip: str, count: int) -> bool:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= IP_STATE_MAX:
                self._buckets.pop(next(iter(self._buckets)))
            rate = self.limits.txs_per_s_per_ip
            bucket = self._buckets[ip] = TokenBucket(rate, max(2 * rate, 1000.0))
        return bucket.spend(count)


LIMITER: web.AppKey[ClientLimiter] = web.AppKey("phalanx_client_limiter", ClientLimiter)
PARSER: web.AppKey[ThreadPoolExecutor] = web.AppKey("phalanx_body_parser", ThreadPoolExecutor)
INLINE_PARSE_BYTES_MAX = 8 * 1024  # a few transactions: parsed and decoded on the loop

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def limits_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    limiter = request.app.get(LIMITER)
    if limiter is None or (request.method in ("GET", "HEAD") and request.path == "/v1/events"):
        return await handler(request)  # event streams have their own subscriber cap
    ip = request.remote or "?"
    if limiter.in_flight[ip] >= limiter.limits.requests_in_flight_per_ip:
        return limiter.limited("in_flight")
    if request.method == "POST" and not limiter.take_txs(ip, 1):
        return limiter.limited("tx_rate")
    limiter.in_flight[ip] += 1
    try:
        return await handler(request)
    finally:
        limiter.in_flight[ip] -= 1
        if limiter.in_flight[ip] <= 0:
            del limiter.in_flight[ip]


def charge_txs(request: web.Request, count: int) -> bool:
    """Charge the client for ``count`` more transactions of one request (the first is charged by
    the middleware); False if that exceeds its rate (answer 429)."""
    limiter = request.app.get(LIMITER)
    if limiter is None or count <= 1:
        return True
    return limiter.take_txs(request.remote or "?", count - 1)


def limited_response(request: web.Request) -> web.Response:
    return request.app[LIMITER].limited("tx_rate")


async def parse_body(request: web.Request, data: bytes, parse: Callable[[bytes], Any]) -> Any:
    """``parse(data)`` after the structure check, in the body-parsing executor (or inline when
    the app has none, as in unit tests of the handlers, or for a small body such as one
    transaction: its parse costs less than the hand-off to a thread and back)."""
    check_body_structure(data)
    executor = request.app.get(PARSER)
    if executor is None or len(data) <= INLINE_PARSE_BYTES_MAX:
        return parse(data)
    return await asyncio.get_running_loop().run_in_executor(executor, parse, data)


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The optional HTTPS context of the API (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=512)
        self._guard = guard

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


@dataclass
class HttpServer:
    runner: web.AppRunner
    site: GuardedSite
    guard: ConnectionGuard
    parser: ThreadPoolExecutor

    @property
    def port(self) -> int:
        return self.site.port

    async def stop(self) -> None:
        await self.guard.stop()
        await self.runner.cleanup()
        self.parser.shutdown(wait=False, cancel_futures=True)


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    limits: HttpLimits,
    metrics: IoMetrics | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HttpServer:
    """Serve ``app`` on ``host:port`` with the limits of the module notes."""
    parser = ThreadPoolExecutor(PARSE_WORKERS, thread_name_prefix="http-parse")
    app[LIMITER] = ClientLimiter(limits, metrics)
    app[PARSER] = parser
    app.middlewares.insert(0, limits_middleware)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.keepalive_s,
        max_line_size=LINE_MAX,
        max_field_size=LINE_MAX,
        max_headers=64,
        lingering_time=2.0,
    )
    await runner.setup()
    guard = ConnectionGuard(limits, metrics)
    site = GuardedSite(runner, host, port, guard, ssl_context)
    await site.start()
    guard.start()
    return HttpServer(runner, site, guard, parser)
