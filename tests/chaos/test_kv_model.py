"""The Phalanx key/value model and the per-node check, on small hand-made histories whose answer
is known: each illegal one differs from a legal one by one detail."""

from __future__ import annotations

from tests.adversary.kv_model import KV_MODEL, KvInput, KvOutput, json_value
from tests.adversary.linearizability import Operation, Verdict, check_operations, check_per_node

V1, V2 = json_value({"n": 1}), json_value({"n": 2})


def op(inp: KvInput, out: KvOutput, call: float, ret: float | None, client: str = "c") -> Operation:
    return Operation(client, inp, call, out, ret)


def set_(key: str, value: str, call: float, ret: float | None, status: str = "ok") -> Operation:
    return op(KvInput("set", key, value), KvOutput(status), call, ret)  # type: ignore[arg-type]


def cas(
    key: str, expect: int, value: str, call: float, ret: float | None, status: str
) -> Operation:
    return op(KvInput("cas", key, value, expect), KvOutput(status), call, ret)  # type: ignore[arg-type]


def read(key: str, value: str | None, version: int, call: float, ret: float) -> Operation:
    return op(KvInput("read", key), KvOutput("ok", value, version), call, ret, client="r")


def verdict(ops: list[Operation]) -> Verdict:
    return check_operations(KV_MODEL, ops).verdict


def test_sequential_writes_and_reads() -> None:
    ops = [set_("k", V1, 0, 1), read("k", V1, 1, 2, 3), set_("k", V2, 4, 5), read("k", V2, 2, 6, 7)]
    assert verdict(ops) is Verdict.OK
    stale = [*ops[:3], read("k", V1, 1, 6, 7)]
    assert verdict(stale) is Verdict.ILLEGAL


def test_concurrent_read_may_see_either() -> None:
    for value, version in ((None, 0), (V1, 1)):
        assert verdict([set_("k", V1, 0, 10), read("k", value, version, 2, 3)]) is Verdict.OK
    assert verdict([set_("k", V1, 0, 10), read("k", V2, 1, 2, 3)]) is Verdict.ILLEGAL


def test_unknown_write_may_or_may_not_take_effect() -> None:
    # The write's outcome is unknown (ret=None): later reads may see it or not, but not both
    # ways round (once seen, it stays).
    unknown = set_("k", V1, 0, None, "unknown")
    assert verdict([unknown, read("k", None, 0, 5, 6)]) is Verdict.OK
    assert verdict([unknown, read("k", V1, 1, 5, 6)]) is Verdict.OK
    assert verdict([unknown, read("k", V1, 1, 5, 6), read("k", None, 0, 7, 8)]) is Verdict.ILLEGAL
    # A write known to have failed never takes effect.
    failed = set_("k", V1, 0, 1, "fail")
    assert verdict([failed, read("k", V1, 1, 5, 6)]) is Verdict.ILLEGAL


def test_cas_outcomes_follow_the_version() -> None:
    base = [set_("k", V1, 0, 1)]
    assert verdict([*base, cas("k", 1, V2, 2, 3, "ok"), read("k", V2, 2, 4, 5)]) is Verdict.OK
    assert verdict([*base, cas("k", 0, V2, 2, 3, "ok")]) is Verdict.ILLEGAL
    assert verdict([*base, cas("k", 0, V2, 2, 3, "fail"), read("k", V1, 1, 4, 5)]) is Verdict.OK
    assert verdict([*base, cas("k", 1, V2, 2, 3, "fail")]) is Verdict.ILLEGAL
    # Two clients' cas with the same expectation: at most one may succeed.
    both = [*base, cas("k", 1, V2, 2, 6, "ok"), cas("k", 1, V1, 2, 6, "ok")]
    assert verdict(both) is Verdict.ILLEGAL


def test_delete_resets_the_version() -> None:
    delete = op(KvInput("delete", "k"), KvOutput("ok"), 2, 3)
    ops = [set_("k", V1, 0, 1), delete, read("k", None, 0, 4, 5), cas("k", 0, V2, 6, 7, "ok")]
    assert verdict(ops) is Verdict.OK
    missing = op(KvInput("delete", "k"), KvOutput("ok"), 0, 1)
    assert verdict([missing]) is Verdict.ILLEGAL  # an absent key cannot be deleted


def test_keys_are_independent_partitions() -> None:
    ops = [
        set_("a", V1, 0, 1),
        set_("b", V2, 0, 1),
        read("a", V1, 1, 2, 3),
        read("b", None, 0, 2, 3),
    ]
    result = check_operations(KV_MODEL, ops)
    assert result.verdict is Verdict.ILLEGAL
    assert [(p.key, p.verdict) for p in result.partitions] == [
        ("a", Verdict.OK),
        ("b", Verdict.ILLEGAL),
    ]


def test_per_node_reads_may_be_stale_but_not_go_back() -> None:
    writes = [set_("k", V1, 0, 1), set_("k", V2, 2, 3)]
    # A lagging node answers V1 long after V2 was acknowledged: not linearizable...
    lagging = [read("k", V1, 1, 10, 11), read("k", V2, 2, 12, 13)]
    assert verdict([*writes, *lagging]) is Verdict.ILLEGAL
    # ...but sequentially consistent for that node.
    assert check_per_node(KV_MODEL, writes, {"n1": lagging}).verdict is Verdict.OK
    # Going back in time on one node is not.
    back = [read("k", V2, 2, 10, 11), read("k", V1, 1, 12, 13)]
    assert check_per_node(KV_MODEL, writes, {"n1": back}).verdict is Verdict.ILLEGAL
    # Two nodes, each monotone, may lag differently.
    other = [read("k", V1, 1, 10, 11)]
    assert check_per_node(KV_MODEL, writes, {"n1": back[:1], "n2": other}).verdict is Verdict.OK


def test_per_node_reads_cannot_see_the_future() -> None:
    # The read returned before the write was even invoked.
    early = [read("k", V1, 1, 0, 1)]
    assert check_per_node(KV_MODEL, [set_("k", V1, 5, 6)], {"n1": early}).verdict is Verdict.ILLEGAL


def test_explain_names_the_stuck_operation() -> None:
    ops = [set_("k", V1, 0, 1), read("k", None, 0, 2, 3)]
    result = check_operations(KV_MODEL, ops)
    text = result.failed()[0].explain(KV_MODEL)
    assert "read(k) -> absent" in text and "cannot be placed" in text


def test_a_strong_read_may_not_go_behind_an_earlier_plain_read() -> None:
    # Found by scripts/chaos (delay-jitter, seed 5): a plain read saw a write that was committed
    # but not yet acknowledged; a min_seq read started after it returned on a lagging node and
    # answered the older value. The per-node check refuses that history, which is why chaos
    # clients raise their min_seq to every seq a read answered (tests.adversary.workload.Frontier).
    writes = [set_("k", V1, 0, 1), set_("k", V2, 2, 20)]  # V2 acknowledged only at 20
    plain = {"n3": [read("k", V2, 2, 5, 6)]}
    stale_strong = read("k", V1, 1, 8, 9)
    assert check_operations(KV_MODEL, [*writes, stale_strong]).verdict is Verdict.OK
    assert check_per_node(KV_MODEL, [*writes, stale_strong], plain).verdict is Verdict.ILLEGAL
    fresh_strong = read("k", V2, 2, 8, 9)
    assert check_per_node(KV_MODEL, [*writes, fresh_strong], plain).verdict is Verdict.OK
