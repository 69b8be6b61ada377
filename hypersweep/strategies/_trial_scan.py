"""Read a study's trials from storage now and then, each finished trial once: O(1) amortized.

Samplers that keep their own index of the sweep's trials (the configs taken, the best and
recent window) must also see trials other drivers add to the same storage. Reading every trial
for every proposal makes a proposal cost O(trials) and a sweep O(trials²); reading after a
number of proposals that grows with the index keeps it O(1) amortized, and a trial another
driver finished meanwhile is seen from the next read on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["TrialScan"]

# Read again after this many proposals, or a 1/_RESCAN_FRACTION of the indexed trials if more.
_RESCAN_MIN = 16
_RESCAN_FRACTION = 64


class TrialScan:
    """Which trials to (re)read: those from the first unfinished one on, when a read is due."""

    def __init__(self) -> None:
        self._since_read: int | None = None  # proposals since the last read; None: read next
        self._read_from = 0  # trials before this index (storage order) are finished and read

    def read_next_time(self) -> None:
        """Make the next :meth:`due_trials` read storage whatever the count."""
        self._since_read = None

    def due_trials(self, study: Study, indexed: int) -> Iterator[FrozenTrial]:
        """The trials to look at now (none unless a read is due); ``indexed``: the index's size.

        A finished trial is yielded by one read only (its state and values never change); a
        running one is yielded again by later reads until it finishes.
        """
        due = self._since_read is None or self._since_read >= max(
            _RESCAN_MIN, indexed // _RESCAN_FRACTION
        )
        if not due:
            assert self._since_read is not None
            self._since_read += 1
            return
        self._since_read = 0
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        for index in range(self._read_from, len(trials)):
            trial = trials[index]
            yield trial
            if index == self._read_from and trial.state.is_finished():
                self._read_from += 1
