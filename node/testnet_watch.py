"""``phalanx testnet watch``: a live table of the testnet, redrawn in place.

One row per node from its ``GET /v1/dashboard``: state, view, seq, primary, health, peers,
committed tx/s over the last 10 s, pending pool size and the time since it last committed a
transaction. On a terminal only the table is redrawn (the cursor moves back up over it), so
whatever was printed before (the demo's output) stays on screen; into a pipe or a file one table
is appended per refresh.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from node.testnet import NodeEntry

TPS_WINDOW_S = 10


def fetch_dashboard(url: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/dashboard", timeout=timeout_s) as response:
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _since(series: Sequence[dict[str, Any]], now_ms: int) -> str:
    for point in reversed(series):
        if point.get("txs"):
            seconds = max(0, (now_ms - int(point["t_ms"])) // 1000)
            return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"
    return "> 5 min" if series else "-"


def rows(
    nodes: Sequence[NodeEntry],
    fetch: Callable[[str], dict[str, Any] | None] = fetch_dashboard,
    now_ms: int | None = None,
) -> list[tuple[str, ...]]:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    names = {node.pubkey: node.name for node in nodes}
    table: list[tuple[str, ...]] = [
        ("NAME", "STATE", "VIEW", "SEQ", "PRIMARY", "HEALTH", "PEERS", "TX/S", "POOL", "LAST TX")
    ]
    for node in nodes:
        data = fetch(node.url) if node.pid is not None else None
        if data is None:
            state = "down" if node.pid is None else "not answering"
            table.append((node.name, state, *["-"] * 8))
            continue
        status = data.get("status", {})
        series = data.get("series", [])
        # The last complete seconds: the current one is still filling.
        tps = sum(int(p.get("txs", 0)) for p in series[-TPS_WINDOW_S - 1 : -1]) / TPS_WINDOW_S
        health = data.get("health", {})
        table.append(
            (
                node.name,
                "up",
                str(status.get("view", "-")),
                str(status.get("seq", "-")),
                names.get(str(status.get("primary")), "?"),
                "ok" if health.get("status") == "ok" else "UNHEALTHY",
                str(status.get("peers_connected", "-")),
                f"{tps:.1f}",
                str(data.get("pool_size", "-")),
                _since(series, now_ms),
            )
        )
    return table


def format_table(table: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def watch(
    load_nodes: Callable[[], Sequence[NodeEntry]],
    interval_s: float = 2.0,
    out: TextIO = sys.stdout,
    iterations: int | None = None,
) -> None:
    """Redraw the table every ``interval_s`` until interrupted (or ``iterations`` times)."""
    drawn = 0  # lines of the previous table, to move back over on a terminal
    count = 0
    tty = out.isatty()
    while iterations is None or count < iterations:
        lines = [
            time.strftime("%H:%M:%S") + "  live status (Ctrl-C stops)",
            *format_table(rows(load_nodes())),
        ]
        if tty and drawn:
            out.write(f"\033[{drawn}A\033[J")
        out.write("\n".join(lines) + "\n")
        if not tty:
            out.write("\n")
        out.flush()
        drawn = len(lines)
        count += 1
        if iterations is None or count < iterations:
            time.sleep(interval_s)
