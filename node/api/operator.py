"""The operator's endpoints (spec §8) and the dashboard served at ``/``.

=====================================  ===========================================================
``GET /v1/health``                     200 ``{"status": "ok"}``, else 503 ``{"status":
                                       "unhealthy", "reasons": [...]}``; each reason is
                                       ``"<code>: <sentence>"`` with code ``not_enough_peers``,
                                       ``catching_up``, ``halted`` or ``diverged``
``GET /v1/peers``                      one entry per other validator
``GET /v1/validators``                 chain_id, genesis_hash, n, f, q and the validators
``GET /v1/genesis``                    the genesis document
``GET /v1/blocks?from_seq=&limit=``    block summaries, ascending
``GET /v1/dashboard``                  not in the spec: what the dashboard polls (this node's
                                       status and health, every validator's last ``node-status``
                                       as relayed over the peer links, and the last minutes of
                                       committed tx/s and commit latency)
``GET /v1/dashboard/block/{seq}``     not in the spec: ``{"block", "tx_ids"}`` for the drill-down
``GET /``, ``GET /dashboard/{file}``   the dashboard's static page (``node/api/dashboard/``)
=====================================  ===========================================================

Why the dashboard asks its own node about the others: a page served by one node cannot read
another node's API (browsers refuse cross-origin reads by default, and the node does not know the
others' API addresses, only their peer addresses). Every node broadcasts a ``node-status``
summary to its peers each second (``node.consensus_log``); ``/v1/dashboard`` answers with those,
so one page shows the whole cluster as this node sees it, including who is unreachable.

Health reads ``OperatorContext.halted`` and ``OperatorContext.diverged``: callables returning
None, or a sentence saying why the node stopped serving (the runtime's ``halted_reason`` and
``diverged_reason`` attributes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from crypto.canonical import MAX_SAFE_INTEGER
from crypto.hashing import hash_object
from ledger.genesis import Genesis
from node.consensus_log import PeerTracker

BLOCKS_LIMIT_DEFAULT = 100
BLOCKS_LIMIT_MAX = 1_000
STATUS_STALE_S = 5.0  # a peer's node-status older than this is shown as unknown
DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@dataclass
class OperatorContext:
    """What the operator endpoints read from the node."""

    genesis: Genesis
    pubkey: str
    peer_addresses: Mapping[str, str]  # other validator pubkey -> "host:port"
    connected: Callable[[], Sequence[str]]
    catching_up: Callable[[], bool]
    tracker: PeerTracker
    series: Callable[[], list[dict[str, Any]]] = list
    pool_size: Callable[[], int | None] = lambda: None
    halted: Callable[[], str | None] = lambda: None
    diverged: Callable[[], str | None] = lambda: None
    evidence_count: Callable[[], int | None] = lambda: None

    def health_reasons(self) -> list[str]:
        reasons: list[str] = []
        halted = self.halted()
        if halted is not None:
            reasons.append(f"halted: {halted}")
        diverged = self.diverged()
        if diverged is not None:
            reasons.append(f"diverged: {diverged}")
        needed = self.genesis.q - 1
        connected = len(self.connected())
        if connected < needed:
            reasons.append(
                f"not_enough_peers: connected to {connected} validators, {needed} needed"
            )
        if self.catching_up():
            reasons.append("catching_up: fetching committed blocks from the peers")
        return reasons


def register_operator_routes(app: web.Application, context: OperatorContext | None) -> None:
    """Add the routes of this module (none when the API runs without an operator context)."""
    if context is None:
        return
    app[OPERATOR] = context
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/v1/peers", get_peers)
    app.router.add_get("/v1/validators", get_validators)
    app.router.add_get("/v1/genesis", get_genesis)
    app.router.add_get("/v1/blocks", get_blocks)
    app.router.add_get("/v1/dashboard", get_dashboard)
    app.router.add_get("/v1/dashboard/block/{seq}", get_dashboard_block)
    app.router.add_get("/", get_index)
    app.router.add_get("/dashboard/{file}", get_static)


OPERATOR: web.AppKey[OperatorContext] = web.AppKey("phalanx_operator", OperatorContext)


def _operator(request: web.Request) -> OperatorContext:
    return request.app[OPERATOR]


def _app_module() -> Any:
    # node.api.app imports this module to register the routes; import it back lazily.
    from node.api import app

    return app


def _json(value: Any, status: int = 200) -> web.Response:
    api = _app_module()
    response: web.Response = api._json(value, status)
    return response


def _checks(request: web.Request, allowed: Sequence[str] = ()) -> dict[str, str]:
    api = _app_module()
    api._check_accept(request, api.JSON)
    query: dict[str, str] = api._check_query(request, allowed)
    return query


# ---- health, peers, validators, genesis ------------------------------------------------------


async def get_health(request: web.Request) -> web.Response:
    _checks(request)
    reasons = _operator(request).health_reasons()
    if reasons:
        return _json({"status": "unhealthy", "reasons": reasons}, 503)
    return _json({"status": "ok"})


def peers_answer(context: OperatorContext) -> list[dict[str, Any]]:
    connected = set(context.connected())
    answer = []
    for validator in context.genesis.validators:
        if validator.pubkey == context.pubkey:
            continue
        info = context.tracker.peers.get(validator.pubkey)
        answer.append(
            {
                "name": validator.name,
                "pubkey": validator.pubkey,
                "address": context.peer_addresses.get(validator.pubkey),
                "connected": validator.pubkey in connected,
                "head_seq": None if info is None else info.head_seq,
                "last_seen_ms": context.tracker.last_seen_ms(validator.pubkey),
            }
        )
    return answer


async def get_peers(request: web.Request) -> web.Response:
    _checks(request)
    return _json(peers_answer(_operator(request)))


async def get_validators(request: web.Request) -> web.Response:
    _checks(request)
    genesis = _operator(request).genesis
    return _json(
        {
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.genesis_hash,
            "n": genesis.n,
            "f": genesis.f,
            "q": genesis.q,
            "validators": [{"name": v.name, "pubkey": v.pubkey} for v in genesis.validators],
        }
    )


async def get_genesis(request: web.Request) -> web.Response:
    _checks(request)
    return _json(dict(_operator(request).genesis.document))


# ---- block listing ---------------------------------------------------------------------------


async def get_blocks(request: web.Request) -> web.Response:
    """``GET /v1/blocks?from_seq=&limit=``: summaries ascending from ``from_seq``."""
    api = _app_module()
    query = _checks(request, ("from_seq", "limit"))
    from_seq = _positive(query, "from_seq", 1, MAX_SAFE_INTEGER, 1)
    limit = _positive(query, "limit", 1, BLOCKS_LIMIT_MAX, BLOCKS_LIMIT_DEFAULT)
    store = api._context(request).store
    summaries, head = await asyncio.to_thread(_summaries, store, from_seq, limit)
    last = summaries[-1]["seq"] if summaries else from_seq - 1
    next_from = last + 1 if last < head else None
    return _json({"blocks": summaries, "next_from_seq": next_from})


def _positive(query: Mapping[str, str], name: str, low: int, high: int, default: int) -> int:
    api = _app_module()
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 16 or not low <= int(text) <= high:
        raise api.ApiError(400, "invalid_query", f"{name} must be an integer from {low} to {high}")
    return int(text)


def _summaries(store: Any, from_seq: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    head = int(store.head()[0])
    summaries = []
    for seq in range(from_seq, min(head, from_seq + limit - 1) + 1):
        block = store.block(seq)
        if block is None:  # the head only grows: a missing block below it is a damaged ledger
            raise RuntimeError(f"block {seq} is missing below the head {head}")
        summaries.append(block_summary(block))
    return summaries, head


def block_summary(block: Mapping[str, Any]) -> dict[str, Any]:
    batch = block["batch"]
    return {
        "seq": block["seq"],
        "hash": block["hash"],
        "time_ms": batch["time_ms"],
        "tx_count": batch["tx_count"],
    }


# ---- the dashboard ---------------------------------------------------------------------------


def cluster_rows(context: OperatorContext, me: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per validator, in genesis order: this node from its own status, the others from
    their last ``node-status`` (None fields when it is older than STATUS_STALE_S or absent)."""
    connected = set(context.connected())
    now_ms = context.tracker.now_ms()
    rows = []
    for validator in context.genesis.validators:
        row: dict[str, Any] = {"name": validator.name, "pubkey": validator.pubkey}
        if validator.pubkey == context.pubkey:
            row.update(
                {
                    "self": True,
                    "connected": True,
                    "view": me.get("view"),
                    "seq": me.get("seq"),
                    "primary": me.get("primary"),
                    "healthy": me.get("healthy"),
                    "peers_connected": me.get("peers_connected"),
                    "catching_up": me.get("catching_up"),
                    "age_ms": 0,
                }
            )
        else:
            info = context.tracker.peers.get(validator.pubkey)
            fresh = (
                info is not None
                and info.status_at is not None
                and now_ms - int(info.status_at * 1000) <= STATUS_STALE_S * 1000
            )
            status = info.status if fresh and info is not None else {}
            row.update(
                {
                    "self": False,
                    "connected": validator.pubkey in connected,
                    "view": status.get("view"),
                    "seq": status.get("seq", None if info is None else info.head_seq),
                    "primary": status.get("primary"),
                    "healthy": status.get("healthy"),
                    "peers_connected": status.get("peers_connected"),
                    "catching_up": status.get("catching_up"),
                    "age_ms": None
                    if info is None or info.status_at is None
                    else now_ms - int(info.status_at * 1000),
                }
            )
        rows.append(row)
    return rows


async def get_dashboard(request: web.Request) -> web.Response:
    _checks(request)
    api = _app_module()
    context = _operator(request)
    status = dict(api._context(request).status())
    reasons = context.health_reasons()
    status["healthy"] = not reasons
    names = {v.pubkey: v.name for v in context.genesis.validators}
    return _json(
        {
            "status": status,
            "health": {"status": "ok" if not reasons else "unhealthy", "reasons": reasons},
            "primary_name": names.get(str(status.get("primary"))),
            "validators": cluster_rows(context, status),
            "series": context.series(),
            "evidence_count": context.evidence_count(),
            "has_evidence_endpoint": any(
                getattr(r, "canonical", None) == "/v1/evidence"
                for r in request.app.router.resources()
            ),
            "pool_size": context.pool_size(),
        }
    )


async def get_dashboard_block(request: web.Request) -> web.Response:
    """The block as ``GET /v1/blocks/{seq}`` answers it, with its transactions' ids (which the
    page cannot compute without a JCS implementation) so it can ask for their receipts."""
    _checks(request)
    api = _app_module()
    text = request.match_info["seq"]
    if not text.isascii() or not text.isdigit() or len(text) > 16 or int(text) < 1:
        raise api.ApiError(400, "invalid_seq", "seq must be a decimal integer from 1 to 2^53 - 1")
    block = api._context(request).store.block(int(text))
    if block is None:
        raise api.ApiError(404, "unknown_block", f"block {text} is beyond the head")
    return _json({"block": block, "tx_ids": [hash_object(tx["body"]) for tx in block["txs"]]})


async def get_index(request: web.Request) -> web.StreamResponse:
    return _static_file("index.html")


async def get_static(request: web.Request) -> web.StreamResponse:
    return _static_file(request.match_info["file"])


def _static_file(name: str) -> web.Response:
    api = _app_module()
    path = DASHBOARD_DIR / name
    content_type = _STATIC_TYPES.get(path.suffix)
    # Only plain file names of the dashboard folder: no "..", no sub-folders, known types.
    if "/" in name or name.startswith(".") or content_type is None or not path.is_file():
        raise api.ApiError(404, "not_found", f"there is no dashboard file {name!r}")
    return web.Response(
        body=path.read_bytes(),
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
