"""A sweep at a glance: values over trials, and every trial's learning curve by its fate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult

_COLORS = {
    "completed": "tab:green",
    "pruned": "tab:orange",
    "failed": "tab:red",
    "paused": "tab:purple",
    "running": "tab:blue",
    "interrupted": "tab:gray",
}


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    """Save a PNG (or any format matplotlib knows by the suffix) of ``result`` to ``path``.

    Left: each completed trial's value and the best so far. Right: every trial's reported
    metric per step, coloured by how the trial ended, so early stopping can be seen at work.
    """
    try:
        import matplotlib
    except ImportError:
        from hypersweep._errors import ConfigError

        raise ConfigError(
            "plot: matplotlib is not installed; pip install 'hypersweep[dashboard]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.multi_objective:
        return plot_front(result, path)
    figure, (history, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    completed = sorted(
        (t for t in result.trials if t.state == "completed" and t.value is not None),
        key=lambda t: t.number,
    )
    numbers = [t.number for t in completed]
    values = [t.value for t in completed]
    best, bests = None, []
    for value in values:
        assert value is not None
        if best is None or (value < best if result.mode == "min" else value > best):
            best = value
        bests.append(best)
    history.scatter(numbers, values, s=14, color="tab:green", label="completed trial")
    history.step(numbers, bests, where="post", color="black", label="best so far")
    history.set_xlabel("trial")
    history.set_ylabel(result.metric)
    history.set_title(f"sweep {result.name}")
    history.legend(fontsize=8)
    seen: set[str] = set()
    for trial in result.trials:
        if not trial.intermediate_values:
            continue
        steps = sorted(trial.intermediate_values)
        color = _COLORS.get(trial.state, "tab:gray")
        label = trial.state if trial.state not in seen else None
        seen.add(trial.state)
        curves.plot(
            steps,
            [trial.intermediate_values[s] for s in steps],
            color=color,
            alpha=0.6,
            linewidth=1,
            label=label,
        )
    curves.set_xlabel("step")
    curves.set_ylabel(result.metric)
    curves.set_title("learning curves")
    if seen:
        curves.legend(fontsize=8)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


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
