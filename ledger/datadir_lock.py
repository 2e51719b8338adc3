"""One writer per data directory: an exclusive ``flock`` on ``DATA_DIR/node.lock``.

Two node processes on one data directory would both sign as the same validator (equivocation
one operator slip away) and both write one LMDB file. The writer takes this lock before LMDB
opens and keeps it as long as it runs; the kernel drops it when the process dies, even by
``kill -9``, so there is nothing stale to clean up. The holder writes its pid into the file so
that a refused second process can say who holds the directory.

Readers (``phalanx audit``, the API of another process) never take it: LMDB lets them read
beside the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "node.lock"
_HOLDER_BYTES_MAX = 4096


class DataDirLocked(Exception):
    """Another process holds the data directory; the message names it."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"data directory {path} is in use by another process ({holder}): a second node on "
            "the same data directory would sign beside the first. Stop that process first, or "
            "give this node its own data_dir"
        )
        self.path = path
        self.holder = holder


class DataDirLock:
    """A held lock; :meth:`release` (or the process's death) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path | str) -> DataDirLock:
        """Create ``data_dir`` (mode 0700) if needed and lock it, without waiting: raises
        :class:`DataDirLocked` naming the holder if another process has it."""
        path = Path(data_dir)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = path / LOCK_FILE
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise DataDirLocked(path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        # Ours now: say who we are, for the next one that tries.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock


def _describe_holder(fd: int) -> str:
    """``pid N: <command line>`` of the holder, as far as the lock file and /proc tell."""
    try:
        text = os.pread(fd, _HOLDER_BYTES_MAX, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    if not text.isdigit():
        return "pid unknown"
    pid = int(text)
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    command = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return f"pid {pid}: {command}" if command else f"pid {pid}"
