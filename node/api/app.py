"""The HTTP API of a node (spec §6), as an aiohttp application.

:func:`create_app` takes every collaborator in an :class:`ApiContext` (the ledger reader, the
pending pool, a status callable, the event hub, the commit waiters, the metrics), so tests run it
with fakes or a real :class:`~ledger.store.LedgerStore` in a temporary directory.

Errors always answer ``{"error": "<code>", "detail": "<sentence>"}``: handlers raise
:class:`ApiError`, and :func:`error_middleware` also turns every aiohttp ``HTTPException`` (404
of the router, 405, 413 of the body limit...) into that shape. Anything else that escapes a
handler is a bug: it is logged with its traceback and answered 500 ``internal_error``.

Error codes: ``malformed_tx``, ``bad_signature``, ``wrong_chain``, ``too_large``
(400/400/400/413, from :mod:`ledger.transaction`); ``insufficient_fee`` (400, from
:mod:`node.pool`); ``malformed_request`` (400, a body that is not what the endpoint takes);
``invalid_query``, ``invalid_tx_id``, ``invalid_seq``, ``invalid_key``, ``invalid_pubkey`` (400);
``too_many_txs`` (413); ``pool_full``, ``overloaded`` (429);
``unknown_tx``, ``unknown_block``, ``unknown_key``, ``not_found`` (404);
``method_not_allowed`` (405); ``not_acceptable`` (406); ``diverged``, ``min_seq_not_reached``,
``not_certified``, ``damaged`` (503: the node cannot answer now); ``internal_error`` (500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from aiohttp import web

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalJsonError, parse_json
from crypto.hexcodec import HASH_HEX_LEN, KEY_HEX_LEN, is_hex
from crypto.signing import is_valid_public_key
from ledger.store import StoreError
from ledger.transaction import (
    BAD_SIGNATURE,
    BODY_BYTES_MAX,
    INSUFFICIENT_FEE,
    MALFORMED,
    TOO_LARGE,
    WRONG_CHAIN,
    TxError,
    decode_transaction,
)
from node.api.events import CommitWaiters, EventHub, TooManyWaiters
from node.api.evidence import EvidenceSource, register_evidence_routes
from node.api.limits import BodyTooComplex, charge_txs, limited_response, parse_body
from node.api.openapi import openapi_document
from node.api.operator import OperatorContext, register_operator_routes
from node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from node.metrics import NodeMetrics
from node.pool import POOL_FULL, STATUS_COMMITTED, STATUS_PENDING, SubmitResult

BODY_MAX_BYTES_DEFAULT = 1024 * 1024
TX_BYTES_MAX = 4 * BODY_BYTES_MAX  # a single transaction's JSON text, escapes included
TXS_MAX = 1_000
WAIT_TIMEOUT_MS_DEFAULT = 10_000
WAIT_TIMEOUT_MS_MAX = 60_000
KEY_BYTES_MAX = 256
SSE_KEEPALIVE_S_DEFAULT = 15.0
SSE_REPLAY_CHUNK = 64  # blocks replayed between two looks at the head

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
TEXT = "text/plain"

_log = logging.getLogger("phalanx.api")

_SEQ_RE = re.compile(r"[1-9][0-9]{0,15}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,15}")

_TX_ERROR_STATUS = {
    MALFORMED: 400,
    BAD_SIGNATURE: 400,
    WRONG_CHAIN: 400,
    INSUFFICIENT_FEE: 400,
    TOO_LARGE: 413,
    POOL_FULL: 429,
}

_HTTP_ERROR_CODES = {
    400: "malformed_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "too_large",
    414: "too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    431: "too_large",
}


class StoreReader(Protocol):
    """The ledger as the API reads it (``ledger.store.LedgerStore`` is one)."""

    def head(self) -> tuple[int, str]: ...

    def block(self, seq: int) -> dict[str, Any] | None: ...

    def block_event(self, seq: int) -> dict[str, Any] | None: ...

    def receipt(self, tx_id: str) -> dict[str, Any] | None: ...

    def is_committed(self, tx_id: str) -> bool: ...

    def get_state(self, key: str) -> dict[str, Any] | None: ...

    def balance(self, pubkey: str) -> int: ...

    def account(self, pubkey: str) -> dict[str, Any]: ...

    def tx_location(self, tx_id: str) -> tuple[int, int] | None: ...

    def execution(self, seq: int) -> dict[str, Any] | None: ...

    def proven_state(self, key: str) -> dict[str, Any]: ...

    def proven_balance(self, pubkey: str) -> dict[str, Any]: ...


class ExecutionPort(Protocol):
    """Execution certificates as the API waits for them (``node.execution_votes`` is one)."""

    async def wait_certified(self, seq: int, timeout_s: float) -> dict[str, Any] | None: ...

    async def wait_executed(self, seq: int, timeout_s: float) -> bool: ...

    @property
    def diverged(self) -> Any: ...


class PoolPort(Protocol):
    """The pending pool as the API uses it (``node.pool.Pool`` is one)."""

    async def submit(self, wires: Sequence[Any], relay: bool = True) -> list[SubmitResult]: ...

    def contains(self, tx_id: str) -> bool: ...


@dataclass
class ApiContext:
    """Everything the API needs. ``status`` returns the ``GET /v1/status`` object."""

    store: StoreReader
    pool: PoolPort
    status: Callable[[], Mapping[str, Any]]
    events: EventHub
    waiters: CommitWaiters
    metrics: NodeMetrics | None = None
    body_max_bytes: int = BODY_MAX_BYTES_DEFAULT
    sse_keepalive_s: float = SSE_KEEPALIVE_S_DEFAULT
    operator: OperatorContext | None = None  # health, peers, dashboard (node.api.operator)
    evidence: EvidenceSource | None = None  # GET /v1/evidence (node.api.evidence)
    # Execution certificates (wait=commit, proven reads, divergence); None: receipts and proofs
    # carry what the ledger holds, nothing is waited for.
    execution: ExecutionPort | None = None


CONTEXT: web.AppKey[ApiContext] = web.AppKey("phalanx_api_context", ApiContext)


class ApiError(Exception):
    """A refusal: answered ``status`` with ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def create_app(context: ApiContext) -> web.Application:
    """The aiohttp application serving spec §6 over ``context``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=context.body_max_bytes)
    app[CONTEXT] = context
    app.router.add_post("/v1/tx", post_tx)
    app.router.add_post("/v1/txs", post_txs)
    app.router.add_get("/v1/tx/{tx_id}", get_tx)
    app.router.add_get("/v1/blocks/{seq}", get_block)
    app.router.add_get("/v1/state/{key:.+}", get_state)
    app.router.add_get("/v1/accounts/{pubkey}", get_account)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/events", get_events, allow_head=False)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/openapi.json", get_openapi)
    register_operator_routes(app, context.operator)
    register_evidence_routes(app, context.evidence)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    # Open event streams and commit waits would otherwise hold the server's shutdown.
    context = app[CONTEXT]
    context.events.close_all()
    context.waiters.close()


# ---- errors ---------------------------------------------------------------------------------


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": code, "detail": detail}, status=status, headers=headers, dumps=_dumps
    )


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        _log.exception("api_internal_error", extra={"method": request.method, "path": request.path})
        return error_response(
            500, "internal_error", "the node failed to answer this request; this is a bug"
        )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    code = _HTTP_ERROR_CODES.get(status, "malformed_request" if status < 500 else "internal_error")
    headers: dict[str, str] = {}
    if status == 404:
        detail = f"there is no resource at {request.path}"
    elif status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}"
    elif status == 413:
        limit = request.app[CONTEXT].body_max_bytes
        detail = f"the request body is larger than {limit} bytes"
    else:
        detail = exc.reason or f"HTTP error {status}"
    if status >= 500:
        _log.error("api_http_error", extra={"status": status, "path": request.path})
    return error_response(status, code, detail, headers)


# ---- request helpers ------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dumps)


def _context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


def _check_accept(request: web.Request, produced: str) -> None:
    """406 unless the Accept header (if any) admits ``produced`` (or our error JSON)."""
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return
    main_type = produced.split("/")[0]
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("*/*", f"{main_type}/*", produced):
            return
    raise ApiError(406, "not_acceptable", f"this resource is only available as {produced}")


def _check_query(request: web.Request, allowed: Sequence[str]) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(
                400, "invalid_query", f"unknown query parameter {name!r} (known: {known})"
            )
        if name in query:
            raise ApiError(400, "invalid_query", f"query parameter {name!r} is given twice")
        query[name] = value
    return query


def _query_uint(query: Mapping[str, str], name: str, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _UINT_RE.fullmatch(text) or int(text) > high:
        raise ApiError(400, "invalid_query", f"{name} must be an integer from 0 to {high}")
    return int(text)


async def _read_body(request: web.Request, limit: int) -> bytes:
    body_max = _context(request).body_max_bytes
    length = request.content_length
    if length is not None and length > body_max:
        raise ApiError(413, TOO_LARGE, f"the request body is larger than {body_max} bytes")
    data = await request.read()  # raises 413 past client_max_size
    if len(data) > limit:
        raise ApiError(413, TOO_LARGE, f"the request body is larger than {limit} bytes")
    return data


def _parse(data: bytes, code: str) -> Any:
    if not data:
        raise ApiError(400, code, "the request body is empty; send JSON")
    try:
        return parse_json(data)
    except CanonicalJsonError as exc:
        raise ApiError(400, code, str(exc)) from exc
    except RecursionError as exc:
        raise ApiError(400, code, "the JSON nests too deeply") from exc


async def _parse_request(request: web.Request, data: bytes, code: str) -> Any:
    """:func:`_parse` off the event loop, after a bound on the body's JSON structure
    (node.api.limits): a body of a million ``{}`` cost the loop half a second. The transactions
    found are also decoded there (``Pool.submit`` takes them decoded): decoding 1,000 of them
    cost the loop a quarter of a second per request."""
    try:
        return await parse_body(request, data, lambda body: _predecode(_parse(body, code)))
    except BodyTooComplex as exc:
        raise ApiError(413, TOO_LARGE, str(exc)) from exc


def _predecode(parsed: Any) -> Any:
    """``parsed`` with each well-formed transaction replaced by its :class:`ValidTx` (one, or
    each item of a list); what does not decode stays as it was, for the pool to refuse."""

    def one(wire: Any) -> Any:
        try:
            return decode_transaction(wire)
        except (TxError, RecursionError):
            return wire

    if isinstance(parsed, list):
        return [one(item) for item in parsed] if len(parsed) <= TXS_MAX else parsed
    return one(parsed)


def _tx_id_param(request: web.Request) -> str:
    tx_id = request.match_info["tx_id"]
    if not is_hex(tx_id, HASH_HEX_LEN):
        raise ApiError(400, "invalid_tx_id", f"a tx_id is {HASH_HEX_LEN} lowercase hex characters")
    return tx_id


# ---- transactions ---------------------------------------------------------------------------


async def post_tx(request: web.Request) -> web.Response:
    """``POST /v1/tx[?wait=commit[&timeout_ms=N]]``: submit one transaction."""
    _check_accept(request, JSON)
    query = _check_query(request, ("wait", "timeout_ms"))
    wait = query.get("wait")
    if wait is not None and wait != "commit":
        raise ApiError(400, "invalid_query", "wait must be 'commit' when given")
    timeout_ms = _query_uint(query, "timeout_ms", WAIT_TIMEOUT_MS_MAX)
    if timeout_ms is not None and wait is None:
        raise ApiError(400, "invalid_query", "timeout_ms is only meaningful with wait=commit")
    context = _context(request)
    _check_not_diverged(context)
    wire = await _parse_request(request, await _read_body(request, TX_BYTES_MAX), MALFORMED)
    (result,) = await context.pool.submit([wire])
    if result.error is not None:
        raise ApiError(
            _TX_ERROR_STATUS.get(result.error, 400), result.error, result.detail or result.error
        )
    tx_id = result.tx_id
    if tx_id is None:
        raise RuntimeError("the pool accepted a transaction without naming its tx_id")
    if result.status == STATUS_COMMITTED:
        return _committed_answer(context, tx_id)
    if wait is None:
        return _json({"tx_id": tx_id, "status": STATUS_PENDING}, 202)
    timeout_s = (WAIT_TIMEOUT_MS_DEFAULT if timeout_ms is None else timeout_ms) / 1000
    return await _wait_for_commit(context, tx_id, timeout_s)


async def _wait_for_commit(context: ApiContext, tx_id: str, timeout_s: float) -> web.Response:
    """Committed *and* certified (spec §8): the receipt then proves the result."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    answer = await _wait_for_order(context, tx_id, timeout_s)
    if answer.status != 200 or context.execution is None:
        return answer
    location = context.store.tx_location(tx_id)
    if location is None:
        raise RuntimeError(f"tx {tx_id} is committed but not indexed")
    remaining = deadline - asyncio.get_running_loop().time()
    if await context.execution.wait_certified(location[0], remaining) is None:
        return _json({"tx_id": tx_id, "status": STATUS_PENDING}, 202)
    return _committed_answer(context, tx_id)


async def _wait_for_order(context: ApiContext, tx_id: str, timeout_s: float) -> web.Response:
    pending = _json({"tx_id": tx_id, "status": STATUS_PENDING}, 202)
    try:
        future = context.waiters.register(tx_id)
    except TooManyWaiters:
        return pending  # accepted all the same; the client can poll GET /v1/tx/{tx_id}
    # Registered before this look at the store, with no await between: no commit is missed.
    if context.store.is_committed(tx_id):
        context.waiters.unregister(tx_id, future)
        return _committed_answer(context, tx_id)
    seq = await context.waiters.wait(future, tx_id, timeout_s)
    if seq is None or not context.store.is_committed(tx_id):
        return pending
    return _committed_answer(context, tx_id)


def _committed_answer(context: ApiContext, tx_id: str) -> web.Response:
    receipt = context.store.receipt(tx_id)
    if receipt is None:
        raise RuntimeError(f"tx {tx_id} is committed but has no receipt")
    return _json({"tx_id": tx_id, "status": STATUS_COMMITTED, "receipt": receipt})


async def post_txs(request: web.Request) -> web.Response:
    """``POST /v1/txs``: submit up to 1,000 transactions; one result per item, in order."""
    _check_accept(request, JSON)
    _check_query(request, ())
    context = _context(request)
    _check_not_diverged(context)
    body = await _read_body(request, context.body_max_bytes)
    wires = await _parse_request(request, body, "malformed_request")
    if not isinstance(wires, list):
        raise ApiError(400, "malformed_request", "the body must be a JSON array of transactions")
    if len(wires) > TXS_MAX:
        raise ApiError(
            413, "too_many_txs", f"a request holds at most {TXS_MAX} transactions, not {len(wires)}"
        )
    if not charge_txs(request, len(wires)):
        return limited_response(request)
    results = await context.pool.submit(wires)
    return _json([result.to_wire() for result in results], 202)


async def get_tx(request: web.Request) -> web.Response:
    """``GET /v1/tx/{tx_id}``: committed (with receipt), pending, or 404."""
    _check_accept(request, JSON)
    _check_query(request, ())
    tx_id = _tx_id_param(request)
    context = _context(request)
    receipt = context.store.receipt(tx_id)
    if receipt is not None:
        return _json({"tx_id": tx_id, "status": STATUS_COMMITTED, "receipt": receipt})
    if context.pool.contains(tx_id):
        return _json({"tx_id": tx_id, "status": STATUS_PENDING})
    raise ApiError(404, "unknown_tx", f"transaction {tx_id} is neither committed nor pending here")


# ---- ledger reads ---------------------------------------------------------------------------


async def get_block(request: web.Request) -> web.Response:
    _check_accept(request, JSON)
    _check_query(request, ())
    text = request.match_info["seq"]
    if not _SEQ_RE.fullmatch(text) or int(text) > MAX_SAFE_INTEGER:
        raise ApiError(400, "invalid_seq", "seq must be a decimal integer from 1 to 2^53 - 1")
    seq = int(text)
    block = _context(request).store.block(seq)
    if block is None:
        head = _context(request).store.head()[0]
        raise ApiError(404, "unknown_block", f"block {seq} is beyond the head {head}")
    return _json(block)


async def get_state(request: web.Request) -> web.Response:
    """``GET /v1/state/{key}[?proof=true][&min_seq=N[&timeout_ms=T]]``."""
    _check_accept(request, JSON)
    query = _check_query(request, READ_QUERY)
    key = _state_key(request)
    context = _context(request)
    proof, timeout_s = await _prepare_read(context, query)
    if proof:
        return await _proven(context, context.store.proven_state, key, timeout_s)
    entry = context.store.get_state(key)
    if entry is None:
        raise ApiError(404, "unknown_key", f"key {key!r} has no value")
    return _json(entry)


READ_QUERY = ("proof", "min_seq", "timeout_ms")
READ_TIMEOUT_MS_DEFAULT = 10_000


async def _prepare_read(context: ApiContext, query: Mapping[str, str]) -> tuple[bool, float]:
    """Check a read's query and wait for ``min_seq``; ``(proof wanted, time left in s)``."""
    _check_not_diverged(context)
    proof = query.get("proof")
    if proof not in (None, "true", "false"):
        raise ApiError(400, "invalid_query", "proof must be 'true' or 'false' when given")
    min_seq = _query_uint(query, "min_seq", MAX_SAFE_INTEGER)
    timeout_ms = _query_uint(query, "timeout_ms", WAIT_TIMEOUT_MS_MAX)
    if timeout_ms is not None and min_seq is None and proof != "true":
        raise ApiError(400, "invalid_query", "timeout_ms is only meaningful with min_seq or proof")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (READ_TIMEOUT_MS_DEFAULT if timeout_ms is None else timeout_ms) / 1000
    if min_seq is not None and context.store.head()[0] < min_seq:
        reached = context.execution is not None and await context.execution.wait_executed(
            min_seq, deadline - loop.time()
        )
        if not reached:
            head = context.store.head()[0]
            raise ApiError(
                503,
                "min_seq_not_reached",
                f"this node has executed up to block {head}, not yet block {min_seq}; retry "
                "later, with a longer timeout_ms, or ask another node",
            )
    return proof == "true", max(0.0, deadline - loop.time())


async def _proven(
    context: ApiContext, read: Callable[[str], dict[str, Any]], name: str, timeout_s: float
) -> web.Response:
    """A proven read as of the head block, with that block's execution certificate."""
    try:
        answer = read(name)
    except StoreError as exc:
        raise ApiError(503, "damaged", str(exc)) from exc
    seq = answer["seq"]
    certificate = None
    if seq > 0:
        if context.execution is not None:
            certificate = await context.execution.wait_certified(seq, timeout_s)
        else:
            certificate = context.store.execution(seq)
    if certificate is None:
        raise ApiError(
            503,
            "not_certified",
            f"block {seq}, the newest executed here, has no execution certificate yet (or the "
            "chain has no block yet); retry in a moment",
        )
    answer["execution"] = certificate
    return _json(answer)


def _check_not_diverged(context: ApiContext) -> None:
    divergence = None if context.execution is None else context.execution.diverged
    if divergence is not None:
        raise ApiError(503, "diverged", divergence.detail())


def _state_key(request: web.Request) -> str:
    """The key, percent-decoded from the raw path (``%2F`` is a slash inside the key)."""
    raw = request.rel_url.raw_path
    prefix = "/v1/state/"
    if not raw.startswith(prefix):
        raise ApiError(400, "invalid_key", "the key must follow /v1/state/")
    try:
        key = unquote_to_bytes(raw[len(prefix) :]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_key", "the key is not percent-encoded UTF-8") from exc
    if not 1 <= len(key.encode("utf-8")) <= KEY_BYTES_MAX:
        raise ApiError(400, "invalid_key", f"a key is 1 to {KEY_BYTES_MAX} UTF-8 bytes")
    return key


async def get_account(request: web.Request) -> web.Response:
    """``GET /v1/accounts/{pubkey}[?proof=true][&min_seq=N[&timeout_ms=T]]``."""
    _check_accept(request, JSON)
    query = _check_query(request, READ_QUERY)
    pubkey = request.match_info["pubkey"]
    if not is_hex(pubkey, KEY_HEX_LEN) or not is_valid_public_key(pubkey):
        raise ApiError(
            400,
            "invalid_pubkey",
            f"pubkey must be a valid Ed25519 public key as {KEY_HEX_LEN} lowercase hex characters",
        )
    context = _context(request)
    proof, timeout_s = await _prepare_read(context, query)
    if proof:
        return await _proven(context, context.store.proven_balance, pubkey, timeout_s)
    return _json(context.store.account(pubkey))


async def get_status(request: web.Request) -> web.Response:
    _check_accept(request, JSON)
    _check_query(request, ())
    return _json(dict(_context(request).status()))


async def get_metrics(request: web.Request) -> web.Response:
    _check_accept(request, TEXT)
    _check_query(request, ())
    metrics = _context(request).metrics
    body = metrics.render() if metrics is not None else b""
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


_OPENAPI_TEXT: bytes | None = None


async def get_openapi(request: web.Request) -> web.Response:
    global _OPENAPI_TEXT
    _check_accept(request, JSON)
    _check_query(request, ())
    if _OPENAPI_TEXT is None:
        _OPENAPI_TEXT = _dumps(openapi_document()).encode("utf-8")
    return web.Response(body=_OPENAPI_TEXT, content_type=JSON)


# ---- events ---------------------------------------------------------------------------------


def _sse(event: Mapping[str, Any]) -> bytes:
    return f"event: block\nid: {event['seq']}\ndata: {_dumps(event)}\n\n".encode()


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /v1/events[?from_seq=N]``: one ``block`` event per executed block (SSE).

    With ``from_seq`` (or a ``Last-Event-ID`` header) the blocks from there are replayed from
    the ledger, then the stream goes on live with no gap and no repeat.
    """
    _check_accept(request, EVENT_STREAM)
    query = _check_query(request, ("from_seq",))
    from_seq = _query_uint(query, "from_seq", MAX_SAFE_INTEGER)
    if from_seq is None:
        last_id = request.headers.get("Last-Event-ID", "").strip()
        if _UINT_RE.fullmatch(last_id) and int(last_id) < MAX_SAFE_INTEGER:
            from_seq = int(last_id) + 1
    context = _context(request)
    if context.events.full:
        raise ApiError(429, "overloaded", "too many event subscribers; retry later")
    response = web.StreamResponse(
        headers={
            "Content-Type": EVENT_STREAM,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client went away
        await _stream_events(context, response, from_seq)
    return response


async def _stream_events(
    context: ApiContext, response: web.StreamResponse, from_seq: int | None
) -> None:
    # Subscribe before the replay: a replaying client holds a subscriber slot like any other,
    # and every block executed from now on is queued, so the replay below (up to a head read
    # after this point) and the live events leave no gap; repeats are skipped by seq.
    try:
        subscription = context.events.subscribe()
    except TooManyWaiters:
        return
    last = -1 if from_seq is None else max(from_seq, 1) - 1
    try:
        while from_seq is not None:
            head = context.store.head()[0]
            if last >= head:
                break
            for seq in range(last + 1, min(head, last + SSE_REPLAY_CHUNK) + 1):
                event = context.store.block_event(seq)
                if event is None:  # the head only grows: a missing block is a damaged ledger
                    raise RuntimeError(f"block {seq} is missing below the head {head}")
                await response.write(_sse(event))
                last = seq
        while True:
            try:
                event = await asyncio.wait_for(subscription.queue.get(), context.sse_keepalive_s)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if event is None:
                return  # too slow, or the node is stopping: the client reconnects with from_seq
            if event["seq"] <= last:
                continue
            await response.write(_sse(event))
            last = event["seq"]
    finally:
        context.events.unsubscribe(subscription)
