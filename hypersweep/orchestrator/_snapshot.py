"""A snapshot of a sweep's results beside its journal, so that ``load`` and ``status`` are fast.

Reading a journal means replaying every line of it into Optuna's in-memory storage and then
turning every trial into a record: seconds for a sweep of 100,000 trials. The snapshot
(``journal.log.snapshot``) holds the :class:`SweepResult` that reading gave, with the length of
the journal it was read from and a fingerprint of that journal (SHA-256 of its first and last
64 KiB). It is used only while the journal is that file, followed by nothing but drivers'
lease writes (a resume with nothing left to run writes only those): any other later write (a
trial started, a report, an attribute) makes it stale, a replaced journal changes the
fingerprint, and then the journal is read in full as before and the snapshot written again.
The journal stays the source of truth; the snapshot can always be deleted.

The replay snapshot (``journal.log.replay``) holds the journal storage's replay result (see
``_journal``) with the number of lines and bytes of the journal it covers and the fingerprint
of those bytes. It stays valid while the journal grows: a storage restores it and reads only
the later lines. A journal that no longer starts with the bytes it covers (shorter, replaced)
refuses it, and the journal is read from its first line.

A snapshot is written to a temporary file and renamed over the old one, and carries a SHA-256
of its own content: a process killed while writing it leaves the old snapshot or none, and a
damaged file is ignored, never read as results. Pickling keeps no memo (``fast``): a memo entry
per object would cost the writer about as much memory again as the sweep it saves.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hypersweep.orchestrator._gc import gc_paused

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult

_MAGIC = b"hypersweep-snapshot-2\n"
_REPLAY_MAGIC = b"hypersweep-replay-2\n"  # 2: trials packed (_journal._PackedTrials)
_EDGE = 64 * 1024  # bytes of each end of the journal in its fingerprint


def snapshot_path(journal: Path) -> Path:
    """Where the snapshot of ``journal`` lives: beside it."""
    return journal.with_name(journal.name + ".snapshot")


def replay_snapshot_path(journal: Path) -> Path:
    """Where the replay snapshot of ``journal`` lives: beside it."""
    return journal.with_name(journal.name + ".replay")


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


def _write_atomic(target: Path, magic: bytes, *contents: Any) -> None:
    """Pickle ``contents`` one after the other to ``target`` with a digest, replacing the old
    file atomically."""
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(magic + bytes(32))  # the payload's digest goes here once known
            writer = _HashingWriter(handle)
            pickler = pickle.Pickler(writer, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.fast = True  # no memo: nothing pickled here refers to itself
            for content in contents:
                pickler.dump(content)
            handle.seek(len(magic))
            handle.write(writer.digest.digest())
        os.replace(temporary, target)  # atomic: readers see the old file or the new one
    finally:
        temporary.unlink(missing_ok=True)


def _verified_payload(target: Path, magic: bytes) -> memoryview | None:
    """The pickles ``_write_atomic`` saved to ``target``; None if missing or damaged."""
    try:
        data = target.read_bytes()
    except OSError:
        return None
    start = len(magic) + 32
    payload = memoryview(data)[start:]
    if not data.startswith(magic) or hashlib.sha256(payload).digest() != data[len(magic) : start]:
        return None  # not a snapshot, or a damaged one
    return payload


def _read_verified(target: Path, magic: bytes) -> Any:
    """The first object ``_write_atomic`` saved to ``target``, or None if unreadable."""
    payload = _verified_payload(target, magic)
    if payload is None:
        return None
    try:
        with gc_paused():  # every object read stays alive: collections would be pure cost
            return pickle.loads(payload)
    except Exception:  # noqa: BLE001 - e.g. written by another version: read the journal
        return None


def write_snapshot(journal: Path, name: str, result: SweepResult, size: int) -> None:
    """Save ``result``, read from the first ``size`` bytes of ``journal``, atomically."""
    header = {"name": name, "size": size, "fingerprint": fingerprint(journal, size)}
    _write_atomic(snapshot_path(journal), _MAGIC, (header, result))


def read_snapshot(journal: Path, name: str) -> SweepResult | None:
    """The saved result of sweep ``name`` if it was read from ``journal`` as it is now."""
    from hypersweep.orchestrator._result import SweepResult

    try:
        size = journal.stat().st_size
    except OSError:
        return None
    content = _read_verified(snapshot_path(journal), _MAGIC)
    if not isinstance(content, tuple) or len(content) != 2:
        return None
    header, result = content
    if not isinstance(header, dict) or not isinstance(result, SweepResult):
        return None
    saved = header.get("size")
    if header.get("name") != name or not isinstance(saved, int) or saved > size:
        return None
    if header.get("fingerprint") != fingerprint(journal, saved):
        return None
    if saved < size and not _only_leases(journal, name, saved, size):
        return None
    return result


# Optuna's JournalOperation codes, without importing Optuna for ``status``.
_CREATE_STUDY = 0
_SET_STUDY_SYSTEM_ATTR = 3
_LEASES_READ = 64 * 1024  # more than this after the snapshot: a sweep that ran on


def _only_leases(journal: Path, name: str, start: int, end: int) -> bool:
    """Whether bytes ``start`` to ``end`` of ``journal`` are whole lines that change nothing
    the results of sweep ``name`` depend on: drivers' lease writes, and attempts to create
    the sweep again (each driver tries; the journal's replay refuses an existing name). A
    resume with nothing left to run writes only those."""
    from hypersweep.orchestrator._storage import LEASE_PREFIX

    if end - start > _LEASES_READ:
        return False
    with open(journal, "rb") as handle:
        handle.seek(start)
        tail = handle.read(end - start)
    if not tail.endswith(b"\n"):
        return False
    for line in tail.splitlines():
        try:
            log = json.loads(line)
        except ValueError:
            return False
        if not isinstance(log, dict):
            return False
        if log.get("op_code") == _CREATE_STUDY and log.get("study_name") == name:
            continue
        if log.get("op_code") != _SET_STUDY_SYSTEM_ATTR:
            return False
        attributes = log.get("system_attr")
        if not isinstance(attributes, dict) or not all(
            isinstance(key, str) and key.startswith(LEASE_PREFIX) for key in attributes
        ):
            return False
    return True


def write_replay_snapshot(journal: Path, lines: int, size: int, replay: Any) -> None:
    """Save a journal storage's replay result, read from the first ``lines`` lines (``size``
    bytes) of ``journal``, atomically."""
    header = {"lines": lines, "size": size, "fingerprint": fingerprint(journal, size)}
    _write_atomic(replay_snapshot_path(journal), _REPLAY_MAGIC, header, replay)


def read_replay_snapshot(journal: Path) -> tuple[int, int, bytes] | None:
    """``(lines, size, pickled replay result)`` if the snapshot covers the start of ``journal``.

    The replay result is returned pickled, as ``FlockJournalFileBackend.load_snapshot`` gives
    it to ``SweepJournalStorage``.
    """
    payload = _verified_payload(replay_snapshot_path(journal), _REPLAY_MAGIC)
    if payload is None:
        return None
    stream = io.BytesIO(payload[:4096])  # the header is a few hundred bytes
    try:
        header = pickle.load(stream)  # the header only: the replay result follows it
    except Exception:  # noqa: BLE001 - e.g. written by another version: read the journal
        return None
    if not isinstance(header, dict):
        return None
    lines, size = header.get("lines"), header.get("size")
    if not isinstance(lines, int) or not isinstance(size, int):
        return None
    try:
        if journal.stat().st_size < size or header.get("fingerprint") != fingerprint(journal, size):
            return None
    except OSError:
        return None
    return lines, size, bytes(payload[stream.tell() :])


def journal_of(storage: str | Any | None, name: str) -> Path | None:
    """The journal file of a sweep stored as a journal file (the default), else None."""
    from hypersweep.orchestrator._storage import default_run_dir

    if storage is None:
        return default_run_dir(name) / "journal.log"
    if isinstance(storage, str) and "://" not in storage:
        return Path(storage)
    return None
