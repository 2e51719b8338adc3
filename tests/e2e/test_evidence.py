"""Evidence on real node processes: a validator that signs two conflicting COMMITs for one slot
and sends them over an authenticated peer link is caught by the honest node, which keeps the
evidence, counts it, logs it with the validator's name and serves it at GET /v1/evidence, where
``phalanx audit verify-evidence`` accepts it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.messages import Commit, sign_message
from crypto.keys import load_private_key
from node import testnet
from node.config import load_config
from node.p2p.peers import PeerNetwork
from tests.e2e.cluster import Cluster, http_json, start_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = start_cluster(tmp_path_factory.mktemp("evidence") / "net")
    try:
        yield made
    finally:
        made.down()


async def _equivocate(cluster: Cluster, byzantine: str, victim: str) -> None:
    """Connect as ``byzantine`` (whose process was stopped) to ``victim`` and send it two
    COMMITs for one (view, seq) with different digests."""
    net = testnet.Testnet.load(cluster.dir)
    own = load_config(net.config_path(net.node(byzantine)))  # its port is free: it was stopped
    signer = load_private_key(own.key_file)
    victim_entry = net.node(victim)
    victim_addr = load_config(net.config_path(victim_entry)).peer_listen
    peers = PeerNetwork(
        signer,
        {
            signer.public_key: (own.peer_listen.host, own.peer_listen.port),
            victim_entry.pubkey: (victim_addr.host, victim_addr.port),
        },
        cluster.genesis.chain_id,
        cluster.genesis.genesis_hash,
        lambda sender, wire, _bytes: None,
    )
    await peers.start()
    try:
        deadline = time.monotonic() + 30
        while victim_entry.pubkey not in peers.connected_peers():
            assert time.monotonic() < deadline, "no peer link to the victim"
            await asyncio.sleep(0.1)
        for digest in ("aa" * 32, "bb" * 32):
            commit = Commit(cluster.genesis.chain_id, 0, 7_000, digest)
            peers.send(victim_entry.pubkey, sign_message(signer, commit).to_wire())
        await asyncio.sleep(1.0)  # let the queue drain before the link closes
    finally:
        await peers.stop()


def _evidence(cluster: Cluster, name: str) -> list[Any]:
    status, body = http_json("GET", f"{cluster.url(name)}/v1/evidence")
    assert status == 200, body
    return list(body["evidence"])


def test_equivocating_validator_is_caught_by_a_real_node(cluster: Cluster, tmp_path: Path) -> None:
    assert _evidence(cluster, "node0") == []
    cluster.kill("node3")
    asyncio.run(_equivocate(cluster, "node3", "node0"))
    deadline = time.monotonic() + 20
    while not (found := _evidence(cluster, "node0")):
        assert time.monotonic() < deadline, cluster.log_tail("node0")
        time.sleep(0.3)
    [item] = found
    assert item["kind"] == "commit" and item["validator"] == cluster.nodes[3].pubkey

    path = tmp_path / "evidence.json"
    path.write_text(json.dumps({"evidence": found}))
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "verify-evidence", str(path), "--genesis",
         str(cluster.dir / "genesis.json"), "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["items"][0]["validator_name"] == "node3"

    metrics = _text(f"{cluster.url('node0')}/metrics")
    assert 'phalanx_evidence_total{kind="commit"} 1.0' in metrics
    log = (cluster.dir / "node0" / "node.log").read_text(errors="replace")
    lines = [json.loads(x) for x in log.splitlines() if "misbehaviour_evidence" in x]
    assert lines and lines[0]["validator_name"] == "node3"
    # The other honest nodes were not sent anything: no evidence there.
    assert _evidence(cluster, "node1") == []


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _run_byzantine(
    cluster: Cluster, behaviour: str, record: Path, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """Restart node3 as a Byzantine process, drive commits through the honest nodes until it
    recorded three equivocations; those records."""
    if testnet.Testnet.load(cluster.dir).node("node3").pid is not None:
        cluster.kill("node3")
    wrapper = (
        f"{sys.executable} -m tests.adversary.byzantine --behaviour {behaviour} --record {record} "
        "-m node.cli node run"
    )
    with monkeypatch.context() as env:
        env.setenv(testnet.NODE_CMD_ENV, wrapper)
        env.setenv("PYTHONPATH", str(ROOT))
        cluster.start("node3")
    deadline = time.monotonic() + 60
    nonce = 0
    while True:
        nonce += 1
        tx = cluster.tx([{"op": "set", "key": f"{behaviour}-{nonce}", "value": nonce}])
        status, answer = http_json(
            "POST", f"{cluster.url(HONEST[nonce % 3])}/v1/tx?wait=commit", tx
        )
        assert status in (200, 202), answer
        recorded = record.read_text().splitlines() if record.exists() else []
        if len(recorded) >= 3:
            return [json.loads(line) for line in recorded]
        assert time.monotonic() < deadline, cluster.log_tail("node3")


def _wait_evidence(cluster: Cluster, kind: str, slots: set[tuple[int, int]]) -> None:
    """Every honest node holds ``kind`` evidence against node3 for each (view, seq) of
    ``slots`` (execution evidence has no view: 0)."""
    byzantine = cluster.nodes[3].pubkey
    for name in HONEST:
        deadline = time.monotonic() + 20
        while True:
            found = {
                (e["a"]["object"].get("view", 0), e["a"]["object"]["seq"])
                for e in _evidence(cluster, name)
                if e["kind"] == kind and e["validator"] == byzantine
            }
            if slots <= found:
                break
            assert time.monotonic() < deadline, (name, slots - found)
            time.sleep(0.3)


HONEST = ["node0", "node1", "node2"]


def test_byzantine_process_equivocating_commits_is_caught_everywhere(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node3 runs as a real process whose every COMMIT is followed by a conflicting one (chaos
    .byzantine); the honest nodes keep committing and each holds evidence of every recorded
    equivocation."""
    records = _run_byzantine(cluster, "equivocate-commits", tmp_path / "rec.jsonl", monkeypatch)
    _wait_evidence(cluster, "commit", {(r["view"], r["seq"]) for r in records})
    cluster.wait_same_head(HONEST, min_seq=3)


def test_byzantine_process_equivocating_execution_votes_is_caught_everywhere(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _run_byzantine(cluster, "equivocate-execution", tmp_path / "rec.jsonl", monkeypatch)
    _wait_evidence(cluster, "execution", {(0, r["seq"]) for r in records})
    cluster.wait_same_head(HONEST, min_seq=3)
