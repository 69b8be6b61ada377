"""BoundedHistorySampler: what the wrapped sampler is shown, and that TPE keeps its quality."""

from __future__ import annotations

import statistics
from typing import Any

import objectives
import optuna
import pytest

import hypersweep as hs

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Recording(optuna.samplers.RandomSampler):
    """A real sampler that records which finished trials it was shown for each proposal."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.shown: list[tuple[int, list[int]]] = []
        self.running: list[tuple[set[int], set[int]]] = []  # (shown, running in the storage)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        finished = study._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        self.shown.append((trial.number, [t.number for t in finished]))
        running = optuna.trial.TrialState.RUNNING
        shown_running = {t.number for t in study._get_trials(deepcopy=False, states=(running,))}
        stored = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(running,))
        self.running.append((shown_running, {t.number for t in stored} - {trial.number}))
        return super().sample_independent(study, trial, name, distribution)


def test_a_bounded_history_shows_the_best_a_sample_and_the_most_recent_trials_only() -> None:
    recording = _Recording()
    result = hs.tune(
        {"x": hs.uniform(-5, 5)},
        objectives.quadratic,
        metric="loss",
        n_trials=80,
        max_concurrent=2,
        strategy=hs.strategies.BoundedHistorySampler(recording, best=5, sample=6, recent=4, seed=0),
        verbose=False,
    )
    values = {t.number: float(t.value) for t in result.trials if t.value is not None}
    assert max(len(shown) for _, shown in recording.shown) <= 5 + 6 + 4
    windows = list(zip(recording.shown, recording.running, strict=True))
    for (number, shown), (_, running) in windows[40:]:
        assert len(shown) >= 6  # the sample alone holds 6 once enough trials finished
        # The 5 best trials of those finished by this proposal are in the window (a trial that
        # is still running, e.g. one whose worker was slow to start, is not finished yet)...
        finished = (n for n in values if n < number and n not in running)
        best = sorted(finished, key=lambda n: values[n])[:5]
        must = {n for n in best if n < number - 4}
        assert must <= set(shown), (number, best, shown)
        # ...and so are the most recent trials.
        assert max(shown) >= number - 4
    # The trials running in this driver are shown too (TPE's constant liar needs them).
    assert all(shown == stored for shown, stored in recording.running), recording.running
    assert sum(bool(shown) for shown, _ in recording.running) >= 20  # 2 at a time: most times


def _quadratic(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -5, 5) - 2.0) ** 2


def _last_windows(seeds: int, trials: int, **window: int) -> list[tuple[list[int], list[int]]]:
    """For each seed, one trial at a time: (the last window shown, the trials by value)."""
    windows = []
    for seed in range(seeds):
        recording = _Recording()
        sampler = hs.strategies.BoundedHistorySampler(recording, seed=seed, **window)
        study = optuna.create_study(sampler=sampler)
        study.optimize(_quadratic, n_trials=trials)
        values = [t.values[0] for t in study.get_trials(deepcopy=False)]
        by_value = sorted(range(trials), key=values.__getitem__)
        windows.append((recording.shown[-1][1], by_value))
    return windows


def test_until_the_window_is_full_the_sampler_sees_every_trial() -> None:
    """Until ``sample + recent`` trials finished, the wrapped sampler sees them all."""
    recording = _Recording()
    study = optuna.create_study(
        sampler=hs.strategies.BoundedHistorySampler(recording, best=3, sample=20, recent=10)
    )
    study.optimize(_quadratic, n_trials=45)
    for number, shown in recording.shown[: 20 + 10 + 1]:
        assert shown == list(range(number)), (number, shown)
    assert all(len(shown) <= 3 + 20 + 10 for _, shown in recording.shown)
    assert 20 + 10 <= len(recording.shown[-1][1]) < 44  # past it: best + sample + recent


def test_the_sample_is_drawn_from_the_whole_sweep_not_its_end() -> None:
    """TPE's "bad" density needs the whole sweep: the sample is as likely early as late."""
    early = late = 0
    for shown, by_value in _last_windows(20, 200, best=5, sample=20, recent=5):
        sampled = set(shown) - set(by_value[:5]) - set(range(195, 200))
        early += sum(n < 100 for n in sampled)
        late += sum(n >= 100 for n in sampled)
    assert early + late >= 20 * 15  # the sample: 20 each time, few of them also best or recent
    assert 0.4 < early / (early + late) < 0.6, (early, late)


def _sphere(trial: optuna.Trial) -> float:
    """A shifted 6-D sphere: minimum 0 at x_i = 1.5."""
    return sum((trial.suggest_float(f"x{i}", -5, 5) - 1.5) ** 2 for i in range(6))


def test_tpe_proposes_as_unbounded_until_the_window_is_full() -> None:
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    plain.optimize(_sphere, n_trials=60)
    tpe = optuna.samplers.TPESampler(seed=3)
    bounded = optuna.create_study(
        sampler=hs.strategies.BoundedHistorySampler(tpe, best=25, sample=40, recent=10, seed=3)
    )
    bounded.optimize(_sphere, n_trials=60)
    same = [a.params == b.params for a, b in zip(plain.trials, bounded.trials, strict=True)]
    assert all(same[: 40 + 10 + 1]), same.index(False)
    assert not all(same)  # past it, the window is a sample: TPE proposes differently


def test_bounded_tpe_still_learns_where_the_bound_is_active() -> None:
    """On fixed seeds, 300 trials through a 100-trial window: far better than random search."""
    bounded, random_search = [], []
    for seed in range(5):
        tpe = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        sampler = hs.strategies.BoundedHistorySampler(tpe, best=25, sample=50, recent=25, seed=seed)
        study = optuna.create_study(sampler=sampler)
        study.optimize(_sphere, n_trials=300)
        bounded.append(study.best_value)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        study.optimize(_sphere, n_trials=300)
        random_search.append(study.best_value)
    assert statistics.median(bounded) < statistics.median(random_search) / 10, (
        bounded,
        random_search,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("best", 0, "best: must be at least 1 trial"), ("sample", -1, "sample: must be at least 0")],
)
def test_a_bounded_history_refuses_a_window_it_cannot_keep(
    field: str, value: int, message: str
) -> None:
    with pytest.raises(hs.ConfigError, match=message):
        hs.strategies.BoundedHistorySampler(optuna.samplers.TPESampler(), **{field: value})
