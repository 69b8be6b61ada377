"""The default storage's file backend: Optuna's journal format with a kernel-held lock.

Optuna's ``JournalFileBackend`` guards appends with a symlink lock and fsyncs every write. Two
things go wrong for sweeps: a driver SIGKILLed while holding the symlink lock stalls every other
driver for the lock's 30 s grace period, and the fsync per write costs more than the rest of a
trivial trial (benchmarks/overhead.py). Here the lock is ``flock``, which the kernel releases
when its holder dies, and writes go to the page cache without fsync: a killed process loses
nothing it wrote, as with SQLite's WAL mode at ``synchronous=NORMAL``; only an OS crash can
lose the last writes, and Optuna's reader skips a torn last line. Pass ``fsync=True`` for
power-loss durability. The file format is Optuna's own, so Optuna and optuna-dashboard read it.

Reading keeps one cursor (the next line's number and byte offset) where Optuna's reader keeps
the offset of every line it ever read: a dict entry per line, about 100 bytes each, six lines
per trial, which grew with the sweep (60 MB at 100,000 trials).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Generator
from typing import Any

from optuna.storages.journal import JournalFileBackend


class FlockJournalFileBackend(JournalFileBackend):
    """Append-only journal file for one machine's processes (not for NFS, like Optuna's)."""

    def __init__(self, file_path: str, *, fsync: bool = False) -> None:
        super().__init__(file_path)
        self._fsync = fsync
        self._cursor = (0, 0)  # (number, byte offset) of the first line not read yet

    @property
    def bytes_read(self) -> int:
        """How many bytes of the file the logs read so far span (complete lines only)."""
        return self._cursor[1]

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """The logs from number ``log_number_from`` on, as Optuna's reader yields them.

        A line still being written (no newline yet, or not JSON yet) is left for the next
        read if it is the last one; anywhere else it is an error, as in Optuna.
        """
        with open(self._file_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size  # what other writers add later waits
            number, offset = self._cursor
            if log_number_from < number:
                number, offset = 0, 0
            handle.seek(offset)
            error: Exception | None = None
            for line in handle:
                if offset + len(line) > size:
                    break
                if error is not None:
                    raise error
                if not line.endswith(b"\n"):
                    error = ValueError("Invalid log format.")
                    continue
                log = None
                if number >= log_number_from:
                    try:
                        log = json.loads(line)
                    except json.JSONDecodeError as decode_error:
                        error = decode_error
                        continue
                offset += len(line)
                number += 1
                self._cursor = (number, offset)
                if log is not None:
                    yield log

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
