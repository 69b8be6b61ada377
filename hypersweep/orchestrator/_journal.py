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

Optuna's ``JournalStorage`` keeps every trial in memory as a ``FrozenTrial``. Its replay builds
new distribution objects, a new distributions dict and new key strings for each trial: about
3 KB a trial, 300 MB at 100,000 trials. :class:`SweepJournalStorage` replays into
:class:`CompactReplayResult`, which gives finished trials (they never change again) one shared
instance of each distribution, of each distributions dict and of each attribute key, and
read-only shared empty dicts: the same ``FrozenTrial`` values, in less memory.

Replaying the whole journal on every start is seconds at 100,000 trials. The backend keeps a
replay snapshot beside the journal (``journal.log.replay``, see ``_snapshot``): the pickled
replay result, with the journal length and fingerprint it was read from. A storage opened on
the journal restores it, then reads only the lines written after it; a snapshot that does not
match the journal is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, NoReturn

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._storage import JournalStorageReplayResult
from optuna.trial import FrozenTrial

from hypersweep.orchestrator._gc import gc_paused

_CHUNK = 1 << 20  # bytes read at once: the reader holds one chunk, not the journal


class FlockJournalFileBackend(JournalFileBackend):
    """Append-only journal file for one machine's processes (not for NFS, like Optuna's)."""

    def __init__(self, file_path: str, *, fsync: bool = False) -> None:
        super().__init__(file_path)
        self._fsync = fsync
        self._cursor = (0, 0)  # (number, byte offset) of the first line not read yet
        self.restored_lines = 0  # lines the replay snapshot restored (or last saved) covers
        # Open flags -> (the process that opened it, descriptor): kept open (storages read
        # before every call); a forked child opens its own.
        self._fds: dict[int, tuple[int, int]] = {}

    # Not an Optuna ``BaseJournalSnapshot``: Optuna's storage then pickles its whole replay
    # every 100 trials created (a sweep creates its budget at once: quadratic in the budget).
    # The replay snapshot is written by :func:`save_replay_snapshot` when a driver ends or a
    # sweep is loaded, and offered here to :class:`SweepJournalStorage`.
    def load_snapshot(self) -> bytes | None:
        """The replay snapshot if it was taken of this journal as it starts now; the reader then
        continues after the lines it covers."""
        from hypersweep.orchestrator._snapshot import read_replay_snapshot

        found = read_replay_snapshot(Path(self._file_path))
        if found is None:
            return None
        number, offset, replay = found
        self._cursor = (number, offset)
        self.restored_lines = number
        return replay

    @property
    def bytes_read(self) -> int:
        """How many bytes of the file the logs read so far span (complete lines only)."""
        return self._cursor[1]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"] = {}  # descriptors mean nothing elsewhere
        return state

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # ``os.close`` bound early: at interpreter exit the module's globals may be gone.
        for _, descriptor in getattr(self, "_fds", {}).values():
            _close(descriptor)

    def _open(self, flags: int) -> int:
        """The journal's descriptor for ``flags``, opened once per process."""
        opened = self._fds.get(flags)
        if opened is None or opened[0] != os.getpid():
            opened = self._fds[flags] = (os.getpid(), os.open(self._file_path, flags))
        return opened[1]

    def _reader(self) -> int:
        """The journal's descriptor for reading, opened once: opening it for every read was
        most of a trial's time in the driver (about 20 reads per trial). ``pread`` at the
        cursor shares no file offset with a forked child."""
        return self._open(os.O_RDONLY)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """The logs from number ``log_number_from`` on, as Optuna's reader yields them.

        A line still being written (no newline yet, or not JSON yet) is left for the next
        read if it is the last one; anywhere else it is an error, as in Optuna.
        """
        descriptor = self._reader()
        size = os.fstat(descriptor).st_size  # what other writers add later waits
        number, offset = self._cursor
        if log_number_from < number:
            number, offset = 0, 0
        position = offset  # of the next chunk
        pending = b""  # the start of a line the last chunk cut
        error: Exception | None = None
        while position < size:
            chunk = os.pread(descriptor, min(_CHUNK, size - position), position)
            if not chunk:
                break
            position += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # no newline (yet): a line still being written
            for line in lines:
                if error is not None:
                    raise error
                log = None
                if number >= log_number_from:
                    try:
                        log = json.loads(line)
                    except json.JSONDecodeError as decode_error:
                        error = decode_error
                        continue
                offset += len(line) + 1
                number += 1
                self._cursor = (number, offset)
                if log is not None:
                    yield log
        if error is not None and pending:
            raise error  # a line that is not JSON, followed by more

    def _appender(self) -> int:
        """The journal's descriptor for appending, opened once (like the reader's): a forked
        child opens its own, as a descriptor it shared would share the parent's lock too."""
        return self._open(os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        data = memoryview(payload.encode("utf-8"))
        descriptor = self._appender()
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            # One write: O_APPEND writes of a regular file do not interleave.
            while data:
                data = data[os.write(descriptor, data) :]
            if self._fsync:
                os.fsync(descriptor)
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)


#: Lines read past the replay snapshot after which a driver's end or ``load()`` saves it again
#: (about 150 trials): a few trials more are cheap to replay.
REPLAY_RESAVE_LINES = 1000


def save_replay_snapshot(storage: Any, min_new_lines: int = REPLAY_RESAVE_LINES) -> bool:
    """Save the replay result of ``storage`` beside its journal file, if it is one of ours and
    read at least ``min_new_lines`` lines more than the snapshot it started from (any line
    if it started from none).

    Taken under the storage's lock after reading every line written so far, so that the
    result, the line count and the byte offset it records agree.
    """
    from hypersweep.orchestrator._snapshot import write_replay_snapshot

    backend = getattr(storage, "_backend", None)
    if not isinstance(storage, JournalStorage) or not isinstance(backend, FlockJournalFileBackend):
        return False
    with storage._thread_lock:
        storage._sync_with_backend()
        replay = storage._replay_result
        number, offset = backend._cursor
        if replay.log_number_read != number:
            return False  # read by another path: the counts do not describe the same lines
        if backend.restored_lines and number - backend.restored_lines < min_new_lines:
            return False  # (none restored or saved yet: any lines are worth saving)
        write_replay_snapshot(Path(backend._file_path), number, offset, replay)
        backend.restored_lines = number
    return True


def release_replay(storage: Any) -> bool:
    """Drop the trials ``storage`` holds in memory, if it is one of ours: if used afterwards,
    it restores the replay snapshot (or reads the journal from its first line) again.

    A driver that ends turns every trial into a record; with the storage's copies released
    first, each trial is freed as its record is built, and the driver's peak memory is the
    larger of the two, not their sum.
    """
    backend = getattr(storage, "_backend", None)
    if not isinstance(storage, SweepJournalStorage) or not isinstance(
        backend, FlockJournalFileBackend
    ):
        return False
    with storage._thread_lock:
        storage._replay_result = CompactReplayResult(storage._worker_id_prefix)
        storage._released = True
        backend._cursor = (0, 0)
        backend.restored_lines = 0
    return True


class _ReadOnlyEmpty(dict):
    """The one empty dict that finished trials share: mutating it would change them all.

    Copies of it are plain dicts, so a deep-copied trial (``study.trials``) is as editable
    as Optuna's own.
    """

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a stored trial's attributes are read-only; copy them to edit")

    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse

    def __copy__(self) -> dict[Any, Any]:
        return {}

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, ())


_EMPTY: dict[Any, Any] = _ReadOnlyEmpty()


class CompactReplayResult(JournalStorageReplayResult):
    """Optuna's journal replay, keeping finished trials in shared, de-duplicated parts.

    A finished trial is never updated again (Optuna refuses it), so its distributions dict
    and its attribute keys can be one object for every trial with the same content. Trials
    still waiting or running share only the distribution objects.
    """

    def __init__(self, worker_id_prefix: str) -> None:
        super().__init__(worker_id_prefix)
        self._init_interning()

    def _init_interning(self) -> None:
        # Keyed by the distributions themselves (Optuna's are hashable and compare by value):
        # re-sharing a restored replay then needs no JSON round trip per trial.
        self._distributions: dict[BaseDistribution, BaseDistribution] = {}
        self._distribution_texts: dict[str, BaseDistribution] = {}  # by its JSON (set_param logs)
        self._distribution_dicts: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}

    def _shared(self, distribution: BaseDistribution) -> BaseDistribution:
        """The shared distribution object equal to ``distribution``."""
        return self._distributions.setdefault(distribution, distribution)

    def _distribution(self, text: str) -> BaseDistribution:
        """The shared distribution object for its JSON form."""
        shared = self._distribution_texts.get(text)
        if shared is None:
            shared = self._distribution_texts[text] = self._shared(json_to_distribution(text))
        return shared

    def _shared_distributions(self, distributions: dict[str, Any]) -> dict[str, Any]:
        if not distributions:
            return _EMPTY
        key = tuple((sys.intern(name), self._shared(d)) for name, d in distributions.items())
        shared = self._distribution_dicts.get(key)
        if shared is None:
            shared = dict(key)
            self._distribution_dicts[key] = shared
        return shared

    def _compact(self, trial: FrozenTrial) -> None:
        """Share what finished ``trial`` (a copy this replay made and owns) has in common with
        other trials. Only finished ones: Optuna's ``Trial`` edits the dicts of the stored
        trial it started from in place (``suggest_*``, ``set_user_attr``) while it runs."""
        trial._distributions = self._shared_distributions(trial._distributions)
        trial._params = {sys.intern(k): v for k, v in trial._params.items()} or _EMPTY
        trial._system_attrs = {
            sys.intern(k): sys.intern(v) if isinstance(v, str) else v
            for k, v in trial._system_attrs.items()
        } or _EMPTY
        trial._user_attrs = {sys.intern(k): v for k, v in trial._user_attrs.items()} or _EMPTY
        if not trial.intermediate_values:
            trial.intermediate_values = _EMPTY

    def _apply_create_trial(self, log: dict[str, Any]) -> None:
        count = len(self._trials)
        super()._apply_create_trial(log)
        if len(self._trials) > count and self._trials[count].state.is_finished():
            self._compact(self._trials[count])

    def _apply_set_trial_param(self, log: dict[str, Any]) -> None:
        super()._apply_set_trial_param(log)
        trial = self._trials.get(log["trial_id"])
        name = log["param_name"]
        if trial is None or trial.state.is_finished() or name not in trial._distributions:
            return
        shared = self._distribution(log["distribution"])
        if trial._distributions[name] == shared:  # an equal object: harmless in any dict
            trial._distributions[name] = shared

    def _apply_set_trial_state_values(self, log: dict[str, Any]) -> None:
        super()._apply_set_trial_state_values(log)
        trial = self._trials.get(log["trial_id"])
        if trial is not None and trial.state.is_finished():
            self._compact(trial)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_distributions", "_distribution_texts", "_distribution_dicts"):
            del state[name]  # rebuilt on load from the trials themselves
        state["_trials"] = _PackedTrials(self._trials)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_interning()
        packed = self._trials
        if isinstance(packed, _PackedTrials):
            self._trials = packed.unpack(self._shared_distributions)


def _interned(key: Any) -> Any:
    """``key`` as the one shared string of its text (intermediate values' keys are ints)."""
    return sys.intern(key) if isinstance(key, str) else key


_PACKED_CHUNK = 1000  # trials packed at once while the replay snapshot is written


class _Packer:
    """The tables of one replay snapshot being written, and the packing of each trial."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, ...]] = []  # the one field order packed trials have
        self.distributions: list[dict[str, BaseDistribution]] = []
        self.keys: list[tuple[str, ...]] = []
        self._dict_index: dict[int, int] = {}
        self._key_index: dict[tuple[str, ...], int] = {}

    def _packed_dict(self, values: dict[str, Any]) -> tuple[int, tuple[Any, ...]] | None:
        if not values:
            return None
        names = tuple(values)
        index = self._key_index.get(names)
        if index is None:
            index = self._key_index[names] = len(self.keys)
            self.keys.append(names)
        return index, tuple(values.values())

    def pack(self, trial: FrozenTrial) -> Any:
        """``trial`` as a tuple if finished (with the field order of the first one), else as is."""
        attributes = trial.__dict__
        if not trial.state.is_finished():
            return trial
        if not self.fields:
            self.fields.append(tuple(attributes))
        if tuple(attributes) != self.fields[0]:
            return trial
        values = dict(attributes)
        shared = values["_distributions"]
        index = self._dict_index.get(id(shared))
        if index is None:
            index = self._dict_index[id(shared)] = len(self.distributions)
            self.distributions.append(shared)
        values["_distributions"] = index
        for name in _PACKED_ATTRS:
            values[name] = self._packed_dict(values[name])
        return tuple(values.values())


class _Chunk:
    """Some of a replay's trials, packed only when pickled (then read back as a dict)."""

    def __init__(self, packer: _Packer, trials: dict[int, Any], ids: list[int]) -> None:
        self.packer, self.trials, self.ids = packer, trials, ids

    def __reduce__(self) -> tuple[Any, ...]:
        pack, trials = self.packer.pack, self.trials
        return dict, ({trial_id: pack(trials[trial_id]) for trial_id in self.ids},)


# Trial attributes packed as (index of their keys in a table, tuple of values).
_PACKED_ATTRS = ("_params", "_user_attrs", "_system_attrs", "intermediate_values")


class _PackedTrials:
    """A replay's trials as the replay snapshot pickles them.

    The snapshot is pickled without memo (see ``_snapshot``), so a ``FrozenTrial`` as is would
    carry its attribute names, its distributions and its dicts' keys once per trial: most of
    the file, and a new object each to share again on load. A finished trial is packed as a
    tuple of its ``__dict__`` values in which the distributions dict is an index into a table
    of the distinct ones and each dict of attributes is the index of its keys in a table of
    the distinct key tuples with a tuple of its values. Unpacking builds the trials with their
    parts already shared: no per-trial interning on load. Trials still waiting or running
    are pickled as they are (Optuna's ``Trial`` edits their dicts in place).
    """

    def __init__(self, trials: dict[int, FrozenTrial]) -> None:
        self.fields: tuple[str, ...] | None = None
        self.distributions: list[dict[str, BaseDistribution]] = []
        self.keys: list[tuple[str, ...]] = []
        self.trials: dict[int, Any] = trials  # packed chunk by chunk while pickled

    def __getstate__(self) -> dict[str, Any]:
        packer = _Packer()
        ids = list(self.trials)
        chunks = [
            _Chunk(packer, self.trials, ids[start : start + _PACKED_CHUNK])
            for start in range(0, len(ids), _PACKED_CHUNK)
        ]
        # The chunks first: pickling each packs its trials and fills the tables, which are
        # pickled after them, complete. Only one chunk's tuples exist at a time.
        return {
            "trials": chunks,
            "fields": packer.fields,
            "distributions": packer.distributions,
            "keys": packer.keys,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.fields = state["fields"][0] if state["fields"] else None
        self.distributions = state["distributions"]
        self.keys = state["keys"]
        self.trials = {}
        for chunk in state["trials"]:
            self.trials.update(chunk)

    def unpack(self, share: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[int, FrozenTrial]:
        """The trials, with ``share`` giving the shared distributions dict for each one."""
        if self.fields is None:
            return self.trials
        distributions = [share(d) for d in self.distributions]
        keys = [tuple(_interned(name) for name in names) for names in self.keys]
        fields = self.fields
        at = {name: fields.index(name) for name in ("_distributions", *_PACKED_ATTRS)}
        at_distributions = at["_distributions"]
        at_packed = [(at[name], name) for name in _PACKED_ATTRS]
        new = FrozenTrial.__new__
        trials: dict[int, FrozenTrial] = {}
        for trial_id, packed in self.trials.items():
            if not isinstance(packed, tuple):
                trials[trial_id] = packed
                continue
            attributes = dict(zip(fields, packed, strict=True))
            attributes["_distributions"] = distributions[packed[at_distributions]]
            for index, name in at_packed:
                part = packed[index]
                attributes[name] = (
                    _EMPTY if part is None else dict(zip(keys[part[0]], part[1], strict=True))
                )
            trial = new(FrozenTrial)
            trial.__dict__ = attributes
            trials[trial_id] = trial
        return trials


class SweepJournalStorage(JournalStorage):
    """Optuna's ``JournalStorage`` replaying into :class:`CompactReplayResult`.

    The same reads and writes as Optuna's: only how trials are held in memory differs, and a
    replay snapshot the backend offers (``load_snapshot``) is restored before reading on.
    """

    def __init__(self, log_storage: FlockJournalFileBackend) -> None:
        # JournalStorage.__init__ with our replay result: it names Optuna's class directly.
        self._worker_id_prefix = str(uuid.uuid4()) + "-"
        self._backend = log_storage
        self._thread_lock = threading.Lock()
        self._replay_result = CompactReplayResult(self._worker_id_prefix)
        self._released = True  # nothing read yet: the first read restores the replay snapshot
        with self._thread_lock:
            self._sync_with_backend()

    def _sync_with_backend(self) -> None:
        if self._released:  # (the caller holds the lock)
            self._released = False
            backend = self._backend
            with gc_paused():
                snapshot = (
                    backend.load_snapshot()
                    if isinstance(backend, FlockJournalFileBackend)
                    else None
                )
                if snapshot is not None:
                    self.restore_replay_result(snapshot)
                    if not isinstance(self._replay_result, CompactReplayResult):
                        # Not ours: start over, reading the journal from its first line.
                        self._replay_result = CompactReplayResult(self._worker_id_prefix)
        super()._sync_with_backend()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._replay_result = CompactReplayResult(self._worker_id_prefix)
        self._released = False
