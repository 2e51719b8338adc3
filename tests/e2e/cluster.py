"""A real 4-node testnet on 127.0.0.1 for end-to-end tests, started with `phalanx testnet`."""

from __future__ import annotations

import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.keys import load_private_key
from crypto.signing import Ed25519Signer
from ledger.genesis import Genesis, load_genesis
from node import testnet
from node.client import make_tx

NODES = 4


def free_base_port(nodes: int = NODES) -> int:
    """A base port whose HTTP (base + i) and peer (base + 100 + i) ports are all free now."""
    rng = random.Random()
    for _ in range(200):
        # Below the kernel's ephemeral range (32768+), where an outgoing connection could take a
        # port between our check and the node's bind (seen: a restarted node's own port).
        base = rng.randrange(20_000, 32_000, 10)
        ports = [testnet.http_port(base, i) for i in range(nodes)]
        ports += [testnet.peer_port(base, i) for i in range(nodes)]
        if all(_port_free(port) for port in ports):
            return base
    raise RuntimeError("no free block of ports found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Cluster:
    dir: Path
    genesis: Genesis
    client: Ed25519Signer

    @property
    def nodes(self) -> list[testnet.NodeEntry]:
        return testnet.Testnet.load(self.dir).nodes

    def url(self, name: str) -> str:
        return testnet.Testnet.load(self.dir).node(name).url

    def tx(self, ops: Sequence[Mapping[str, Any]], nonce: int | None = None) -> dict[str, Any]:
        """A v2 transaction of the demo client for this testnet's chain."""
        return make_tx(self.client, ops, nonce, chain_id=self.genesis.chain_id)

    def status(self, name: str) -> dict[str, Any] | None:
        return testnet.fetch_status(self.url(name), timeout_s=2.0)

    def primary_name(self) -> str:
        for node in self.nodes:
            answer = self.status(node.name)
            if answer is not None:
                return next(n.name for n in self.nodes if n.pubkey == answer["primary"])
        raise AssertionError("no node answers /v1/status")

    def kill(self, name: str) -> None:
        assert testnet.kill(self.dir, name), f"{name} was not running"

    def start(self, name: str) -> None:
        testnet.start(self.dir, name)

    def down(self) -> None:
        testnet.down(self.dir, grace_s=5.0)

    def wait_same_head(self, names: list[str], min_seq: int, timeout_s: float = 60.0) -> int:
        """Wait until all ``names`` report one head at or beyond ``min_seq``; return its seq."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = {name: self.status(name) for name in names}
            heads = {(s["seq"], s["head_hash"]) for s in last.values() if s is not None}
            if len(heads) == 1 and None not in last.values():
                seq = next(iter(heads))[0]
                if seq >= min_seq:
                    return int(seq)
            time.sleep(0.3)
        raise AssertionError(f"nodes did not converge on one head >= {min_seq}: {last}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.dir / name / "node.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_cluster(dir: Path) -> Cluster:
    testnet.up(dir, nodes=NODES, base_port=free_base_port(), timeout_s=60.0)
    return Cluster(
        dir=dir.resolve(),
        genesis=load_genesis(dir / "genesis.json"),
        client=load_private_key(dir / "client.key"),
    )


def http_json(
    method: str, url: str, body: Any = None, raw: bytes | None = None, timeout_s: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request; returns (status, parsed JSON body or None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        status = exc.code
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")
