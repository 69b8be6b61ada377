"""Checks of a Sweep's spec that speak in the Sweep's own terms, before anything starts.

The orchestrator checks settings as ``tune()`` takes them (``early_stopping``, ``strategy``);
a Sweep's author wrote ``spec.earlyStopping.settings`` and ``spec.strategy.settings``, and a
Python ``TypeError`` from a constructor tells them little. These checks name the Sweep's field,
the setting and the ones there are.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._space import Domain, validate_space

_PARAMETER = re.compile(r"\$\{trialParameters\.([A-Za-z0-9_.\-]+)\}")


def _options(factory: Callable[..., Any], without: tuple[str, ...] = ()) -> list[str]:
    """The keyword arguments a constructor takes (its documented settings)."""
    return [
        name
        for name, parameter in inspect.signature(factory).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        and name not in without
    ]


def _early_stopping_factories() -> dict[str, Callable[..., Any]]:
    import optuna

    from hypersweep.strategies._schedulers import ASHA, PBT, Hyperband

    return {
        "asha": ASHA,
        "hyperband": Hyperband,
        "pbt": PBT,
        "median": optuna.pruners.MedianPruner,
    }


def check_early_stopping(early: Mapping[str, Any]) -> None:
    """``spec.earlyStopping``: a known name, and settings that name knows."""
    name = early.get("name")
    settings = early.get("settings") or {}
    if name in (None, "none"):
        return
    factories = _early_stopping_factories()
    if name not in factories:
        raise ConfigError(
            f"spec.earlyStopping.name: unknown early stopping {name!r}; expected one of "
            f"none, {', '.join(factories)}"
        )
    if not isinstance(settings, Mapping):
        raise ConfigError("spec.earlyStopping.settings: expected a mapping of settings")
    known = _options(factories[name])
    for key in settings:
        if key not in known:
            raise ConfigError(
                f"spec.earlyStopping.settings.{key}: {name} has no setting {key!r}; its "
                f"settings are {', '.join(known)}"
            )
    try:
        factories[name](**settings)
    except ConfigError as error:
        raise ConfigError(f"spec.earlyStopping.settings: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"spec.earlyStopping.settings: {error}") from None


def _sampler_classes() -> dict[str, Callable[..., Any]]:
    import optuna

    from hypersweep.strategies._hyperband import HyperbandSampler

    samplers = optuna.samplers
    return {
        "tpe": samplers.TPESampler,
        "random": samplers.RandomSampler,
        "grid": samplers.GridSampler,
        "cmaes": samplers.CmaEsSampler,
        "gp": samplers.GPSampler,
        "qmc": samplers.QMCSampler,
        "nsga2": samplers.NSGAIISampler,
        "hyperband": HyperbandSampler,
    }


#: Sampler arguments the sweep sets itself: the grid comes from the space.
_FIXED = ("search_space",)


def strategy_for(strategy: Mapping[str, Any], space: Any) -> tuple[Any, int | None]:
    """``spec.strategy`` as SweepSettings takes it: (the strategy, the seed).

    ``settings`` are the options of the strategy's Optuna sampler (``seed`` for all of them,
    ``n_startup_trials``/``multivariate`` for tpe, ``sigma0`` for cmaes, ``scramble`` for qmc,
    ``population_size`` for nsga2 ...). With settings beyond ``seed`` the sampler is made here
    with them; an unknown setting is refused, naming the ones there are.
    """
    from hypersweep.strategies._samplers import make_sampler

    name = strategy.get("name", "tpe")
    settings = dict(strategy.get("settings") or {})
    classes = _sampler_classes()
    if name not in classes:
        raise ConfigError(
            f"spec.strategy.name: unknown strategy {name!r}; expected one of {', '.join(classes)}"
        )
    known = _options(classes[name], _FIXED)
    for key in settings:
        if key not in known:
            raise ConfigError(
                f"spec.strategy.settings.{key}: the {name} strategy has no setting {key!r}; its "
                f"settings are {', '.join(known)}"
            )
    seed = settings.pop("seed", None)
    if name == "hyperband":
        # No sampler of it without settings: its budget parameter has no default.
        try:
            return classes[name](**settings, seed=seed), seed
        except TypeError as error:
            raise ConfigError(
                f"spec.strategy.settings: {error} (hyperband needs resource and max_resource)"
            ) from None
    if not settings:
        return name, seed
    try:
        base = make_sampler(name, validate_space(space), seed)
        extra = {**_current_arguments(base, name, seed), **settings}
        if name == "grid":
            extra["search_space"] = base._search_space  # type: ignore[attr-defined]
        return classes[name](**extra), seed
    except (TypeError, ValueError) as error:
        raise ConfigError(f"spec.strategy.settings: {error}") from None


def _current_arguments(sampler: Any, name: str, seed: int | None) -> dict[str, Any]:
    """The arguments make_sampler gives the strategy's sampler (kept under the user's)."""
    arguments: dict[str, Any] = {"seed": seed}
    if name == "tpe":
        arguments["constant_liar"] = True  # trials run in parallel
    return arguments


def _leaves(space: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every parameter's dotted name, constants included (they reach templates too)."""
    names: list[str] = []
    for key, value in space.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and not isinstance(value, Domain):
            names += _leaves(value, name)
        else:
            names.append(name)
    return names


def check_trial_parameters(template: Any, space: Any) -> None:
    """Every ``${trialParameters.NAME}`` in the trial template names a parameter of the space
    (a typo would reach the container as the literal text)."""
    names = set(_leaves(validate_space(space)))
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.update(_PARAMETER.findall(node))
        elif isinstance(node, Mapping):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(template)
    unknown = sorted(found - names)
    if unknown:
        raise ConfigError(
            f"spec.trialTemplate: ${{trialParameters.{unknown[0]}}} names no parameter of "
            f"spec.space; the parameters are {', '.join(sorted(names)) or 'none'}"
        )
