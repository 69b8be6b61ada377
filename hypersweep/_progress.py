"""What a sweep shows while it runs and after: the live table, progress lines and the summary.

They all tell the same story in the same words: how many trials completed (trained to the
end), how many were stopped early and at which step, which are paused at a rung waiting for a
promotion, how often trials were promoted, and how much of the budget (in reported steps) is
spent, with the elapsed time and an estimate of what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hypersweep.orchestrator._orchestrator import Orchestrator
    from hypersweep.orchestrator._result import SweepResult, TrialRecord

_STYLES = {
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "pruned": "yellow",
    "failed": "red",
    "interrupted": "magenta",
    "paused": "magenta",
    "waiting": "magenta",
}

# The order states are listed in, and the words used for them (storage says "pruned").
_STATE_WORDS = {
    "running": "running",
    "completed": "completed",
    "pruned": "stopped early",
    "paused": "paused",
    "failed": "failed",
    "interrupted": "interrupted",
    "waiting": "waiting",
    "queued": "queued",
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


def format_seconds(seconds: float) -> str:
    """``0:07``, ``12:03`` or ``1:02:03``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe_space(space: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One line per parameter with its effective range, e.g. ``layers: int 1..3 (both ends)``.

    ``randint(1, 4)`` in Python and ``{type: int, low: 1, high: 3}`` in a file are the same
    domain; showing the effective range makes the two conventions visible.
    """
    from hypersweep.strategies import Categorical, Float, Grid, Int

    lines = []
    for key, value in space.items():
        name = f"{prefix}{key}"
        if isinstance(value, Float):
            extra = " log" if value.log else (f" step {_short(value.step)}" if value.step else "")
            lines.append(f"{name}: float {_short(value.low)}..{_short(value.high)}{extra}")
        elif isinstance(value, Int):
            extra = " log" if value.log else (f" step {value.step}" if value.step != 1 else "")
            lines.append(f"{name}: int {value.low}..{value.high}{extra} (both ends included)")
        elif isinstance(value, Grid):
            lines.append(f"{name}: grid {list(value.values)}")
        elif isinstance(value, Categorical):
            lines.append(f"{name}: one of {list(value.values)}")
        elif isinstance(value, Mapping):
            lines.extend(describe_space(value, f"{name}."))
        else:
            lines.append(f"{name}: {value!r} (constant)")
    return lines


def _stopped_at(steps: Iterable[int | None]) -> str:
    """``27 at step 2, 9 at step 6``."""
    by_step: dict[int, int] = {}
    for step in steps:
        if step is not None:
            by_step[step] = by_step.get(step, 0) + 1
    return ", ".join(f"{n} at step {step}" for step, n in sorted(by_step.items()))


def counts_text(states: Mapping[str, int], stopped_steps: list[int | None]) -> str:
    """``1 completed, 39 stopped early (27 at step 2, ...)``, states in a fixed order."""
    parts = []
    for state, word in _STATE_WORDS.items():
        n = states.get(state, 0)
        if not n:
            continue
        text = f"{n} {word}"
        if state == "pruned" and any(s is not None for s in stopped_steps):
            text += f" ({_stopped_at(stopped_steps)})"
        parts.append(text)
    parts.extend(f"{n} {s}" for s, n in sorted(states.items()) if s not in _STATE_WORDS)
    return ", ".join(parts)


def _state_label(state: str, step: int | None) -> str:
    if state == "pruned":
        return "stopped" + (f" at {step}" if step is not None else "")
    if state == "paused" and step is not None:
        return f"paused at {step}"
    return state


@dataclass(frozen=True)
class Progress:
    """Where a running sweep stands, from its orchestrator's view of the trials."""

    name: str
    metric: str
    n_trials: int | None
    states: dict[str, int]
    stopped_steps: list[int | None]
    promotions: int
    steps: int
    steps_estimate: float | None
    elapsed: float
    best: tuple[int, float] | None

    @classmethod
    def of(cls, orchestrator: Orchestrator, now: float | None = None) -> Progress:
        """Read the progress of ``orchestrator`` now."""
        views = list(orchestrator.views.values())
        states: dict[str, int] = {}
        for view in views:
            states[view.state] = states.get(view.state, 0) + 1
        steps = sum(view.steps for view in views)
        # The budget in steps: spent so far, plus what trials not started yet and running ones
        # will likely use, judged by the trials that already stopped, paused or completed.
        settled = [v for v in views if v.state not in ("running", "interrupted")]
        estimate = None
        n_trials = orchestrator.settings.n_trials
        if settled and n_trials is not None:
            per_trial = sum(v.steps for v in settled) / len(settled)
            unstarted = max(0, n_trials - len(views))
            running_left = sum(max(0.0, per_trial - v.steps) for v in views if v.state == "running")
            estimate = steps + unstarted * per_trial + running_left
        started = getattr(orchestrator, "_started", 0.0) or time.monotonic()
        return cls(
            name=orchestrator.name,
            metric=" / ".join(orchestrator.settings.metrics),
            n_trials=n_trials,
            states=states,
            stopped_steps=[v.step for v in views if v.state == "pruned"],
            promotions=sum(v.promotions for v in views),
            steps=steps,
            steps_estimate=estimate,
            elapsed=(now or time.monotonic()) - started,
            best=orchestrator.best,
        )

    @property
    def eta(self) -> float | None:
        """Seconds left, assuming steps keep their pace so far."""
        if self.steps_estimate is None or self.steps <= 0 or self.elapsed <= 0:
            return None
        return self.elapsed * max(0.0, self.steps_estimate - self.steps) / self.steps

    def budget_text(self) -> str:
        """``214/~560 steps (38%) · 0:05 elapsed · ~0:08 left``."""
        if self.steps_estimate:
            share = min(100, round(100 * self.steps / self.steps_estimate))
            spent = f"{self.steps}/~{round(self.steps_estimate)} steps ({share}%)"
        else:
            spent = f"{self.steps} steps"
        text = f"{spent} · {format_seconds(self.elapsed)} elapsed"
        eta = self.eta
        if eta is not None:
            text += f" · ~{format_seconds(eta)} left"
        return text

    def trials_text(self) -> str:
        """``12/40 trials started: 2 running, 1 completed, 9 stopped early (...); 3 promotions``."""
        started = sum(self.states.values())
        total = f"/{self.n_trials}" if self.n_trials else ""
        text = f"{started}{total} trials started"
        counts = counts_text(self.states, self.stopped_steps)
        if counts:
            text += f": {counts}"
        if self.promotions:
            text += f"; {self.promotions} promotion{'s' if self.promotions != 1 else ''}"
        return text

    def best_text(self) -> str:
        if self.best is None:
            return "no trial completed yet"
        return f"best {self.metric}={self.best[1]:.6g} (trial {self.best[0]})"

    def line(self) -> str:
        """The whole progress on one line, for logs and non-terminal output."""
        return (
            f"sweep {self.name} · {self.budget_text()} · {self.trials_text()} · {self.best_text()}"
        )


class LiveTable:
    """Draws the orchestrator's trials as a table that updates in place (on a terminal)."""

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
        table.add_column("step", justify="right")
        table.add_column("promoted", justify="right")
        table.add_column("config", overflow="fold", max_width=60)
        table.add_column("latest", overflow="fold", max_width=40)
        table.add_column(" / ".join(settings.metrics), justify="right")
        for view in views[: self.rows]:
            latest = " ".join(f"{k}={_short(v)}" for k, v in view.latest.items())
            table.add_row(
                str(view.number),
                Text(_state_label(view.state, view.step), style=_STYLES.get(view.state, "")),
                "" if view.step is None else str(view.step),
                f"{view.promotions}x" if view.promotions else "",
                format_config(view.config),
                latest,
                _short(view.value) if view.value is not None else "",
            )
        progress = Progress.of(orchestrator)
        header = Text.assemble(
            (f"sweep {progress.name}", "bold"),
            f"  {progress.budget_text()}\n{progress.trials_text()} · {progress.best_text()}",
        )
        return Group(header, table)


class ProgressLines:
    """A progress line every ``interval`` seconds, for output that is not a terminal.

    ``write`` receives each line (a log call, or a print to stderr).
    """

    def __init__(self, write: Callable[[str], None], interval: float = 5.0) -> None:
        self.write = write
        self.interval = interval
        self._next = time.monotonic() + interval

    def update(self, orchestrator: Orchestrator) -> None:
        """Listener for the orchestrator."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        self.write(Progress.of(orchestrator, now).line())


def summary_lines(result: SweepResult, elapsed: float | None = None) -> list[str]:
    """The final lines after a sweep: counts, the best trial and where things are stored."""
    states = result.counts()
    stopped = [t.step for t in result.trials if t.state == "pruned"]
    counts = counts_text(states, stopped) or "no trials"
    promotions = sum(len(t.promoted_at) for t in result.trials)
    head = f"sweep {result.name}: {counts}"
    if promotions:
        trained = sum(1 for t in result.trials if t.promoted_at)
        head += f"; {promotions} promotions of {trained} paused trials"
    if elapsed is not None:
        head += f" in {format_seconds(elapsed)}"
    lines = [head]
    if result.constraints:
        infeasible = sum(1 for t in result.trials if t.feasible is False)
        lines.append(f"{infeasible} infeasible (constraints: {format_constraints(result)})")
    best = None if result.multi_objective else result.best_trial
    if result.multi_objective:
        lines.extend(front_lines(result))
    elif best is None:
        lines.append("no trial completed")
    else:
        lines.append(
            f"best trial {best.number}: {result.metric}={best.value:.6g}  "
            f"config: {format_config(best.config)}"
        )
    if result.stopped_reason:
        lines.append(f"stopped: {result.stopped_reason}")
    lines.append(f"storage: {result.storage}")
    return lines


def print_summary(
    result: SweepResult, console: Console | None = None, elapsed: float | None = None
) -> None:
    """Print :func:`summary_lines`, the sweep's name in bold."""
    console = console or Console()
    lines = summary_lines(result, elapsed)
    name = f"sweep {result.name}"
    console.print(Text.assemble((name, "bold"), lines[0][len(name) :]), soft_wrap=True)
    for line in lines[1:]:
        console.print(Text(line), soft_wrap=True)


def log_summary(result: SweepResult, logger: logging.Logger, elapsed: float | None) -> None:
    """Log :func:`summary_lines` (``tune()`` with ``verbose=True``)."""
    for line in summary_lines(result, elapsed):
        logger.info("%s", line)


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


def front_lines(result: SweepResult, limit: int = 20) -> list[str]:
    """The Pareto front of a sweep with several objectives, one line per trial."""
    front = result.best_trials
    goals = ", ".join(f"{mode} {m}" for m, mode in zip(result.metrics, result.modes, strict=True))
    if not front:
        return [f"Pareto front ({goals}): no feasible trial completed"]
    lines = [f"Pareto front ({goals}): {len(front)} trials"]
    for trial in front[:limit]:
        lines.append(
            f"  trial {trial.number}: {format_values(result, trial.values)}  "
            f"config: {format_config(trial.config)}"
        )
    if len(front) > limit:
        lines.append(f"  ... and {len(front) - limit} more ('hypersweep best NAME --json')")
    return lines


def print_front(result: SweepResult, console: Console, limit: int = 20) -> None:
    """Print :func:`front_lines`."""
    for line in front_lines(result, limit):
        console.print(Text(line), soft_wrap=True)


def _objective_cell(index: int) -> Callable[[TrialRecord], str]:
    def cell(trial: TrialRecord) -> str:
        values = trial.values or []
        return _short(values[index]) if index < len(values) else ""

    return cell


def _front_and_feasibility(result: SweepResult) -> dict[str, Callable[[TrialRecord], str]]:
    """The ``front`` (several objectives) and ``feasible`` (constraints) columns, if any."""
    columns: dict[str, Callable[[TrialRecord], str]] = {}
    if result.multi_objective:
        front = {t.number for t in result.best_trials}
        columns["front"] = lambda t: "*" if t.number in front else ""
    if result.constraints:
        columns["feasible"] = lambda t: {True: "yes", False: "no", None: ""}[t.feasible]
    return columns


def trials_table(result: SweepResult, limit: int | None = None) -> Table:
    """Every trial of a stored sweep, for ``hypersweep status``; with ``limit``, at most that
    many rows of a large sweep (see ``_rows_shown``).

    Columns that would be empty for every trial (promotions, retries, errors) are left out,
    so that the table fits a narrow terminal.
    """
    trials = _rows_shown(result, limit)
    columns: dict[str, Callable[[TrialRecord], str]] = {
        "trial": lambda t: str(t.number),
        "state": lambda t: _state_label(t.state, t.step),
        "promoted": lambda t: ", ".join(map(str, t.promoted_at)),
        "config": lambda t: format_config(t.config),
        **{metric: _objective_cell(i) for i, metric in enumerate(result.metrics)},
        **_front_and_feasibility(result),
        "duration": lambda t: f"{t.duration:.2f}s" if t.duration is not None else "",
        "attempts": lambda t: str(t.attempts),
        "error": lambda t: ((t.error or "").strip().splitlines() or [""])[-1],
    }
    optional = {
        "promoted": lambda t: t.promoted_at,
        "attempts": lambda t: t.attempts > 1,
        "error": lambda t: t.error,
    }
    shown = [c for c in columns if c not in optional or any(optional[c](t) for t in trials)]
    table = Table(title=f"sweep {result.name}")
    if len(trials) < len(result.trials):
        table.caption = (
            f"{len(trials)} of {len(result.trials)} trials: the running ones, the best and the "
            "latest (--all lists every trial; hypersweep export writes them all)"
        )
    for column in shown:
        wide = column in ("config", "error", "promoted")
        table.add_column(
            column,
            no_wrap=not wide,
            min_width=12 if column == "config" else None,
            overflow="fold" if wide else "ellipsis",
            justify="right" if column in ("trial", *result.metrics, "duration") else "left",
        )
    for trial in trials:
        cells = [columns[c](trial) for c in shown]
        cells[1] = Text(cells[1], style=_STYLES.get(trial.state, ""))  # type: ignore[call-overload]
        table.add_row(*cells)
    return table


def _rows_shown(result: SweepResult, limit: int | None) -> list[TrialRecord]:
    """All trials up to ``limit``; past it the running ones, then the best and the latest
    finished ones, half of the rest each, in trial order."""
    trials = result.trials
    if limit is None or len(trials) <= limit:
        return list(trials)
    keep = {t.number for t in trials if t.state == "running"}
    room = max(0, limit - len(keep))
    best = result.best_trials if result.multi_objective else []
    if not result.multi_objective:
        sign = 1.0 if result.mode == "min" else -1.0
        scored = [t for t in trials if t.state == "completed" and t.value is not None]
        best = sorted(scored, key=lambda t: sign * float(t.value or 0.0))
    keep.update(t.number for t in best[: room // 2])
    for trial in reversed(trials):
        if len(keep) >= limit:
            break
        keep.add(trial.number)
    return [t for t in trials if t.number in keep]
