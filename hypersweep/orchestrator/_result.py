"""What a sweep produced, read back from storage: one record per trial and the best one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypersweep.orchestrator._storage import (
    ATTEMPTS_ATTR,
    CHECKPOINT_ATTR,
    ERROR_ATTR,
    HISTORY_ATTR,
    INTERRUPTED_ATTR,
    PARENT_ATTR,
    PAUSED_ATTR,
)
from hypersweep.strategies import flatten_config, unflatten_params

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


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep.

    ``state`` is one of completed, pruned (stopped early), failed, running, paused (by the
    scheduler, to be promoted) or interrupted (to be resumed). ``parent`` is the trial whose
    checkpoint a population-based-training clone started from.
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

    @classmethod
    def from_frozen(
        cls, trial: FrozenTrial, space: Mapping[str, Any] | None, metric: str | None = None
    ) -> TrialRecord:
        """Read a record from an Optuna trial; ``space`` rebuilds the nested config."""
        params = dict(trial.params)
        config = unflatten_params(params, space) if space is not None else params
        duration = None
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        state = _STATE_NAMES.get(trial.state.name, trial.state.name.lower())
        if state == "waiting" and trial.system_attrs.get(INTERRUPTED_ATTR):
            state = "interrupted"
        elif state == "waiting" and trial.system_attrs.get(PAUSED_ATTR) is not None:
            state = "paused"
        value = trial.value if trial.values is not None and len(trial.values) == 1 else None
        metrics = dict(trial.user_attrs.get("metrics", {}))
        if not metrics and value is not None and metric is not None:
            metrics = {metric: value}
        return cls(
            number=trial.number,
            state=state,
            config=config,
            value=value,
            metrics=metrics,
            intermediate_values=dict(trial.intermediate_values),
            history=list(trial.system_attrs.get(HISTORY_ATTR, [])),
            error=trial.system_attrs.get(ERROR_ATTR),
            checkpoint=trial.system_attrs.get(CHECKPOINT_ATTR),
            attempts=int(trial.system_attrs.get(ATTEMPTS_ATTR, 0)) + 1,
            duration=duration,
            parent=trial.system_attrs.get(PARENT_ATTR),
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


_SCOPES = ("last", "all", "avg", "last-5-avg", "last-10-avg")


@dataclass
class SweepResult:
    """The outcome of a sweep: every started trial, and the best completed one."""

    name: str
    metric: str
    mode: str
    trials: list[TrialRecord]
    storage: str
    stopped_reason: str | None = None
    queued: int = 0

    @property
    def best_trial(self) -> TrialRecord | None:
        """The completed trial with the best value, or None if none completed."""
        completed = [
            t
            for t in self.trials
            if t.state == "completed" and t.value is not None and math.isfinite(t.value)
        ]
        if not completed:
            return None
        pick = min if self.mode == "min" else max
        return pick(completed, key=lambda t: t.value)  # type: ignore[arg-type, return-value]

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best trial's config."""
        best = self.best_trial
        return best.config if best else None

    @property
    def best_value(self) -> float | None:
        """The best trial's value of the sweep's metric."""
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

        metric = metric or self.metric
        mode = mode or self.mode
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

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per trial: number, state, value, ``config.*`` and ``metrics.*`` columns."""
        import pandas

        rows = []
        for trial in self.trials:
            row: dict[str, Any] = {
                "number": trial.number,
                "state": trial.state,
                "value": trial.value,
                "attempts": trial.attempts,
                "duration": trial.duration,
                "error": trial.error,
                "checkpoint": trial.checkpoint,
            }
            row.update({f"config.{k}": v for k, v in flatten_config(trial.config).items()})
            row.update({f"metrics.{k}": v for k, v in trial.metrics.items()})
            rows.append(row)
        return pandas.DataFrame(rows)
