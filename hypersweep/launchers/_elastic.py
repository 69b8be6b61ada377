"""An elastic PyTorch gang on this machine: ``Replicas(n=(min, max))``, torchrun's ``min:max``.

A :class:`~hypersweep.launchers._gang.Gang` whose world changes between rounds instead of the
trial failing, with torchrun's elastic semantics:

- **A lost replica** (its process died: SIGKILL, OOM) ends the round. While at least ``min``
  replicas remain, a new round starts at once with the smaller world, from the trial's latest
  checkpoint, without using one of the trial's retries. Every process of the round is
  restarted, as torchrun's agents restart their workers after a membership change: a
  collective's peers cannot be swapped under it. Below ``min`` the gang fails as a fixed-size
  gang does, and the trial is retried (counted) with the full world.
- **Growing back.** Once a smaller round has checkpointed, the next report is answered with a
  pause on every rank (the same step everywhere, see ``_gang``) and a round with the full world
  starts from that checkpoint: the capacity that the lost replica held is free again on one
  machine, as a node coming back is under torchrun, where the waiting node makes the group
  restart at its next rendezvous.

Membership is decided here rather than by replicas agreeing among themselves (torchrun's c10d
rendezvous): the launcher sees every replica process, as Ray Train's controller sees its
workers. Each round uses the launcher-held c10d store like any gang, so ``init_process_group()``
(env://) works unchanged and ``WORLD_SIZE``/``RANK`` say the round's world.

The rules that do not depend on where replicas run (:class:`ElasticPolicy`) are shared with
the Ray launcher's elastic gangs (``_ray_elastic``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypersweep.launchers._gang import Gang, _Replica
from hypersweep.launchers._resources import PortAllocator
from hypersweep.orchestrator._events import Checkpointed, Crashed, Event, Stopped
from hypersweep.orchestrator._job import TrainJob
from hypersweep.orchestrator._objective import ObjectiveRef


def resized(job: TrainJob, world_size: int) -> TrainJob:
    """``job`` with ``world_size`` replicas: the master, and the rest as workers."""
    master, *workers = job.replicas
    groups = [master]
    if world_size > 1:
        worker = workers[0] if workers else replace(master, role="worker")
        groups.append(replace(worker, count=world_size - 1))
    return replace(job, replicas=tuple(groups))


@dataclass
class ElasticRound:
    """One round of an elastic gang: its world size, when it started and why."""

    world_size: int
    started: float
    reason: str  # "start", "shrink" or "grow"


@dataclass
class ElasticPolicy:
    """The rules of an elastic gang that do not depend on where its replicas run.

    Both the local :class:`ElasticGang` and the Ray launcher's elastic attempts follow them:
    which checkpoint the next round resumes from, when a round may grow back to the full world
    (a continue after the round's first checkpoint, when the launcher has room), and whether a
    crash shrinks the gang (no retry used: the survivors are at least ``min``) or stands (a
    counted retry with the full world).
    """

    full_job: TrainJob
    latest_checkpoint: str | None = None
    rounds: list[ElasticRound] = field(default_factory=list)
    checkpointed_this_round: bool = False
    growing: bool = False  # the round ends at its current step to restart with more replicas

    @property
    def min_replicas(self) -> int:
        return self.full_job.min_replicas or 1

    @property
    def max_replicas(self) -> int:
        return self.full_job.world_size

    def begin(self, world_size: int, reason: str) -> TrainJob:
        """Record a new round of ``world_size`` replicas; the job that round runs."""
        self.growing = False
        self.checkpointed_this_round = False
        self.rounds.append(ElasticRound(world_size, time.monotonic(), reason))
        return resized(self.full_job, world_size)

    def note(self, events: list[Event]) -> None:
        """Follow the round's checkpoints: the next round resumes from the latest."""
        for event in events:
            if isinstance(event, Checkpointed):
                self.latest_checkpoint = event.path
                self.checkpointed_this_round = True

    def relay(
        self,
        member: Any,
        message: tuple[Any, ...],
        events: list[Event],
        handle: Callable[[Any, tuple[Any, ...], list[Event]], None],
    ) -> None:
        """Pass a replica's ``message`` to the gang's own ``handle`` and follow its events;
        a replica that ends because the gang is growing has nothing to report."""
        if self.growing and message[0] in ("stopped", "result", "error"):
            member.finished = True  # ending for the next round
            return
        seen: list[Event] = []
        handle(member, message, seen)
        self.note(seen)
        events.extend(seen)

    def grows(self, decision: str, world_size: int, *, pending: bool, room: bool) -> bool:
        """Whether rank 0's ``decision`` becomes a pause that regrows the gang.

        Only a continue, for a report that waits for it (``pending``), once a smaller round
        has checkpointed (the next round loses no work), and when the launcher has ``room``
        for the missing replicas.
        """
        if (
            decision == "continue"
            and world_size < self.max_replicas
            and self.checkpointed_this_round
            and pending
            and room
        ):
            self.growing = True
        return self.growing

    def survivors(self, event: Event, world_size: int, lost: int) -> int | None:
        """The world of the next round when ``event`` ended this one; None if it stands.

        A crash with ``lost`` replicas dead leaves ``world_size - lost``: a new round while
        that is at least ``min``, else the crash is the trial's (a counted retry).
        """
        if isinstance(event, Crashed) and lost and world_size - lost >= self.min_replicas:
            return world_size - lost
        return None


@dataclass
class ElasticGang(Gang):
    """A gang of ``job.min_replicas`` to ``job.world_size`` replicas (see the module doc)."""

    policy: ElasticPolicy | None = None
    _start_args: tuple[Any, ...] = ()

    @property
    def rounds(self) -> list[ElasticRound]:
        return self.policy.rounds if self.policy is not None else []

    def start(
        self,
        objective: ObjectiveRef,
        base_env: dict[str, str],
        ports: PortAllocator,
        log_dir: Path | None,
    ) -> None:
        self.policy = ElasticPolicy(self.job, latest_checkpoint=self.assignment.restore_path)
        self.policy.begin(self.job.world_size, "start")
        self._start_args = (objective, base_env, ports, log_dir)
        super().start(objective, base_env, ports, log_dir)

    def _next_round(self, world_size: int, reason: str) -> None:
        """Kill this round's processes and start ``world_size`` replicas from the checkpoint."""
        assert self.policy is not None
        self.kill()
        self.phase = "running"
        self.deadline = None
        self.replicas = []
        self._failures = []
        self.job = self.policy.begin(world_size, reason)
        self.assignment = replace(self.assignment, restore_path=self.policy.latest_checkpoint)
        self._shared = type(self._shared)()
        super().start(*self._start_args)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, member: _Replica, message: tuple[Any, ...], events: list[Event]) -> None:
        assert self.policy is not None
        self.policy.relay(member, message, events, super()._on_message)

    def respond(self, decision: str) -> None:
        """Rank 0's decision; a continue after a checkpoint of a small round grows the gang.

        The capacity the lost replica held is free again on this machine: there is room.
        """
        assert self.policy is not None
        pending = self.phase == "running" and self._shared.pending is not None
        if self.policy.grows(decision, self.job.world_size, pending=pending, room=True):
            decision = "pause"  # every rank leaves at this step; the next round resumes
        super().respond(decision)

    # --- ending --------------------------------------------------------------------------

    def tick(self, now: float, events: list[Event]) -> None:
        assert self.policy is not None
        if self.policy.growing and self.replicas and all(m.finished for m in self.replicas):
            self._next_round(self.policy.max_replicas, "grow")
            return
        seen: list[Event] = []
        super().tick(now, seen)
        lost = sum(1 for failure in self._failures if failure.died)
        for event in seen:
            survivors = self.policy.survivors(event, self.job.world_size, lost)
            if survivors is not None:
                self._next_round(survivors, "shrink")
            elif isinstance(event, Stopped) and self.policy.growing:
                pass
            else:
                events.append(event)
