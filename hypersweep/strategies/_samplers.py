"""Search strategies by name: thin factories over Optuna's samplers.

A strategy proposes each trial's config. Names map to Optuna samplers so that users get the
same algorithms, with the same seeds, as in Optuna; any ``optuna.samplers.BaseSampler``
instance is accepted as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._space import grid_search_space

if TYPE_CHECKING:
    import optuna

STRATEGY_NAMES = ("tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2")


def check_strategy(strategy: Any, field: str = "strategy") -> None:
    """Refuse an unknown strategy before anything starts."""
    if isinstance(strategy, str):
        if strategy not in STRATEGY_NAMES:
            raise ConfigError(
                f"{field}: unknown strategy {strategy!r}; expected one of "
                f"{', '.join(STRATEGY_NAMES)} or an optuna.samplers.BaseSampler instance"
            )
        return
    import optuna

    if not isinstance(strategy, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"{field}: expected a strategy name or an optuna.samplers.BaseSampler, "
            f"got {type(strategy).__name__}"
        )


def make_sampler(
    strategy: str | optuna.samplers.BaseSampler,
    space: Mapping[str, Any],
    seed: int | None = None,
    *,
    parallel: bool = True,
) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler for ``strategy``.

    ``parallel`` turns on TPE's constant liar, so that trials running at the same time are not
    proposed the same point (Optuna's recommendation for parallel workers).
    """
    import optuna

    check_strategy(strategy)
    if not isinstance(strategy, str):
        return strategy
    samplers = optuna.samplers
    if strategy == "tpe":
        return samplers.TPESampler(seed=seed, constant_liar=parallel)
    if strategy == "random":
        return samplers.RandomSampler(seed=seed)
    if strategy == "grid":
        return samplers.GridSampler(grid_search_space(space), seed=seed)
    if strategy == "cmaes":
        return samplers.CmaEsSampler(seed=seed)
    if strategy == "gp":
        return samplers.GPSampler(seed=seed)
    if strategy == "qmc":
        return samplers.QMCSampler(seed=seed)
    return samplers.NSGAIISampler(seed=seed)


def grid_size(space: Mapping[str, Any]) -> int:
    """How many configs the grid strategy enumerates."""
    size = 1
    for values in grid_search_space(space).values():
        size *= len(values)
    return size
