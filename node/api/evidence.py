"""``GET /v1/evidence`` (spec §8): ``{"evidence": [evidence objects, spec §7]}`` this node observed
and keeps (``node.evidence``). Anyone may check each item with ``phalanx audit verify-evidence``.
The list is bounded by the store (``ledger.evidence.EVIDENCE_MAX``). No query parameters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

EvidenceSource = Callable[[], list[dict[str, Any]]]

EVIDENCE: web.AppKey[EvidenceSource] = web.AppKey("phalanx_evidence", EvidenceSource)  # type: ignore[arg-type]


def register_evidence_routes(app: web.Application, source: EvidenceSource | None) -> None:
    """Serve ``source()`` (none yet when the API runs without one: an empty list)."""
    app[EVIDENCE] = source if source is not None else list
    app.router.add_get("/v1/evidence", get_evidence)


async def get_evidence(request: web.Request) -> web.Response:
    if request.query:
        unknown = ", ".join(sorted(request.query))
        return _json(
            {"error": "invalid_query", "detail": f"unknown query parameter: {unknown}"}, 400
        )
    return _json({"evidence": request.app[EVIDENCE]()})


def _json(value: Any, status: int = 200) -> web.Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return web.Response(text=body, status=status, content_type="application/json")
