"""A bound on the trials a model-based sampler learns from, so that its cost stays flat.

TPE (and every Optuna sampler that models the study) reads every finished trial for every
proposal: the cost of a proposal grows with the sweep, and a sweep of 100,000 trials spends
most of its time proposing (optuna#2172, optuna#6230). :class:`BoundedHistorySampler` shows the
sampler a window of the sweep instead: the ``best`` best completed trials (what TPE's "good"
density is built from) plus the ``recent`` most recently finished ones (where the search is
now), and the trials running in this driver (TPE's constant liar). The window is kept up to
date trial by trial, so a proposal costs the same at trial 100,000 as at trial 2,000.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hypersweep._errors import ConfigError
from hypersweep.strategies._trial_scan import TrialScan

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["BoundedHistorySampler"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _StudyView:
    """The study as the wrapped sampler sees it: its trials are the window."""

    def __init__(self, study: Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._window = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        return [t for t in self._window if states is None or t.state in states]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return list(self._window)


class BoundedHistorySampler(BaseSampler):
    """Wraps a sampler so that it sees at most ``best + recent`` finished trials.

    Pass it as the strategy, e.g. ``strategy=BoundedHistorySampler(TPESampler(seed=0,
    constant_liar=True), best=1000, recent=1000)``. With one objective, the best trials are
    the best completed values; with several, only the recent window is kept. Trials finished
    by other drivers of the same sweep join the window when storage is read again (after at
    most 1/64 of the trials seen so far).

    Args:
        sampler: the sampler that proposes (TPE, typically).
        best: how many of the best completed trials it sees.
        recent: how many of the most recently finished (completed or stopped early) trials.
    """

    def __init__(self, sampler: BaseSampler, *, best: int = 1000, recent: int = 1000) -> None:
        for field, count in (("best", best), ("recent", recent)):
            if count < 1:
                raise ConfigError(f"{field}: must be at least 1 trial, got {count}")
        self.sampler = sampler
        self.best = best
        self.recent = recent
        self._best: list[tuple[float, int, FrozenTrial]] = []  # a heap: worst of the best first
        self._recent: deque[FrozenTrial] = deque(maxlen=recent)
        self._seen: set[int] = set()
        self._running: dict[int, int] = {}  # number -> trial id, started in this driver
        self._scan = TrialScan()  # trials finished by other drivers, read now and then

    def __str__(self) -> str:
        return f"{self.sampler} (best {self.best} + recent {self.recent} trials)"

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()

    # --- the window ------------------------------------------------------------------------

    def _add(self, study: Study, trial: FrozenTrial) -> None:
        if trial.number in self._seen:
            return
        self._seen.add(trial.number)
        self._recent.append(trial)
        if trial.state != TrialState.COMPLETE or len(study.directions) != 1 or not trial.values:
            return
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        entry = (sign * trial.values[0], trial.number, trial)  # the heap's root: the worst kept
        if len(self._best) < self.best:
            heapq.heappush(self._best, entry)
        elif entry[:2] > self._best[0][:2]:
            heapq.heapreplace(self._best, entry)

    def _refresh(self, study: Study) -> None:
        for trial in self._scan.due_trials(study, len(self._seen)):
            if trial.state in _FINISHED:
                self._add(study, trial)

    def _view(self, study: Study, current: FrozenTrial) -> Any:
        self._refresh(study)
        window = {t.number: t for t in self._recent}
        window.update((number, t) for _, number, t in self._best)
        for number, trial_id in self._running.items():
            if number != current.number:
                window[number] = study._storage.get_trial(trial_id)
        return _StudyView(study, sorted(window.values(), key=lambda t: t.number))

    # --- the sampler interface ---------------------------------------------------------------

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(self._view(study, trial), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(self._view(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        view = self._view(study, trial)
        return self.sampler.sample_independent(view, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._running[trial.number] = trial._trial_id
        self.sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._running.pop(trial.number, None)
        self.sampler.after_trial(study, trial, state, values)
        if state in _FINISHED:
            finished = study._storage.get_trial(trial._trial_id)
            if not finished.state.is_finished():  # told after this call: as it will be stored
                finished = _copy_as(finished, state, values)
            self._add(study, finished)


def _copy_as(trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> FrozenTrial:
    import copy

    finished = copy.copy(trial)
    finished.state = state
    finished.values = list(values) if values is not None else None
    return finished
