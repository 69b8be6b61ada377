"""The default storage's file backend: Optuna's journal format with a kernel-held lock.

Optuna's ``JournalFileBackend`` guards appends with a symlink lock and fsyncs every write. Two
things go wrong for sweeps: a driver SIGKILLed while holding the symlink lock stalls every other
driver for the lock's 30 s grace period, and the fsync per write costs more than the rest of a
trivial trial (benchmarks/overhead.py). Here the lock is ``flock``, which the kernel releases
when its holder dies, and writes go to the page cache without fsync: a killed process loses
nothing it wrote, as with SQLite's WAL mode at ``synchronous=NORMAL``; only an OS crash can
lose the last writes, and Optuna's reader skips a torn last line. Pass ``fsync=True`` for
power-loss durability. The file format is Optuna's own, so Optuna and optuna-dashboard read it.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from optuna.storages.journal import JournalFileBackend


class FlockJournalFileBackend(JournalFileBackend):
    """Append-only journal file for one machine's processes (not for NFS, like Optuna's)."""

    def __init__(self, file_path: str, *, fsync: bool = False) -> None:
        super().__init__(file_path)
        self._fsync = fsync

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with open(self._file_path, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                # One write: O_APPEND writes of a regular file do not interleave.
                handle.write(payload.encode("utf-8"))
                handle.flush()
                if self._fsync:
                    os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
