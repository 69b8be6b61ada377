"""Search strategies by name: thin factories over Optuna's samplers.

A strategy proposes each trial's config. Names map to Optuna samplers so that users get the
same algorithms, with the same seeds, as in Optuna; any ``optuna.samplers.BaseSampler``
instance is accepted as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._space import grid_configs, grid_search_space, is_conditional

if TYPE_CHECKING:
    import optuna

STRATEGY_NAMES = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2", "nsga3")


class StrategyNotReady(Exception):
    """Raised by a sampler that has no config to propose for a fresh trial right now.

    The orchestrator puts the trial back in the queue and claims no other fresh trial until a
    running one ends; with ``exhausted`` the strategy will never propose another config (the
    sweep ends once the trials already proposed are done). Ray Tune's searchers work this way
    (``suggest`` returns None or ``Searcher.FINISHED``).
    """

    def __init__(self, message: str = "", *, exhausted: bool = False) -> None:
        super().__init__(message or ("no more configs" if exhausted else "no config yet"))
        self.exhausted = exhausted


def check_strategy(strategy: Any, field: str = "strategy") -> None:
    """Refuse an unknown strategy before anything starts."""
    if isinstance(strategy, str):
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
) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler for ``strategy``.

    ``parallel`` turns on TPE's constant liar, so that trials running at the same time are not
    proposed the same point (Optuna's recommendation for parallel workers). A Ray Tune search
    algorithm is wrapped in a sampler that asks it for configs; it is told the sweep's
    ``metric`` and ``mode``. ``constraints_func`` goes to the samplers that take it (TPE,
    NSGA-II/III, GP).
    """
    import optuna

    check_strategy(strategy)
    if not isinstance(strategy, str):
        from hypersweep.strategies._ray_searcher import RaySearcherSampler, is_ray_search_algorithm

        if is_ray_search_algorithm(strategy):
            return RaySearcherSampler(strategy, space, metric=metric, mode=mode, seed=seed)
        return strategy
    samplers = optuna.samplers
    if strategy == "tpe":
        return samplers.TPESampler(
            seed=seed, constant_liar=parallel, constraints_func=constraints_func
        )
    if strategy == "random":
        return samplers.RandomSampler(seed=seed)
    if strategy == "grid" and is_conditional(space):
        from hypersweep.strategies._branch_grid import BranchGridSampler

        return BranchGridSampler(grid_configs(space), seed=seed)
    if strategy == "grid":
        return samplers.GridSampler(grid_search_space(space), seed=seed)
    if strategy == "cmaes":
        return samplers.CmaEsSampler(seed=seed)
    if strategy == "gp":
        return samplers.GPSampler(seed=seed, constraints_func=constraints_func)
    if strategy == "qmc":
        return samplers.QMCSampler(seed=seed)
    if strategy == "nsga3":
        return samplers.NSGAIIISampler(seed=seed, constraints_func=constraints_func)
    return samplers.NSGAIISampler(seed=seed, constraints_func=constraints_func)


def grid_size(space: Mapping[str, Any]) -> int:
    """How many configs the grid strategy enumerates."""
    if is_conditional(space):
        return len(grid_configs(space))
    size = 1
    for values in grid_search_space(space).values():
        size *= len(values)
    return size
