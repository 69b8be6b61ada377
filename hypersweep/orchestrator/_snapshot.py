"""A snapshot of a sweep's results beside its journal, so that ``load`` and ``status`` are fast.

Reading a journal means replaying every line of it into Optuna's in-memory storage and then
turning every trial into a record: seconds for a sweep of 100,000 trials. The snapshot
(``journal.log.snapshot``) holds the :class:`SweepResult` that reading gave, with the length of
the journal it was read from and a fingerprint of that journal (SHA-256 of its first and last
64 KiB). It is used only while the journal is exactly that file: any later write (a trial
started, a report, another driver) changes the length, a replaced journal changes the
fingerprint, and then the journal is read in full as before and the snapshot written again.
The journal stays the source of truth; the snapshot can always be deleted.

A snapshot is written to a temporary file and renamed over the old one, and carries a SHA-256
of its own content: a process killed while writing it leaves the old snapshot or none, and a
damaged file is ignored, never read as results.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult

_MAGIC = b"hypersweep-snapshot-1\n"
_EDGE = 64 * 1024  # bytes of each end of the journal in its fingerprint


def snapshot_path(journal: Path) -> Path:
    """Where the snapshot of ``journal`` lives: beside it."""
    return journal.with_name(journal.name + ".snapshot")


def fingerprint(journal: Path, size: int) -> str:
    """SHA-256 of the first and last 64 KiB of the first ``size`` bytes of ``journal``."""
    digest = hashlib.sha256(str(size).encode())
    with open(journal, "rb") as handle:
        digest.update(handle.read(min(size, _EDGE)))
        if size > _EDGE:
            handle.seek(max(_EDGE, size - _EDGE))
            digest.update(handle.read(size - max(_EDGE, size - _EDGE)))
    return digest.hexdigest()


class _HashingWriter:
    """A file that hashes what is written to it: the snapshot streams out, never held whole."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def write_snapshot(journal: Path, name: str, result: SweepResult, size: int) -> None:
    """Save ``result``, read from the first ``size`` bytes of ``journal``, atomically."""
    header = {"name": name, "size": size, "fingerprint": fingerprint(journal, size)}
    target = snapshot_path(journal)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(_MAGIC + bytes(32))  # the payload's digest goes here once known
            writer = _HashingWriter(handle)
            pickle.dump((header, result), writer, protocol=pickle.HIGHEST_PROTOCOL)
            handle.seek(len(_MAGIC))
            handle.write(writer.digest.digest())
        os.replace(temporary, target)  # atomic: readers see the old file or the new one
    finally:
        temporary.unlink(missing_ok=True)


def read_snapshot(journal: Path, name: str) -> SweepResult | None:
    """The saved result of sweep ``name`` if it was read from ``journal`` as it is now."""
    from hypersweep.orchestrator._result import SweepResult

    try:
        data = snapshot_path(journal).read_bytes()
        size = journal.stat().st_size
    except OSError:
        return None
    start = len(_MAGIC) + 32
    payload = memoryview(data)[start:]
    if not data.startswith(_MAGIC) or hashlib.sha256(payload).digest() != data[len(_MAGIC) : start]:
        return None  # not a snapshot, or a damaged one
    try:
        header, result = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - e.g. written by another version: read the journal
        return None
    if not isinstance(header, dict) or not isinstance(result, SweepResult):
        return None
    if header.get("name") != name or header.get("size") != size:
        return None
    if header.get("fingerprint") != fingerprint(journal, size):
        return None
    return result


def journal_of(storage: str | Any | None, name: str) -> Path | None:
    """The journal file of a sweep stored as a journal file (the default), else None."""
    from hypersweep.orchestrator._storage import default_run_dir

    if storage is None:
        return default_run_dir(name) / "journal.log"
    if isinstance(storage, str) and "://" not in storage:
        return Path(storage)
    return None
