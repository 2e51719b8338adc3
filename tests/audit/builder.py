"""Real ledgers for the audit tests: 4 validators, Ed25519-signed transactions of every op kind,
certificates signed by the validators, all written through ``LedgerStore.append_block``; and the
means to damage a copy of one, one byte at a time, by opening LMDB directly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from consensus.batch import Batch, Tx
from consensus.output import Committed
from ledger.genesis import Genesis
from ledger.store import LedgerStore
from tests.ledger.helpers import (
    ALICE,
    BOB,
    CAROL,
    VALIDATORS,
    certify,
    certify_execution,
    make_genesis,
    signer,
    tx,
)

ODD_KEY = "ünï\u00e9\nkey"  # non-ASCII and an escape in the stored JSON


@dataclass
class Built:
    """What :func:`build_ledger` wrote: the genesis and each seq's transactions."""

    genesis: Genesis
    path: Path
    blocks: dict[int, list[Tx]] = field(default_factory=dict)

    def write_genesis(self, directory: Path) -> Path:
        path = directory / "genesis.json"
        path.write_text(json.dumps(dict(self.genesis.document), indent=2), encoding="utf-8")
        return path


DAVE = signer("dave")  # a throwaway key: nothing in its account
GENESIS_ACCOUNTS = {ALICE.public_key: 1_000_000, BOB.public_key: 5_000}
FEE_PER_BYTE = 1


def standard_genesis() -> Genesis:
    """v2: fees on (1 per byte), Alice rich, Bob with little, Carol and Dave with nothing."""
    return make_genesis(accounts=dict(GENESIS_ACCOUNTS), fee_per_byte=FEE_PER_BYTE)


def standard_blocks() -> list[list[Tx]]:
    """Seven blocks: every op kind, fees, owners, every failure code, a null batch, a repeated
    tx, a multi-op tx and another chain's tx (which no honest node orders, but a ledger may
    hold: it must replay as wrong_chain)."""
    set_k = tx(ALICE, 0, {"op": "set", "key": "k", "value": {"a": [1, 2, "three"]}})
    return [
        [
            set_k,
            tx(ALICE, 1, {"op": "transfer", "to": CAROL.public_key, "amount": 300_000}),
            # Bob pays the fee, then cannot cover the transfer: insufficient_funds.
            tx(BOB, 0, {"op": "transfer", "to": CAROL.public_key, "amount": 5_000}),
        ],
        [],  # seq 2: a null batch
        [
            tx(ALICE, 2, {"op": "cas", "key": "k", "expect": 1, "value": "v2"}),
            tx(BOB, 1, {"op": "cas", "key": "k", "expect": 1, "value": "late"}),  # forbidden
            tx(CAROL, 0, {"op": "set", "key": ODD_KEY, "value": None}),
            tx(CAROL, 1, {"op": "set", "key": "gone", "value": [True, False]}),
        ],
        [
            tx(BOB, 2, {"op": "delete", "key": "gone"}),  # Carol's: forbidden
            set_k,  # a repeat: result duplicate, its index entry stays at seq 1
            tx(
                CAROL,
                2,
                {"op": "set", "key": "multi", "value": 1},
                {"op": "cas", "key": "multi", "expect": 1, "value": 2},
                {"op": "transfer", "to": BOB.public_key, "amount": 25},
            ),
            tx(CAROL, 3, {"op": "chown", "key": "gone", "to": BOB.public_key}),
            tx(BOB, 3, {"op": "delete", "key": "gone"}),  # Bob's now
            tx(DAVE, 0, {"op": "set", "key": "spam", "value": "x" * 100}),  # insufficient_fee
            tx(ALICE, 100, {"op": "set", "key": "elsewhere", "value": 1}, chain_id="other-net"),
        ],
        [tx(ALICE, 3, {"op": "cas", "key": "fresh", "expect": 0, "value": {"n": -5}})],
        [tx(ALICE, 4, {"op": "delete", "key": "never-set"})],  # not_found
        [
            tx(BOB, 4, {"op": "set", "key": "k2", "value": "x" * 40}),
            tx(BOB, 5, {"op": "cas", "key": "k", "expect": 9, "value": 0}),  # forbidden
            tx(ALICE, 50, {"op": "cas", "key": "k", "expect": 1, "value": 0}),  # cas_mismatch
        ]
        + [tx(ALICE, 5 + i, {"op": "set", "key": f"n{i}", "value": i}) for i in range(6)],
    ]


def append(
    store: LedgerStore,
    genesis: Genesis,
    seq: int,
    txs: Sequence[Tx],
    view: int = 0,
    signers: Any = None,
    time_ms: int | None = None,
) -> Committed:
    if time_ms is None:
        time_ms = 1_764_000_000_000 + seq if txs else 0
    batch = Batch(genesis.chain_id, seq, time_ms, tuple(txs))
    committed = Committed(batch, certify(genesis, batch, view, signers))
    store.append_block(committed)
    certify_execution(store, seq)  # the validators' execution votes (spec §5)
    return committed


def build_ledger(
    path: Path, blocks: Sequence[Sequence[Tx]] | None = None, genesis: Genesis | None = None
) -> Built:
    genesis = genesis or standard_genesis()
    blocks = standard_blocks() if blocks is None else blocks
    built = Built(genesis, path)
    with LedgerStore.open(path, genesis) as store:
        for seq, txs in enumerate(blocks, start=1):
            # Views vary, and the certificate of seq 3 holds all four votes.
            signers = VALIDATORS if seq == 3 else None
            append(store, genesis, seq, txs, view=seq % 2, signers=signers)
            built.blocks[seq] = list(txs)
    return built


# -- damage ---------------------------------------------------------------------------------------


def copy_ledger(src: Path, dst: Path) -> Path:
    """A copy of the ledger's data file (LMDB makes a fresh lock file when it is opened)."""
    dst.mkdir(parents=True)
    shutil.copy2(src / "data.mdb", dst / "data.mdb")
    return dst


def seq8(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def rewrite(path: Path, db: str, key: bytes, change: Callable[[bytes], bytes]) -> None:
    """Replace the value under ``key`` in sub-database ``db`` by ``change(value)``."""
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    try:
        handle = env.open_db(db.encode("ascii"), create=False)
        with env.begin(write=True) as txn:
            value = txn.get(key, db=handle)
            assert value is not None, f"no {key!r} in {db}"
            txn.put(key, change(bytes(value)), db=handle)
    finally:
        env.close()


def rekey(path: Path, db: str, key: bytes, new_key: bytes) -> None:
    """Move the entry under ``key`` to ``new_key``."""
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    try:
        handle = env.open_db(db.encode("ascii"), create=False)
        with env.begin(write=True) as txn:
            value = txn.pop(key, db=handle)
            assert value is not None
            txn.put(new_key, value, db=handle)
    finally:
        env.close()


def entries(path: Path, db: str) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), max_dbs=16, subdir=True, readonly=True)
    try:
        handle = env.open_db(db.encode("ascii"), create=False)
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=handle)]
    finally:
        env.close()


def replace_once(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """A change that replaces the one occurrence of ``old`` (same length: one byte differs)."""
    assert len(old) == len(new)

    def change(value: bytes) -> bytes:
        assert value.count(old) == 1, f"{old!r} occurs {value.count(old)} times in {value!r}"
        return value.replace(old, new)

    return change


def flip_bit(offset: int, bit: int = 0) -> Callable[[bytes], bytes]:
    def change(value: bytes) -> bytes:
        i = offset % len(value)
        return value[:i] + bytes([value[i] ^ (1 << bit)]) + value[i + 1 :]

    return change
