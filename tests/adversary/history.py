"""Recording what chaos clients did, for :mod:`.linearizability`.

A client calls :meth:`History.invoke` just before it sends a request and one of
:meth:`History.ok`, :meth:`History.fail` or :meth:`History.unknown` when it knows the outcome
(or gives up). Times come from one monotonic clock of the recording process, so operations of
every client (threads or tasks of that process) are ordered on one time line. An operation never
completed is unknown. ``read_kind`` separates plain reads (checked per node) from reads with
``min_seq`` and proven reads (checked for linearizability).

Histories are written as JSON lines (one operation per line) so a run can be checked again
offline: ``{"client", "node", "read_kind", "input": {...}, "call", "output": {...}, "ret"}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tests.adversary.kv_model import KvInput, KvOutput
from tests.adversary.linearizability import Operation

ReadKind = Literal["plain", "min_seq", "proven"]


@dataclass(slots=True)
class Entry:
    client: str
    node: str
    input: KvInput
    call: int
    output: KvOutput | None = None
    ret: int | None = None
    read_kind: ReadKind | None = None
    refused: bool = False  # refused before it could be ordered: not part of the history

    def operation(self) -> Operation:
        output = self.output if self.output is not None else KvOutput("unknown")
        ret = self.ret if output.status != "unknown" else None
        return Operation(self.client, self.input, self.call, output, ret)


class History:
    """Thread-safe record of invocations and completions."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.entries: list[Entry] = []

    def invoke(
        self, client: str, node: str, inp: KvInput, read_kind: ReadKind | None = None
    ) -> int:
        if (inp.op == "read") != (read_kind is not None):
            raise ValueError("reads, and only reads, name their kind (plain, min_seq, proven)")
        with self._lock:
            self.entries.append(Entry(client, node, inp, self._clock(), read_kind=read_kind))
            return len(self.entries) - 1

    def ok(self, handle: int, value: str | None = None, version: int = 0) -> None:
        self._complete(handle, KvOutput("ok", value, version))

    def fail(self, handle: int) -> None:
        """Committed, with an error that left the key unchanged (cas_mismatch, not_found...)."""
        self._complete(handle, KvOutput("fail"))

    def unknown(self, handle: int) -> None:
        """The outcome is unknown (timeout, broken connection, 503): it may still take effect."""
        with self._lock:
            self.entries[handle].output = KvOutput("unknown")

    def discard(self, handle: int) -> None:
        """Refused before ordering (a 4xx): it did nothing and is left out of every check."""
        with self._lock:
            self.entries[handle].refused = True

    def _complete(self, handle: int, output: KvOutput) -> None:
        with self._lock:
            entry = self.entries[handle]
            if entry.output is not None:
                raise ValueError(f"operation {handle} already completed")
            entry.output, entry.ret = output, self._clock()

    def counts(self) -> dict[str, int]:
        with self._lock:
            outputs = [e.output for e in self.entries if not e.refused]
            refused = sum(1 for e in self.entries if e.refused)
        return {
            "ok": sum(1 for o in outputs if o is not None and o.status == "ok"),
            "failed": sum(1 for o in outputs if o is not None and o.status == "fail"),
            "unknown": sum(1 for o in outputs if o is None or o.status == "unknown"),
            "refused": refused,
        }

    def strong(self) -> list[Operation]:
        """Writes, and reads with min_seq or proven: these must be linearizable."""
        return [e.operation() for e in self.entries if e.read_kind != "plain" and not e.refused]

    def plain_reads_by_node(self) -> dict[Hashable, list[Operation]]:
        by_node: dict[Hashable, list[Operation]] = {}
        for e in self.entries:
            if e.read_kind == "plain" and e.output is not None and e.output.status == "ok":
                if e.refused:
                    continue
                by_node.setdefault(e.node, []).append(e.operation())
        return by_node

    def write_jsonl(self, path: Path) -> None:
        with path.open("w") as out:
            for e in self.entries:
                out.write(json.dumps(asdict(e), sort_keys=True) + "\n")

    @classmethod
    def read_jsonl(cls, path: Path) -> History:
        history = cls()
        for line in path.read_text().splitlines():
            raw = json.loads(line)
            output = None if raw["output"] is None else KvOutput(**raw["output"])
            entry = Entry(
                raw["client"],
                raw["node"],
                KvInput(**raw["input"]),
                raw["call"],
                output,
                raw["ret"],
                raw["read_kind"],
                raw.get("refused", False),
            )
            history.entries.append(entry)
        return history
