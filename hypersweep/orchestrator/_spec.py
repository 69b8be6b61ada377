"""A sweep's settings, checked once before anything starts, and their plain-data form.

``SweepSettings`` is what every entry point builds (``tune()``, ``hypersweep run sweep.yaml``,
the operator) and what the orchestrator runs. ``SweepSpec`` is the YAML/JSON form, validated by
pydantic so that errors name the field; it is also stored with the sweep so that
``hypersweep resume NAME`` can rebuild the settings.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic_core import PydanticCustomError

from hypersweep._errors import ConfigError
from hypersweep.orchestrator._callbacks import callbacks_to_data, make_callbacks
from hypersweep.orchestrator._checkpoints import check_location
from hypersweep.orchestrator._job import Replicas, TrainJob
from hypersweep.strategies import (
    check_objectives,
    check_strategy,
    check_strategy_fits,
    grid_size,
    make_scheduler,
    parse_constraints,
    space_to_data,
    validate_space,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_sweep_name() -> str:
    """A fresh, sortable sweep name, e.g. ``sweep-20261128-101500-3fa2``."""
    return time.strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _check_int(value: Any, field_name: str, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field_name}: expected an integer >= {minimum}, got {value!r}")


@dataclass
class SweepSettings:
    """Every knob of a sweep except the objective and the launcher."""

    space: Any  # a dict of domains, or a function of an Optuna trial (define-by-run)
    metric: str | list[str]
    mode: str | list[str] = "min"
    n_trials: int | None = None
    timeout: float | None = None
    max_concurrent: int | None = None
    strategy: Any = "tpe"
    early_stopping: Any = None
    storage: Any = None
    name: str | None = None
    resume: bool = False
    max_failed_trials: int | None = None
    max_retries: int = 2
    seed: int | None = None
    keep_checkpoints: int = 2
    checkpoint_dir: str | None = None
    checkpoint_storage_options: Mapping[str, Any] | None = None
    replicas: Any = None
    launcher: Mapping[str, Any] | None = None  # a sweep file's ``launcher:``; None: local
    constraints: Mapping[str, Any] | None = None  # metric -> {min, max}
    callbacks: Any = None  # Callback objects and/or ``{name: {arguments}}`` of built-ins
    extra: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> SweepSettings:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        self.space = validate_space(self.space)
        self.metric, self.mode = check_objectives(self.metric, self.mode)
        self.constraints = parse_constraints(self.constraints)
        check_strategy(self.strategy)
        check_strategy_fits(self.strategy, self.space, len(self.metrics))
        make_scheduler(self.early_stopping)
        if len(self.metrics) > 1 and self.early_stopping is not None:
            raise ConfigError(
                "early_stopping: no scheduler can rank trials on several objectives "
                f"({', '.join(self.metrics)}); leave early_stopping unset, or optimize one "
                "metric and bound the others with constraints"
            )
        _check_int(self.n_trials, "n_trials", 1)
        _check_int(self.max_concurrent, "max_concurrent", 1)
        _check_int(self.max_failed_trials, "max_failed_trials", 1)
        _check_int(self.max_retries, "max_retries", 0)
        _check_int(self.keep_checkpoints, "keep_checkpoints", 1)
        _check_int(self.seed, "seed", 0)
        check_location(self.checkpoint_dir, self.checkpoint_storage_options)
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
            or math.isnan(self.timeout)
        ):
            raise ConfigError(
                f"timeout: expected a positive number of seconds, got {self.timeout!r}"
            )
        if self.strategy == "grid" and self.n_trials is None:
            self.n_trials = grid_size(self.space)
        elif self.strategy == "grid":
            grid_size(self.space)  # refuses continuous domains, naming them
        if self.n_trials is None and self.timeout is None:
            raise ConfigError("n_trials: give the number of trials to run (or a timeout)")
        if self.replicas is not None:
            self.replicas = Replicas.from_value(self.replicas)
        if self.launcher is not None and self.launcher.get("type", "local") != "local":
            from hypersweep.launchers._ray import RayLauncher

            RayLauncher.from_spec(self.launcher)  # refuses unknown or bad fields, naming them
        make_callbacks(self.callbacks)  # refuses unknown names and missing extras, naming them
        if self.name is None:
            if self.resume:
                raise ConfigError("name: resume=True needs the name of the sweep to resume")
            self.name = default_sweep_name()
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"name: {self.name!r} is not a valid sweep name; use letters, digits, '.', '_' "
                "and '-' (at most 100 characters), starting with a letter or digit"
            )
        return self

    @property
    def metrics(self) -> list[str]:
        """The objectives' names, in order (one for a single-objective sweep)."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        """``min``/``max`` per objective, in the order of ``metrics``."""
        if isinstance(self.mode, str):
            return [self.mode] * len(self.metrics)
        return list(self.mode)

    @property
    def job(self) -> TrainJob | None:
        """The job each trial runs as, when trials have several replicas; else None.

        The gang's backoff limit is ``max_retries``: a restart of the gang is a retry of the
        trial.
        """
        if self.replicas is None:
            return None
        assert self.name is not None, "validate the settings first"
        replicas = Replicas.from_value(self.replicas)
        return replicas.to_job(self.name, backoff_limit=self.max_retries)

    def to_data(self, objective_reference: str | None) -> dict[str, Any]:
        """The plain-data form stored with the sweep (no secrets: the storage URL is left out)."""
        return {
            "name": self.name,
            "objective": objective_reference,
            "space": space_to_data(self.space),
            "metric": self.metric,
            "mode": self.mode,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "max_concurrent": self.max_concurrent,
            "strategy": self.strategy if isinstance(self.strategy, str) else None,
            "early_stopping": self.early_stopping
            if self.early_stopping is None or isinstance(self.early_stopping, (str, Mapping))
            else None,
            "max_failed_trials": self.max_failed_trials,
            "max_retries": self.max_retries,
            "seed": self.seed,
            "keep_checkpoints": self.keep_checkpoints,
            # Its storage options may hold credentials: those come again with the resume.
            "checkpoint_dir": self.checkpoint_dir,
            "replicas": Replicas.from_value(self.replicas).to_dict()
            if self.replicas is not None
            else None,
            "launcher": dict(self.launcher) if self.launcher is not None else None,
            "constraints": dict(self.constraints) if self.constraints is not None else None,
            "callbacks": callbacks_to_data(self.callbacks),
        }


class ReplicasSpec(pydantic.BaseModel):
    """``replicas:`` in a sweep file: the fields of :class:`hypersweep.Replicas`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    n: int = pydantic.Field(ge=1, description="replicas per trial")
    framework: Literal["pytorch", "tensorflow", "jax"] = "pytorch"
    gpus_per_replica: int | None = pydantic.Field(default=None, ge=0)
    cpus_per_replica: float | None = pydantic.Field(default=None, gt=0)
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    restart_policy: Literal["OnFailure", "ExitCode", "Never"] = "OnFailure"


class LauncherSpec(pydantic.BaseModel):
    """``launcher:`` in a sweep file: ``type: ray`` and :class:`hypersweep.RayLauncher`'s
    arguments (``address``, ``num_gpus``, ``placement_strategy``...), or ``type: local``."""

    model_config = pydantic.ConfigDict(extra="allow")

    type: Literal["local", "ray"] = "local"


class SweepSpec(pydantic.BaseModel):
    """A sweep as written in YAML or JSON (``hypersweep run sweep.yaml``)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    objective: str = pydantic.Field(description="module:function or path/to/file.py:function")
    space: dict[str, Any]
    # One type each, checked below, so that errors read as for a plain field (no union branches).
    metric: Any = pydantic.Field(
        description="the metric to optimize, or a list of metrics for several objectives"
    )
    mode: Any = pydantic.Field(default="min", description="min or max, or a list: one per metric")
    constraints: dict[str, Any] | None = pydantic.Field(
        default=None, description="bounds on reported metrics, e.g. {memory_gb: {max: 16}}"
    )
    name: str | None = None
    n_trials: int | None = pydantic.Field(default=None, ge=1)
    timeout: float | None = pydantic.Field(default=None, gt=0)
    max_concurrent: int | None = pydantic.Field(default=None, ge=1)
    strategy: str = "tpe"
    early_stopping: str | dict[str, Any] | None = None
    storage: str | None = None
    max_failed_trials: int | None = pydantic.Field(default=None, ge=1)
    max_retries: int = pydantic.Field(default=2, ge=0)
    seed: int | None = pydantic.Field(default=None, ge=0)
    keep_checkpoints: int = pydantic.Field(default=2, ge=1)
    checkpoint_dir: str | None = pydantic.Field(
        default=None, description="a folder, or a URL such as s3://bucket/prefix (fsspec)"
    )
    checkpoint_storage_options: dict[str, Any] | None = pydantic.Field(
        default=None, description="fsspec options of checkpoint_dir, e.g. {endpoint_url: ...}"
    )
    replicas: ReplicasSpec | None = None
    launcher: LauncherSpec | None = None
    callbacks: list[dict[str, Any] | str] | None = pydantic.Field(
        default=None, description="e.g. [{mlflow: {tracking_uri: ...}}, tensorboard]"
    )

    @pydantic.field_validator("metric")
    @classmethod
    def _check_metric(cls, value: Any) -> Any:
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            return value
        raise PydanticCustomError("string_type", "Input should be a string or a list of strings")

    @pydantic.field_validator("mode")
    @classmethod
    def _check_mode(cls, value: Any) -> Any:
        for mode in value if isinstance(value, list) else [value]:
            if mode not in ("min", "max"):
                raise PydanticCustomError("literal_error", "Input should be 'min' or 'max'")
        return value

    def to_settings(self, *, resume: bool = False) -> SweepSettings:
        """The validated settings; the space is parsed from its plain-data form."""
        data = self.model_dump(exclude={"objective"})
        return SweepSettings(resume=resume, **data).validated()


def _format_location(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _kind_of(value: Any) -> str:
    """What a YAML value is, in the file's words."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _file_terms(message: str) -> str:
    """Pydantic's wording in YAML's terms (mapping, not dictionary; no Python class names)."""
    message = re.sub(r"a valid dictionary or instance of \w+", "a mapping", message)
    return message.replace("a valid dictionary", "a mapping").replace("a valid string", "a string")


def _is_field(part: Any) -> bool:
    """Whether a pydantic location part names a field (not a member of a union type)."""
    type_tags = {"str", "int", "float", "bool", "dict", "list", "none"}
    return isinstance(part, int) or (
        isinstance(part, str) and part.isidentifier() and part not in type_tags
    )


def parse_spec(data: Any, source: str = "sweep") -> SweepSpec:
    """Validate a plain-data sweep; errors say ``source: field: problem``."""
    if data is None:
        raise ConfigError(
            f"{source}: the file is empty; write the sweep's fields (see examples/quickstart.yaml)"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sweep fields, got {_kind_of(data)}")
    try:
        spec = SweepSpec.model_validate(dict(data))
    except pydantic.ValidationError as error:
        problems: dict[str, list[str]] = {}
        for item in error.errors():
            where = _format_location(tuple(p for p in item["loc"] if _is_field(p)))
            message = _file_terms(item["msg"])
            if item["type"] == "extra_forbidden":
                nested = item["loc"][:1] == ("replicas",) and len(item["loc"]) > 1
                model = ReplicasSpec if nested else SweepSpec
                allowed = ", ".join(model.model_fields)
                message = f"unknown field; allowed fields are {allowed}"
            elif item["type"] != "missing":
                message += f", got {_kind_of(item.get('input'))}"
            if message not in problems.setdefault(where, []):
                problems[where].append(message)
        lines = []
        for where, messages in problems.items():
            # A field that takes one of several types (early_stopping: name or mapping).
            should = [m.split(", got ")[0].removeprefix("Input should be ") for m in messages]
            if len(messages) > 1 and all(m.startswith("Input should be") for m in messages):
                got = messages[0].split(", got ")[-1]
                lines.append(f"{source}: {where}: Input should be {' or '.join(should)}, got {got}")
            else:
                lines.extend(f"{source}: {where}: {m}" for m in messages)
        raise ConfigError("\n".join(lines)) from None
    try:
        spec.to_settings()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return spec


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's numbers: ``1e-3`` is a float, not a string.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-3``); people write ``1e-3``.
    """


_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# After the int resolver, so that "3" stays an int; the float one then takes "1e-3" and "1.5".
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_spec_file(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML (or JSON) file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    try:
        data = yaml.load(text, Loader=SpecLoader)  # a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_spec(data, str(path))
