"""Recording client operations and checking them: a round trip through JSON lines, and the
split of strong operations from plain per-node reads."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.adversary.history import History
from tests.adversary.kv_model import KV_MODEL, KvInput, json_value
from tests.adversary.linearizability import Verdict, check_operations, check_per_node


def test_record_round_trip_and_checks(tmp_path: Path) -> None:
    ticks = itertools.count()
    history = History(clock=lambda: next(ticks))
    v1, v2 = json_value(1), json_value(2)
    w1 = history.invoke("c1", "n0", KvInput("set", "k", v1))
    history.ok(w1)
    w2 = history.invoke("c1", "n0", KvInput("set", "k", v2))
    history.ok(w2)
    lost = history.invoke("c2", "n1", KvInput("cas", "k", json_value(3), expect=7))
    history.unknown(lost)
    strong = history.invoke("c3", "n2", KvInput("read", "k"), read_kind="min_seq")
    history.ok(strong, v2, 2)
    stale = history.invoke("c3", "n3", KvInput("read", "k"), read_kind="plain")
    history.ok(stale, v1, 1)
    refused = history.invoke("c2", "n1", KvInput("set", "k", json_value(9)))
    history.discard(refused)  # a 400: never ordered, not part of any check
    assert history.counts() == {"ok": 4, "failed": 0, "unknown": 1, "refused": 1}

    path = tmp_path / "history.jsonl"
    history.write_jsonl(path)
    again = History.read_jsonl(path)
    assert [e.operation() for e in again.entries] == [e.operation() for e in history.entries]

    assert check_operations(KV_MODEL, again.strong()).verdict is Verdict.OK
    per_node = check_per_node(KV_MODEL, again.strong(), again.plain_reads_by_node())
    assert per_node.verdict is Verdict.OK
    # The stale plain read is not linearizable: that is why it is checked apart.
    everything = [e.operation() for e in again.entries]
    assert check_operations(KV_MODEL, everything).verdict is Verdict.ILLEGAL
