"""The launcher interface: where and how trials run.

The orchestrator's loop is the same for every launcher; a launcher only starts trial attempts,
relays what they say as events, answers their reports, and stops them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from hypersweep.orchestrator._events import Event, TrialAssignment
from hypersweep.orchestrator._job import TrainJob
from hypersweep.orchestrator._objective import ObjectiveRef


@dataclass(frozen=True)
class SweepContext:
    """What a launcher learns once, before the first trial.

    ``job`` is set when every trial runs as several replicas: the launcher runs each attempt
    of a trial as that job (``job.for_trial(...)``), all replicas together. ``checkpoint_dir``
    is where the trials write their checkpoints and the driver looks for them on a retry.
    """

    sweep_name: str
    objective: ObjectiveRef
    metric: str
    job: TrainJob | None = None
    checkpoint_dir: str | None = None


class Launcher(abc.ABC):
    """Runs trial attempts somewhere and reports on them."""

    def to_spec(self) -> dict[str, Any] | None:
        """A sweep file's ``launcher:`` for this launcher, stored with the sweep so that
        ``hypersweep resume`` runs on it again; None: resumed on the local launcher."""
        return None

    @abc.abstractmethod
    def start(self, context: SweepContext) -> None:
        """Prepare to run trials of one sweep."""

    @abc.abstractmethod
    def free_slots(self) -> int:
        """How many more trials could start now."""

    @abc.abstractmethod
    def launch(self, assignment: TrialAssignment) -> None:
        """Start one attempt of a trial; it must not block on the trial itself."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` seconds for events and return those that arrived."""

    @abc.abstractmethod
    def respond(self, trial_number: int, decision: str) -> None:
        """Answer a trial's pending report with ``"continue"``, ``"stop"`` or ``"pause"``."""

    def respond_until(self, trial_number: int, decision: str, decide_from: int | None) -> None:
        """Answer like :meth:`respond`, and say from which step a decision can be due again.

        The trial's reports at earlier steps cannot change its course (no rung, interval or
        pruning step before ``decide_from``; None: none at all), so a launcher may let them go
        without making the trial wait for an answer; this default answers every report.
        """
        self.respond(trial_number, decision)

    @abc.abstractmethod
    def stop(self, trial_number: int) -> None:
        """Stop a trial's processes now; no further events come for this attempt."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop everything still running and release resources; safe to call twice."""
