"""Search strategies by name: thin factories over Optuna's samplers.

A strategy proposes each trial's config. Names map to Optuna samplers so that users get the
same algorithms as in Optuna; any ``optuna.samplers.BaseSampler`` instance is accepted as it is.

A seeded strategy given by name draws trial ``n``'s randomness from ``(seed, n)``, not from one
random stream that starts afresh in every driver: Optuna's samplers replay their stream from the
seed when a driver is restarted (or a second one joins), which re-proposes the configs of the
first trials (optuna#1547, optuna#3055). Seeded or not, a proposal that another trial of the
sweep already has is replaced by an unused config. See ``_trial_seeded``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._not_ready import StrategyNotReady
from hypersweep.strategies._space import (
    flatten_space,
    grid_configs,
    grid_search_space,
    is_conditional,
)

if TYPE_CHECKING:
    import optuna

STRATEGY_NAMES = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2", "nsga3")
#: The strategies a Sweep's ``spec.strategy.name`` takes: hyperband too, whose settings (its
#: budget parameter and largest budget) have no default, so it has no name-only form.
SWEEP_STRATEGY_NAMES = (*STRATEGY_NAMES, "hyperband")

__all__ = [
    "STRATEGY_NAMES",
    "SWEEP_STRATEGY_NAMES",
    "StrategyNotReady",
    "check_strategy",
    "grid_size",
    "make_sampler",
]


def check_strategy(strategy: Any, field: str = "strategy") -> None:
    """Refuse an unknown strategy before anything starts."""
    if isinstance(strategy, str):
        if strategy == "hyperband":
            raise ConfigError(
                f"{field}: hyperband needs its settings: pass "
                "hypersweep.strategies.HyperbandSampler(resource=..., max_resource=...), or in a "
                "Sweep give strategy.settings.resource and strategy.settings.max_resource"
            )
        if strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"{field}: unknown strategy {strategy!r}; expected one of "
                f"{', '.join(STRATEGY_NAMES)}, an optuna.samplers.BaseSampler or a Ray Tune "
                "Searcher instance"
            )
        return
    from hypersweep.strategies._ray_searcher import is_ray_search_algorithm

    if is_ray_search_algorithm(strategy):
        return
    import optuna

    if not isinstance(strategy, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"{field}: expected a strategy name, an optuna.samplers.BaseSampler or a Ray Tune "
            f"Searcher, got {type(strategy).__name__}"
        )


def make_sampler(
    strategy: str | optuna.samplers.BaseSampler,
    space: Mapping[str, Any],
    seed: int | None = None,
    *,
    parallel: bool = True,
    metric: str | None = None,
    mode: str | None = None,
    constraints_func: Callable[[Any], Sequence[float]] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler for ``strategy``.

    ``parallel`` turns on TPE's constant liar, so that trials running at the same time are not
    proposed the same point (Optuna's recommendation for parallel workers). A Ray Tune search
    algorithm is wrapped in a sampler that asks it for configs; it is told the sweep's
    ``metric`` and ``mode``. ``constraints_func`` goes to the samplers that take it (TPE,
    NSGA-II/III, GP). ``state_dir`` is where a Ray Tune searcher's state is kept for resume.
    """
    import optuna

    check_strategy(strategy)
    if not isinstance(strategy, str):
        from hypersweep.strategies._ray_searcher import RaySearcherSampler, is_ray_search_algorithm

        if is_ray_search_algorithm(strategy):
            return RaySearcherSampler(
                strategy, space, metric=metric, mode=mode, seed=seed, state_dir=state_dir
            )
        return strategy
    from hypersweep.strategies._trial_seeded import (
        TrialNumberQMCSampler,
        TrialSeededSampler,
        space_distributions,
    )

    samplers = optuna.samplers
    sampler: optuna.samplers.BaseSampler
    if strategy == "tpe":
        sampler = samplers.TPESampler(
            seed=seed, constant_liar=parallel, constraints_func=constraints_func
        )
    elif strategy == "random":
        sampler = samplers.RandomSampler(seed=seed)
    elif strategy == "grid" and is_conditional(space):
        from hypersweep.strategies._branch_grid import BranchGridSampler

        return BranchGridSampler(grid_configs(space), seed=seed)
    elif strategy == "grid":
        # Optuna gives trial n the n-th cell of a grid shuffled by the seed: already a pure
        # function of (seed, n), and without repeats.
        return samplers.GridSampler(grid_search_space(space), seed=seed)
    elif strategy == "cmaes":
        sampler = samplers.CmaEsSampler(seed=seed)
    elif strategy == "gp":
        sampler = samplers.GPSampler(seed=seed, constraints_func=constraints_func)
    elif strategy == "qmc":
        sampler = TrialNumberQMCSampler(seed=seed)
    elif strategy == "nsga3":
        sampler = samplers.NSGAIIISampler(seed=seed, constraints_func=constraints_func)
    else:
        sampler = samplers.NSGAIISampler(seed=seed, constraints_func=constraints_func)
    # Unseeded, each driver draws its own base seed: trials stay independent across drivers,
    # and repeated configs are refused all the same. A conditional space (branches, or a
    # define-by-run function) has no fixed distributions: it is sampled one parameter at a time.
    base = seed if seed is not None else secrets.randbits(32)
    distributions = None if is_conditional(space) else space_distributions(flatten_space(space))
    return TrialSeededSampler(sampler, base, distributions=distributions)


def grid_size(space: Mapping[str, Any]) -> int:
    """How many configs the grid strategy enumerates."""
    if is_conditional(space):
        return len(grid_configs(space))
    size = 1
    for values in grid_search_space(space).values():
        size *= len(values)
    return size
