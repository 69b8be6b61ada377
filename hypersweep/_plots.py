"""A sweep at a glance, in one picture (``hypersweep plot NAME``).

Top: every trial's value (completed ones, and where stopped and paused ones stood), the learning
curves coloured by outcome, and the parameters' importances. Bottom: the metric against each of
the most important parameters (slice views).

With early stopping most trials never complete, and Optuna's own plots (``optuna.visualization``)
use completed trials only, so on an ASHA sweep they would show one or two points. Here the
importances and slices use every trial's value at one common step (the furthest step most
trials reached), computed with Optuna's importance evaluators (``optuna.importance``) on a
study of those values, and drawn in one figure.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hypersweep.orchestrator._result import SweepResult, TrialRecord


@dataclass(frozen=True)
class _Outcome:
    label: str
    color: str
    marker: str


_OUTCOMES = {
    "completed": _Outcome("completed", "#2a9d3f", "o"),
    "pruned": _Outcome("stopped early", "#e07b00", "X"),
    "paused": _Outcome("paused", "#8a4fbf", "s"),
    "running": _Outcome("running", "#1f6fd1", "^"),
    "interrupted": _Outcome("interrupted", "#7f7f7f", "D"),
    "failed": _Outcome("failed", "#d62728", "v"),
}
_OTHER = _Outcome("other", "#7f7f7f", ".")


def _groups(result: SweepResult) -> list[tuple[_Outcome, list[TrialRecord]]]:
    """Trials by outcome, in a fixed order; stopped trials by the step they stopped at, in
    shades from light (stopped first) to dark, so that the picture says where they were cut."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    groups: list[tuple[_Outcome, list[TrialRecord]]] = []
    for state, outcome in _OUTCOMES.items():
        trials = [t for t in result.trials if t.state == state]
        if not trials:
            continue
        steps = sorted({t.step for t in trials if t.step is not None})
        if state != "pruned" or len(steps) < 2:
            label = outcome.label
            if state == "pruned" and steps:
                label = f"stopped at step {steps[0]}"
            groups.append((_Outcome(label, outcome.color, outcome.marker), trials))
            continue
        shades = colormaps["YlOrBr"]
        for index, step in enumerate(steps):
            color = to_hex(shades(0.4 + 0.5 * index / (len(steps) - 1)))
            at_step = [t for t in trials if t.step == step]
            groups.append((_Outcome(f"stopped at step {step}", color, outcome.marker), at_step))
        unknown = [t for t in trials if t.step is None]
        if unknown:
            groups.append((outcome, unknown))
    others = [t for t in result.trials if t.state not in _OUTCOMES]
    if others:
        groups.append((_OTHER, others))
    return groups


def _last_value(trial: TrialRecord) -> float | None:
    """The completed value, or the last reported one for a trial that did not complete."""
    value: float | None
    if trial.state == "completed" and trial.value is not None:
        value = trial.value
    elif trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    else:
        value = trial.value
    return value if value is not None and math.isfinite(value) else None


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Save a PNG (or any format matplotlib knows by the suffix) of ``result`` to ``path``."""
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(
            f"output: folder {str(target.parent)!r} does not exist; create it or write elsewhere"
        )
    if result.multi_objective:
        return plot_front(result, target)
    plot_figure(result).savefig(target, dpi=100)
    return target


def plot_figure(result: SweepResult) -> Figure:
    """The figure of ``result``: trials, curves and importances on top, slices below."""
    try:
        import matplotlib.style
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "plot: matplotlib is not installed; pip install 'hypersweep[dashboard]'"
        ) from None

    with matplotlib.style.context("seaborn-v0_8-whitegrid"):
        figure = Figure(figsize=(15, 8.4), layout="constrained")
        grid = figure.add_gridspec(2, 3)
        counts = ", ".join(f"{n} {_OUTCOMES.get(s, _OTHER).label}" for s, n in _counts(result))
        figure.suptitle(
            f"sweep {result.name}: {len(result.trials)} trials ({counts})",
            fontsize=13,
            fontweight="bold",
        )
        _plot_trials(figure.add_subplot(grid[0, 0]), result)
        _plot_curves(figure.add_subplot(grid[0, 1]), result)
        common = _common_values(result)
        importances, evaluator = _importances(result, common)
        _plot_importances(figure.add_subplot(grid[0, 2]), result, common, importances, evaluator)
        names = list(importances) or list(_params(result))
        for column in range(3):
            axes = figure.add_subplot(grid[1, column])
            if column < len(names):
                _plot_slice(axes, result, common, names[column], importances.get(names[column]))
                if column == 0:
                    _legend(axes)
            else:
                axes.axis("off")
    return figure


def _counts(result: SweepResult) -> list[tuple[str, int]]:
    counts = result.counts()
    counts.pop("queued", None)
    order = list(_OUTCOMES)
    return sorted(counts.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99)


def _legend(axes: Axes) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, loc="best", frameon=True)


def _plot_trials(axes: Axes, result: SweepResult) -> None:
    """Each trial's value by number: stopped and paused ones where they stood."""
    for outcome, group in _groups(result):
        points = [(t.number, v) for t in group if (v := _last_value(t)) is not None]
        if not points:
            continue
        completed = outcome.label == "completed"
        axes.scatter(
            [n for n, _ in points],
            [v for _, v in points],
            s=60 if completed else 34,
            marker=outcome.marker,
            color=outcome.color,
            edgecolors="black" if completed else "none",
            alpha=0.95,
            label=f"{outcome.label} ({len(points)})",
            zorder=3 if completed else 2,
        )
    numbers: list[int] = []
    bests: list[float] = []
    for trial in sorted(result.trials, key=lambda t: t.number):
        value = _last_value(trial)
        if trial.state != "completed" or value is None:
            continue
        better = not bests or (value < bests[-1] if result.mode == "min" else value > bests[-1])
        numbers.append(trial.number)
        bests.append(value if better else bests[-1])
    if bests:
        last = max(t.number for t in result.trials)
        axes.step(
            [*numbers, last],
            [*bests, bests[-1]],
            where="post",
            color="black",
            lw=1.3,
            label="best completed",
        )
    axes.set_xlabel("trial")
    axes.set_ylabel(result.metrics[0])
    axes.set_title("trials: final value, or the last reported one", fontsize=11)
    _legend(axes)


def _plot_curves(axes: Axes, result: SweepResult) -> None:
    """Every trial's reported metric per step; a marker where it ended, so that the curve of a
    trial stopped after one report shows too."""
    # Completed trials last, on top of the others.
    for outcome, group in sorted(_groups(result), key=lambda g: g[0].label == "completed"):
        completed = outcome.label == "completed"
        curves = [t for t in group if t.intermediate_values]
        for index, trial in enumerate(curves):
            values = {s: v for s, v in trial.intermediate_values.items() if math.isfinite(v)}
            if not values:
                continue
            steps = sorted(values)
            axes.plot(
                steps,
                [values[s] for s in steps],
                color=outcome.color,
                alpha=0.95 if completed else 0.6,
                lw=2.2 if completed else 1.0,
                label=f"{outcome.label} ({len(curves)})" if index == 0 else None,
                zorder=3 if completed else 2,
            )
            axes.scatter(
                [steps[-1]],
                [values[steps[-1]]],
                marker=outcome.marker,
                color=outcome.color,
                s=26,
                zorder=4 if completed else 2,
            )
    steps = [s for t in result.trials for s in t.intermediate_values]
    if steps and max(steps) >= 10:  # early rungs are where most trials end: give them room
        axes.set_xscale("symlog", linthresh=1)
        ticks = [0, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000]
        shown = [t for t in ticks if t <= max(steps)]
        axes.set_xticks(shown + ([max(steps)] if max(steps) > 1.3 * shown[-1] else []))
        axes.xaxis.set_major_formatter("{x:g}")
    axes.set_xlabel("step")
    axes.set_ylabel(result.metrics[0])
    axes.set_title("learning curves by outcome (marker: where each ended)", fontsize=11)
    _legend(axes)


@dataclass(frozen=True)
class _Common:
    """Every trial's value at one step most trials reached (all trials compare there)."""

    step: int | None  # None: the completed trials' final values
    values: dict[int, float]  # trial number -> value


def _common_values(result: SweepResult) -> _Common:
    curves = [t for t in result.trials if t.intermediate_values]
    if len(curves) >= 3:
        reached: dict[int, int] = {}
        for trial in curves:
            for step in trial.intermediate_values:
                reached[step] = reached.get(step, 0) + 1
        enough = [s for s, n in reached.items() if n >= max(3, len(curves) / 2)]
        if enough:
            step = max(enough)
            values = {
                t.number: t.intermediate_values[step]
                for t in curves
                if step in t.intermediate_values and math.isfinite(t.intermediate_values[step])
            }
            return _Common(step, values)
    values = {
        t.number: v
        for t in result.trials
        if t.state == "completed" and (v := _last_value(t)) is not None
    }
    return _Common(None, values)


def _params(result: SweepResult) -> dict[str, Any]:
    """The searched parameters by dotted name, as domains of the sweep's space."""
    from hypersweep.strategies import flatten_space

    return flatten_space(result.space) if result.space else {}


def _distribution(domain: Any) -> Any:
    import optuna

    from hypersweep.strategies import Categorical, Float, Int

    if isinstance(domain, Float):
        return optuna.distributions.FloatDistribution(
            domain.low, domain.high, log=domain.log, step=domain.step
        )
    if isinstance(domain, Int):
        return optuna.distributions.IntDistribution(
            domain.low, domain.high, log=domain.log, step=domain.step
        )
    if isinstance(domain, Categorical):
        return optuna.distributions.CategoricalDistribution(domain.values)
    return None


def _importances(result: SweepResult, common: _Common) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances for the values at the common step, most important first,
    and the evaluator's name."""
    import optuna

    from hypersweep.strategies import flatten_config

    domains = {k: d for k, d in _params(result).items() if _distribution(d) is not None}
    if len(common.values) < 4 or not domains:
        return {}, ""
    distributions = {name: _distribution(domain) for name, domain in domains.items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if result.mode == "min" else "maximize")
    for trial in result.trials:
        if trial.number not in common.values:
            continue
        config = flatten_config(trial.config)
        params = {k: config[k] for k in distributions if k in config}
        if len(params) != len(distributions):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=common.values[trial.number]
            )
        )
    evaluator: Any
    try:
        import sklearn  # noqa: F401 - fANOVA's random forest

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        label = "Optuna's fANOVA"
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        label = "Optuna's PED-ANOVA"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError):  # e.g. every value equal
            return {}, label
    return dict(sorted(importances.items(), key=lambda item: -item[1])), label


def _common_label(result: SweepResult, common: _Common) -> str:
    if common.step is None:
        return f"{result.metric} of completed trials"
    return f"{result.metric} at step {common.step}"


def _plot_importances(
    axes: Axes, result: SweepResult, common: _Common, importances: dict[str, float], evaluator: str
) -> None:
    if not importances:
        axes.text(
            0.5,
            0.5,
            "too few trials for importances",
            ha="center",
            va="center",
            transform=axes.transAxes,
            color="#555555",
        )
        axes.set_axis_off()
        axes.set_title("parameter importances", fontsize=11)
        return
    names = list(importances)[::-1]
    axes.barh(names, [importances[n] for n in names], color="#1f6fd1", alpha=0.85)
    for index, name in enumerate(names):
        axes.text(importances[name], index, f" {importances[name]:.2f}", va="center", fontsize=8)
    axes.set_xlim(0, max(importances.values()) * 1.2)
    axes.set_xlabel(f"importance ({evaluator})")
    axes.set_title(
        f"parameter importances for {_common_label(result, common)} ({len(common.values)} trials)",
        fontsize=11,
    )


def _plot_slice(
    axes: Axes, result: SweepResult, common: _Common, name: str, importance: float | None
) -> None:
    """The common-step value against one parameter, each trial marked by its outcome."""
    from hypersweep.strategies import Categorical, Float, Int, flatten_config

    domain = _params(result).get(name)
    categories: Sequence[Any] = domain.values if isinstance(domain, Categorical) else ()
    for outcome, group in _groups(result):
        xs: list[Any] = []
        ys: list[float] = []
        for trial in group:
            if trial.number not in common.values:
                continue
            value = flatten_config(trial.config).get(name)
            if categories:
                # Spread the points of one category a little so that they do not hide each other.
                jitter = ((trial.number * 0.618) % 1 - 0.5) * 0.3
                xs.append(categories.index(value) + jitter)
            elif value is not None:
                xs.append(value)
            else:
                continue
            ys.append(common.values[trial.number])
        if xs:
            completed = outcome.label == "completed"
            axes.scatter(
                xs,
                ys,
                marker=outcome.marker,
                color=outcome.color,
                edgecolors="black" if completed else "none",
                s=60 if completed else 32,
                alpha=0.9,
                label=outcome.label,
                zorder=3 if completed else 2,
            )
    if categories:
        axes.set_xticks(range(len(categories)), [str(c) for c in categories])
    elif isinstance(domain, (Float, Int)) and domain.log:
        axes.set_xscale("log")
    axes.set_xlabel(name)
    axes.set_ylabel(_common_label(result, common))
    title = f"slice: {name}"
    if importance is not None:
        title += f" (importance {importance:.2f})"
    axes.set_title(title, fontsize=11)


def _columns(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def plot_front(result: SweepResult, path: str | Path) -> Path:
    """Save a scatter of the first two objectives: every completed trial, infeasible ones
    marked, and the Pareto front highlighted and joined in the order of the first objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name = result.metrics[0], result.metrics[1]
    figure, axes = plt.subplots(figsize=(6.5, 5))
    front = {t.number for t in result.best_trials}
    groups: dict[str, list[tuple[float, float]]] = {"trial": [], "infeasible": [], "front": []}
    for trial in result.trials:
        if trial.state != "completed" or not trial.values or len(trial.values) < 2:
            continue
        point = (trial.values[0], trial.values[1])
        if trial.number in front:
            groups["front"].append(point)
        elif trial.feasible is False:
            groups["infeasible"].append(point)
        else:
            groups["trial"].append(point)
    if groups["trial"]:
        axes.scatter(
            *_columns(groups["trial"]),
            s=14,
            color="tab:gray",
            alpha=0.6,
            label="completed trial",
        )
    if groups["infeasible"]:
        axes.scatter(
            *_columns(groups["infeasible"]),
            s=18,
            marker="x",
            color="tab:red",
            label="infeasible (breaks a constraint)",
        )
    if groups["front"]:
        line = sorted(groups["front"])
        axes.plot(*_columns(line), color="tab:blue", linewidth=1, alpha=0.7)
        axes.scatter(
            *_columns(line),
            s=36,
            color="tab:blue",
            edgecolor="black",
            zorder=3,
            label=f"Pareto front ({len(line)} trials)",
        )
    modes = result.modes
    axes.set_xlabel(f"{x_name} ({modes[0]})")
    axes.set_ylabel(f"{y_name} ({modes[1]})")
    others = result.metrics[2:]
    title = f"sweep {result.name}" + (f" (also {', '.join(others)})" if others else "")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
