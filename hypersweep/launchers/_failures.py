"""Why a gang's attempt failed: the root cause among what its replicas' failures say.

When one replica fails, its peers usually fail in turn (blocked in a collective with a peer
that is gone). The local and the Ray gangs collect every failure of an attempt and report one:
the first process death if there was one (a replica killed by a signal, OOM or a lost node
takes its peers down with it), else the first exception, with its traceback. The job's restart
policy then says whether that is a crash (retried from the latest checkpoint) or an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypersweep.orchestrator._events import Crashed, Errored, Event
from hypersweep.orchestrator._job import ReplicaId, TrainJob


@dataclass(frozen=True)
class ReplicaFailure:
    """One replica's failure: how it ended, and what the trial's error will say of it."""

    died: bool
    killed_by_signal: bool
    message: str  # "replica worker-0 (rank 1 of 2) raised ValueError: ..."
    details: str = ""  # its traceback, for an exception

    @classmethod
    def of(
        cls,
        replica: ReplicaId,
        world_size: int,
        what: str,
        details: str,
        *,
        died: bool,
        by_signal: bool,
    ) -> ReplicaFailure:
        """``what`` happened to ``replica`` (``raised ...``, or how its process ended)."""
        who = f"replica {replica.label} (rank {replica.rank} of {world_size})"
        separator = ": " if died else " "
        return cls(died, by_signal, f"{who}{separator}{what}", details)


def failure_event(trial_number: int, job: TrainJob, failures: list[ReplicaFailure]) -> Event:
    """The attempt's outcome from its failures: the first death, else the first exception."""
    deaths = [failure for failure in failures if failure.died]
    root = deaths[0] if deaths else failures[0]
    # The stored error starts with the replica, then its traceback if it raised.
    described = f"{root.message}\n{root.details.rstrip()}" if root.details else root.message
    if not job.restart_policy.restarts(killed_by_signal=root.killed_by_signal):
        return Errored(trial_number, root.message, described)
    return Crashed(trial_number, described)
