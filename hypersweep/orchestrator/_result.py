"""What a sweep produced, read back from storage: one record per trial and the best one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from hypersweep.orchestrator._storage import (
    ATTEMPTS_ATTR,
    CHECKPOINT_ATTR,
    ERROR_ATTR,
    HISTORY_ATTR,
    INTERRUPTED_ATTR,
    PARENT_ATTR,
    PAUSED_ATTR,
    PROMOTED_ATTR,
    SEGMENTS_ATTR,
)
from hypersweep.strategies import flatten_config, pareto_front, unflatten_params

if TYPE_CHECKING:
    import pandas
    from optuna.trial import FrozenTrial

_STATE_NAMES = {
    "COMPLETE": "completed",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


def _history_of(trial: FrozenTrial) -> list[dict[str, float]]:
    """Every report of ``trial`` (all metrics, with ``step``), over all its runs."""
    return list(trial.system_attrs.get(HISTORY_ATTR, []))


@dataclass(frozen=True, slots=True)  # slots: one per trial, 100,000s in a sweep
class TrialRecord:
    """One trial of a sweep.

    ``state`` is one of completed, pruned (stopped early), failed, running, paused (by the
    scheduler, to be promoted) or interrupted (to be resumed). ``parent`` is the trial whose
    checkpoint a population-based-training clone started from. ``values`` holds one value per
    objective (``value`` is set only with one objective); ``feasible`` says whether the trial
    met the sweep's constraints (None: no constraints, or not known).

    ``duration`` is the trial's total running time in seconds: the sum of its ``segments``,
    the ``(start, end)`` wall-clock times of each finished run (a paused trial that is promoted
    runs again, as does one resumed after an interruption). ``step`` is the latest step it reported,
    where a stopped or paused trial stands; ``promoted_at`` lists the steps it was promoted
    from, in order.
    """

    number: int
    state: str
    config: dict[str, Any]
    value: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    intermediate_values: dict[int, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    checkpoint: str | None = None
    attempts: int = 1
    duration: float | None = None
    parent: int | None = None
    values: list[float] | None = None
    feasible: bool | None = None
    step: int | None = None
    promoted_at: list[int] = field(default_factory=list)
    segments: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.values is None and self.value is not None:
            object.__setattr__(self, "values", [self.value])

    @classmethod
    def from_frozen(
        cls, trial: FrozenTrial, space: Any, metric: str | list[str] | None = None
    ) -> TrialRecord:
        """Read a record from an Optuna trial; ``space`` rebuilds the nested config."""
        params = dict(trial.params)
        if "config" in trial.user_attrs:  # a define-by-run space's config, as it returned it
            config = dict(trial.user_attrs["config"])
        elif space is not None and isinstance(space, Mapping):
            config = unflatten_params(params, space)
        else:
            config = params
        segments = [(float(a), float(b)) for a, b in trial.system_attrs.get(SEGMENTS_ATTR, [])]
        duration = None
        if segments:
            duration = sum(end - start for start, end in segments)
        elif trial.datetime_start is not None and trial.datetime_complete is not None:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        steps = [*trial.intermediate_values, *(int(h["step"]) for h in _history_of(trial))]
        state = _STATE_NAMES.get(trial.state.name, trial.state.name.lower())
        if state == "waiting" and trial.system_attrs.get(INTERRUPTED_ATTR):
            state = "interrupted"
        elif state == "waiting" and trial.system_attrs.get(PAUSED_ATTR) is not None:
            state = "paused"
        value = trial.value if trial.values is not None and len(trial.values) == 1 else None
        metrics = dict(trial.user_attrs.get("metrics", {}))
        if not metrics and value is not None and isinstance(metric, str):
            metrics = {metric: value}
        return cls(
            number=trial.number,
            state=state,
            config=config,
            value=value,
            metrics=metrics,
            intermediate_values=dict(trial.intermediate_values),
            history=_history_of(trial),
            error=trial.system_attrs.get(ERROR_ATTR),
            checkpoint=trial.system_attrs.get(CHECKPOINT_ATTR),
            attempts=int(trial.system_attrs.get(ATTEMPTS_ATTR, 0)) + 1,
            duration=duration,
            parent=trial.system_attrs.get(PARENT_ATTR),
            values=list(trial.values) if trial.values is not None else None,
            feasible=trial.user_attrs.get("feasible"),
            step=max(steps) if steps else None,
            promoted_at=list(trial.system_attrs.get(PROMOTED_ATTR, [])),
            segments=segments,
        )

    @property
    def metrics_dataframe(self) -> pandas.DataFrame:
        """Every report of this trial, one row per report (Ray Tune's ``metrics_dataframe``)."""
        import pandas

        return pandas.DataFrame(self.history)

    def metric_series(self, metric: str) -> list[float]:
        """The finite values of ``metric`` this trial reported, then its final result's."""
        series = [float(h[metric]) for h in self.history if metric in h]
        final = self.metrics.get(metric)
        if self.state == "completed" and final is not None and (not series or series[-1] != final):
            series.append(float(final))
        return [value for value in series if math.isfinite(value)]

    # Pickling (the results snapshot): a tuple of the fields, set back through the slots'
    # own descriptors. The dataclass default for frozen slots calls ``fields()`` and
    # ``object.__setattr__`` per field, most of the time ``load()`` of 100,000 trials took.
    def __getstate__(self) -> tuple[Any, ...]:
        return tuple([getter(self) for getter in _RECORD_GETTERS])

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for setter, value in zip(_RECORD_SETTERS, state, strict=True):
            setter(self, value)


_RECORD_GETTERS = tuple(getattr(TrialRecord, f.name).__get__ for f in fields(TrialRecord))
_RECORD_SETTERS = tuple(getattr(TrialRecord, f.name).__set__ for f in fields(TrialRecord))

_SCOPES = ("last", "all", "avg", "last-5-avg", "last-10-avg")


@dataclass
class SweepResult:
    """The outcome of a sweep: every started trial, and the best completed one."""

    name: str
    metric: str | list[str]
    mode: str | list[str]
    trials: list[TrialRecord]
    storage: str
    stopped_reason: str | None = None
    queued: int = 0
    space: dict[str, Any] | None = None  # the search space, when hypersweep stored it
    constraints: Mapping[str, Any] | None = None

    @property
    def metrics(self) -> list[str]:
        """The objectives' names, in order."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        """``min``/``max`` per objective."""
        return [self.mode] * len(self.metrics) if isinstance(self.mode, str) else list(self.mode)

    @property
    def multi_objective(self) -> bool:
        """Whether the sweep optimizes several metrics (see ``best_trials``)."""
        return len(self.metrics) > 1

    def _candidates(self) -> list[TrialRecord]:
        """Completed trials with a finite value per objective that meet every constraint."""
        n = len(self.metrics)
        return [
            t
            for t in self.trials
            if t.state == "completed"
            and t.feasible is not False
            and t.values is not None
            and len(t.values) == n
            and all(math.isfinite(v) for v in t.values)
        ]

    @property
    def best_trial(self) -> TrialRecord | None:
        """The feasible completed trial with the best value, or None if none completed.

        With several objectives there is no single best: use ``best_trials``.
        """
        if self.multi_objective:
            raise ValueError(
                f"sweep {self.name} optimizes several metrics ({', '.join(self.metrics)}): "
                "there is no single best trial; use best_trials, the Pareto front"
            )
        completed = self._candidates()
        if not completed:
            return None
        pick = min if self.mode == "min" else max
        return pick(completed, key=lambda t: t.values[0])  # type: ignore[index]

    @property
    def best_trials(self) -> list[TrialRecord]:
        """The Pareto front: feasible completed trials that no other one beats on every
        objective (the best trial, alone, with one objective), by trial number."""
        if not self.multi_objective:
            best = self.best_trial
            return [best] if best is not None else []
        candidates = self._candidates()
        front = pareto_front([t.values or [] for t in candidates], self.modes)
        return sorted((candidates[i] for i in front), key=lambda t: t.number)

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best trial's config."""
        best = self.best_trial
        return best.config if best else None

    @property
    def best_value(self) -> float | None:
        """The best trial's value of the sweep's metric (one objective only)."""
        best = self.best_trial
        return best.value if best else None

    def get_best_result(
        self, metric: str | None = None, mode: str | None = None, scope: str = "last"
    ) -> TrialRecord | None:
        """The best trial by ``metric`` and ``mode`` (the sweep's by default), as Ray Tune's
        ``ResultGrid.get_best_result``: any trial that reported the metric takes part, judged
        by its last value (``scope="last"``), its best (``"all"``), the mean of all its values
        (``"avg"``) or of its last 5 or 10 (``"last-5-avg"``, ``"last-10-avg"``).
        """
        from hypersweep._errors import ConfigError

        if metric is None or mode is None:
            if self.multi_objective:
                raise ConfigError(
                    f"metric: sweep {self.name} optimizes several metrics "
                    f"({', '.join(self.metrics)}); name the metric and mode to rank by"
                )
            metric = metric or self.metrics[0]
            mode = mode or self.modes[0]
        if mode not in ("min", "max"):
            raise ConfigError(f"mode: expected 'min' or 'max', got {mode!r}")
        if scope not in _SCOPES:
            raise ConfigError(f"scope: expected one of {', '.join(_SCOPES)}, got {scope!r}")
        best: tuple[float, TrialRecord] | None = None
        for trial in self.trials:
            series = trial.metric_series(metric)
            if not series:
                continue
            if scope == "last":
                score = series[-1]
            elif scope == "all":
                score = min(series) if mode == "min" else max(series)
            else:
                window = series[-int(scope.split("-")[1]) :] if scope != "avg" else series
                score = sum(window) / len(window)
            better = best is None or (score < best[0] if mode == "min" else score > best[0])
            if better:
                best = (score, trial)
        return best[1] if best is not None else None

    def counts(self) -> dict[str, int]:
        """How many trials are in each state (``queued``: budget not started yet)."""
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        if self.queued:
            counts["queued"] = self.queued
        return counts

    def to_records(self) -> list[dict[str, Any]]:
        """One flat row per trial, without pandas: what ``to_dataframe`` and
        ``hypersweep export`` hold.

        Columns: number, state, value, step (latest reported), promotions, duration (total
        running time), segments (runs), attempts, parent, error, checkpoint, then
        ``config.*`` (nested names dotted) and ``metrics.*`` (the final metrics). With several
        objectives ``value`` gives way to a ``value.<metric>`` column per objective and a
        ``pareto`` column (on the front); with constraints, ``feasible`` follows.
        """
        front = {t.number for t in self.best_trials} if self.multi_objective else set()
        rows = []
        for trial in self.trials:
            row: dict[str, Any] = {"number": trial.number, "state": trial.state}
            if self.multi_objective:
                values: list[Any] = trial.values or [None] * len(self.metrics)
                row.update({f"value.{m}": v for m, v in zip(self.metrics, values, strict=True)})
                row["pareto"] = trial.number in front
            else:
                row["value"] = trial.value
            if self.constraints:
                row["feasible"] = trial.feasible
            row.update(
                {
                    "step": trial.step,
                    "promotions": len(trial.promoted_at),
                    "duration": trial.duration,
                    "segments": len(trial.segments),
                    "attempts": trial.attempts,
                    "parent": trial.parent,
                    "error": trial.error,
                    "checkpoint": trial.checkpoint,
                }
            )
            row.update({f"config.{k}": v for k, v in flatten_config(trial.config).items()})
            row.update({f"metrics.{k}": v for k, v in trial.metrics.items()})
            rows.append(row)
        return rows

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per trial (the columns of :meth:`to_records`), as a pandas DataFrame."""
        import pandas

        return pandas.DataFrame(self.to_records())
