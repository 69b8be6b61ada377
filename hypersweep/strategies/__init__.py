"""Search and early stopping: pure decision logic, no I/O."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypersweep.strategies._bounded import BoundedHistorySampler
    from hypersweep.strategies._hyperband import HyperbandSampler

from hypersweep.strategies._early_stopping import make_scheduler
from hypersweep.strategies._objectives import (
    CONSTRAINT_STRATEGIES,
    MULTI_OBJECTIVE_STRATEGIES,
    check_objectives,
    check_strategy_fits,
    constraint_violations,
    pareto_front,
    parse_constraints,
)
from hypersweep.strategies._samplers import (
    STRATEGY_NAMES,
    SWEEP_STRATEGY_NAMES,
    StrategyNotReady,
    check_strategy,
    grid_size,
    make_sampler,
)
from hypersweep.strategies._schedulers import (
    ASHA,
    EARLY_STOPPING_NAMES,
    PBT,
    Clone,
    Decision,
    Hyperband,
    OptunaPrunerScheduler,
    Scheduler,
)
from hypersweep.strategies._space import (
    Branches,
    Categorical,
    Domain,
    Float,
    Grid,
    Int,
    choice,
    flatten_config,
    flatten_space,
    grid,
    grid_configs,
    grid_search_space,
    is_conditional,
    loguniform,
    parse_space,
    quniform,
    randint,
    sample_config,
    space_to_data,
    unflatten_params,
    uniform,
    validate_space,
)

__all__ = [
    "ASHA",
    "CONSTRAINT_STRATEGIES",
    "EARLY_STOPPING_NAMES",
    "MULTI_OBJECTIVE_STRATEGIES",
    "PBT",
    "STRATEGY_NAMES",
    "SWEEP_STRATEGY_NAMES",
    "BoundedHistorySampler",
    "Branches",
    "Categorical",
    "Clone",
    "Decision",
    "Domain",
    "Float",
    "Grid",
    "Hyperband",
    "HyperbandSampler",
    "Int",
    "OptunaPrunerScheduler",
    "Scheduler",
    "StrategyNotReady",
    "check_objectives",
    "check_strategy",
    "check_strategy_fits",
    "choice",
    "constraint_violations",
    "flatten_config",
    "flatten_space",
    "grid",
    "grid_configs",
    "grid_search_space",
    "grid_size",
    "is_conditional",
    "loguniform",
    "make_sampler",
    "make_scheduler",
    "pareto_front",
    "parse_constraints",
    "parse_space",
    "quniform",
    "randint",
    "sample_config",
    "space_to_data",
    "unflatten_params",
    "uniform",
    "validate_space",
]


def __getattr__(name: str) -> Any:
    # BoundedHistorySampler and HyperbandSampler subclass Optuna's BaseSampler: importing them
    # eagerly would load Optuna with every ``import hypersweep``, which stays light.
    if name == "BoundedHistorySampler":
        from hypersweep.strategies._bounded import BoundedHistorySampler

        return BoundedHistorySampler
    if name == "HyperbandSampler":
        from hypersweep.strategies._hyperband import HyperbandSampler

        return HyperbandSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
