"""What launchers tell the orchestrator about the trials they run, and what they are given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialAssignment:
    """Everything a launcher needs to run one attempt of one trial."""

    trial_number: int
    config: dict[str, Any]
    sweep_name: str
    checkpoint_dir: str
    restore_path: str | None
    attempt: int
    keep_checkpoints: int
    env: dict[str, str] = field(default_factory=dict)
    #: fsspec storage options of ``checkpoint_dir`` (endpoint, credentials).
    checkpoint_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reported:
    """The trial reported metrics at a step and waits for a decision (``Launcher.respond``)."""

    trial_number: int
    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Checkpointed:
    """The trial saved a checkpoint."""

    trial_number: int
    path: str
    step: int | None


@dataclass(frozen=True)
class Completed:
    """The objective returned ``result`` (a number or a dict of metrics)."""

    trial_number: int
    result: Any


@dataclass(frozen=True)
class Stopped:
    """The trial ended itself after an early-stopping decision (``"stop"`` or ``"pause"``)."""

    trial_number: int
    decision: str


@dataclass(frozen=True)
class Errored:
    """The objective raised: a bug or bad config, not worth a retry."""

    trial_number: int
    message: str
    traceback: str


@dataclass(frozen=True)
class Crashed:
    """The trial's process died (a signal, OOM, a lost node): worth a retry from checkpoint."""

    trial_number: int
    message: str


Event = Reported | Checkpointed | Completed | Stopped | Errored | Crashed
