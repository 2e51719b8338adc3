"""storage.sync = periodic: a node refuses to start after the machine went down mid-run (its
unsynced writes, among them signed votes, may be lost), and only then."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ledger import power_loss
from ledger.power_loss import (
    SYNC_EVERY_WRITE,
    SYNC_PERIODIC,
    UnsyncedWritesLost,
    check_previous_run,
    record_clean_stop,
    record_start,
)
from node import testnet
from node.config import load_config
from node.runtime import NodeRuntime, StartupError

BOOT_A, BOOT_B = "boot-a", "boot-b"


def test_a_fresh_directory_starts(tmp_path: Path) -> None:
    check_previous_run(tmp_path, BOOT_A)


def test_a_killed_process_restarts_on_the_same_boot(tmp_path: Path) -> None:
    record_start(tmp_path, SYNC_PERIODIC, BOOT_A)  # then kill -9: no clean stop
    check_previous_run(tmp_path, BOOT_A)


def test_a_machine_restart_after_an_unclean_periodic_run_is_refused(tmp_path: Path) -> None:
    record_start(tmp_path, SYNC_PERIODIC, BOOT_A)
    with pytest.raises(UnsyncedWritesLost, match=r"machine restarted.*Move the data directory"):
        check_previous_run(tmp_path, BOOT_B)


def test_a_clean_stop_or_every_write_sync_survives_a_machine_restart(tmp_path: Path) -> None:
    record_start(tmp_path, SYNC_PERIODIC, BOOT_A)
    record_clean_stop(tmp_path, SYNC_PERIODIC, BOOT_A)
    check_previous_run(tmp_path, BOOT_B)
    record_start(tmp_path, SYNC_EVERY_WRITE, BOOT_A)
    check_previous_run(tmp_path, BOOT_B)


def test_an_unreadable_run_record_is_refused(tmp_path: Path) -> None:
    (tmp_path / power_loss.RUN_FILE).write_text("{not json")
    with pytest.raises(UnsyncedWritesLost, match="cannot be read"):
        check_previous_run(tmp_path, BOOT_A)


def test_the_boot_id_is_the_kernels(tmp_path: Path) -> None:
    if not power_loss.BOOT_ID_FILE.exists():
        pytest.skip(f"{power_loss.BOOT_ID_FILE} is missing: not a Linux kernel")
    assert power_loss.boot_id() == power_loss.boot_id() != "unknown"
    assert power_loss.boot_id(tmp_path / "absent") == "unknown"


def test_the_node_records_its_run_and_refuses_after_a_machine_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    testnet.create(tmp_path, nodes=4, base_port=21_300)
    config = load_config(tmp_path / "node0" / "config.json", environ={})
    assert config.storage.sync == SYNC_PERIODIC  # the default

    async def start_and_stop() -> None:
        node = NodeRuntime(config)
        run_file = config.data_dir / power_loss.RUN_FILE
        assert '"clean": false' in run_file.read_text()
        node.stop()
        await node.run()
        assert '"clean": true' in run_file.read_text()

    asyncio.run(start_and_stop())
    NodeRuntime(config).store.close()  # started again and "killed": the record stays unclean
    monkeypatch.setattr(power_loss, "BOOT_ID_FILE", tmp_path / "another-boot")
    (tmp_path / "another-boot").write_text("a-new-boot-id\n")
    with pytest.raises(StartupError, match="machine restarted"):
        NodeRuntime(config)
