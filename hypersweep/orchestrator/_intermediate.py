"""Intermediate values stored in batches: one storage write for many reports.

Optuna's ``Trial.report`` writes each intermediate value on its own: with the journal file,
an append under the file lock and a read back of the journal; with an RDB, a transaction.
Under hundreds of trials reporting at once that write is most of what the driver does per
report. The driver instead collects the values of the reports it handles and writes them
together: one journal append, or one transaction, for all of them.

What a batch holds is written before anything may read it: before a scheduler decides (a
pruner compares with the other trials' values at that step), before a trial's state changes
(Optuna refuses values for a finished trial), and at the end of each pass of the driver's loop,
so that a value reaches storage within one pass, as it did before.
"""

from __future__ import annotations

from typing import Any

from optuna.storages import BaseStorage

__all__ = ["IntermediateValues"]


class IntermediateValues:
    """The intermediate values the driver has accepted and not yet written, in order."""

    def __init__(self, storage: BaseStorage) -> None:
        from optuna.storages._cached_storage import _CachedStorage

        # Optuna wraps an RDB storage in a cache that forwards these writes unchanged.
        self._storage: Any = storage._backend if isinstance(storage, _CachedStorage) else storage
        self._rows: list[tuple[int, int, float]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, trial_id: int, step: int, value: float) -> None:
        """Accept ``value`` at ``step`` for the trial; it is written by the next :meth:`flush`."""
        if step < 0:  # what Trial.report refuses, refused at the same point
            raise ValueError(f"`{step=}` must be non-negative.")
        self._rows.append((trial_id, step, float(value)))

    def flush(self) -> None:
        """Write every accepted value, in one storage write where the storage allows it."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        if _write_journal(self._storage, rows) or _write_rdb(self._storage, rows):
            return
        for trial_id, step, value in rows:  # any other storage: one write per value
            self._storage.set_trial_intermediate_value(trial_id, step, value)


def _write_journal(storage: Any, rows: list[tuple[int, int, float]]) -> bool:
    """One append of Optuna's journal logs for all rows (what each call would append)."""
    from optuna.storages.journal import JournalStorage

    if not isinstance(storage, JournalStorage):
        return False
    from optuna.storages.journal._storage import JournalOperation

    with storage._thread_lock:
        worker_id = storage._replay_result.worker_id
        storage._backend.append_logs(
            [
                {
                    "op_code": JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
                    "worker_id": worker_id,
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": value,
                }
                for trial_id, step, value in rows
            ]
        )
        storage._sync_with_backend()  # as each call does: the replay applies (and checks) them
    return True


def _write_rdb(storage: Any, rows: list[tuple[int, int, float]]) -> bool:
    """All rows in one transaction, with the checks Optuna makes for each."""
    from optuna.storages import RDBStorage

    if not isinstance(storage, RDBStorage):
        return False
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        for trial_id, step, value in rows:
            storage._set_trial_intermediate_value_without_commit(session, trial_id, step, value)
    return True
