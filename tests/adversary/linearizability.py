"""Linearizability checking of client histories: Wing & Gong's search with Lowe's memoisation, as
Porcupine does it (Lowe, "Testing for linearizability", CCPE 2017; Horn & Kroening,
"Faster linearizability checking via P-compositionality", FORTE 2015).

A history is a list of :class:`Operation`: what a client invoked (``input``) at ``call``, what
came back (``output``) at ``ret``. A history is linearizable when every operation can be placed
at one instant between its call and its return so that the placed sequence is legal for the
sequential ``Model``. An operation whose completion is unknown (the client timed out, the
connection broke) has ``ret=None``: its return time is infinity, so it may be placed after
everything else, which is the same as never having taken effect; it may also have taken effect
at any time after its call. Both are explored.

The search (one per partition, see ``Model.partition``): entries (calls and returns) sit in a
doubly linked list in time order, calls before returns at equal times (touching intervals are
concurrent). Walking the list, a call whose operation is legal from the current state is
*linearized*: both its entries are unlinked, the choice is pushed, and the walk restarts. Reaching
a return entry means its operation had to be placed already: pop the last choice, relink it, and
try the entry after it. ``(set of linearized operations, state)`` pairs already explored are
cached, so each is explored once (Lowe's memoisation). With an empty stack at a return entry no
placement exists: the history is not linearizable.

Bounds ("put a limit on everything"): the search counts its steps and watches a deadline, and
answers ``Verdict.UNKNOWN`` when either runs out, never hangs. Per-key partitions keep each search
small; a history with many concurrent clients on one key can still be expensive.

Chains (for reads that may be stale): an operation with ``chain=C`` ignores its call time (it may
be placed as early as the start of the history) but the operations of one chain must be placed in
the order of their call times. Plain reads from one node go in one chain: they may observe an
old state, never a state from after they returned, and never go back in time.
:func:`check_per_node` builds exactly that check.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

S = TypeVar("S", bound=Hashable)

STEPS_MAX_DEFAULT = 5_000_000
TIMEOUT_S_DEFAULT = 30.0
_CHUNK_STEPS = 4_096  # a search reports back (and the clock is read) this often
_SLICE_CHUNKS = 16  # chunks one partition runs before the next one's turn


class Verdict(enum.Enum):
    OK = "linearizable"
    ILLEGAL = "not_linearizable"
    UNKNOWN = "unknown"  # the step or time budget ran out before an answer


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation. ``call`` and ``ret`` are times on one clock (any unit, e.g.
    ``time.monotonic_ns()`` of the recording process); ``ret=None`` means the completion is
    unknown. ``client`` is for reports only."""

    client: Hashable
    input: Any
    call: float
    output: Any
    ret: float | None
    chain: Hashable | None = None


@dataclass(frozen=True)
class Model(Generic[S]):
    """A sequential specification. ``step(state, input, output)`` says whether ``output`` is a
    legal answer to ``input`` in ``state`` and gives the next state; states must be hashable
    (they are memoised). ``partition(input)`` names the independent part of the state an input
    touches (a key), or None for the whole state."""

    init: Callable[[], S]
    step: Callable[[S, Any, Any], tuple[bool, S]]
    partition: Callable[[Any], Hashable] | None = None
    describe: Callable[[Any, Any], str] = field(default=lambda i, o: f"{i!r} -> {o!r}")


@dataclass(frozen=True, slots=True)
class PartitionResult:
    key: Hashable
    verdict: Verdict
    operations: int
    steps: int
    # Diagnostics: the longest sequence of placements the search found (indices into
    # ``ops``), and the operation it could not place after it (None when linearizable).
    longest: tuple[int, ...]
    stuck: int | None
    ops: tuple[Operation, ...]

    def explain(self, model: Model[Any]) -> str:
        if self.verdict is Verdict.OK:
            return f"partition {self.key!r}: linearizable ({self.operations} operations)"
        if self.verdict is Verdict.UNKNOWN:
            return (
                f"partition {self.key!r}: no answer within the budget ({self.steps} steps, "
                f"{self.operations} operations); shorten the history or raise the budget"
            )
        placed = len(self.longest)
        lines = [
            f"partition {self.key!r}: NOT linearizable; at most {placed} of {self.operations} "
            "operations could be placed, the longest attempt ends with:"
        ]
        for index in self.longest[-5:]:
            op = self.ops[index]
            lines.append(f"  {op.client}: {model.describe(op.input, op.output)}")
        if self.stuck is not None:
            op = self.ops[self.stuck]
            lines.append(
                f"  then {op.client}: {model.describe(op.input, op.output)} "
                f"[{op.call}, {op.ret}] cannot be placed"
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    partitions: tuple[PartitionResult, ...]
    steps: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def failed(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.verdict is not Verdict.OK]


class _Budget:
    def __init__(self, steps_max: int, timeout_s: float) -> None:
        self.steps_left = steps_max
        self.deadline = time.monotonic() + timeout_s

    def spend(self, steps: int) -> bool:
        """Take ``steps``; False once the step budget or the deadline is exhausted."""
        self.steps_left -= steps
        return self.steps_left > 0 and time.monotonic() < self.deadline


def check_operations(
    model: Model[Any],
    ops: Iterable[Operation],
    *,
    steps_max: int = STEPS_MAX_DEFAULT,
    timeout_s: float = TIMEOUT_S_DEFAULT,
) -> CheckResult:
    """Whether ``ops`` is linearizable for ``model``, partition by partition. The verdict is
    ILLEGAL if any partition is, else UNKNOWN if any ran out of budget, else OK.

    The partitions' searches take turns (a slice of steps each), as Porcupine runs them in
    parallel: one partition that is quickly found illegal decides the verdict even when another
    would take long to prove linearizable. The budget (steps and seconds) is shared."""
    started = time.monotonic()
    budget = _Budget(steps_max, timeout_s)
    parts = _partitions(model, list(ops))
    searches = {index: _search(model, key, part) for index, (key, part) in enumerate(parts)}
    results: dict[int, PartitionResult] = {}
    spent = dict.fromkeys(searches, 0)
    while searches and Verdict.ILLEGAL not in {r.verdict for r in results.values()}:
        for index, search in list(searches.items()):
            done, taken = _advance(search, _SLICE_CHUNKS)
            spent[index] += taken
            if done is not None:
                results[index] = done
                del searches[index]
                if done.verdict is Verdict.ILLEGAL:
                    break
            if not budget.spend(taken):
                break
        if budget.steps_left <= 0 or time.monotonic() >= budget.deadline:
            break
    for index in searches:  # out of budget, or decided by another partition
        key, part = parts[index]
        unknown = PartitionResult(key, Verdict.UNKNOWN, len(part), spent[index], (), None, part)
        results[index] = unknown
    ordered = tuple(results[i] for i in range(len(parts)))
    verdicts = {r.verdict for r in ordered}
    if Verdict.ILLEGAL in verdicts:
        verdict = Verdict.ILLEGAL
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.OK
    return CheckResult(verdict, ordered, sum(spent.values()), time.monotonic() - started)


_Search = Generator[int, None, PartitionResult]


def _advance(search: _Search, chunks: int) -> tuple[PartitionResult | None, int]:
    """Run ``search`` for up to ``chunks`` chunks of steps: (its result if it ended, steps)."""
    taken = 0
    try:
        for _ in range(chunks):
            taken += next(search)
    except StopIteration as stop:
        result: PartitionResult = stop.value
        return result, taken + result.steps % _CHUNK_STEPS
    return None, taken


def check_per_node(
    model: Model[Any],
    strong: Iterable[Operation],
    node_reads: Mapping[Hashable, Sequence[Operation]],
    **budget: Any,
) -> CheckResult:
    """ "Sequentially consistent per node": the ``strong`` operations (writes, reads with
    ``min_seq``, proven reads) keep their real-time intervals, and each node's plain reads form
    one chain (see the module docstring): every read observes a state of the same placement of
    the writes, no later than its return, and one node's reads never go back in time. Reads must
    not change the state (the chains are placed by the search like any other operation)."""
    chained = [replace(op, chain=node) for node, reads in node_reads.items() for op in reads]
    return check_operations(model, [*strong, *chained], **budget)


def _partitions(
    model: Model[Any], ops: list[Operation]
) -> list[tuple[Hashable, tuple[Operation, ...]]]:
    if model.partition is None:
        return [(None, tuple(ops))]
    parts: dict[Hashable, list[Operation]] = {}
    for op in ops:
        parts.setdefault(model.partition(op.input), []).append(op)
    return [(key, tuple(part)) for key, part in sorted(parts.items(), key=lambda kv: repr(kv[0]))]


def _entry_order(ops: Sequence[Operation]) -> list[int]:
    """Entries in time order: entry ``2i`` is operation i's call, ``2i + 1`` its return. Calls
    come before returns at equal times; chained operations' calls come first of all (at minus
    infinity), in their call order; unknown returns come last (at infinity)."""
    keyed: list[tuple[float, int, float, int]] = []
    for i, op in enumerate(ops):
        call = -math.inf if op.chain is not None else op.call
        keyed.append((call, 0, op.call, 2 * i))
        keyed.append((math.inf if op.ret is None else op.ret, 1, op.call, 2 * i + 1))
    keyed.sort()
    return [entry for *_, entry in keyed]


def _chain_predecessors(ops: Sequence[Operation]) -> list[int]:
    """For each operation, the operation placed just before it in its chain, or -1."""
    pred = [-1] * len(ops)
    last: dict[Hashable, int] = {}
    for i in sorted(range(len(ops)), key=lambda i: ops[i].call):
        chain = ops[i].chain
        if chain is None:
            continue
        pred[i] = last.get(chain, -1)
        last[chain] = i
    return pred


def _search(model: Model[Any], key: Hashable, ops: tuple[Operation, ...]) -> _Search:
    """The search over one partition, as a generator that yields ``_CHUNK_STEPS`` after each
    chunk of steps (so the caller can share time between partitions) and returns the result."""
    for op in ops:
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation {op!r} returns before it is called")
    n = len(ops)
    order = _entry_order(ops)
    head = 2 * n
    # Dancing links over the entries, head sentinel at index 2n; -1 ends the list.
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    previous = head
    for entry in order:
        nxt[previous] = entry
        prv[entry] = previous
        previous = entry
    chain_pred = _chain_predecessors(ops)
    step = model.step
    inputs = [op.input for op in ops]
    outputs = [op.output for op in ops]

    def lift(call: int) -> None:
        for e in (call, call + 1):
            p, x = prv[e], nxt[e]
            nxt[p] = x
            if x != -1:
                prv[x] = p

    def unlift(call: int) -> None:
        for e in (call + 1, call):
            p, x = prv[e], nxt[e]
            nxt[p] = e
            if x != -1:
                prv[x] = e

    state: Any = model.init()
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = []  # (call entry, state before it)
    longest: tuple[int, ...] = ()
    stuck: int | None = None
    steps = 0
    entry = nxt[head]
    while entry != -1:
        steps += 1
        if steps % _CHUNK_STEPS == 0:
            yield _CHUNK_STEPS
        if entry % 2 == 0:  # a call
            i = entry // 2
            pred = chain_pred[i]
            if pred != -1 and not (linearized >> pred) & 1:
                entry = nxt[entry]
                continue
            legal, new_state = step(state, inputs[i], outputs[i])
            if legal:
                new_linearized = linearized | (1 << i)
                memo = (new_linearized, new_state)
                if memo not in cache:
                    cache.add(memo)
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    lift(entry)
                    if len(stack) > len(longest):
                        longest = tuple(e // 2 for e, _ in stack)
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:  # a return whose operation is not placed yet: undo the last placement
            if not stack:
                stuck = _first_unplaced(ops, longest)
                return PartitionResult(key, Verdict.ILLEGAL, n, steps, longest, stuck, ops)
            call, state = stack.pop()
            linearized &= ~(1 << (call // 2))
            unlift(call)
            entry = nxt[call]
    return PartitionResult(key, Verdict.OK, n, steps, longest, None, ops)


def _first_unplaced(ops: Sequence[Operation], placed: Sequence[int]) -> int | None:
    """The unplaced operation that returns first: where the longest attempt got stuck."""
    done = set(placed)
    waiting = [i for i in range(len(ops)) if i not in done]
    if not waiting:
        return None

    def return_time(i: int) -> float:
        ret = ops[i].ret
        return math.inf if ret is None else ret

    return min(waiting, key=return_time)
