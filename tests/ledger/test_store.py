"""The LMDB ledger store: blocks, chain, index, state, records, reopen, growth, readers."""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from consensus.batch import Batch, block_hash
from consensus.output import Committed, Record
from crypto.hashing import hash_object
from ledger.genesis import Genesis
from ledger.receipt import verify_receipt
from ledger.state_machine import ChainRules, DictState, execute_batch
from ledger.store import (
    LedgerFullError,
    LedgerInvariantError,
    LedgerStore,
    StoreError,
    committed_from_block,
)
from tests.ledger.helpers import ALICE, BOB, CAROL, certify_execution, committed, make_genesis, tx

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OK = {"ok": True, "error": None}


@pytest.fixture
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture
def store(tmp_path: Path, genesis: Genesis) -> Any:
    s = LedgerStore.open(tmp_path / "ledger", genesis)
    yield s
    s.close()


def test_fresh_store(store: LedgerStore, genesis: Genesis) -> None:
    assert store.head() == (0, genesis.genesis_hash)
    assert store.balance(ALICE.public_key) == 1_000
    assert store.balance(CAROL.public_key) == 0
    assert store.block(1) is None
    assert store.block_hash(0) == genesis.genesis_hash
    assert store.load_records() == []


def test_file_modes(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "ledger"
    LedgerStore.open(path, genesis).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600


def test_append_blocks_chain_and_results(store: LedgerStore, genesis: Genesis) -> None:
    t1 = tx(ALICE, 0, {"op": "set", "key": "k", "value": {"a": 1}})
    t2 = tx(ALICE, 1, {"op": "transfer", "to": CAROL.public_key, "amount": 300})
    t3 = tx(BOB, 0, {"op": "transfer", "to": CAROL.public_key, "amount": 51})
    c1 = committed(genesis, 1, [t1, t2, t3])
    assert store.append_block(c1) == [OK, OK, {"ok": False, "error": "insufficient_funds"}]
    c2 = committed(genesis, 2)  # a null batch
    assert store.append_block(c2) == []
    c3 = committed(
        genesis, 3, [t1, tx(ALICE, 2, {"op": "cas", "key": "k", "expect": 1, "value": 2})]
    )
    assert store.append_block(c3) == [{"ok": False, "error": "duplicate"}, OK]

    h1 = block_hash(1, genesis.genesis_hash, c1.batch.digest)
    h2 = block_hash(2, h1, c2.batch.digest)
    h3 = block_hash(3, h2, c3.batch.digest)
    assert store.head() == (3, h3)
    assert [store.block_hash(s) for s in (1, 2, 3)] == [h1, h2, h3]

    block = store.block(1)
    assert block is not None
    assert set(block) == {
        "seq", "hash", "prev_hash", "batch", "txs", "results", "certificate", "execution"
    }  # fmt: skip
    assert block["execution"] is None  # until q execution votes are stored
    assert block["seq"] == 1 and block["hash"] == h1 and block["prev_hash"] == genesis.genesis_hash
    assert block["batch"] == c1.batch.header
    assert hash_object(block["batch"]) == c1.batch.digest
    assert block["txs"] == [dict(t.wire) for t in (t1, t2, t3)]
    assert block["certificate"] == c1.certificate.to_wire()
    null_block = store.block(2)
    assert null_block is not None
    assert null_block["batch"]["tx_count"] == 0 and null_block["batch"]["time_ms"] == 0
    assert store.block(4) is None and store.block(0) is None

    assert store.get_state("k") == {
        "key": "k",
        "value": 2,
        "version": 2,
        "owner": ALICE.public_key,
        "seq": 3,
    }
    assert store.get_state("absent") is None
    assert store.balance(ALICE.public_key) == 700
    assert store.balance(CAROL.public_key) == 300
    assert store.balance(BOB.public_key) == 50
    assert store.tx_location(t1.tx_id) == (1, 0)  # the first position, not the duplicate's
    assert store.tx_location(t3.tx_id) == (1, 2)
    assert store.is_committed(t3.tx_id) and not store.is_committed("ab" * 32)
    assert store.tx_location("not hex") is None
    assert [b["seq"] for b in store.iter_blocks()] == [1, 2, 3]
    assert [b["seq"] for b in store.iter_blocks(2, 2)] == [2]


def test_receipts_from_the_store_verify(store: LedgerStore, genesis: Genesis) -> None:
    seq_txs = []
    nonce = 0
    for seq, count in enumerate([1, 2, 3, 5, 7, 8], start=1):
        txs = []
        for _ in range(count):
            txs.append(tx(ALICE, nonce, {"op": "set", "key": f"k{nonce}", "value": nonce}))
            nonce += 1
        store.append_block(committed(genesis, seq, txs, view=seq % 3))
        certify_execution(store, seq)
        seq_txs.append((seq, txs))
    for seq, txs in seq_txs:
        for index, t in enumerate(txs):
            receipt = store.receipt(t.tx_id)
            assert receipt is not None
            assert (receipt["seq"], receipt["index"], receipt["tx_id"]) == (seq, index, t.tx_id)
            assert receipt["result"] == OK
            assert verify_receipt(receipt, genesis) == []
    assert store.receipt("ab" * 32) is None


def test_duplicate_receipt_is_the_first_position(store: LedgerStore, genesis: Genesis) -> None:
    t = tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})
    store.append_block(committed(genesis, 1, [t]))
    first = store.receipt(t.tx_id)
    store.append_block(committed(genesis, 2, [tx(BOB, 0, {"op": "delete", "key": "x"}), t]))
    assert store.receipt(t.tx_id) == first
    assert store.block(2)["results"][1] == {"ok": False, "error": "duplicate"}  # type: ignore[index]


def test_out_of_order_and_foreign_blocks_are_refused(store: LedgerStore, genesis: Genesis) -> None:
    with pytest.raises(LedgerInvariantError, match="seq order"):
        store.append_block(committed(genesis, 2))
    store.append_block(committed(genesis, 1))
    with pytest.raises(LedgerInvariantError, match="seq order"):
        store.append_block(committed(genesis, 1))
    other = make_genesis(chain_id="other-chain")
    with pytest.raises(LedgerInvariantError, match="chain"):
        store.append_block(committed(other, 2))
    assert store.head()[0] == 1


def test_reopen_keeps_everything(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "ledger"
    t = tx(ALICE, 0, {"op": "set", "key": "k", "value": "v"})
    with LedgerStore.open(path, genesis) as s:
        s.append_block(
            committed(genesis, 1, [t]), records=[Record("view", {"view": 3, "active": True})]
        )
        head = s.head()
        receipt = s.receipt(t.tx_id)
    with LedgerStore.open(path, genesis) as s:
        assert s.head() == head
        assert s.receipt(t.tx_id) == receipt
        assert s.get_state("k") == {
            "key": "k",
            "value": "v",
            "version": 1,
            "owner": ALICE.public_key,
            "seq": 1,
        }
        assert s.load_records() == [Record("view", {"view": 3, "active": True})]
        s.append_block(committed(genesis, 2))
        assert s.head()[0] == 2


def test_refuses_a_directory_of_another_genesis(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "ledger"
    LedgerStore.open(path, genesis).close()
    other = make_genesis(accounts={ALICE.public_key: 1})
    with pytest.raises(StoreError, match="was created for genesis"):
        LedgerStore.open(path, other)
    with pytest.raises(StoreError, match="was created for genesis"):
        LedgerStore.open(path, other, readonly=True)
    LedgerStore.open(path, genesis).close()  # the right one still opens


def test_readonly_open(tmp_path: Path, genesis: Genesis) -> None:
    with pytest.raises(StoreError, match="no Phalanx ledger"):
        LedgerStore.open(tmp_path / "missing", readonly=True)
    path = tmp_path / "ledger"
    with LedgerStore.open(path, genesis) as s:
        s.append_block(committed(genesis, 1))
    assert LedgerStore.read_genesis(path).genesis_hash == genesis.genesis_hash
    with LedgerStore.open(path, readonly=True) as r:
        assert r.head()[0] == 1
        assert r.genesis.genesis_hash == genesis.genesis_hash
        with pytest.raises(LedgerInvariantError, match="read-only"):
            r.append_block(committed(genesis, 2))
        with pytest.raises(LedgerInvariantError, match="read-only"):
            r.persist_records([Record("x", {})])


def test_records_persist_replace_and_discard(store: LedgerStore, genesis: Genesis) -> None:
    store.persist_records(
        [
            Record("view", {"view": 1}),
            Record("prepare/00000000000000000001", {"seq": 1, "digest": "a"}),
            Record("prepare/00000000000000000002", {"seq": 2, "digest": "b"}),
            Record("prepare/00000000000000000003", {"seq": 3, "digest": "c"}),
        ]
    )
    store.persist_records([Record("view", {"view": 2})], discard_below=3)
    assert store.load_records() == [
        Record("prepare/00000000000000000003", {"seq": 3, "digest": "c"}),
        Record("view", {"view": 2}),
    ]
    store.append_block(
        committed(genesis, 1), records=[Record("commit/1", {"seq": 4})], discard_below=4
    )
    assert [r.key for r in store.load_records()] == ["commit/1", "view"]
    store.persist_records([])  # nothing to do is fine


def test_failed_block_write_leaves_nothing(store: LedgerStore, genesis: Genesis) -> None:
    store.append_block(committed(genesis, 1))
    bad = committed(genesis, 2, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})])
    # A record whose value cannot be written as JSON fails inside the write transaction,
    # after the block's state changes: all of it must be rolled back.
    with pytest.raises(Exception, match="float"):
        store.append_block(bad, records=[Record("r", {"x": float("nan")})])
    assert store.head()[0] == 1
    assert store.get_state("k") is None
    assert store.block(2) is None
    assert store.load_records() == []
    store.append_block(bad)
    assert store.get_state("k") is not None


def test_map_grows_and_nothing_is_lost(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "ledger"
    big = "x" * 20_000
    with LedgerStore.open(path, genesis, map_size=64 * 1024) as s:
        initial = s.map_size()
        for seq in range(1, 41):
            t = tx(ALICE, seq, {"op": "set", "key": f"k{seq}", "value": big})
            assert s.append_block(committed(genesis, seq, [t])) == [OK]
        assert s.map_size() > initial
        head = s.head()
    with LedgerStore.open(path, genesis, map_size=64 * 1024) as s:
        assert s.head() == head
        assert all(s.get_state(f"k{i}") is not None for i in range(1, 41))


def test_map_size_max_halts_cleanly(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "ledger"
    with LedgerStore.open(path, genesis, map_size=64 * 1024, map_size_max=128 * 1024) as s:
        seq = 1
        with pytest.raises(LedgerFullError, match="full"):
            while seq < 100:
                t = tx(ALICE, seq, {"op": "set", "key": f"k{seq}", "value": "y" * 20_000})
                s.append_block(committed(genesis, seq, [t]))
                seq += 1
        assert s.head()[0] == seq - 1  # the block that did not fit was not half-written
        assert s.block(seq) is None
        assert s.get_state(f"k{seq}") is None
        assert s.get_state(f"k{seq - 1}") is not None


def test_store_matches_in_memory_state(tmp_path: Path) -> None:
    # Fees on, and every op kind: what LMDB stores is what the in-memory state holds.
    genesis = make_genesis(
        accounts={ALICE.public_key: 60_000, BOB.public_key: 3_000}, fee_per_byte=1
    )
    rules = ChainRules.of(genesis)
    rng = random.Random(7)
    clients = [ALICE, BOB, CAROL]
    memory = DictState(genesis.accounts)
    codes: set[str | None] = set()
    with LedgerStore.open(tmp_path / "ledger", genesis) as s:
        for seq in range(1, 31):
            txs = []
            for _ in range(rng.randint(0, 6)):
                ops: list[dict[str, Any]] = []
                for _ in range(rng.randint(1, 3)):
                    kind = rng.choice(["set", "delete", "cas", "chown", "transfer"])
                    key = rng.choice(["a", "b", "c"])
                    if kind == "set":
                        ops.append({"op": "set", "key": key, "value": rng.randint(0, 9)})
                    elif kind == "delete":
                        ops.append({"op": "delete", "key": key})
                    elif kind == "chown":
                        to = rng.choice(clients).public_key
                        ops.append({"op": "chown", "key": key, "to": to})
                    elif kind == "cas":
                        ops.append(
                            {"op": "cas", "key": key, "expect": rng.randint(0, 2), "value": 1}
                        )
                    else:
                        to = rng.choice(clients).public_key
                        ops.append({"op": "transfer", "to": to, "amount": rng.randint(1, 400)})
                txs.append(tx(rng.choice(clients), rng.randint(0, 20), *ops))
            c = committed(genesis, seq, txs)
            results = s.append_block(c)
            assert results == execute_batch(memory, seq, list(c.batch.txs), rules)
            codes.update(r["error"] for r in results)
        with s.snapshot() as snap:
            assert list(snap.iter_state()) == list(memory.items())
            assert dict(snap.iter_balances()) == memory.balances
            assert {t: (q, i) for t, q, i in snap.iter_tx_locations()} == memory.locations
    # The run went through owners and fees, not only the easy path.
    assert {None, "forbidden", "not_found", "insufficient_fee"} <= codes
    assert sum(memory.balances.values()) < 63_000  # fees were burned


def test_blocks_replay_into_another_store(tmp_path: Path, genesis: Genesis) -> None:
    with (
        LedgerStore.open(tmp_path / "a", genesis) as a,
        LedgerStore.open(tmp_path / "b", genesis) as b,
    ):
        a.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})]))
        a.append_block(committed(genesis, 2))
        for block in a.iter_blocks():
            rebuilt = committed_from_block(block)
            assert isinstance(rebuilt, Committed)
            b.append_block(rebuilt)
        assert a.head() == b.head()
        tampered = a.block(1)
        assert tampered is not None
        tampered["txs"][0]["body"]["nonce"] = 9
        with pytest.raises(ValueError, match="do not match"):
            committed_from_block(tampered)


def test_reader_process_beside_a_writer(tmp_path: Path, genesis: Genesis) -> None:
    """A read-only opener in another process (lock=True) reads consistent snapshots while the
    writer appends, and adopts the map size when the writer grows the map under it."""
    path = tmp_path / "ledger"
    target = 60
    with LedgerStore.open(path, genesis, map_size=64 * 1024) as writer:
        writer.append_block(committed(genesis, 1))
        reader = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger.reader_proc", str(path), str(target)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "opened"
            for seq in range(2, target + 1):
                t = tx(ALICE, seq, {"op": "set", "key": f"k{seq}", "value": "z" * 5_000})
                writer.append_block(committed(genesis, seq, [t]))
            out, err = reader.communicate(timeout=120)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        assert reader.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["seen"] == target
        assert report["polls"] >= 2
        assert writer.map_size() > 64 * 1024
        assert report["map_size"] >= writer.map_size()


def test_null_batch_helper_matches_batch_null(genesis: Genesis) -> None:
    assert committed(genesis, 5).batch == Batch.null(genesis.chain_id, 5)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b.update(batch=[]),
        lambda b: b["batch"].update(seq="1"),
        lambda b: b["batch"].update(seq=True),
        lambda b: b["batch"].update(time_ms=1.5),
        lambda b: b["batch"].update(extra=1),
        lambda b: b["batch"].update(tx_count=2),
        lambda b: b["batch"].update(tx_root="00" * 32),
        lambda b: b.update(txs={}),
        lambda b: b.update(txs=[1]),
        lambda b: b["txs"][0].pop("body"),
        lambda b: b["txs"][0]["body"].update(nonce=0.5),
        lambda b: b.update(certificate=None),
        lambda b: b["certificate"].update(view="0"),
        lambda b: b["certificate"].update(signatures=[]),
        lambda b: b.pop("txs"),
        lambda b: b.clear(),
    ],
)
def test_committed_from_block_refuses_malformed_peer_blocks(
    store: LedgerStore, genesis: Genesis, damage: Any
) -> None:
    store.append_block(committed(genesis, 1, [tx(ALICE, 0, {"op": "delete", "key": "k"})]))
    block = store.block(1)
    assert block is not None
    committed_from_block(block)
    damage(block)
    with pytest.raises(ValueError):
        committed_from_block(block)


def test_bulk_entries_are_written_as_given_or_refused() -> None:
    """``_dump`` (orjson, with the standard encoder behind it): what it writes reads back equal,
    and a NaN or infinity is refused, never written as null."""
    from ledger.store import _dump, _load

    for value in (
        {"key": "k", "value": None, "n": [1, -(2**63), 2**64, "é", "\U0001f600"]},
        {"nested": {"b": True, "a": [None, {}, []]}},
        "plain",
    ):
        assert _load(_dump(value)) == value
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError):
            _dump({"value": [1, bad]})
