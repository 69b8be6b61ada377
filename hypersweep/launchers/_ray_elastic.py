"""An elastic PyTorch gang on Ray: ``Replicas(n=(min, max))``, as Ray Train's ``num_workers``.

A :class:`~hypersweep.launchers._ray_gang.RayAttempt` whose world changes between rounds instead
of the trial failing, with the rules of local elastic gangs (:class:`~hypersweep.launchers.
_elastic.ElasticPolicy`) and Ray Train V2's placement:

- **Admission.** The attempt reserves two placement groups: the *core*, one bundle for each of
  the ``min`` replicas (placed atomically, as any gang), and the *spare*, one bundle for each
  of the ``max - min`` others. The trial starts as soon as the core is placed, with the spare's
  replicas too if the spare is placed by then, else with ``min``. A spare that waits is the
  demand an autoscaler sees.
- **A lost replica** (its actor died, its node left the cluster) ends the round. While at
  least ``min`` replicas remain, every actor of the round is killed and a new round starts
  with the survivors' count, from the trial's latest checkpoint, without using a retry: a
  process joins one ``torch.distributed`` group for its life, so every replica of the new
  round is a new actor. Its placement groups are made anew (the lost bundle may sit on a node
  that is gone): a core of the survivors' count and, once the core is placed, a spare of the
  rest. Made together, the spare could take the capacity the core needs: a core first placed
  on a lost node that Ray has not yet declared dead is placed again once it has, and by then
  the spare may hold the survivors' node, and the round would wait for ever. Below ``min`` the
  crash is the trial's, retried (counted) with the full world, as a fixed gang's. Which
  replicas were lost is asked of Ray, not guessed from their peers' errors: a replica that
  neither ended nor is known dead when the round fails has its actor pinged.
- **Growing back.** Once a smaller round has checkpointed and its spare is placed (the
  capacity came back: a node joined, another trial ended), the next report is answered with a
  pause on every rank, at the same step, and a round of ``max`` replicas starts from that
  checkpoint in the bundles already held (the core's and the spare's), so no other trial can
  take the capacity in between.

Each placement group follows the launcher's ``placement_strategy`` on its own: with
``STRICT_PACK`` the core is on one node and the spare on one node, not necessarily the same.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hypersweep.launchers._decisions import SharedDecisions
from hypersweep.launchers._elastic import ElasticPolicy, resized
from hypersweep.launchers._ray_gang import RayAttempt, RayReplica, remove_group
from hypersweep.orchestrator._events import Event, TrialAssignment
from hypersweep.orchestrator._job import TrainJob
from hypersweep.orchestrator._objective import ObjectiveRef

LOST_AFTER = 30.0
"""Seconds a failing round waits for a replica's actor to answer before counting it lost."""

Slot = tuple[Any, int]
"""A bundle a replica's actor is pinned to: its placement group and its index there."""

Place = Callable[[TrialAssignment, range], Any]
"""Makes a placement group with the bundles of these ranks of the full job."""

Spawn = Callable[[TrialAssignment, TrainJob, list[Slot], str], list[RayReplica]]
"""Starts one actor per replica of the job, rank order, in these slots; the str tags names."""


@dataclass
class ElasticRayAttempt(RayAttempt):
    """One attempt of an elastic trial on Ray, over as many rounds as it takes (module doc)."""

    policy: ElasticPolicy | None = None
    place: Place | None = None
    spawn: Spawn | None = None
    _core: list[Slot] = field(default_factory=list)  # the bundles of the round's replicas
    _groups: list[Any] = field(default_factory=list)  # the placement groups held
    _spare: Any = None  # the placement group of the replicas missing from the round
    _spare_ready: Any = None  # its ready() reference; None once it is placed
    _spare_slots: list[Slot] = field(default_factory=list)
    _pings: list[tuple[Any, RayReplica]] | None = None  # liveness checks of a failing round
    _pings_deadline: float = 0.0

    @classmethod
    def admit(
        cls, assignment: TrialAssignment, job: TrainJob, place: Place, spawn: Spawn, grace: float
    ) -> ElasticRayAttempt:
        """Reserve the core and the spare, and start an actor in each of their bundles."""
        policy = ElasticPolicy(job, latest_checkpoint=assignment.restore_path)
        attempt = cls(
            assignment, policy.begin(policy.min_replicas, "start"), [], grace=grace,
            policy=policy, place=place, spawn=spawn,
        )  # fmt: skip
        attempt._reserve(policy.min_replicas)
        # Actors for the spare too: if it is placed by the time the core is, the trial starts
        # with them, without waiting for more actors to start.
        everyone = attempt._core + attempt._spare_slots
        attempt.replicas = spawn(assignment, job, everyone, "")
        attempt.prepare()
        return attempt

    @property
    def _policy(self) -> ElasticPolicy:
        assert self.policy is not None
        return self.policy

    def _reserve(self, world_size: int, *, spare: bool = True) -> None:
        """New placement groups: a core of ``world_size`` bundles and, with ``spare``, a spare
        of the rest now (else :meth:`_reserve_spare` makes it once the core is placed)."""
        assert self.place is not None
        core = self.place(self.assignment, range(world_size))
        self._groups = [core]
        self._core = [(core, index) for index in range(world_size)]
        self._spare, self._spare_ready, self._spare_slots = None, None, []
        if spare:
            self._reserve_spare()

    def _reserve_spare(self) -> None:
        """A spare placement group for the replicas the core lacks, unless one is held."""
        assert self.place is not None
        world, full = len(self._core), self._policy.max_replicas
        if self._spare is not None or world >= full:
            return
        self._spare = self.place(self.assignment, range(world, full))
        self._groups.append(self._spare)
        self._spare_ready = self._spare.ready()
        self._spare_slots = [(self._spare, index) for index in range(full - world)]

    def _room(self) -> bool:
        """Whether the spare is placed: the missing replicas have their bundles."""
        if self._spare is None:
            return False
        if self._spare_ready is not None:
            import ray

            ready, _ = ray.wait([self._spare_ready], timeout=0)
            if not ready:
                return False
            self._spare_ready = None
        return True

    # --- start ---------------------------------------------------------------------------

    def on_prepared(
        self, member: RayReplica, info: dict[str, Any], objective: ObjectiveRef, payload: Any = None
    ) -> None:
        """Start once the core's replicas are placed: with the spare's too if it is placed."""
        member.info = info
        if self.phase != "starting":
            return
        world = self._policy.rounds[-1].world_size
        core, extra = self.replicas[:world], self.replicas[world:]
        if not all(m.info is not None for m in core):
            return
        if extra and self._room():
            if not all(m.info is not None for m in extra):
                return  # their bundles are placed: they answer soon
            full = self._policy.max_replicas
            self._policy.rounds[-1].world_size = full
            self.job = resized(self._policy.full_job, full)
            self._core, self._spare, self._spare_slots = self._core + self._spare_slots, None, []
        elif extra:
            for spare in extra:  # the trial goes on without them; the spare stays reserved
                spare.end()
            self.replicas = core
        else:
            self._reserve_spare()  # a shrunk round's: its core is placed, it cannot take its room
        self.run(objective, payload)

    # --- rounds --------------------------------------------------------------------------

    def _next_round(self, world_size: int, reason: str) -> None:
        """Kill this round's actors and start ``world_size`` new ones from the checkpoint."""
        assert self.spawn is not None
        for member in self.replicas:
            member.end()
        if reason == "grow":  # into the bundles held: the core's and the spare's
            self._core, self._spare, self._spare_slots = self._core + self._spare_slots, None, []
        else:
            for group in self._groups:
                remove_group(group)
            # The spare once the core is placed (module doc): its replicas run from then on.
            self._reserve(world_size, spare=False)
        self.job = self._policy.begin(world_size, reason)
        self.assignment = replace(self.assignment, restore_path=self._policy.latest_checkpoint)
        self.phase = "starting"
        self.deadline = None
        self.started = time.monotonic()
        self._failures = []
        self._pings = None
        self._shared = SharedDecisions()
        self._awaits = deque()
        tag = f"e{len(self._policy.rounds) - 1}"
        self.replicas = self.spawn(self.assignment, self._policy.full_job, self._core, tag)
        self.prepare()

    # --- messages ------------------------------------------------------------------------

    def _on_message(
        self, member: RayReplica, message: tuple[Any, ...], events: list[Event]
    ) -> None:
        self._policy.relay(member, message, events, super()._on_message)

    def respond(self, decision: str, decide_from: int | None = 0) -> None:
        """Rank 0's decision; a continue after a checkpoint of a small round, with the spare
        placed, pauses every rank to grow the gang."""
        policy = self._policy
        pending = self.phase == "running" and self._shared.pending is not None
        room = (
            pending
            and policy.checkpointed_this_round
            and self.job is not None
            and self.job.world_size < policy.max_replicas
            and self._room()
        )
        world = self.job.world_size if self.job is not None else 1
        if policy.grows(decision, world, pending=pending, room=room):
            decision = "pause"  # every rank leaves at this step; the next round resumes
        super().respond(decision, decide_from)

    # --- ending --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        policy = self._policy
        if policy.growing and self.phase == "running" and all(m.finished for m in self.replicas):
            self._next_round(policy.max_replicas, "grow")
            return []
        failing = self.phase == "failing" and self.deadline is not None and now >= self.deadline
        if failing and not self._settle_losses(now):
            return []
        lost = sum(1 for failure in self._failures if failure.died)
        events: list[Event] = []
        for event in super().tick(now):
            survivors = policy.survivors(event, self.world_size, lost)
            if survivors is not None:
                self._next_round(survivors, "shrink")
            else:
                events.append(event)
        return events

    def _settle_losses(self, now: float) -> bool:
        """Whether the replicas that neither ended nor died are known to be alive or lost.

        A node that left the cluster is known dead to Ray only after its health checks fail
        (seconds), while its peers' collectives fail at once: without this, the round would
        end with exceptions only, and no replica counted as lost. Each such replica's actor is
        pinged: one that answers is alive (blocked in a collective); one whose call fails, or
        that does not answer within ``LOST_AFTER`` seconds, is lost with its node.
        """
        import ray

        if self._pings is None:
            unsure = [m for m in self.replicas if not m.finished]
            self._pings = [(m.actor.__ray_ready__.remote(), m) for m in unsure]
            self._pings_deadline = now + LOST_AFTER
        waiting = []
        for ref, member in self._pings:
            if member.finished:
                continue
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                waiting.append((ref, member))
                continue
            try:
                ray.get(ref)
            except Exception as error:  # noqa: BLE001 - any failed call: the actor is lost
                self.on_death(member, error)
        self._pings = waiting
        if waiting and now < self._pings_deadline:
            self.deadline = now + 0.2  # look again soon
            return False
        for _, member in waiting:
            self.on_death(member, TimeoutError(f"no answer within {LOST_AFTER:g} s"))
        return True

    def kill(self) -> None:
        super().kill()
        for group in self._groups:
            remove_group(group)
        self._groups = []
