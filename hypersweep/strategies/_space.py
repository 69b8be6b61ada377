"""Search spaces: the Python helpers (``uniform``, ``choice``...) and their plain-data form.

A space is a (possibly nested) dict whose leaves are either :class:`Domain` objects or
constants. The plain-data form is what YAML files and the Kubernetes ``Sweep`` resource carry,
e.g. ``{"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}``; ``space_to_data``
and ``parse_space`` convert between the two without loss.

Sampling goes through Optuna's define-by-run API, so every Optuna sampler works unchanged. Nested
keys become dotted parameter names (``model.lr``) in storage.

A choice among sub-spaces (``choice([{"name": "sgd", ...}, {"name": "adam", ...}])``) is a
conditional space: a trial draws the branch's index under the choice's name, then only that
branch's parameters, named under ``optimizer[1].`` so that equal names in different branches
never share a parameter in storage. The space may also be a function of an Optuna trial that
returns the config (define-by-run), as in plain Optuna.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = [
    "Branches",
    "Categorical",
    "Domain",
    "Float",
    "Grid",
    "Int",
    "choice",
    "flatten_config",
    "flatten_space",
    "grid",
    "grid_configs",
    "grid_search_space",
    "is_conditional",
    "loguniform",
    "parse_space",
    "quniform",
    "randint",
    "sample_config",
    "space_to_data",
    "uniform",
    "validate_space",
]

_PRIMITIVES = (type(None), bool, int, float, str)
_DOMAIN_TYPES = ("float", "int", "categorical", "grid", "constant")


class Domain:
    """A leaf of the search space that the strategy chooses a value for."""

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask Optuna's trial for a value of this domain under ``name``."""
        raise NotImplementedError

    def to_data(self) -> dict[str, Any]:
        """The plain-data (YAML/JSON) form of this domain."""
        raise NotImplementedError

    def grid_values(self) -> list[Any] | None:
        """The finite list of values to enumerate with the grid strategy, if there is one."""
        return None


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Float(Domain):
    """A float in ``[low, high]``, optionally log-scaled or quantized by ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        _check_number(self.low, "low")
        _check_number(self.high, "high")
        if not self.low < self.high:
            raise ConfigError(f"low ({self.low}) must be less than high ({self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"a log-scaled range needs low > 0, got low={self.low}")
        if self.step is not None:
            _check_number(self.step, "step")
            if self.step <= 0:
                raise ConfigError(f"step must be positive, got {self.step}")
            if self.log:
                raise ConfigError("step and log cannot be combined; drop one of them")

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step is not None:
            data["step"] = self.step
        return data


@dataclass(frozen=True)
class Int(Domain):
    """An integer in ``[low, high]`` (both inclusive, as in Optuna and Katib)."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        for what in ("low", "high", "step"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{what} must be an integer, got {value!r}")
        if not self.low <= self.high:
            raise ConfigError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.step < 1:
            raise ConfigError(f"step must be at least 1, got {self.step}")
        if self.log and self.low < 1:
            raise ConfigError(f"a log-scaled integer range needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ConfigError("step and log cannot be combined; drop one of them")

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            data["log"] = True
        if self.step != 1:
            data["step"] = self.step
        return data

    def grid_values(self) -> list[Any] | None:
        if self.log:
            return None
        return list(range(self.low, self.high + 1, self.step))


def _check_values(values: Any) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"values must be a list, got {values!r}")
    if not values:
        raise ConfigError("values must not be empty")
    for value in values:
        if not isinstance(value, _PRIMITIVES):
            raise ConfigError(
                f"values may only hold null, booleans, numbers and strings, got {value!r}; "
                "use a string key and look the object up in your objective"
            )
    return tuple(values)


@dataclass(frozen=True)
class Categorical(Domain):
    """One of a list of values."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _check_values(self.values))

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.values)

    def to_data(self) -> dict[str, Any]:
        return {"type": "categorical", "values": list(self.values)}

    def grid_values(self) -> list[Any] | None:
        return list(self.values)


@dataclass(frozen=True)
class Grid(Categorical):
    """Values to enumerate exhaustively with ``strategy="grid"``; a plain choice otherwise."""

    def to_data(self) -> dict[str, Any]:
        return {"type": "grid", "values": list(self.values)}


@dataclass(frozen=True)
class Branches(Domain):
    """A choice among sub-spaces: a trial takes one branch, and its config only that branch's keys.

    The branch's index is the parameter of the choice's own name (a categorical over 0..n-1);
    branch ``i``'s parameters are named under ``NAME[i].``, so that two branches may use the
    same key (``lr``) with different ranges without sharing a parameter in storage.
    """

    branches: tuple[Mapping[str, Any], ...]

    def __post_init__(self) -> None:
        if not self.branches:
            raise ConfigError("values must not be empty")
        object.__setattr__(self, "branches", tuple(self.branches))

    def suggest(self, trial: optuna.Trial, name: str) -> dict[str, Any]:
        index = trial.suggest_categorical(name, list(range(len(self.branches))))
        return sample_config(self.branches[index], trial, f"{name}[{index}]")

    def to_data(self) -> dict[str, Any]:
        return {"type": "categorical", "values": [space_to_data(b) for b in self.branches]}


def uniform(low: float, high: float) -> Float:
    """A float drawn uniformly from ``[low, high]``."""
    return Float(low, high)


def loguniform(low: float, high: float) -> Float:
    """A float in ``[low, high]`` drawn uniformly in log space (for learning rates and such)."""
    return Float(low, high, log=True)


def quniform(low: float, high: float, q: float) -> Float:
    """A float in ``[low, high]`` that is a multiple of ``q`` away from ``low``."""
    return Float(low, high, step=q)


def randint(low: int, high: int) -> Int:
    """An integer in ``[low, high)``: ``high`` is excluded, as in Ray Tune and NumPy."""
    if isinstance(high, int) and isinstance(low, int) and high <= low:
        raise ConfigError(f"randint needs low < high (high is excluded), got ({low}, {high})")
    return Int(low, high - 1)


def _branches(values: Sequence[Any]) -> Branches | None:
    """``values`` as sub-spaces if they are mappings; None if they are plain values."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return None
    mappings = [isinstance(v, Mapping) for v in values]
    if not any(mappings):
        return None
    if not all(mappings):
        index = mappings.index(False)
        raise ConfigError(
            f"values[{index}]: a choice among sub-spaces needs a mapping for every value, got "
            f"{values[index]!r}; write it as a mapping too, e.g. {{name: {values[index]!r}}}"
        )
    return Branches(tuple(values))


def choice(values: Sequence[Any]) -> Categorical | Branches:
    """One of ``values``; a list of dicts is a choice among sub-spaces (a conditional space)."""
    return _branches(values) or Categorical(tuple(values))


def grid(values: Sequence[Any]) -> Grid | Branches:
    """Every one of ``values`` in turn with ``strategy="grid"`` (like Ray Tune's grid_search).

    A list of dicts is a choice among sub-spaces: the grid strategy enumerates every branch
    times the grid of its own parameters.
    """
    return _branches(values) or Grid(tuple(values))


# --- plain-data form ----------------------------------------------------------------------


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_key(key: Any, prefix: str) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{prefix or 'space'}: keys must be non-empty strings, got {key!r}")
    if "." in key:
        raise ConfigError(
            f"{_path(prefix, key)}: keys must not contain '.', which separates nested names; "
            "nest a dict instead"
        )
    if "[" in key or "]" in key:
        raise ConfigError(
            f"{_path(prefix, key)}: keys must not contain '[' or ']', which name the branches "
            "of a choice among sub-spaces"
        )
    return key


_ALLOWED_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "values", "choices"},
    "grid": {"type", "values"},
    "constant": {"type", "value"},
}


def _parse_domain(data: Mapping[str, Any], where: str) -> Any:
    kind = data["type"]
    if kind not in _DOMAIN_TYPES:
        raise ConfigError(
            f"{where}.type: unknown type {kind!r}; expected one of {', '.join(_DOMAIN_TYPES)} "
            "(for a constant dict that has a 'type' key, write {type: constant, value: {...}})"
        )
    unknown = set(data) - _ALLOWED_KEYS[kind]
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))} for type {kind}; "
            f"allowed: {', '.join(sorted(_ALLOWED_KEYS[kind]))}"
        )
    try:
        if kind == "constant":
            if "value" not in data:
                raise ConfigError("a constant needs a 'value'")
            return data["value"]
        if kind in ("categorical", "grid"):
            values = data.get("values", data.get("choices"))
            if values is None:
                raise ConfigError("needs 'values', the list to choose from")
            branches = _branches(values)
            if branches is not None:
                return Branches(
                    tuple(
                        _parse_mapping(branch, f"{where}[{i}]")
                        for i, branch in enumerate(branches.branches)
                    )
                )
            return Grid(values) if kind == "grid" else Categorical(values)
        missing = [k for k in ("low", "high") if k not in data]
        if missing:
            raise ConfigError(f"needs {' and '.join(missing)}")
        log = data.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"log must be true or false, got {log!r}")
        if kind == "float":
            return Float(data["low"], data["high"], log=log, step=data.get("step"))
        return Int(data["low"], data["high"], log=log, step=data.get("step", 1))
    except ConfigError as error:
        message = str(error)
        if message.startswith(where):
            raise ConfigError(message) from None
        if message.startswith("values["):  # a plain value among sub-spaces: name its index
            raise ConfigError(f"{where}.{message}") from None
        raise ConfigError(f"{where}: {message}") from None


def parse_space(data: Any, prefix: str = "space") -> dict[str, Any]:
    """Turn a plain-data space (from YAML/JSON) into a space of :class:`Domain` objects.

    Errors name the field by its dotted path, starting with ``prefix``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of parameter names, got {data!r}")
    if not data:
        raise ConfigError(f"{prefix}: the space is empty; add at least one parameter")
    return _parse_mapping(data, prefix)


def _parse_mapping(data: Mapping[Any, Any], prefix: str) -> dict[str, Any]:
    space: dict[str, Any] = {}
    for key, value in data.items():
        where = _path(prefix, _check_key(key, prefix))
        if isinstance(value, Mapping) and "type" in value:
            space[key] = _parse_domain(value, where)
        elif isinstance(value, Mapping):
            space[key] = _parse_mapping(value, where)
        else:
            space[key] = value
    return space


def space_to_data(space: Mapping[str, Any] | Callable[..., Any]) -> dict[str, Any] | None:
    """The plain-data form of ``space``; ``parse_space`` of it gives ``space`` back.

    A define-by-run space (a function) has no plain-data form: None.
    """
    if not isinstance(space, Mapping):
        return None
    data: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Domain):
            data[key] = value.to_data()
        elif isinstance(value, Mapping):
            data[key] = (
                {"type": "constant", "value": dict(value)}
                if "type" in value and not any(isinstance(v, Domain) for v in value.values())
                else space_to_data(value)
            )
        else:
            data[key] = value
    return data


# --- using a space ------------------------------------------------------------------------


def validate_space(space: Any, prefix: str = "space") -> Any:
    """Check a Python-form space and return it; plain-data leaves are parsed too.

    A function (define-by-run: it takes an Optuna trial and returns the config) is returned
    as it is; it is checked when it runs. Raises :class:`ConfigError` naming the field (e.g.
    ``space.optimizer[1].beta1``), before any trial starts.
    """
    if callable(space) and not isinstance(space, Mapping):
        return space
    if not isinstance(space, Mapping):
        raise ConfigError(
            f"{prefix}: expected a dict of parameter names or a function of an Optuna trial "
            f"that returns the config, got {type(space).__name__}"
        )
    checked = _validate_mapping(space, prefix)
    if not flatten_space(checked):
        raise ConfigError(
            f"{prefix}: the space has no parameter to search, only constants; add one, e.g. "
            "x: {type: float, low: 0, high: 1} in a sweep file or hs.uniform(0, 1) in Python"
        )
    return checked


def from_ray_domain(domain: Any, where: str) -> Domain:
    """The hypersweep domain of a Ray Tune one (``tune.uniform(0, 1)``...), same values.

    Ray Tune's ``randint`` and ``lograndint`` exclude ``upper``, its ``qrandint`` includes
    it; hypersweep's integer ranges include ``high``. Domains without an equivalent
    (``tune.sample_from``, ``tune.randn``) are refused, naming the field.
    """
    from ray.tune.search import sample

    sampler = domain.get_sampler()
    step = None
    if isinstance(sampler, sample.Quantized):
        step, sampler = sampler.q, sampler.get_sampler()
    try:
        if isinstance(domain, sample.Categorical):
            return Categorical(tuple(domain.categories))
        if isinstance(domain, sample.Float) and isinstance(sampler, sample.LogUniform):
            if step is None:
                return Float(float(domain.lower), float(domain.upper), log=True)
        elif isinstance(domain, sample.Float) and isinstance(sampler, sample.Uniform):
            return Float(float(domain.lower), float(domain.upper), step=step)
        elif isinstance(domain, sample.Integer) and isinstance(
            sampler, (sample.Uniform, sample.LogUniform)
        ):
            log = isinstance(sampler, sample.LogUniform)
            if step is None:
                return Int(int(domain.lower), int(domain.upper) - 1, log=log)
            if not log:
                return Int(int(domain.lower), int(domain.upper), step=int(step))
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    raise ConfigError(
        f"{where}: Ray Tune's {type(domain).__name__} with a {type(sampler).__name__} sampler "
        "has no hypersweep equivalent; use uniform, loguniform, quniform, randint, choice or "
        "grid (tune.sample_from: compute the value from the config in the objective)"
    )


def _validate_mapping(space: Mapping[Any, Any], prefix: str) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in space.items():
        where = _path(prefix, _check_key(key, prefix))
        if isinstance(value, Branches):
            checked[key] = Branches(
                tuple(
                    _validate_mapping(branch, f"{where}[{i}]")
                    for i, branch in enumerate(value.branches)
                )
            )
        elif isinstance(value, Domain):
            checked[key] = value
        elif type(value).__module__ == "ray.tune.search.sample":  # tune.uniform(0, 1)...
            checked[key] = from_ray_domain(value, where)
        elif isinstance(value, Mapping) and list(value) == ["grid_search"]:  # tune.grid_search
            try:
                checked[key] = Grid(_check_values(value["grid_search"]))
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
        elif isinstance(value, Mapping) and "type" in value:
            checked[key] = _parse_domain(value, where)
        elif isinstance(value, Mapping):
            checked[key] = _validate_mapping(value, where)
        else:
            checked[key] = value
    return checked


def is_conditional(space: Any) -> bool:
    """Whether some parameters exist only in some trials (sub-space choices, or a function)."""
    if not isinstance(space, Mapping):
        return True
    return any(isinstance(d, Branches) for d in flatten_space(space).values())


def flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Domain]:
    """The space's domains keyed by dotted name, in definition order."""
    flat: dict[str, Domain] = {}
    for key, value in space.items():
        name = _path(prefix, key)
        if isinstance(value, Domain):
            flat[name] = value
        elif isinstance(value, Mapping):
            flat.update(flatten_space(value, name))
    return flat


def sample_config(
    space: Mapping[str, Any] | Callable[[optuna.Trial], Any],
    trial: optuna.Trial,
    prefix: str = "",
) -> dict[str, Any]:
    """Draw a config from ``space`` through ``trial``; constants are copied as they are.

    Calling it again on a trial that already has its parameters returns the same config, which
    is how a retried or resumed trial keeps its identity. A define-by-run space is called with
    the trial.
    """
    if not isinstance(space, Mapping):
        drawn = space(trial)
        if not isinstance(drawn, Mapping):
            raise ConfigError(
                f"space: the space function must return the config as a dict, got "
                f"{type(drawn).__name__}"
            )
        return dict(drawn)
    config: dict[str, Any] = {}
    for key, value in space.items():
        name = _path(prefix, key)
        if isinstance(value, Domain):
            config[key] = value.suggest(trial, name)
        elif isinstance(value, Mapping):
            config[key] = sample_config(value, trial, name)
        else:
            config[key] = value
    return config


def flatten_config(config: Mapping[str, Any], separator: str = ".") -> dict[str, Any]:
    """A nested config as one level, keys joined by ``separator`` (``model.lr``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            for inner, leaf in flatten_config(value, separator).items():
                flat[f"{key}{separator}{inner}"] = leaf
        else:
            flat[str(key)] = value
    return flat


def unflatten_params(params: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a nested config from stored dotted parameters and the space's constants."""
    config: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Branches):
            index = params.get(key)
            if isinstance(index, int) and 0 <= index < len(value.branches):
                prefix = f"{key}[{index}]."
                inner = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
                config[key] = unflatten_params(inner, value.branches[index])
        elif isinstance(value, Domain):
            if key in params:
                config[key] = params[key]
        elif isinstance(value, Mapping):
            prefix = f"{key}."
            inner = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            config[key] = unflatten_params(inner, value)
        else:
            config[key] = value
    return config


def grid_search_space(space: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The values the grid strategy enumerates, per dotted name."""
    values: dict[str, list[Any]] = {}
    for name, domain in flatten_space(space).items():
        finite = domain.grid_values()
        if finite is None:
            raise ConfigError(
                f"space.{name}: the grid strategy needs a finite set of values, but this is "
                f"{domain.to_data()}; use grid([...]), choice([...]) or an int range without log"
            )
        values[name] = finite
    return values


def grid_configs(space: Mapping[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Every parameter assignment the grid strategy runs, as dotted name -> value.

    A choice among sub-spaces contributes each branch times the grid of that branch, so the
    assignments of different branches hold different names.
    """
    factors: list[list[dict[str, Any]]] = []
    for key, value in space.items():
        name = _path(prefix, key)
        if isinstance(value, Branches):
            factors.append(
                [
                    {name: i, **inner}
                    for i, branch in enumerate(value.branches)
                    for inner in grid_configs(branch, f"{name}[{i}]")
                ]
            )
        elif isinstance(value, Domain):
            finite = value.grid_values()
            if finite is None:
                raise ConfigError(
                    f"space.{name}: the grid strategy needs a finite set of values, but this "
                    f"is {value.to_data()}; use grid([...]), choice([...]) or an int range "
                    "without log"
                )
            factors.append([{name: v} for v in finite])
        elif isinstance(value, Mapping):
            factors.append(grid_configs(value, name))
    combos = []
    for parts in itertools.product(*factors):
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        combos.append(merged)
    return combos
