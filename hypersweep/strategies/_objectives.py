"""Several objectives and constraints: what is checked up front, and the Pareto front.

A sweep optimizes one metric or several (``metric=["accuracy", "size"], mode=["max", "min"]``).
With several, there is no single best trial but a front of trials that no other trial beats on
every objective. Constraints bound reported metrics (``{"memory_gb": {"max": 16}}``): a trial
that breaks one is infeasible, recorded as such, never a best trial, and the samplers that can
use it (TPE, NSGA-II/III, GP) get it through Optuna's ``constraints_func``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._space import Branches, flatten_space, is_conditional

__all__ = [
    "CONSTRAINT_STRATEGIES",
    "MULTI_OBJECTIVE_STRATEGIES",
    "check_objectives",
    "check_strategy_fits",
    "constraint_violations",
    "pareto_front",
    "parse_constraints",
]

# Samplers that do not depend on a single objective, or that rank several (NSGA, MOTPE, GP).
MULTI_OBJECTIVE_STRATEGIES = ("nsga2", "nsga3", "tpe", "gp", "random", "grid", "qmc")
# Samplers that take Optuna's constraints_func; the others still never pick an infeasible best.
CONSTRAINT_STRATEGIES = ("tpe", "nsga2", "nsga3", "gp")
# Samplers that need every parameter in every trial.
_FIXED_SPACE_STRATEGIES = ("cmaes", "qmc")


def check_objectives(metric: Any, mode: Any) -> tuple[str | list[str], str | list[str]]:
    """Check ``metric``/``mode`` and return them normalized.

    One metric stays a string (``mode`` a string). Several give two lists of equal length; a
    single ``mode`` string applies to every metric.
    """
    if isinstance(metric, str):
        if not metric:
            raise ConfigError("metric: give the name of the metric to optimize, e.g. 'loss'")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode: expected 'min' or 'max', got {mode!r}")
        return metric, mode
    if not isinstance(metric, Sequence) or not metric:
        raise ConfigError(
            "metric: give the name of the metric to optimize (e.g. 'loss'), or a list of names "
            f"for several objectives, got {metric!r}"
        )
    for i, name in enumerate(metric):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"metric[{i}]: expected a metric name, got {name!r}")
    if len(set(metric)) != len(metric):
        raise ConfigError(f"metric: each objective must be named once, got {list(metric)}")
    modes = [mode] * len(metric) if isinstance(mode, str) else mode
    if not isinstance(modes, Sequence) or len(modes) != len(metric):
        raise ConfigError(
            f"mode: give one mode per metric ({len(metric)}: {', '.join(metric)}), got {mode!r}"
        )
    for i, one in enumerate(modes):
        if one not in ("min", "max"):
            raise ConfigError(f"mode[{i}]: expected 'min' or 'max', got {one!r}")
    if len(metric) == 1:
        return metric[0], modes[0]
    return list(metric), list(modes)


def parse_constraints(data: Any, field: str = "constraints") -> dict[str, dict[str, float]] | None:
    """Check ``{"metric": {"max": 16, "min": 0}}`` and return it as plain data (or None)."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"{field}: expected a mapping of metric name to bounds, e.g. "
            f"{{'memory_gb': {{'max': 16}}}}, got {data!r}"
        )
    parsed: dict[str, dict[str, float]] = {}
    for name, bounds in data.items():
        where = f"{field}.{name}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{field}: metric names must be non-empty strings, got {name!r}")
        if not isinstance(bounds, Mapping) or not bounds:
            raise ConfigError(
                f"{where}: expected bounds like {{max: 16}} or {{min: 0.9}}, got {bounds!r}"
            )
        unknown = set(bounds) - {"min", "max"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown bound(s) {', '.join(map(str, sorted(unknown)))}; "
                "allowed: min, max"
            )
        checked: dict[str, float] = {}
        for key in ("min", "max"):
            if key not in bounds:
                continue
            value = bounds[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
            checked[key] = float(value)
        if "min" in checked and "max" in checked and checked["min"] > checked["max"]:
            raise ConfigError(
                f"{where}: min ({checked['min']}) must not exceed max ({checked['max']})"
            )
        parsed[name] = checked
    return parsed


def constraint_violations(
    constraints: Mapping[str, Mapping[str, float]], metrics: Mapping[str, float]
) -> dict[str, float]:
    """One number per bound (``memory_gb.max``), as Optuna wants them: <= 0 where it holds.

    Raises KeyError naming a constrained metric that ``metrics`` lacks.
    """
    violations = {}
    for name, bounds in constraints.items():
        value = metrics[name]
        if "min" in bounds:
            violations[f"{name}.min"] = bounds["min"] - value
        if "max" in bounds:
            violations[f"{name}.max"] = value - bounds["max"]
    return violations


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for x, y, sign in zip(a, b, signs, strict=True):
        if sign * x > sign * y:
            return False
        if sign * x < sign * y:
            better = True
    return better


def pareto_front(values: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points that no other point dominates (duplicates all kept)."""
    signs = [1.0 if mode == "min" else -1.0 for mode in modes]
    return [
        i
        for i, point in enumerate(values)
        if not any(_dominates(other, point, signs) for j, other in enumerate(values) if j != i)
    ]


def _first_branch(space: Mapping[str, Any]) -> str:
    for name, domain in flatten_space(space).items():
        if isinstance(domain, Branches):
            return name
    return ""


def check_strategy_fits(
    strategy: Any, space: Any, n_objectives: int, field: str = "strategy"
) -> None:
    """Refuse a strategy that cannot serve this space or this number of objectives."""
    from hypersweep.strategies._ray_searcher import is_ray_search_algorithm

    define_by_run = not isinstance(space, Mapping)
    if isinstance(strategy, str):
        if define_by_run and strategy == "grid":
            raise ConfigError(
                f"{field}: grid needs the values of every parameter up front, but the space is "
                "a function; write the space as a dict of grid([...]) values, or use tpe/random"
            )
        if not define_by_run and strategy in _FIXED_SPACE_STRATEGIES and is_conditional(space):
            raise ConfigError(
                f"{field}: {strategy} needs the same parameters in every trial, but "
                f"space.{_first_branch(space)} chooses among sub-spaces; use tpe, gp, random "
                "or grid"
            )
        if n_objectives > 1 and strategy not in MULTI_OBJECTIVE_STRATEGIES:
            raise ConfigError(
                f"{field}: {strategy} optimizes a single objective; with several metrics use "
                f"one of {', '.join(MULTI_OBJECTIVE_STRATEGIES)}"
            )
        return
    if is_ray_search_algorithm(strategy):
        if is_conditional(space):
            raise ConfigError(
                f"{field}: a Ray Tune searcher gets a fixed space from hypersweep, but this "
                "space is conditional (sub-space choices or a function); use tpe, gp or random"
            )
        if n_objectives > 1:
            raise ConfigError(
                f"{field}: a Ray Tune searcher optimizes a single metric; with several metrics "
                f"use one of {', '.join(MULTI_OBJECTIVE_STRATEGIES)}"
            )
