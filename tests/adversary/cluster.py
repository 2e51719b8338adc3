"""A cluster of real node processes, one per test host of a :class:`.netns.TestNet`.

Set up exactly as an operator would (``phalanx keygen``, ``genesis create``, ``node init``, run
in-process here to save process start-ups), each node listening on its own host's address. A
node can be started through a wrapper (``byzantine``, ``clock``) by giving the
wrapper's arguments; this process reaches every node's API through the bridge.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.adversary.netns import TestNet

PEER_PORT = 7100
API_PORT = 7000
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> str:
    """``phalanx ARGS`` in this process (its stdout), failing loudly."""
    from node.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd):
        code = main(list(args))
    if code != 0:
        raise RuntimeError(f"phalanx {' '.join(args)} exited {code}: {err.getvalue()[-500:]}")
    return out.getvalue()


class NetCluster:
    """``len(net.hosts)`` validators named node0..; ``client.key`` is a funded client."""

    def __init__(self, net: TestNet, workdir: Path) -> None:
        self.net = net
        self.dir = workdir
        self.names = [f"node{i}" for i in range(len(net.hosts))]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.pubkeys: list[str] = []

    def setup(
        self, fee_per_byte: int = 0, relay_port: Callable[[int, int], int] | None = None
    ) -> None:
        """Keys, genesis and configs. With ``relay_port``, node i reaches node j at
        127.0.0.1:relay_port(i, j) in its own host (a relay there forwards to j)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            (self.dir / name).mkdir()
            self.pubkeys.append(_cli("keygen", "--out", "node.key", cwd=self.dir / name).strip())
        client = _cli("keygen", "--out", "client.key", cwd=self.dir).strip()
        args = ["genesis", "create", "--out", "genesis.json", "--account", f"{client}=10000000000"]
        args += ["--fee-per-byte", str(fee_per_byte)]
        for name, pubkey in zip(self.names, self.pubkeys, strict=True):
            args += ["--validator", f"{name}={pubkey}"]
        _cli(*args, cwd=self.dir)
        for i, name in enumerate(self.names):
            site = self.dir / name
            address = self.net.hosts[i].address
            peers = [
                f"--peer={other}={self.net.hosts[j].address}:{PEER_PORT}"
                if relay_port is None
                else f"--peer={other}=127.0.0.1:{relay_port(i, j)}"
                for j, other in enumerate(self.names)
                if j != i
            ]
            _cli(
                "node", "init", "--name", name, "--genesis", str(self.dir / "genesis.json"),
                "--key", "node.key", "--listen", f"{address}:{PEER_PORT}",
                "--api", f"{address}:{API_PORT}", *peers, "--out", "node.json", cwd=site,
            )  # fmt: skip

    def url(self, i: int) -> str:
        return f"http://{self.net.hosts[i].address}:{API_PORT}"

    def data_dir(self, i: int) -> Path:
        return self.dir / self.names[i] / "data"

    def start(self, i: int, wrapper: Sequence[str] = ()) -> None:
        """Start node ``i`` in its host; ``wrapper`` e.g.
        ``["-m", "tests.adversary.clock", "--offset-ms", "5000"]`` runs it through that module
        (which must end by running ``-m node.cli``)."""
        config = self.dir / self.names[i] / "node.json"
        module = [*wrapper, "-m", "node.cli"] if wrapper else ["-m", "node.cli"]
        argv = [sys.executable, *module, "node", "run", "--config", str(config)]
        log = (self.dir / self.names[i] / "node.log").open("ab")
        try:
            self.processes[i] = self.net.spawn(
                i, argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=_env()
            )
        finally:
            log.close()

    def stop(self, i: int, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        process = self.processes.pop(i, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def stop_all(self) -> None:
        for i in list(self.processes):
            self.stop(i)

    def get(self, i: int, path: str, timeout_s: float = 2.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url(i) + path, timeout=timeout_s) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body else None

    def post(self, i: int, path: str, body: Any, timeout_s: float = 30.0) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url(i) + path, data=json.dumps(body).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def status(self, i: int) -> dict[str, Any] | None:
        try:
            code, body = self.get(i, "/v1/status")
        except (OSError, ValueError):
            return None
        return body if code == 200 else None

    def wait_ready(self, nodes: Sequence[int], timeout_s: float = 90.0) -> None:
        """Until every node of ``nodes`` answers /v1/health 200 (running, linked, not behind)."""
        deadline = time.monotonic() + timeout_s
        pending = set(nodes)
        while pending:
            for i in sorted(pending):
                process = self.processes.get(i)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{self.names[i]} exited: {self.log_tail(i)}")
                with contextlib.suppress(OSError, ValueError):
                    if self.get(i, "/v1/health")[0] == 200:
                        pending.discard(i)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout_s} s: {sorted(pending)}")
            time.sleep(0.3)

    def heads(self, nodes: Sequence[int]) -> dict[int, tuple[int, str] | None]:
        out: dict[int, tuple[int, str] | None] = {}
        for i in nodes:
            status = self.status(i)
            out[i] = None if status is None else (status["seq"], status["head_hash"])
        return out

    def log_tail(self, i: int, lines: int = 30) -> str:
        path = self.dir / self.names[i] / "node.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}
