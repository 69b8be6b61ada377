"""Early stopping by name: the scheduler for a name, a mapping of settings, an Optuna pruner
or a Ray Tune scheduler.

Its own module, above both the schedulers and the Ray Tune scheduler adapter (which builds
those schedulers), so that neither of the two imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._schedulers import (
    ASHA,
    EARLY_STOPPING_NAMES,
    PBT,
    Hyperband,
    OptunaPrunerScheduler,
    Scheduler,
)


def _split_settings(early_stopping: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(early_stopping, Mapping):
        settings = dict(early_stopping)
        name = settings.pop("name", None)
        if name is None:
            raise ConfigError("early_stopping: a mapping needs a 'name', e.g. {name: asha}")
        return name, settings
    return early_stopping, {}


def _settings_of(factory: Callable[..., Any]) -> set[str]:
    """The keyword arguments a scheduler or pruner class takes."""
    import inspect

    parameters = inspect.signature(factory).parameters.values()
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in parameters if p.name != "self" and p.kind in keyword}


def make_scheduler(early_stopping: Any, field: str = "early_stopping") -> Scheduler:
    """The scheduler for a name, a ``{name: ..., **settings}`` mapping, a pruner or scheduler.

    ``asha``, ``hyperband`` and ``pbt`` pause, promote and clone trials on checkpoints;
    ``median`` is Optuna's median pruner; any Optuna pruner is used as it is.
    """
    import optuna

    if isinstance(early_stopping, Scheduler):
        return early_stopping
    if early_stopping is None:
        return OptunaPrunerScheduler(optuna.pruners.NopPruner())
    if isinstance(early_stopping, optuna.pruners.BasePruner):
        return OptunaPrunerScheduler(early_stopping)
    if type(early_stopping).__module__.startswith("ray.tune.schedulers"):  # ASHAScheduler()...
        from hypersweep.strategies._ray_schedulers import from_ray_scheduler

        converted = from_ray_scheduler(early_stopping, field)
        return converted or OptunaPrunerScheduler(optuna.pruners.NopPruner())
    name, settings = _split_settings(early_stopping)
    factories: dict[str, Callable[..., Scheduler]] = {
        "median": lambda **kw: OptunaPrunerScheduler(optuna.pruners.MedianPruner(**kw)),
        "asha": ASHA,
        "hyperband": Hyperband,
        "pbt": PBT,
    }
    if name not in factories:
        raise ConfigError(
            f"{field}: unknown early stopping {name!r}; expected one of "
            f"{', '.join(EARLY_STOPPING_NAMES)}, null, or an optuna.pruners.BasePruner instance"
        )
    allowed = _settings_of(optuna.pruners.MedianPruner if name == "median" else factories[name])
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(
            f"{field}: unknown setting(s) {', '.join(map(str, unknown))} for {name}; allowed: "
            f"name, {', '.join(sorted(allowed))}"
        )
    try:
        return factories[name](**settings)
    except ConfigError as error:
        raise ConfigError(f"{field}: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{field}: invalid settings for {name}: {error}") from None
