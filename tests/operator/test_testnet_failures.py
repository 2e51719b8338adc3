"""A failed `phalanx testnet up` stops what it started and reports every node's error; a busy
port is one line that says what to do, for `testnet up` and for `node run`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import testnet
from tests.node.test_testnet import free_base_port, phalanx_testnet

ROOT = Path(__file__).resolve().parents[2]
FAKE_NODE = ROOT / "tests" / "node" / "fake_node.py"


@pytest.fixture
def net_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(testnet.NODE_CMD_ENV, f"{sys.executable} {FAKE_NODE}")
    directory = tmp_path / "net"
    yield directory
    if (directory / "testnet.json").exists():
        testnet.down(directory, grace_s=2.0)


def _pid_alive(pid: int) -> bool:
    return testnet.is_running(pid)


def test_failed_up_reports_every_node_and_stops_what_it_started(
    net_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_NODE_FAIL", "node1,node3")
    base = free_base_port(4)
    code = phalanx_testnet("up", "--nodes", "4", "--dir", str(net_dir), "--base-port", str(base))
    assert code == 1
    err = capsys.readouterr().err
    assert "node1 exited with status 3" in err and "node3 exited with status 3" in err
    assert "stopped the nodes this command started: node0, node2" in err
    nodes = json.loads((net_dir / "testnet.json").read_text())["nodes"]
    assert [n["pid"] for n in nodes] == [None] * 4
    # Nothing answers any more on the ports the healthy nodes had.
    for i in (0, 2):
        assert testnet.fetch_status(f"http://127.0.0.1:{testnet.http_port(base, i)}") is None


def test_busy_port_is_one_line_and_starts_nothing(
    net_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = free_base_port(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", testnet.peer_port(base, 1)))
        squatter.listen()
        code = phalanx_testnet(
            "up", "--nodes", "2", "--dir", str(net_dir), "--base-port", str(base)
        )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"127.0.0.1:{testnet.peer_port(base, 1)} (node1 peer)" in err
    assert "--base-port" in err
    nodes = json.loads((net_dir / "testnet.json").read_text())["nodes"]
    assert [n["pid"] for n in nodes] == [None, None]


def test_node_run_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    base = free_base_port(4)
    net = testnet.create(tmp_path, 4, base)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", testnet.http_port(base, 0)))
        squatter.listen()
        result = subprocess.run(
            [sys.executable, "-m", "node.cli", "node", "run", "--config",
             str(net.config_path(net.nodes[0]))],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PHALANX_LOG__LEVEL": "error"},
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "in use" in lines[0] and "http_listen" in lines[0]
