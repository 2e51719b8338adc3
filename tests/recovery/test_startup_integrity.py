"""A damaged or truncated ledger file stops the node at startup with a message saying what is
wrong, instead of serving damaged data or dying of SIGBUS inside LMDB.

LMDB has no checksums: it notices damage only to its own structures. The writer's open
therefore also checks, in bounded time, the file size against LMDB's meta pages, the head
record, the hash chain of the last blocks, the contents of the very last ones and the head
block's certificate. Each damage below is made to bytes that matter, found in the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
import pytest

from consensus.output import Record
from crypto.canonical import canonical_json
from ledger.genesis import Genesis
from ledger.store import LedgerStore, StoreError
from tests.ledger.helpers import ALICE, committed, make_genesis, tx

BLOCKS = 40


@pytest.fixture(scope="module")
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, genesis: Genesis) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "data"
    with LedgerStore.open(path, genesis, map_size=1 << 20) as store:
        nonce = 0
        for seq in range(1, BLOCKS + 1):
            txs = []
            for _ in range(3):
                txs.append(tx(ALICE, nonce, {"op": "set", "key": f"key-{nonce:05}", "value": "v"}))
                nonce += 1
            store.append_block(committed(genesis, seq, txs))
        store.persist_records([Record("view", {"view": 3, "active": True})])
    (path / "lock.mdb").unlink()
    return path


@pytest.fixture
def copy(tmp_path: Path, pristine: Path) -> Path:
    path = tmp_path / "data"
    shutil.copytree(pristine, path)
    return path


def _open_fails(path: Path, genesis: Genesis, *needles: str) -> str:
    with pytest.raises(StoreError) as caught:
        LedgerStore.open(path, genesis).close()
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    assert "move it away" in message  # and says what to do
    return message


def _edit(path: Path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` in data.mdb by ``new`` (same length)."""
    assert len(old) == len(new)
    data = (path / "data.mdb").read_bytes()
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    (path / "data.mdb").write_bytes(data.replace(old, new))


def test_the_pristine_copy_opens(copy: Path, genesis: Genesis) -> None:
    with LedgerStore.open(copy, genesis) as store:
        assert store.head()[0] == BLOCKS
        assert store.load_records() == [Record("view", {"view": 3, "active": True})]


@pytest.mark.parametrize(
    "keep", ["empty", "one_page", "one_meta_and_a_bit", "half", "all_but_a_page"]
)
def test_a_truncated_data_file_is_refused(copy: Path, genesis: Genesis, keep: str) -> None:
    data = copy / "data.mdb"
    size = data.stat().st_size
    keep_bytes = {
        "empty": 0,
        "one_page": 4096,
        "one_meta_and_a_bit": 4096 + 100,
        "half": size // 2,
        "all_but_a_page": size - 4096,
    }[keep]
    with open(data, "r+b") as file:
        file.truncate(keep_bytes)
    message = _open_fails(copy, genesis, str(data))
    assert any(word in message for word in ("truncated", "empty", "meta pages")), message


def test_an_overwritten_meta_page_is_refused(copy: Path, genesis: Genesis) -> None:
    data = copy / "data.mdb"
    with open(data, "r+b") as file:
        file.write(b"\0" * 64)
    _open_fails(copy, genesis)


def test_damage_to_the_head_block_header_is_refused(copy: Path, genesis: Genesis) -> None:
    with LedgerStore.open(copy, genesis) as store:
        prev = store.block_hash(BLOCKS - 1)
    assert prev is not None
    needle = f'"prev_hash":"{prev}"'.encode()
    _edit(copy, needle, needle[:-3] + (b"0" if needle[-3:-2] != b"0" else b"1") + needle[-2:])
    _open_fails(copy, genesis, f"block {BLOCKS}")


def test_damage_to_a_block_inside_the_checked_chain_is_refused(
    copy: Path, genesis: Genesis
) -> None:
    with LedgerStore.open(copy, genesis) as store:
        block = store.block(BLOCKS - 20)
    assert block is not None
    needle = f'"time_ms":{block["batch"]["time_ms"]}'.encode()
    _edit(copy, needle, needle[:-1] + (b"7" if needle[-1:] != b"7" else b"8"))
    _open_fails(copy, genesis, f"block {BLOCKS - 20}")


def test_damage_to_a_recent_blocks_transactions_is_refused(copy: Path, genesis: Genesis) -> None:
    last_key = f"key-{3 * BLOCKS - 1:05}".encode()
    _edit(copy, b'"' + last_key + b'"', b'"' + last_key[:-1] + b'X"')
    _open_fails(copy, genesis, f"block {BLOCKS}", "transactions")


def test_a_head_record_that_disagrees_with_the_blocks_is_refused(
    copy: Path, genesis: Genesis
) -> None:
    """Well-formed but wrong (damage that still parses): the head names block 39 while block
    40 is stored. Written through LMDB itself, so only the check can notice."""
    with LedgerStore.open(copy, genesis) as store:
        prev = store.block_hash(BLOCKS - 1)
    env = lmdb.open(str(copy), max_dbs=16, subdir=True)
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            txn.put(b"head", canonical_json({"hash": prev, "seq": BLOCKS - 1}), db=meta)
    finally:
        env.close()
    _open_fails(copy, genesis, "head record")


def test_undecodable_consensus_records_are_refused(copy: Path, genesis: Genesis) -> None:
    _edit(copy, b'{"view":3,"active":true}', b'{"view":3,"active":tru!}')
    # The start-up checks read every consensus record (ledger.records_check): open refuses.
    _open_fails(copy, genesis, "damaged")


def test_a_fresh_directory_is_not_damage(tmp_path: Path, genesis: Genesis) -> None:
    """An empty data directory (a wiped disk) is a new ledger: the node catches up by fetching."""
    (tmp_path / "data").mkdir()
    with LedgerStore.open(tmp_path / "data", genesis) as store:
        assert store.head() == (0, genesis.genesis_hash)
