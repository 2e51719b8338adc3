"""The operator surface on four real node processes: status fields, health, peers, the block
listing, metrics, and the consensus log lines (with validator names) after the primary dies."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.client import Client, make_tx
from node.version import phalanx_version
from tests.e2e.cluster import Cluster, http_json, start_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("operator") / "testnet")
    try:
        yield c
    finally:
        c.down()


def _events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    lines = (Path(cluster.dir) / name / "node.log").read_text(errors="replace").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _wait(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _commit(cluster: Cluster, node: str, key: str) -> int:
    tx = make_tx(cluster.client, [{"op": "set", "key": key, "value": 1}],
                 chain_id=cluster.genesis.chain_id)  # fmt: skip
    answer = Client(cluster.url(node)).submit(tx, wait=True, timeout_ms=30_000)
    assert answer["status"] == "committed", answer
    return int(answer["receipt"]["seq"])


def test_operator_endpoints_and_consensus_logs(cluster: Cluster) -> None:
    names = [n.name for n in cluster.nodes]
    url0 = cluster.url("node0")
    # All healthy once every link is up.
    for name in names:
        _wait(lambda n=name: http_json("GET", cluster.url(n) + "/v1/health")[0] == 200, 30,
              f"{name} healthy")  # fmt: skip
    status = http_json("GET", url0 + "/v1/status")[1]
    assert status["version"] == phalanx_version() and status["catching_up"] is False
    # Health needs only q - 1 links: wait for every link on every node, so that each node has
    # seen the primary's link come up before it dies.
    for name in names:
        _wait(lambda n=name: http_json("GET", cluster.url(n) + "/v1/status")[1]["peers_connected"]
              == 3, 20, f"{name}'s links")  # fmt: skip
    seq = _commit(cluster, "node1", "before")
    code, listing = http_json("GET", url0 + f"/v1/blocks?from_seq={seq}&limit=5")
    assert code == 200 and listing["blocks"][0]["seq"] == seq
    validators = http_json("GET", url0 + "/v1/validators")[1]
    assert [v["name"] for v in validators["validators"]] == names and validators["q"] == 3
    assert http_json("GET", url0 + "/v1/genesis")[1]["chain_id"] == cluster.genesis.chain_id

    primary = cluster.primary_name()
    backup = next(n for n in names if n != primary)
    # The consensus log notices links on its own poll: let it see the primary's link first.
    _wait(lambda: any(e["event"] == "peer_connected" and e.get("peer_name") == primary
                      for e in _events(cluster, backup)), 10, "peer_connected logged")  # fmt: skip
    cluster.kill(primary)
    _commit(cluster, backup, "after")  # needs a view change first

    events = _events(cluster, backup)
    started = [e for e in events if e["event"] == "view_change_started"]
    assert started and started[0]["old_primary"] == primary, started
    assert started[0]["reason"] in ("primary_lost", "request_timeout", "joined_higher_view")
    installed = [e for e in events if e["event"] == "new_view_installed"]
    assert installed and installed[-1]["primary"] in names and installed[-1]["primary"] != primary
    # The link's loss is logged by the next operator poll, which may come after the commit.
    _wait(lambda: any(e["event"] == "peer_lost" and e["peer_name"] == primary
                      for e in _events(cluster, backup)), 10, "peer_lost logged")  # fmt: skip
    assert any(e["event"] == "peer_connected" and e.get("peer_name") in names for e in events)

    # 3 of 4 up: still healthy (q - 1 = 2 links needed); the dead peer is shown as such.
    url = cluster.url(backup)
    assert http_json("GET", url + "/v1/health")[0] == 200
    peers = {p["name"]: p for p in http_json("GET", url + "/v1/peers")[1]}
    assert peers[primary]["connected"] is False and backup not in peers
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "phalanx_peers_connected 2.0" in text
    reason = started[0]["reason"]
    assert f'phalanx_view_change_starts_total{{reason="{reason}"}} 1.0' in text
    assert "phalanx_build_info{" in text and "process_cpu_seconds_total" in text

    # Another one down: 2 of 4, not enough peers.
    other = next(n for n in names if n not in (primary, backup))
    cluster.kill(other)
    code, body = _wait(
        lambda: (lambda r: r if r[0] == 503 else None)(http_json("GET", url + "/v1/health")),
        20,
        "unhealthy",
    )
    assert body["status"] == "unhealthy"
    assert any(r.startswith("not_enough_peers") for r in body["reasons"])
    cluster.start(other)
    cluster.start(primary)
