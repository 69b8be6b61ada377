"""Where sweeps live: Optuna storages, the trial budget, and which driver owns which trial.

The default storage is Optuna's journal format under ``./hypersweep-runs/<name>/journal.log``
(``_journal`` says how it is locked, how trials are kept in memory and how a restart skips
replaying it). We prefer it to SQLite because it is an append-only
log guarded by a file lock: several driver processes on one machine can share it without
SQLite's "database is locked" errors (optuna#820), and a driver killed mid-write cannot corrupt
what was written before. Any Optuna storage URL (PostgreSQL for many machines) works as well.

Two conventions make sweeps exact across drivers and restarts:

* The trial budget is created up front as ``n_trials`` WAITING trials. A driver starts a trial by
  moving one from WAITING to RUNNING, which Optuna's storages do atomically, so two drivers can
  never run more than ``n_trials`` trials between them.
* A trial that was running when its driver died (or was interrupted) is put back to WAITING with
  its parameters and checkpoint kept, and is claimed again the same way: same trial, same
  number, no duplicate. A driver knows another is dead from its lease (a heartbeat in the
  study's system attributes), or at once when that driver ran on this host and its pid is gone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial, TrialState

RUNS_DIR_ENV = "HYPERSWEEP_RUNS_DIR"
SPEC_ATTR = "hypersweep:spec"
OWNER_ATTR = "hypersweep:owner"
ATTEMPTS_ATTR = "hypersweep:attempts"
CHECKPOINT_ATTR = "hypersweep:checkpoint"
HISTORY_ATTR = "hypersweep:history"
INTERRUPTED_ATTR = "hypersweep:interrupted"
PAUSED_ATTR = "hypersweep:paused_at"  # the step a paused trial waits at
PROMOTED_ATTR = "hypersweep:promoted_at"  # the steps a trial was promoted from, in order
SEGMENTS_ATTR = "hypersweep:segments"  # [start, end] wall-clock times of each run of a trial
PARENT_ATTR = "hypersweep:parent"  # the trial a clone started from (population-based training)
CLONED_FROM_ATTR = "hypersweep:cloned_from"  # the checkpoint it started from
LEASE_PREFIX = "hypersweep:lease:"
ERROR_ATTR = "fail_reason"  # Optuna's own key for why a trial failed


def runs_root() -> Path:
    """The folder holding default sweeps: ``$HYPERSWEEP_RUNS_DIR`` or ``./hypersweep-runs``."""
    return Path(os.environ.get(RUNS_DIR_ENV, "hypersweep-runs"))


def default_run_dir(name: str) -> Path:
    """The folder of sweep ``name`` (journal, checkpoints, logs)."""
    return runs_root() / name


def open_storage(storage: str | BaseStorage | None, name: str) -> BaseStorage:
    """The Optuna storage for a sweep: default journal file, a URL, a journal path, or as is."""
    from hypersweep.orchestrator._journal import FlockJournalFileBackend, SweepJournalStorage

    if storage is None:
        storage = str(default_run_dir(name) / "journal.log")
    if isinstance(storage, str):
        if "://" in storage:
            return _open_rdb(storage)
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return SweepJournalStorage(FlockJournalFileBackend(storage))
    return storage


def _open_rdb(url: str, attempts: int = 5) -> BaseStorage:
    """An RDB storage, its schema created once even when drivers start together.

    Optuna's ``RDBStorage`` creates its tables, types and version row when the database is new;
    several drivers doing it at the same instant collide (PostgreSQL: ``type "studydirection"
    already exists``). Creation runs under a lock held in the database itself (an advisory lock
    on PostgreSQL, ``GET_LOCK`` on MySQL) or on a lock file beside a SQLite file; a collision
    that still happens on another database is retried.

    It comes wrapped as ``optuna.create_study`` would wrap it (Optuna's cache of finished
    trials), so the sweep's slots and the study go through one storage: a raw ``RDBStorage``
    beside the study's own wrapper left that cache unaware of slots the sweep created, and a
    sampler that writes parameters before reading any trial (grid) failed the first trial.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with _schema_lock(url):
                rdb = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
                return optuna.storages.get_storage(rdb)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


# A constant key for PostgreSQL's advisory lock: hypersweep's schema creation, in any database.
_PG_SCHEMA_LOCK = 0x6879_7065_7273_7765  # "hyperswe"


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a lock, shared by every driver using the database at ``url``, while inside."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if backend not in ("postgresql", "mysql"):
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        # A session lock: the server releases it when this connection closes, even on a kill.
        with engine.connect() as connection:
            if backend == "postgresql":
                lock = "SELECT pg_advisory_lock(:key)"
                unlock = "SELECT pg_advisory_unlock(:key)"
                key: int | str = _PG_SCHEMA_LOCK
            else:
                lock, unlock, key = (
                    "SELECT GET_LOCK(:key, 600)",
                    "SELECT RELEASE_LOCK(:key)",
                    ("hypersweep-schema"),
                )
            connection.execute(sqlalchemy.text(lock), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(unlock), {"key": key})
    finally:
        engine.dispose()


def describe_storage(storage: str | BaseStorage | None, name: str) -> str:
    """The storage as a user would type it, with any password hidden."""
    if storage is None:
        return str(default_run_dir(name) / "journal.log")
    if isinstance(storage, str):
        if "://" in storage and "@" in storage:
            scheme, rest = storage.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return storage
    return type(storage).__name__


# --- one sweep in a storage ---------------------------------------------------------------


class SweepStore:
    """The trial budget, claims and driver leases of one sweep (an Optuna study)."""

    def __init__(self, storage: BaseStorage, study_id: int) -> None:
        self.storage = storage
        self.study_id = study_id

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """The sweep's trials in ``states`` (all if none), without copying them."""
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states or None)

    def add_slots(self, count: int) -> None:
        """Add ``count`` WAITING trials: the budget that drivers claim from."""
        import optuna

        template = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING)
        for _ in range(count):
            self.storage.create_new_trial(self.study_id, template_trial=template)

    def claim(self, trial_id: int) -> bool:
        """Atomically move a WAITING trial to RUNNING; False if another driver got it first."""
        import optuna

        try:
            return bool(
                self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def requeue(self, trial_id: int) -> None:
        """Put a RUNNING trial back to WAITING, keeping its parameters, values and checkpoints."""
        import optuna

        try:
            self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.WAITING)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def system_attrs(self) -> dict[str, Any]:
        """The study's system attributes (spec, leases)."""
        return self.storage.get_study_system_attrs(self.study_id)

    def spec(self) -> dict[str, Any] | None:
        """The sweep's stored plain-data spec, if hypersweep created it."""
        spec = self.system_attrs().get(SPEC_ATTR)
        return dict(spec) if spec else None

    def write_lease(self, driver_id: str, alive: bool = True) -> None:
        """Record that ``driver_id`` is alive now (or, with ``alive=False``, gone)."""
        stamp = time.time() if alive else 0.0
        self.storage.set_study_system_attr(
            self.study_id, LEASE_PREFIX + driver_id, {"time": stamp, "pid": os.getpid()}
        )

    def orphaned_trials(self, me: str, grace: float) -> list[FrozenTrial]:
        """RUNNING trials whose driver is gone: to be requeued and claimed again."""
        import optuna

        running = self.trials(optuna.trial.TrialState.RUNNING)
        if not running:
            return []
        leases = {
            key[len(LEASE_PREFIX) :]: value
            for key, value in self.system_attrs().items()
            if key.startswith(LEASE_PREFIX)
        }
        orphans = []
        now = time.time()
        for trial in running:
            owner = trial.system_attrs.get(OWNER_ATTR)
            if owner == me:
                continue
            if owner is None:
                started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
                if now - started > grace:
                    orphans.append(trial)
            elif not driver_is_alive(leases.get(owner), owner, grace):
                orphans.append(trial)
        return orphans


# --- driver leases -------------------------------------------------------------------------


def new_driver_id() -> str:
    """A driver's identity, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def driver_is_alive(lease: dict[str, Any] | None, driver_id: str, grace: float) -> bool:
    """Whether the driver that holds ``lease`` still runs, as far as this host can tell."""
    if not lease:
        return False
    if time.time() - float(lease.get("time", 0.0)) > grace:
        return False
    host = driver_id.split(":", 1)[0]
    if host == socket.gethostname():
        return _pid_alive(int(lease.get("pid", -1)))
    return True
