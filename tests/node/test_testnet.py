"""`phalanx testnet up|status|kill|start|down`, with tests/node/fake_node.py standing in for
`phalanx node run` (through PHALANX_TESTNET_NODE_CMD)."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.hashing import hash_object
from crypto.keys import load_private_key
from ledger.genesis import load_genesis
from node import testnet
from node.cli import testnet as testnet_command
from node.config import load_config

FAKE_NODE = Path(__file__).with_name("fake_node.py")


def phalanx_testnet(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="phalanx")
    testnet_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["testnet", *argv])
    code: int = args.func(args)
    return code


def free_base_port(nodes: int) -> int:
    """A base port whose HTTP and peer ports are all free right now."""
    rng = random.Random()
    for _ in range(200):
        # Below the kernel's ephemeral range (32768+), where an outgoing connection could take a
        # port between our check and the node's bind.
        base = rng.randrange(20_000, 32_000)
        ports = [
            p
            for i in range(nodes)
            for p in (testnet.http_port(base, i), testnet.peer_port(base, i))
        ]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(testnet.NODE_CMD_ENV, shlex.join([sys.executable, str(FAKE_NODE)]))


@pytest.fixture
def net_dir(tmp_path: Path, fake_node: None) -> Iterator[Path]:
    directory = tmp_path / "net"
    yield directory
    if (directory / "testnet.json").exists():
        testnet.down(directory, grace_s=2.0)


def test_every_new_testnet_gets_its_own_chain_id_unless_one_is_given(tmp_path: Path) -> None:
    ids = {
        json.loads((testnet.create(tmp_path / f"n{i}", 1, 31_200).genesis).read_text())["chain_id"]
        for i in range(3)
    }
    assert len(ids) == 3
    # Re-running keeps the chain (the genesis is reused).
    again = json.loads(testnet.create(tmp_path / "n0", 1, 31_200).genesis.read_text())
    assert again["chain_id"] in ids
    named = testnet.create(tmp_path / "named", 1, 31_200, chain_id="my-net.1")
    assert json.loads(named.genesis.read_text())["chain_id"] == "my-net.1"
    with pytest.raises(testnet.TestnetError, match="already holds the testnet"):
        testnet.create(tmp_path / "named", 1, 31_200, chain_id="other")
    with pytest.raises(testnet.TestnetError, match="--chain-id"):
        testnet.create(tmp_path / "bad", 1, 31_200, chain_id="Bad Name")


def test_create_writes_keys_genesis_and_configs(tmp_path: Path) -> None:
    base = 31_000
    net = testnet.create(tmp_path, 3, base)
    genesis = json.loads((tmp_path / "genesis.json").read_text())
    assert re.fullmatch(r"phalanx-testnet-[0-9a-f]{16}", genesis["chain_id"])
    assert genesis["fee_per_byte"] == testnet.FEE_PER_BYTE == 1
    assert testnet.CLIENT_BALANCE >= 10**15  # generously funded: billions of small txs
    load_genesis(tmp_path / "genesis.json")  # valid
    assert [v["name"] for v in genesis["validators"]] == ["node0", "node1", "node2"]
    client_seed = (tmp_path / "client.key").read_text().strip()
    assert len(client_seed) == 64 and int(client_seed, 16) >= 0
    client = load_private_key(tmp_path / "client.key").public_key
    assert genesis["accounts"][client] == testnet.CLIENT_BALANCE
    assert len(genesis["accounts"]) == len(testnet.CLIENT_KEYS)
    data = json.loads((tmp_path / "testnet.json").read_text())
    assert data["genesis"] == str(tmp_path / "genesis.json")
    assert data["nodes"][1] == {
        "name": "node1",
        "pubkey": genesis["validators"][1]["pubkey"],
        "url": f"http://127.0.0.1:{base + 1}",
        "data_dir": str(tmp_path / "node1" / "data"),
        "pid": None,
    }
    config = load_config(tmp_path / "node2" / "config.json", environ={})
    assert str(config.http_listen) == f"127.0.0.1:{base + 2}"
    assert str(config.peer_listen) == f"127.0.0.1:{base + 102}"
    assert config.genesis_file == tmp_path / "genesis.json"
    assert load_private_key(config.key_file).public_key == genesis["validators"][2]["pubkey"]
    pubkeys = [v["pubkey"] for v in genesis["validators"]]
    assert config.peer_addresses(pubkeys, pubkeys[2])[pubkeys[0]] == ("127.0.0.1", base + 100)
    assert [n.name for n in net.nodes] == ["node0", "node1", "node2"]

    # Again: same keys and genesis; the base port is remembered; the node count must agree.
    testnet.create(tmp_path)
    assert json.loads((tmp_path / "genesis.json").read_text()) == genesis
    assert load_config(tmp_path / "node2" / "config.json", environ={}) == config
    with pytest.raises(testnet.TestnetError, match="3 nodes"):
        testnet.create(tmp_path, 4)


def test_up_status_kill_start_down(net_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = free_base_port(3)
    assert (
        phalanx_testnet("up", "--nodes", "3", "--dir", str(net_dir), "--base-port", str(base)) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"node{i} http://127.0.0.1:{base + i}" for i in range(3)]
    data = json.loads((net_dir / "testnet.json").read_text())
    pids = [node["pid"] for node in data["nodes"]]
    assert all(isinstance(pid, int) and testnet.is_running(pid) for pid in pids)
    genesis = json.loads(Path(data["genesis"]).read_text())
    answer = testnet.fetch_status(f"http://127.0.0.1:{base + 1}")
    assert answer is not None and answer["name"] == "node1" and answer["n"] == 3
    assert answer["head_hash"] == hash_object(genesis)
    assert (net_dir / "node0" / "node.log").read_text().count("fake_node_started") == 1

    assert phalanx_testnet("status", "--dir", str(net_dir)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["NAME", "URL", "PID", "STATE"]
    assert [row.split()[3] for row in table[1:]] == ["up", "up", "up"]

    # up again is idempotent: nothing restarts.
    assert phalanx_testnet("up", "--dir", str(net_dir)) == 0
    capsys.readouterr()
    assert [n["pid"] for n in json.loads((net_dir / "testnet.json").read_text())["nodes"]] == pids

    assert phalanx_testnet("kill", "node1", "--dir", str(net_dir)) == 0
    assert capsys.readouterr().out.strip() == "node1 killed"
    assert not testnet.is_running(pids[1])
    assert json.loads((net_dir / "testnet.json").read_text())["nodes"][1]["pid"] is None
    assert phalanx_testnet("status", "--dir", str(net_dir)) == 1
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[3] for row in rows] == ["up", "down", "up"]

    assert phalanx_testnet("start", "node1", "--dir", str(net_dir)) == 0
    assert capsys.readouterr().out.strip() == f"node1 http://127.0.0.1:{base + 1}"
    new_pid = json.loads((net_dir / "testnet.json").read_text())["nodes"][1]["pid"]
    assert new_pid not in (None, pids[1]) and testnet.is_running(new_pid)
    assert phalanx_testnet("start", "node1", "--dir", str(net_dir)) == 0
    assert "already running" in capsys.readouterr().out

    assert phalanx_testnet("down", "--dir", str(net_dir)) == 0
    assert capsys.readouterr().out.splitlines() == [f"node{i} stopped" for i in range(3)]
    assert not any(testnet.is_running(pid) for pid in [*pids, new_pid])
    assert all(
        n["pid"] is None for n in json.loads((net_dir / "testnet.json").read_text())["nodes"]
    )
    assert phalanx_testnet("status", "--dir", str(net_dir)) == 1
    assert [row.split()[3] for row in capsys.readouterr().out.splitlines()[1:]] == ["down"] * 3


def test_a_node_that_dies_is_reported_with_its_log(
    net_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_NODE_FAIL", "node1")
    base = free_base_port(2)
    assert (
        phalanx_testnet("up", "--nodes", "2", "--dir", str(net_dir), "--base-port", str(base)) == 1
    )
    err = capsys.readouterr().err
    assert "node1 exited with status 3" in err
    assert str(net_dir.resolve() / "node1" / "node.log") in err
    assert "failing on purpose" in err
    # node0 was started by this failed `up`, so it was stopped again (issue 12).
    assert "stopped the nodes this command started: node0" in err
    nodes = json.loads((net_dir / "testnet.json").read_text())["nodes"]
    assert nodes[1]["pid"] is None and nodes[0]["pid"] is None
    assert testnet.down(net_dir) == [("node0", "not running"), ("node1", "not running")]


def test_down_kills_a_node_that_ignores_sigterm(
    net_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NODE_IGNORE_TERM", "1")
    net = testnet.up(net_dir, 1, free_base_port(1))
    pid = net.nodes[0].pid
    assert pid is not None
    assert testnet.down(net_dir, grace_s=0.5) == [("node0", "killed after the grace period")]
    assert not testnet.is_running(pid)


def test_commands_on_a_missing_testnet_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["status"], ["down"], ["kill", "node0"], ["start", "node0"]):
        assert phalanx_testnet(*argv, "--dir", str(tmp_path / "none")) == 1
        assert "no testnet in" in capsys.readouterr().err
    testnet.create(tmp_path / "net", 1, 32_000)
    assert phalanx_testnet("kill", "node9", "--dir", str(tmp_path / "net")) == 1
    assert "no node 'node9'" in capsys.readouterr().err


def test_a_stale_pid_is_not_mistaken_for_a_node(tmp_path: Path) -> None:
    net = testnet.create(tmp_path, 1, 33_000)
    net.nodes[0].pid = os.getpid()  # alive, but not running node0's config
    net.save()
    assert not testnet.is_running(os.getpid(), net.config_path(net.nodes[0]))
    assert testnet.status(tmp_path)[0][1] == "down"
    assert testnet.kill(tmp_path, "node0") is False  # and it is not signalled


def test_node_command_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(testnet.NODE_CMD_ENV, raising=False)
    assert testnet.node_command(Path("/t/c.json")) == [
        sys.executable,
        "-m",
        "node.cli",
        "node",
        "run",
        "--config",
        "/t/c.json",
    ]
    monkeypatch.setenv(testnet.NODE_CMD_ENV, "/bin/fake 'a b'")
    assert testnet.node_command(Path("/t/c.json")) == ["/bin/fake", "a b", "--config", "/t/c.json"]
