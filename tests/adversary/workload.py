"""Clients that write and read keys through the nodes' HTTP APIs and record every operation in a
:class:`.history.History` (dev/test only).

Outcomes, as :mod:`.kv_model` reads them: a write answered 200 ``committed`` is ``ok`` (or
``fail`` when its committed result is ``cas_mismatch``); one answered 202 (still pending after
the wait), 5xx, or lost to a timeout or a broken connection is ``unknown`` (it may commit
later); one refused with a 4xx was never ordered and is left out of the history. A read
answered 200 (or 404: absent) is ``ok``; any other answer makes it unknown.

``min_seq`` reads ask for the state as of at least the highest seq any client had seen when the
read began (acknowledged writes, and the ``seq`` every read answered): such a read is
linearizable, also relative to the plain reads that completed before it began. Plain reads may
come from a lagging node and are checked per node (``History.plain_reads_by_node``).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from crypto.signing import Ed25519Signer
from ledger.genesis import Genesis
from ledger.proven_read import verify_read
from node.client import make_tx, transfer_op, tx_id_of
from tests.adversary.cluster import NetCluster
from tests.adversary.history import History, ReadKind
from tests.adversary.kv_model import KvInput, json_value

WAIT_MS = 5_000  # how long a write waits for its commit before it counts as unknown
HTTP_TIMEOUT_S = 8.0


class Frontier:
    """The highest seq any client saw (acknowledged writes, read answers; for min_seq reads),
    and the ids of every transaction acknowledged as committed (each must be in every honest
    ledger at the end)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = 0
        self.acked: list[str] = []

    def saw(self, seq: int, tx_id: str | None = None) -> None:
        with self._lock:
            self.seq = max(self.seq, seq)
            if tx_id is not None:
                self.acked.append(tx_id)


class KvClient:
    """One client thread's operations against the cluster (nodes chosen by the caller)."""

    def __init__(
        self,
        name: str,
        cluster: NetCluster,
        signer: Ed25519Signer,
        chain_id: str,
        history: History,
        frontier: Frontier,
        rng: random.Random,
    ) -> None:
        self.name, self.cluster, self.signer, self.chain_id = name, cluster, signer, chain_id
        self.history, self.frontier, self.rng = history, frontier, rng
        self._versions: dict[str, int] = {}  # last version this client saw, to aim its cas
        self.genesis: Genesis | None = None  # set to make proven reads
        # Outcomes of transfers (not in the key/value model: each acknowledged one must be in
        # every honest ledger, and the ledgers must agree on the balances).
        self.transfers: dict[str, int] = {"ok": 0, "failed": 0, "unknown": 0}
        # Proven reads whose proof did not verify: (node, reasons). Any is a failed scenario.
        self.bad_proofs: list[tuple[str, list[str]]] = []

    def transfer(self, node: int, to: str, amount: int) -> None:
        tx = make_tx(
            self.signer,
            [transfer_op(to, amount)],
            self.rng.randrange(2**53),
            chain_id=self.chain_id,
        )
        try:
            status, body = self.cluster.post(
                node, f"/v1/tx?wait=commit&timeout_ms={WAIT_MS}", tx, timeout_s=HTTP_TIMEOUT_S
            )
        except (OSError, ValueError):
            self.transfers["unknown"] += 1
            return
        if status == 200 and isinstance(body, dict) and body.get("status") == "committed":
            receipt = body["receipt"]
            self.frontier.saw(int(receipt["seq"]), tx_id_of(tx))
            ok = bool((receipt.get("result") or {}).get("ok"))
            self.transfers["ok" if ok else "failed"] += 1
        elif 400 <= status < 500:
            self.transfers["failed"] += 1
        else:
            self.transfers["unknown"] += 1

    def write(self, node: int, key: str, value: Any, cas: bool = False) -> None:
        encoded = json_value(value)
        if cas:
            expect = self._versions.get(key, 0)
            inp = KvInput("cas", key, encoded, expect)
            op = {"op": "cas", "key": key, "expect": expect, "value": value}
        else:
            inp = KvInput("set", key, encoded)
            op = {"op": "set", "key": key, "value": value}
        tx = make_tx(self.signer, [op], self.rng.randrange(2**53), chain_id=self.chain_id)
        handle = self.history.invoke(self.name, self.cluster.names[node], inp)
        try:
            status, body = self.cluster.post(
                node, f"/v1/tx?wait=commit&timeout_ms={WAIT_MS}", tx, timeout_s=HTTP_TIMEOUT_S
            )
        except (OSError, ValueError):
            self.history.unknown(handle)
            return
        if status == 200 and isinstance(body, dict) and body.get("status") == "committed":
            receipt = body["receipt"]
            self.frontier.saw(int(receipt["seq"]), tx_id_of(tx))
            result = receipt.get("result") or {}
            if result.get("ok"):
                self.history.ok(handle)
            elif result.get("error") == "cas_mismatch":
                self.history.fail(handle)
            else:
                self.history.unknown(handle)  # another error: not modelled, matches anything
        elif 400 <= status < 500:
            self.history.discard(handle)
        else:
            self.history.unknown(handle)

    def read(self, node: int, key: str, kind: ReadKind) -> None:
        query = ""
        if kind == "min_seq":
            query = f"?min_seq={max(1, self.frontier.seq)}&timeout_ms={WAIT_MS}"
        elif kind == "proven":
            # Proven as of a certified block at or after every seq seen: linearizable.
            query = f"?proof=true&min_seq={max(1, self.frontier.seq)}&timeout_ms={WAIT_MS}"
        handle = self.history.invoke(
            self.name, self.cluster.names[node], KvInput("read", key), kind
        )
        path = f"/v1/state/{urllib.parse.quote(key, safe='')}{query}"
        try:
            status, body = self.cluster.get(node, path, timeout_s=HTTP_TIMEOUT_S)
        except (OSError, ValueError):
            self.history.unknown(handle)
            return
        if status == 200 and isinstance(body, dict) and kind == "proven":
            if self.genesis is None:
                raise ValueError("proven reads need KvClient.genesis")
            failures = verify_read(body, self.genesis)
            if not failures and body.get("key") != key:
                failures = [f"the answer is about key {body.get('key')!r}, not {key!r}"]
            if failures:  # not evidence of anything the key held: left unknown, and reported
                self.bad_proofs.append((self.cluster.names[node], failures))
                self.history.unknown(handle)
                return
            self.frontier.saw(int(body["seq"]))
            self._versions[key] = int(body["version"])
            value = None if body["version"] == 0 else json_value(body["value"])
            self.history.ok(handle, value, int(body["version"]))
        elif status == 200 and isinstance(body, dict):
            # Whatever a read observed, later min_seq reads must not go behind: without this a
            # plain read could see a write committed but not yet acknowledged, and a min_seq read
            # started after it on a lagging node could still answer the older value.
            self.frontier.saw(int(body["seq"]))
            self._versions[key] = int(body["version"])
            self.history.ok(handle, json_value(body["value"]), int(body["version"]))
        elif status == 404:
            self._versions[key] = 0
            self.history.ok(handle, None, 0)
        else:
            self.history.unknown(handle)


def run_clients(
    clients: list[KvClient],
    step: Callable[[KvClient], None],
    duration_s: float,
    ops_max: int = 10_000,
) -> None:
    """Each client in its own thread calls ``step`` until ``duration_s`` passed or ``ops_max``
    operations were recorded (bounded either way)."""
    deadline = time.monotonic() + duration_s

    def loop(client: KvClient) -> None:
        while time.monotonic() < deadline and len(client.history.entries) < ops_max:
            step(client)

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 2 * HTTP_TIMEOUT_S + 5)
