"""One writer per data directory: the flock taken before LMDB opens (ledger/datadir_lock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.datadir_lock import LOCK_FILE, DataDirLock, DataDirLocked
from ledger.store import LedgerStore, StoreError
from tests.ledger.helpers import ALICE, committed, make_genesis, tx

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_HOLD = """
import sys, time
from ledger.datadir_lock import DataDirLock
lock = DataDirLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path / "data")
    assert (tmp_path / "data" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
        DataDirLock.acquire(tmp_path / "data")
    first.release()
    assert not first.held
    DataDirLock.acquire(tmp_path / "data").release()


def test_another_process_holding_the_directory_is_named(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "data")],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLocked) as info:
            DataDirLock.acquire(tmp_path / "data")
        assert f"pid {holder.pid}" in str(info.value) and "-c" in str(info.value)
        assert "in use by another process" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # The kernel dropped the lock with the process (as after kill -9): nothing stale is left.
    DataDirLock.acquire(tmp_path / "data").release()


def test_a_second_writer_store_is_refused_but_readers_are_not(tmp_path: Path) -> None:
    genesis = make_genesis()
    path = tmp_path / "ledger"
    with LedgerStore.open(path, genesis) as writer:
        writer.append_block(
            committed(genesis, 1, [tx(ALICE, 0, {"op": "set", "key": "k", "value": 1})])
        )
        with pytest.raises(StoreError, match="in use by another process"):
            LedgerStore.open(path, genesis)
        # Readers (the audit) take no lock: tests/audit/test_concurrent.py audits a ledger while
        # its writer, holding the lock in another process, appends.
        # The refused writer did not disturb the first one.
        writer.append_block(committed(genesis, 2))
        assert writer.head()[0] == 2
    with LedgerStore.open(path, genesis) as again:  # closed: free again
        assert again.head()[0] == 2
