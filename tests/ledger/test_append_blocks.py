"""LedgerStore.append_blocks: several blocks in one durable write, each stored exactly as
append_block stores it, and all of them or none after a failure or a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Tx
from consensus.output import Committed
from ledger import state_machine
from ledger.genesis import Genesis
from ledger.store import LedgerInvariantError, LedgerStore
from ledger.transaction import ValidTx, decode_transaction
from tests.ledger.helpers import ALICE, BOB, CAROL, committed, make_genesis, tx

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


def mixed_blocks(genesis: Genesis, count: int = 12) -> list[Committed]:
    """Blocks that touch the same keys and balances again and again, with failing transactions,
    a transaction repeated in a later block (``duplicate``), and null blocks."""
    blocks: list[Committed] = []
    first: Tx | None = None
    for seq in range(1, count + 1):
        txs: list[Tx] = []
        if seq % 5 != 0:  # every fifth block is null
            txs = [
                tx(ALICE, seq, {"op": "set", "key": f"k{seq % 3}", "value": seq}),
                tx(ALICE, 1000 + seq, {"op": "transfer", "to": BOB.public_key, "amount": 7}),
                tx(BOB, seq, {"op": "transfer", "to": CAROL.public_key, "amount": 40}),
                tx(BOB, 2000 + seq, {"op": "set", "key": "k0", "value": "not bob's"}),
                tx(ALICE, 3000 + seq, {"op": "cas", "key": "c", "expect": seq - 1, "value": seq}),
            ]
            if first is None:
                first = txs[0]
            elif seq == 4:
                txs.append(first)  # already executed in block 1
        blocks.append(committed(genesis, seq, txs))
    return blocks


def contents(store: LedgerStore) -> dict[str, Any]:
    """Everything a reader of the ledger can see."""
    head_seq = store.head()[0]
    with store.snapshot() as snap:
        return {
            "head": snap.head(),
            "blocks": list(snap.iter_blocks()),
            "roots": [snap.roots(seq) for seq in range(1, head_seq + 1)],
            "state": list(snap.iter_state()),
            "balances": list(snap.iter_balances()),
            "tx_index": list(snap.iter_tx_locations()),
            "state_root": snap.state_root(),
        }


@pytest.fixture
def one_by_one(tmp_path: Path, genesis: Genesis) -> Iterator[LedgerStore]:
    with LedgerStore.open(tmp_path / "one", genesis) as store:
        yield store


@pytest.fixture
def grouped(tmp_path: Path, genesis: Genesis) -> Iterator[LedgerStore]:
    with LedgerStore.open(tmp_path / "grouped", genesis) as store:
        yield store


@pytest.mark.parametrize("chunk", [1, 4, 12])
def test_same_blocks_same_results_as_append_block(
    genesis: Genesis, one_by_one: LedgerStore, grouped: LedgerStore, chunk: int
) -> None:
    blocks = mixed_blocks(genesis)
    expected = []
    for block in blocks:
        results = one_by_one.append_block(block)
        expected.append((one_by_one.head()[1], results))
    got = []
    for start in range(0, len(blocks), chunk):
        got.extend(grouped.append_blocks(blocks[start : start + chunk]))
    assert got == expected
    assert contents(grouped) == contents(one_by_one)
    codes = {r.get("error") for _, results in got for r in results}
    assert {"duplicate", "forbidden", "insufficient_funds", None} <= codes, codes


def test_predecoded_transactions_are_used_and_change_nothing(
    genesis: Genesis, one_by_one: LedgerStore, grouped: LedgerStore
) -> None:
    blocks = mixed_blocks(genesis)
    known = {id(t): decode_transaction(t.wire) for b in blocks for t in b.batch.txs}
    asked: list[str] = []

    def predecoded(t: Tx) -> ValidTx | None:
        asked.append(t.tx_id)
        return known.get(id(t))

    for block in blocks:
        one_by_one.append_block(block)
    grouped.append_blocks(blocks, predecoded=predecoded)
    assert contents(grouped) == contents(one_by_one)
    executed = sum(len(b.batch.txs) for b in blocks) - 1  # one is a duplicate
    assert len(asked) == executed


def test_out_of_order_or_gap_writes_nothing(genesis: Genesis, grouped: LedgerStore) -> None:
    blocks = mixed_blocks(genesis, 6)
    grouped.append_blocks(blocks[:2])
    before = contents(grouped)
    with pytest.raises(LedgerInvariantError, match="seq order"):
        grouped.append_blocks([blocks[2], blocks[4]])  # a gap after the first
    with pytest.raises(LedgerInvariantError, match="seq order"):
        grouped.append_blocks([blocks[1], blocks[2]])  # starts at the head, not after it
    assert contents(grouped) == before
    assert grouped.append_blocks([]) == []
    grouped.append_blocks(blocks[2:])
    assert grouped.head()[0] == 6


def test_a_failure_mid_chunk_leaves_none_of_it(
    genesis: Genesis, grouped: LedgerStore, one_by_one: LedgerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = mixed_blocks(genesis, 8)
    grouped.append_blocks(blocks[:2])
    before = contents(grouped)
    real = state_machine.execute_batch

    def failing(view: Any, seq: int, *args: Any) -> list[dict[str, Any]]:
        if seq == 5:
            raise OSError("disk gone while executing block 5")
        return real(view, seq, *args)

    monkeypatch.setattr("ledger.store.execute_batch", failing)
    with pytest.raises(OSError, match="block 5"):
        grouped.append_blocks(blocks[2:8])
    assert contents(grouped) == before  # blocks 3 and 4 were executed, then rolled back
    assert grouped.block(3) is None
    monkeypatch.setattr("ledger.store.execute_batch", real)
    grouped.append_blocks(blocks[2:8])
    for block in blocks:
        one_by_one.append_block(block)
    assert contents(grouped) == contents(one_by_one)


def test_map_growth_mid_chunk_redoes_the_whole_chunk(tmp_path: Path, genesis: Genesis) -> None:
    big = "x" * 20_000
    blocks = [
        committed(genesis, seq, [tx(ALICE, seq, {"op": "set", "key": f"k{seq}", "value": big})])
        for seq in range(1, 25)
    ]
    with LedgerStore.open(tmp_path / "small", genesis, map_size=64 * 1024) as small:
        initial = small.map_size()
        got = small.append_blocks(blocks[:12]) + small.append_blocks(blocks[12:])
        assert small.map_size() > initial
        grown = contents(small)
    with LedgerStore.open(tmp_path / "one", genesis) as one:
        expected = [(one.append_block(b), one.head()[1])[::-1] for b in blocks]
        assert got == expected
        assert grown == contents(one)


CHUNK = 5
_WRITER = """
import sys
sys.path.insert(0, {root!r})
from ledger.store import LedgerStore
from tests.ledger.helpers import ALICE, committed, make_genesis, tx

genesis = make_genesis()
store = LedgerStore.open({path!r}, genesis)
seq = store.head()[0]
while True:
    chunk = []
    for _ in range({chunk}):
        seq += 1
        txs = [tx(ALICE, seq * 10 + i, {{"op": "set", "key": f"k{{i}}", "value": seq}})
               for i in range(20)]
        chunk.append(committed(genesis, seq, txs))
    store.append_blocks(chunk)
    print(seq, flush=True)
"""


def test_kill_9_mid_write_keeps_whole_chunks_and_restarts_cleanly(
    tmp_path: Path, genesis: Genesis
) -> None:
    path = tmp_path / "killed"
    script = _WRITER.format(root=str(PROJECT_ROOT), path=str(path), chunk=CHUNK)
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        try:
            reported = [int(process.stdout.readline()) for _ in range(3)]
            time.sleep(0.05 + (os.getpid() % 7) / 100)  # somewhere inside a later write
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    with LedgerStore.open(path, genesis) as store:
        store.check_recent()
        head_seq = store.head()[0]
        assert head_seq >= reported[-1]
        assert head_seq % CHUNK == 0, f"head {head_seq}: part of a chunk was stored"
        assert store.block(head_seq + 1) is None
        value = store.get_state("k0")
        assert value is not None and value["value"] == head_seq
        next_txs = [tx(ALICE, 10**9, {"op": "set", "key": "after", "value": 1})]
        store.append_blocks([committed(genesis, head_seq + 1, next_txs)])
        assert store.head()[0] == head_seq + 1
