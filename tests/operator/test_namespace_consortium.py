"""A consortium of four hosts on this machine: four network namespaces, each with its own IP
address on a bridge, one node in each, set up only with ``keygen``, ``genesis create`` and
``node init`` (the README's "Running a consortium"), then a committed transaction, a verified
receipt and an offline audit of all four ledgers.

Needs root (``ip netns``); skips with the reason otherwise. The namespaces, veth pairs and the
bridge are the test's own (random names) and are removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import main as phalanx_main

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = 4
PEER_PORT = 7100
API_PORT = 7000
READY_S = 90.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _phalanx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``phalanx ARGS`` run in this process (in ``cwd``), as a shell would see it: the exit
    code, stdout and stderr. In-process because each fresh interpreter costs seconds here."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = phalanx_main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


class Hosts:
    """The bridge, the namespaces and their addresses."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.bridge = f"phxbr{tag}"
        self.namespaces = [f"phx{tag}-{i}" for i in range(NODES)]
        self.veths = [f"phx{tag}v{i}" for i in range(NODES)]
        third = int(tag[:2], 16) % 200 + 20  # 10.231.<20..219>.0/24: rarely used
        self.subnet = f"10.231.{third}"
        self.addresses = [f"{self.subnet}.{i + 1}" for i in range(NODES)]
        self.host_address = f"{self.subnet}.254"

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, veth, address in zip(self.namespaces, self.veths, self.addresses, strict=True):
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _ip("link", "set", f"{veth}p", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", f"{veth}p")
            _ip("-n", ns, "link", "set", f"{veth}p", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)  # takes its end of the veth pair along
        for veth in self.veths:
            _ip("link", "del", veth, check=False)
        _ip("link", "del", self.bridge, check=False)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to create network namespaces (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` command (iproute2) to create network namespaces")
    probe = _ip("link", "add", "phxprobe0", "type", "bridge", check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a bridge here: {probe.stderr.strip()}")
    _ip("link", "del", "phxprobe0", check=False)
    hosts = Hosts()
    try:
        hosts.create()
        yield hosts
    finally:
        hosts.remove()


def _get(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_healthy(urls: list[str], procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + READY_S
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                raise AssertionError(f"node{i} exited: {logs[i].read_text()[-2000:]}")
        for url in sorted(pending):
            try:
                status, _ = _get(f"{url}/v1/health")
            except OSError:
                continue
            if status == 200:
                pending.discard(url)
        time.sleep(0.5)
    assert not pending, f"not healthy after {READY_S} s: {sorted(pending)}"


def test_four_hosts_configured_with_the_cli_commit_and_audit(hosts: Hosts, tmp_path: Path) -> None:
    names = [f"org{i}" for i in range(NODES)]
    sites = [tmp_path / name for name in names]  # each organisation's own directory
    pubkeys = []
    for site in sites:
        site.mkdir()
        result = _phalanx("keygen", "--out", "node.key", cwd=site)
        assert result.returncode == 0, result.stderr
        pubkeys.append(result.stdout.strip())
    client = _phalanx("keygen", "--out", "client.key", cwd=tmp_path)
    assert client.returncode == 0, client.stderr
    client_pub = client.stdout.strip()

    # One of them writes the genesis from the public keys it was sent, and shares it.
    args = ["genesis", "create", "--out", "genesis.json", "--account", f"{client_pub}=10000000"]
    for name, pubkey in zip(names, pubkeys, strict=True):
        args += ["--validator", f"{name}={pubkey}"]
    created = _phalanx(*args, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    genesis = tmp_path / "genesis.json"
    assert json.loads(genesis.read_text())["chain_id"].startswith("phalanx-")

    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for i, site in enumerate(sites):
            shutil.copy(genesis, site / "genesis.json")
            peers = [
                f"--peer={names[j]}={hosts.addresses[j]}:{PEER_PORT}"
                for j in range(NODES)
                if j != i
            ]
            init = _phalanx(
                "node", "init", "--name", names[i], "--genesis", "genesis.json",
                "--key", "node.key", "--listen", f"{hosts.addresses[i]}:{PEER_PORT}",
                "--api", f"{hosts.addresses[i]}:{API_PORT}", *peers, "--out", "node.json",
                cwd=site,
            )  # fmt: skip
            assert init.returncode == 0, init.stderr
            logs.append(site / "node.log")
            with open(logs[-1], "wb") as log:
                procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", hosts.namespaces[i], sys.executable,
                         "-m", "node.cli", "node", "run", "--config", str(site / "node.json")],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                    )
                )  # fmt: skip
        urls = [f"http://{address}:{API_PORT}" for address in hosts.addresses]
        _wait_healthy(urls, procs, logs)

        for url in urls:  # healthy needs q - 1 links; all n - 1 come up soon after
            deadline = time.monotonic() + 30
            while True:
                status, peers_answer = _get(f"{url}/v1/peers")
                assert status == 200
                if all(p["connected"] for p in peers_answer) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert all(p["connected"] for p in peers_answer), peers_answer
            assert {p["address"].split(":")[0] for p in peers_answer} <= set(hosts.addresses)

        tx = _phalanx(
            "tx", "set", "greeting", '"hello consortium"', "--url", urls[2],
            "--key", "client.key", "--genesis", "genesis.json", cwd=tmp_path,
        )  # fmt: skip
        assert tx.returncode == 0, tx.stderr
        (tmp_path / "receipt.json").write_text(tx.stdout)
        verified = _phalanx(
            "audit", "verify-receipt", "receipt.json", "--genesis", "genesis.json", cwd=tmp_path
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        seq = json.loads(tx.stdout)["seq"]
        for url in urls:
            deadline = time.monotonic() + 30
            while _get(f"{url}/v1/status")[1]["seq"] < seq and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _get(f"{url}/v1/state/greeting")[1]["value"] == "hello consortium"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log_text = logs[0].read_text()
    assert '"event":"peer_connected"' in log_text and '"peer_name":"org1"' in log_text
    audit = _phalanx(
        "audit", *[str(site / "data") for site in sites], "--genesis", str(genesis), cwd=tmp_path
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
