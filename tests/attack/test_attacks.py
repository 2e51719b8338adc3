"""Issue 10's attacks against a real 4-node testnet (scripts/attack.py): for each, an honest
client keeps committing through the attacked node before, during and after the attack, and the
node's metrics show the defence that held (refusals, evictions, penalties, connection caps).

Each attack runs in its own process for a few seconds; the whole module takes about 2 minutes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.e2e.cluster import free_base_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PHASE_S = 5.0
RATE = 60.0  # honest tx/s offered to node0
MIN_RATIO = 0.3  # honest commits/s during and after, relative to before (a noisy 2-core box)


def _load_attack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("phalanx_attack", ROOT / "scripts/attack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["phalanx_attack"] = module
    spec.loader.exec_module(module)
    return module


attack = _load_attack()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    directory = tmp_path_factory.mktemp("attack") / "testnet"
    network = attack.testnet_up(directory, free_base_port())
    try:
        yield network
    finally:
        attack.phalanx("testnet", "down", "--dir", str(directory))


def _run(net: Any, name: str) -> Any:
    row = asyncio.run(attack.run_attack(net, name, PHASE_S, RATE))
    print(row)
    assert row.before > RATE * 0.3, f"the honest client barely commits before {name}: {row}"
    assert row.during >= MIN_RATIO * row.before, f"honest commits collapsed during {name}: {row}"
    assert row.after >= MIN_RATIO * row.before, (
        f"honest commits did not recover after {name}: {row}"
    )
    return row


def _noted(row: Any, prefix: str) -> float:
    return float(sum(v for k, v in row.notes.items() if k.startswith(prefix)))


def test_reflected_handshakes_impersonate_nobody(net: Any) -> None:
    row = _run(net, "reflect")
    assert _noted(row, 'phalanx_peer_links_refused_total{reason="plaintext"}') > 0


def test_idle_sockets_on_peer_ports_are_evicted(net: Any) -> None:
    row = _run(net, "idle-peers")
    assert _noted(row, "phalanx_peer_pending_evicted_total") > 0


def test_plaintext_floods_are_refused_cheaply_and_barely_logged(net: Any) -> None:
    row = _run(net, "plaintext")
    assert _noted(row, 'phalanx_peer_links_refused_total{reason="plaintext"}') > 0
    assert row.log_bytes < 64 * 1024, "attacker strings must not fill the log"


def test_a_faulty_validators_expensive_frames_get_it_cut_off(net: Any) -> None:
    row = _run(net, "byz-frames")
    assert _noted(row, "phalanx_peer_penalties_total") > 0


def test_a_faulty_validators_badly_signed_relays_get_it_cut_off(net: Any) -> None:
    row = _run(net, "byz-relay")
    assert _noted(row, "phalanx_peer_penalties_total") > 0


def test_http_bodies_of_empty_objects_do_not_stall_the_node(net: Any) -> None:
    _run(net, "http-body")


def test_idle_http_connections_are_capped(net: Any) -> None:
    row = _run(net, "http-idle")
    assert _noted(row, "phalanx_http_connections_refused_total") > 0
