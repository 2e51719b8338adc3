"""Readers for ``shared/vectors/linearizability/porcupine_test_data`` (see its README), with the
two sequential models its verdicts were made for. Parsing follows upstream's test exactly:
lines that match no pattern are skipped; a read that times out returns, at that point, an
output that matches anything; an operation that never returns gets an unknown return at the
end of the history."""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.adversary.linearizability import Model, Operation

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT.parent / "shared" / "vectors" / "linearizability" / "porcupine_test_data"

_PREFIX = r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+"
_ETCD = [
    ("invoke_read", re.compile(_PREFIX + r":invoke\s+:read\s+nil$")),
    ("invoke_write", re.compile(_PREFIX + r":invoke\s+:write\s+(\d+)$")),
    ("invoke_cas", re.compile(_PREFIX + r":invoke\s+:cas\s+\[(\d+)\s+(\d+)\]$")),
    ("ok_read", re.compile(_PREFIX + r":ok\s+:read\s+(nil|\d+)$")),
    ("ok_write", re.compile(_PREFIX + r":ok\s+:write\s+(\d+)$")),
    ("end_cas", re.compile(_PREFIX + r":(ok|fail)\s+:cas\s+\[(\d+)\s+(\d+)\]$")),
    ("timeout_read", re.compile(_PREFIX + r":fail\s+:read\s+:timed-out$")),
]
UNKNOWN = "unknown"


@dataclass
class _Builder:
    """Turns call/return events (times = event index) into operations."""

    calls: dict[int, tuple[Any, int]]
    done: list[Operation]
    clock: int = 0

    def call(self, client: int, inp: Any) -> None:
        self.calls[client] = (inp, self.clock)
        self.clock += 1

    def ret(self, client: int, out: Any) -> None:
        inp, at = self.calls.pop(client)
        self.done.append(Operation(client, inp, at, out, self.clock))
        self.clock += 1

    def finish(self, unknown: Any) -> list[Operation]:
        # Upstream appends the missing returns after every event: a finite time after all
        # others, which for these outputs (matching anything) is the same as never returning.
        for client, (inp, at) in self.calls.items():
            self.done.append(Operation(client, inp, at, unknown, None))
        return self.done


def parse_etcd(path: Path) -> list[Operation]:
    b = _Builder({}, [])
    for line in path.read_text().splitlines():
        for kind, pattern in _ETCD:
            m = pattern.match(line)
            if m is None:
                continue
            client = int(m.group(1))
            if kind == "invoke_read":
                b.call(client, ("read",))
            elif kind == "invoke_write":
                b.call(client, ("write", int(m.group(2))))
            elif kind == "invoke_cas":
                b.call(client, ("cas", int(m.group(2)), int(m.group(3))))
            elif kind == "ok_read":
                b.ret(client, None if m.group(2) == "nil" else int(m.group(2)))
            elif kind == "ok_write":
                b.ret(client, "ok")
            elif kind == "end_cas":
                b.ret(client, m.group(2) == "ok")
            else:
                b.ret(client, UNKNOWN)
            break
    return b.finish(UNKNOWN)


def _etcd_step(state: int | None, inp: tuple[Any, ...], out: Any) -> tuple[bool, int | None]:
    if inp[0] == "read":
        return out in (UNKNOWN, state), state
    if inp[0] == "write":
        return True, inp[1]
    matches = inp[1] == state
    return out in (UNKNOWN, matches), inp[2] if matches else state


ETCD_MODEL: Model[Any] = Model(init=lambda: None, step=_etcd_step)

_KV_INVOKE = re.compile(
    r'\{:process (\d+), :type :invoke, :f :(get|put|append), :key "(.*)", :value (nil|"(.*)")\}'
)
_KV_OK = re.compile(r'\{:process (\d+), :type :ok, :f :(get|put|append), :key ".*", :value (.*)\}')


def parse_kv(path: Path) -> list[Operation]:
    b = _Builder({}, [])
    for line in path.read_text().splitlines():
        m = _KV_INVOKE.search(line)
        if m is not None:
            f, key, value = m.group(2), m.group(3), m.group(5)
            if (f == "get") != (m.group(4) == "nil"):
                continue  # upstream's patterns: get with nil, put/append with a string
            b.call(int(m.group(1)), (f, key, value))
            continue
        m = _KV_OK.search(line)
        if m is not None:
            raw = m.group(3)
            if not (raw.startswith('"') and raw.endswith('"')):
                continue
            client = int(m.group(1))
            b.ret(client, raw[1:-1] if m.group(2) == "get" else "")
    return b.finish("")


def _kv_step(state: str, inp: tuple[str, str, str | None], out: str) -> tuple[bool, str]:
    f, _key, value = inp
    if f == "get":
        return out == state, state
    if f == "put":
        return True, value or ""
    return True, state + (value or "")


def _kv_partition(inp: tuple[str, str, str | None]) -> Hashable:
    return inp[1]


KV_APPEND_MODEL: Model[Any] = Model(init=lambda: "", step=_kv_step, partition=_kv_partition)
