"""A bound on the trials a model-based sampler learns from, so that its cost stays flat.

TPE (and every Optuna sampler that models the study) reads every finished trial for every
proposal: the cost of a proposal grows with the sweep, and a sweep of 100,000 trials spends
most of its time proposing (optuna#2172, optuna#6230). :class:`BoundedHistorySampler` shows the
sampler a window of the sweep instead, kept up to date trial by trial so that a proposal costs
the same at trial 100,000 as at trial 2,000:

* the ``best`` best completed trials: TPE's "good" density is built from its ``gamma`` best
  trials (at most 25 by Optuna's default), so these are exactly the ones it would use;
* a uniform random ``sample`` of the older finished trials (reservoir sampling): TPE's "bad"
  density is built from every other trial, and a uniform sample keeps its shape. A window of
  the best and the most recent trials only does not: the runners-up and the latest proposals,
  all near the optimum found so far, make up the whole "bad" density;
* the ``recent`` most recently finished trials, the ones TPE weighs fully (its 25 last);
* and the trials running in this driver (TPE's constant liar).

The trade: past ``sample + recent`` trials, the "bad" density is estimated from a sample, so
TPE proposes differently than unbounded. ``benchmarks/tpe_bound.py`` measures by how much:
with a window of 25 + 150 + 25 trials over 1,000 trials, the best values stayed within plain
TPE's seed-to-seed spread on Branin, 6-D Rastrigin and 6-D Styblinski-Tang, and were about
twice plain TPE's on a smooth 6-D sphere (which rewards refining the best region over
exploring it).
"""

from __future__ import annotations

import heapq
import random
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
    """Wraps a sampler so that it sees at most ``best + sample + recent`` finished trials.

    Pass it as the strategy, e.g. ``strategy=BoundedHistorySampler(TPESampler(seed=0,
    constant_liar=True))``. Until ``sample + recent`` trials have finished, the window holds
    every trial and the wrapped sampler proposes exactly as it would unbounded. Past that, its
    cost per proposal stays that of a ``best + sample + recent`` trial study, and TPE's split
    is kept: its "good" trials are the sweep's best (while ``best`` is at least the wrapped
    sampler's ``gamma`` of the window, 25 with Optuna's default) and its "bad" density is
    estimated from a uniform sample of the sweep instead of every trial. With several
    objectives there is no single "best": the window is the sample and the recent trials.
    Trials finished by other drivers of the same sweep join the window when storage is read
    again (after at most 1/64 of the trials seen so far).

    Args:
        sampler: the sampler that proposes (TPE, typically).
        best: how many of the best completed trials it sees: at least TPE's ``gamma`` (25).
        sample: how many trials, drawn uniformly from those finished before the ``recent``
            ones, it sees.
        recent: how many of the most recently finished (completed or stopped early) trials.
        seed: seeds the uniform sample, so that a seeded sweep proposes the same again.
    """

    def __init__(
        self,
        sampler: BaseSampler,
        *,
        best: int = 25,
        sample: int = 1000,
        recent: int = 25,
        seed: int | None = None,
    ) -> None:
        for field, count, least in (
            ("best", best, 1),
            ("sample", sample, 0),
            ("recent", recent, 1),
        ):
            if count < least:
                raise ConfigError(
                    f"{field}: must be at least {least} trial{'s' * (least != 1)}, got {count}"
                )
        self.sampler = sampler
        self.best = best
        self.sample = sample
        self.recent = recent
        self._best: list[tuple[float, int, FrozenTrial]] = []  # a heap: worst of the best first
        self._sample: list[FrozenTrial] = []  # a reservoir: uniform over the older trials
        self._drawn = 0  # trials that left the recent ones
        self._rng = random.Random(seed)
        self._recent: deque[FrozenTrial] = deque(maxlen=recent)
        self._seen: set[int] = set()
        self._running: dict[int, int] = {}  # number -> trial id, started in this driver
        self._scan = TrialScan()  # trials finished by other drivers, read now and then

    def __str__(self) -> str:
        return (
            f"{self.sampler} (best {self.best} + sample {self.sample} + recent {self.recent}"
            " trials)"
        )

    def reseed_rng(self) -> None:
        self._rng.seed()
        self.sampler.reseed_rng()

    # --- the window ------------------------------------------------------------------------

    def _add(self, study: Study, trial: FrozenTrial) -> None:
        if trial.number in self._seen:
            return
        self._seen.add(trial.number)
        if len(self._recent) == self.recent:
            self._draw(self._recent[0])  # leaves the recent ones: may join the sample
        self._recent.append(trial)
        if trial.state != TrialState.COMPLETE or len(study.directions) != 1 or not trial.values:
            return
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        entry = (sign * trial.values[0], trial.number, trial)  # the heap's root: the worst kept
        if len(self._best) < self.best:
            heapq.heappush(self._best, entry)
        elif entry[:2] > self._best[0][:2]:
            heapq.heapreplace(self._best, entry)

    def _draw(self, trial: FrozenTrial) -> None:
        """Reservoir sampling (Vitter's algorithm R): every trial older than the recent ones is
        in the sample with the same probability, at O(1) per trial."""
        self._drawn += 1
        if len(self._sample) < self.sample:
            self._sample.append(trial)
            return
        slot = self._rng.randrange(self._drawn)
        if slot < self.sample:
            self._sample[slot] = trial

    def _refresh(self, study: Study) -> None:
        for trial in self._scan.due_trials(study, len(self._seen)):
            if trial.state in _FINISHED:
                self._add(study, trial)

    def _view(self, study: Study, current: FrozenTrial) -> Any:
        self._refresh(study)
        window = {t.number: t for t in self._sample}
        window.update((t.number, t) for t in self._recent)
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
