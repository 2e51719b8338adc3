"""End to end, verifiable execution (spec §5-§6): four real node processes; every receipt and
proven read is checked by the independent verifier of tests/ledger/spec_verifier.py (written
from the spec, importing nothing of the project's), and a node whose state was altered on disk
diverges at the next block it executes and stops signing and serving writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from crypto.signing import Ed25519Signer
from node.client import ApiError, Client, set_op, transfer_op, tx_id_of
from tests.e2e.cluster import Cluster, http_json, start_cluster
from tests.ledger import spec_verifier

pytestmark = pytest.mark.e2e

COMMIT_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("verifiable") / "testnet")
    try:
        yield c
    finally:
        c.down()


def _commit(cluster: Cluster, node: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    tx = cluster.tx(ops)
    answer = Client(cluster.url(node)).submit(tx, wait=True, timeout_ms=COMMIT_TIMEOUT_MS)
    assert answer["status"] == "committed", answer
    receipt: dict[str, Any] = answer["receipt"]
    assert receipt["tx_id"] == tx_id_of(tx)
    # wait=commit answers once the execution certificate is complete: the result is proven.
    assert receipt["execution"] is not None
    assert spec_verifier.receipt_ok(dict(cluster.genesis.document), receipt), receipt
    return receipt


def _read(cluster: Cluster, node: str, path: str, query: str = "proof=true") -> dict[str, Any]:
    status, answer = http_json("GET", f"{cluster.url(node)}{path}?{query}")
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def test_receipts_prove_results_to_an_independent_verifier(cluster: Cluster) -> None:
    genesis = dict(cluster.genesis.document)
    stranger = Ed25519Signer.generate().public_key
    receipts = [
        _commit(cluster, "node0", [set_op("colour", "blue")]),
        _commit(cluster, "node1", [set_op("colour", {"rgb": [1, 2, 3]})]),
        _commit(cluster, "node2", [transfer_op(stranger, 5)]),
        _commit(cluster, "node3", [transfer_op(stranger, 10**15)]),  # fails: funds
    ]
    assert receipts[3]["result"] == {"ok": False, "error": "insufficient_funds"}
    # Claiming another result for a receipt fails the independent verifier.
    forged = dict(receipts[3], result={"ok": True, "error": None})
    assert not spec_verifier.receipt_ok(genesis, forged)
    # Every node serves the block with its execution certificate; GET /v1/tx has it too.
    for node in ("node0", "node3"):
        seq = receipts[0]["seq"]
        status, block = http_json("GET", f"{cluster.url(node)}/v1/blocks/{seq}")
        assert status == 200 and block["execution"] is not None
        assert spec_verifier.execution_ok(genesis, seq, block["hash"], block["execution"])
        answer = Client(cluster.url(node)).tx(receipts[1]["tx_id"])
        assert answer["receipt"]["execution"] is not None
        assert spec_verifier.receipt_ok(genesis, answer["receipt"])


def test_proven_reads_on_every_node_verify_independently(cluster: Cluster, tmp_path: Path) -> None:
    genesis = dict(cluster.genesis.document)
    receipt = _commit(cluster, "node1", [set_op("proven", [1, "two", None])])
    client_pubkey = cluster.client.public_key
    nobody = Ed25519Signer.generate().public_key
    for node in ("node0", "node1", "node2", "node3"):
        min_seq = f"min_seq={receipt['seq']}&timeout_ms=10000"
        present = _read(cluster, node, "/v1/state/proven", f"proof=true&{min_seq}")
        assert present["value"] == [1, "two", None] and present["seq"] >= receipt["seq"]
        assert present["owner"] == client_pubkey
        absent = _read(cluster, node, "/v1/state/never%2Fwritten")
        assert absent["version"] == 0 and absent["value"] is None
        balance = _read(cluster, node, f"/v1/accounts/{client_pubkey}")
        assert balance["balance"] > 0
        zero = _read(cluster, node, f"/v1/accounts/{nobody}")
        assert zero["balance"] == 0
        for answer in (present, absent, balance, zero):
            assert spec_verifier.proven_read_ok(genesis, answer), (node, answer)
        tampered = dict(present, value="other")
        assert not spec_verifier.proven_read_ok(genesis, tampered)
        lie = dict(absent, value=1, version=1, owner=client_pubkey)
        assert not spec_verifier.proven_read_ok(genesis, lie)
    # The Python client verifies before returning; phalanx audit verify-read checks a saved one.
    answer = Client(cluster.url("node2")).get_state("proven", proof=True, genesis=cluster.genesis)
    assert answer is not None and answer["value"] == [1, "two", None]
    saved = tmp_path / "read.json"
    saved.write_text(json.dumps(present))
    genesis_file = str(cluster.dir / "genesis.json")
    ok = _phalanx("audit", "verify-read", str(saved), "--genesis", genesis_file)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    saved.write_text(json.dumps(dict(present, version=present["version"] + 1)))
    bad = _phalanx("audit", "verify-read", str(saved), "--genesis", genesis_file, "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False


def test_plain_reads_say_their_seq_and_min_seq_waits_or_answers_503(cluster: Cluster) -> None:
    receipt = _commit(cluster, "node0", [set_op("ryw", 1)])
    # Read your writes on another node: at or after the block that wrote it.
    status, answer = http_json(
        "GET", f"{cluster.url('node3')}/v1/state/ryw?min_seq={receipt['seq']}&timeout_ms=10000"
    )
    assert status == 200 and answer["value"] == 1 and answer["seq"] >= receipt["seq"]
    status, account = http_json(
        "GET", f"{cluster.url('node2')}/v1/accounts/{cluster.client.public_key}"
    )
    assert status == 200 and account["seq"] >= 1
    status, error = http_json(
        "GET", f"{cluster.url('node1')}/v1/state/ryw?min_seq=999999999&timeout_ms=200"
    )
    assert status == 503 and error["error"] == "min_seq_not_reached", error


def test_a_node_whose_state_was_altered_diverges_and_stops(cluster: Cluster) -> None:
    _commit(cluster, "node0", [set_op("victim", "original")])
    cluster.wait_same_head(["node0", "node1", "node2", "node3"], 1)
    cluster.kill("node3")
    _alter_version(cluster.dir / "node3" / "data", "victim")
    cluster.start("node3")
    # The next write of the key: node3 computes version 8 where the others compute 2.
    _commit(cluster, "node1", [set_op("victim", "rewritten")])
    deadline = time.monotonic() + 30
    health: Any = None
    while time.monotonic() < deadline:
        status, health = http_json("GET", f"{cluster.url('node3')}/v1/health")
        if status == 503 and any("diverged" in r for r in health.get("reasons", [])):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(
            f"node3 did not report divergence: {health}\n{cluster.log_tail('node3')}"
        )
    with pytest.raises(ApiError) as refused:
        Client(cluster.url("node3")).submit(cluster.tx([set_op("after", 1)]))
    assert refused.value.status == 503 and refused.value.code == "diverged"
    assert "state_root" in refused.value.detail
    log = (cluster.dir / "node3" / "node.log").read_text()
    assert "execution_diverged" in log
    # The conflicting votes are kept, durably: a restart does not make the node sign again.
    record = json.loads((cluster.dir / "node3" / "data" / "divergence.json").read_text())
    assert (
        len(record["votes"]) >= 3
        and record["own"]["state_root"] != record["certified"]["state_root"]
    )
    # The others keep committing, name node3 in their metrics, and certify without it.
    _commit(cluster, "node0", [set_op("after", 2)])
    node3 = next(n.pubkey for n in cluster.nodes if n.name == "node3")
    metrics = Client(cluster.url("node0")).metrics()
    assert f'phalanx_execution_vote_conflicts_total{{validator="{node3}"}}' in metrics


def _alter_version(data_dir: Path, key: str) -> None:
    """Change a key's version in the state table, behind the ledger's back."""
    env = lmdb.open(str(data_dir), max_dbs=16, subdir=True)
    try:
        state = env.open_db(b"state", create=False)
        with env.begin(write=True) as txn:
            raw = txn.get(key.encode(), db=state)
            assert raw is not None, f"{key} is not in node3's state"
            entry = json.loads(raw)
            entry["version"] = 7
            txn.put(key.encode(), json.dumps(entry, separators=(",", ":")).encode(), db=state)
    finally:
        env.close()


def _phalanx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60
    )
