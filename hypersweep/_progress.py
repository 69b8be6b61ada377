"""The live trial table of the CLI: state, config, latest metrics and the best so far."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hypersweep.orchestrator._orchestrator import Orchestrator
    from hypersweep.orchestrator._result import SweepResult

_STYLES = {
    "running": "cyan",
    "completed": "green",
    "pruned": "yellow",
    "failed": "red",
    "interrupted": "magenta",
    "paused": "magenta",
    "waiting": "magenta",
}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_config(config: dict[str, Any], prefix: str = "") -> str:
    """``a=1 b.c=0.5`` for a nested config."""
    parts = []
    for key, value in config.items():
        if isinstance(value, dict):
            parts.append(format_config(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={_short(value)}")
    return " ".join(parts)


class LiveTable:
    """Draws the orchestrator's trials as a table that updates in place."""

    def __init__(self, console: Console | None = None, rows: int = 15) -> None:
        self.console = console or Console(stderr=True)
        self.rows = rows
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._last = 0.0

    def __enter__(self) -> LiveTable:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def update(self, orchestrator: Orchestrator) -> None:
        """Listener for the orchestrator; redraws at most four times a second."""
        now = time.monotonic()
        if now - self._last < 0.25 and orchestrator.running:
            return
        self._last = now
        self._live.update(self.render(orchestrator), refresh=True)

    def render(self, orchestrator: Orchestrator) -> Group:
        views = sorted(orchestrator.views.values(), key=lambda v: (v.state != "running", -v.number))
        settings = orchestrator.settings
        table = Table(expand=False)
        table.add_column("trial", justify="right")
        table.add_column("state")
        table.add_column("config", overflow="fold", max_width=60)
        table.add_column("latest", overflow="fold", max_width=40)
        table.add_column(" / ".join(settings.metrics), justify="right")
        for view in views[: self.rows]:
            latest = " ".join(f"{k}={_short(v)}" for k, v in view.latest.items())
            table.add_row(
                str(view.number),
                Text(view.state, style=_STYLES.get(view.state, "")),
                format_config(view.config),
                latest,
                _short(view.value) if view.value is not None else "",
            )
        counts: dict[str, int] = {}
        for view in orchestrator.views.values():
            counts[view.state] = counts.get(view.state, 0) + 1
        summary = " · ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        best = orchestrator.best
        best_text = (
            f"best {settings.metric}={best[1]:.6g} (trial {best[0]})" if best else "no best yet"
        )
        total = f"/{settings.n_trials}" if settings.n_trials else ""
        done = sum(n for s, n in counts.items() if s in ("completed", "pruned", "failed"))
        header = Text.assemble(
            (f"sweep {orchestrator.name}", "bold"),
            f"  {done}{total} done · {summary} · {best_text}",
        )
        return Group(header, table)


def print_summary(result: SweepResult, console: Console | None = None) -> None:
    """The final lines after a sweep: counts, the best trial and where things are stored."""
    console = console or Console()
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts().items()))
    console.print(f"[bold]sweep {result.name}[/bold]: {counts or 'no trials'}")
    if result.constraints:
        infeasible = sum(1 for t in result.trials if t.feasible is False)
        console.print(f"{infeasible} infeasible (constraints: {format_constraints(result)})")
    best = None if result.multi_objective else result.best_trial
    if result.multi_objective:
        print_front(result, console)
    elif best is None:
        console.print("no trial completed")
    else:
        console.print(
            f"best trial {best.number}: {result.metric}={best.value:.6g}  "
            f"config: {format_config(best.config)}"
        )
    if result.stopped_reason:
        console.print(f"stopped: {result.stopped_reason}")
    console.print(f"storage: {result.storage}")


def format_constraints(result: SweepResult) -> str:
    """``memory_gb <= 16, accuracy >= 0.9``."""
    parts = []
    for name, bounds in (result.constraints or {}).items():
        if "min" in bounds:
            parts.append(f"{name} >= {bounds['min']:g}")
        if "max" in bounds:
            parts.append(f"{name} <= {bounds['max']:g}")
    return ", ".join(parts)


def format_values(result: SweepResult, values: list[float] | None) -> str:
    """``accuracy=0.95 size=1200``: a trial's value per objective."""
    if values is None:
        return ""
    return " ".join(f"{m}={v:.6g}" for m, v in zip(result.metrics, values, strict=False))


def print_front(result: SweepResult, console: Console, limit: int = 20) -> None:
    """The Pareto front of a sweep with several objectives, one line per trial."""
    front = result.best_trials
    goals = ", ".join(f"{mode} {m}" for m, mode in zip(result.metrics, result.modes, strict=True))
    if not front:
        console.print(f"Pareto front ({goals}): no feasible trial completed")
        return
    console.print(f"Pareto front ({goals}): {len(front)} trials")
    for trial in front[:limit]:
        console.print(
            f"  trial {trial.number}: {format_values(result, trial.values)}  "
            f"config: {format_config(trial.config)}"
        )
    if len(front) > limit:
        console.print(f"  ... and {len(front) - limit} more ('hypersweep best NAME --json')")


def trials_table(result: SweepResult) -> Table:
    """Every trial of a stored sweep, for ``hypersweep status``."""
    table = Table(title=f"sweep {result.name}")
    extra = (["front"] if result.multi_objective else []) + (
        ["feasible"] if result.constraints else []
    )
    for column in ("trial", "state", "config", *result.metrics, *extra, "attempts", "error"):
        table.add_column(column)
    front = {t.number for t in result.best_trials} if result.multi_objective else set()
    for trial in result.trials:
        error = (trial.error or "").strip().splitlines()
        values = trial.values or []
        cells = [_short(values[i]) if i < len(values) else "" for i in range(len(result.metrics))]
        if result.multi_objective:
            cells.append("*" if trial.number in front else "")
        if result.constraints:
            cells.append({True: "yes", False: "no", None: ""}[trial.feasible])
        table.add_row(
            str(trial.number),
            Text(trial.state, style=_STYLES.get(trial.state, "")),
            format_config(trial.config),
            *cells,
            str(trial.attempts),
            error[-1] if error else "",
        )
    return table
