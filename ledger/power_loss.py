"""Whether writes the operating system had not yet put on disk may have been lost.

With ``storage.sync = "periodic"`` the node's LMDB writes reach the kernel's page cache at once
and the disk at the next periodic flush. A killed process (kill -9, a crash, an OOM kill) loses
nothing: the page cache belongs to the kernel. Only the machine going down (power loss, kernel
panic, hard reset) can lose the writes of the last interval, and among them what the node
signed: a node restarted from such a ledger could sign a second, different vote for a slot it
already voted in. So the node refuses to start after exactly that case, told apart by the
kernel's boot id (``/proc/sys/kernel/random/boot_id``, new at every boot) in a small run file
beside the ledger:

- at start, ``{"boot_id", "sync", "clean": false}`` is written and fsynced;
- after a clean stop (every write flushed), ``"clean": true``;
- a start that finds ``clean: false``, ``sync: "periodic"`` and another boot id refuses.

This is the trade PBFT's own implementation made (Castro & Liskov, OSDI'99 §6: no disk write on
the critical path, relying on replicas failing independently), with the one dangerous case
detected instead of assumed away. ``storage.sync = "every_write"`` fsyncs every write instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RUN_FILE = "run.json"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
SYNC_EVERY_WRITE = "every_write"
SYNC_PERIODIC = "periodic"


class UnsyncedWritesLost(Exception):
    """The machine went down while the node ran without fsync on every write."""


def boot_id(source: Path | None = None) -> str:
    try:
        return (source or BOOT_ID_FILE).read_text().strip()
    except OSError:
        # No boot id (not Linux): "unknown" never equals a recorded one, so a stop that was not
        # clean refuses the next start, the safe side.
        return "unknown"


def check_previous_run(data_dir: Path, current_boot_id: str) -> None:
    """Raise :class:`UnsyncedWritesLost` if the last run of this data directory wrote without
    fsync and did not stop cleanly before the machine restarted."""
    try:
        run = json.loads((data_dir / RUN_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise UnsyncedWritesLost(
            f"{data_dir / RUN_FILE} cannot be read ({exc}), so it is unknown whether the last "
            "run's unsynced writes survived; " + _ADVICE
        ) from exc
    if not isinstance(run, dict):
        raise UnsyncedWritesLost(f"{data_dir / RUN_FILE} is not a run record; " + _ADVICE)
    if run.get("clean") is True or run.get("sync") != SYNC_PERIODIC:
        return
    if run.get("boot_id") != current_boot_id:
        raise UnsyncedWritesLost(
            "the machine restarted (new boot id) while this node was running with "
            "storage.sync = periodic, so the writes of its last sync interval may be lost, "
            "among them votes it had signed; restarting from them could make it sign twice. "
            + _ADVICE
        )


def record_start(data_dir: Path, sync: str, current_boot_id: str) -> None:
    _write(data_dir, {"boot_id": current_boot_id, "sync": sync, "clean": False})


def record_clean_stop(data_dir: Path, sync: str, current_boot_id: str) -> None:
    """Call only once every write of the run is on disk."""
    _write(data_dir, {"boot_id": current_boot_id, "sync": sync, "clean": True})


_ADVICE = (
    "Move the data directory away and start with an empty one: the node then fetches the "
    "ledger from its peers (or set storage.sync = every_write to survive power loss in place)."
)


def _write(data_dir: Path, run: dict[str, object]) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / RUN_FILE
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(run, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
