"""scripts/testnet twice in the same directory: the demo succeeds both times (its
compare-and-set names the current version), the dashboard's URL and the live table (tx/s, pool,
time since the last commit) are printed below the demo's output, and Ctrl-C (SIGINT to the
process group, as a terminal sends it) leaves no node running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from node import testnet
from tests.node.test_testnet import free_base_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testnet"


def _run_until_table(directory: Path, base: int, log: Path) -> str:
    env = {**os.environ, "TESTNET_DIR": str(directory), "BASE_PORT": str(base),
           "WATCH_INTERVAL": "0.5"}  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(SCRIPT)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if log.read_text().count("LAST TX") >= 2:  # the live table, drawn twice
                    break
                time.sleep(0.3)
            assert proc.poll() is None, log.read_text()
            assert log.read_text().count("LAST TX") >= 2, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            proc.wait(60)
    return log.read_text()


def _nodes_running(directory: Path) -> list[str]:
    data = json.loads((directory / "testnet.json").read_text())
    return [n["name"] for n in data["nodes"] if n["pid"] is not None]


def test_testnet_script_reruns_and_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "testnet"
    base = free_base_port(4)
    try:
        first = _run_until_table(directory, base, tmp_path / "first.log")
        assert f"dashboard:  http://127.0.0.1:{base}/" in first
        assert "cas " in first and "committed at seq" in first
        assert "bringing the testnet down" in first
        assert _nodes_running(directory) == []
        second = _run_until_table(directory, base, tmp_path / "second.log")
        # The second run's demo succeeded too (a cas with a stale version would stop it).
        assert second.count("committed at seq") == 3, second
        assert "greeting" not in second.split("LAST TX")[-1]  # the table is not the demo
        # Demo output stays above the live table (the table does not clear the screen).
        assert second.index("committed at seq") < second.index("LAST TX")
        assert _nodes_running(directory) == []
        for node in testnet.Testnet.load(directory).nodes:
            assert testnet.fetch_status(node.url) is None
    finally:
        if (directory / "testnet.json").exists():
            testnet.down(directory, grace_s=2.0)
