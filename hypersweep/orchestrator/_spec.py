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

from hypersweep._errors import ConfigError
from hypersweep.orchestrator._job import Replicas, TrainJob
from hypersweep.strategies import (
    check_strategy,
    grid_size,
    make_scheduler,
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

    space: dict[str, Any]
    metric: str
    mode: str = "min"
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
    replicas: Any = None
    launcher: Mapping[str, Any] | None = None  # a sweep file's ``launcher:``; None: local
    extra: dict[str, Any] = field(default_factory=dict)

    def validated(self) -> SweepSettings:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        self.space = validate_space(self.space)
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError("metric: give the name of the metric to optimize, e.g. 'loss'")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode: expected 'min' or 'max', got {self.mode!r}")
        check_strategy(self.strategy)
        make_scheduler(self.early_stopping)
        _check_int(self.n_trials, "n_trials", 1)
        _check_int(self.max_concurrent, "max_concurrent", 1)
        _check_int(self.max_failed_trials, "max_failed_trials", 1)
        _check_int(self.max_retries, "max_retries", 0)
        _check_int(self.keep_checkpoints, "keep_checkpoints", 1)
        _check_int(self.seed, "seed", 0)
        if self.checkpoint_dir is not None and "://" in str(self.checkpoint_dir):
            # Taken as a path, "s3://bucket/x" would be a local folder "./s3:/bucket/x" that
            # no other node sees: retries would silently retrain from zero.
            raise ConfigError(
                f"checkpoint_dir: {self.checkpoint_dir!r} is a URL; object storage is not "
                "supported yet: give a folder that every worker reaches (a shared filesystem "
                "mount, e.g. /mnt/shared/checkpoints)"
            )
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
            "replicas": Replicas.from_value(self.replicas).to_dict()
            if self.replicas is not None
            else None,
            "launcher": dict(self.launcher) if self.launcher is not None else None,
        }


class ReplicasSpec(pydantic.BaseModel):
    """``replicas:`` in a sweep file: the fields of :class:`hypersweep.Replicas`."""

    model_config = pydantic.ConfigDict(extra="forbid")

    n: int = pydantic.Field(ge=1, description="replicas per trial")
    framework: Literal["pytorch", "tensorflow"] = "pytorch"
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
    metric: str
    mode: Literal["min", "max"] = "min"
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
    replicas: ReplicasSpec | None = None
    launcher: LauncherSpec | None = None

    def to_settings(self, *, resume: bool = False) -> SweepSettings:
        """The validated settings; the space is parsed from its plain-data form."""
        data = self.model_dump(exclude={"objective"})
        return SweepSettings(resume=resume, **data).validated()


def _format_location(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def parse_spec(data: Any, source: str = "sweep") -> SweepSpec:
    """Validate a plain-data sweep; errors say ``source: field: problem``."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of sweep fields, got {type(data).__name__}"
        )
    try:
        spec = SweepSpec.model_validate(dict(data))
    except pydantic.ValidationError as error:
        problems = []
        for item in error.errors():
            where = _format_location(item["loc"])
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                nested = item["loc"][:1] == ("replicas",) and len(item["loc"]) > 1
                model = ReplicasSpec if nested else SweepSpec
                allowed = ", ".join(model.model_fields)
                message = f"unknown field; allowed fields are {allowed}"
            problems.append(f"{source}: {where}: {message}")
        raise ConfigError("\n".join(problems)) from None
    try:
        spec.to_settings()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return spec


def load_spec_file(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML (or JSON) file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_spec(data, str(path))
