"""One attempt of one trial on Ray, as the driver sees it: a placement group, actors, messages.

A trial's attempt reserves one placement-group bundle per replica, so that its replicas start
together or not at all (Ray places a group's bundles atomically), and runs each replica in a
:class:`~hypersweep.launchers._ray_actor.TrialActor` pinned to its bundle. Once every replica
has been placed, the gang learns where rank 0 runs and gets the same rendezvous environment as
local replicas (``_rendezvous``): ``MASTER_ADDR``/``MASTER_PORT`` and friends for PyTorch, with
rank 0's actor serving the c10d store on a port it reserved, or ``TF_CONFIG`` for TensorFlow.

The rules once replicas run are those of local gangs (``_gang``): rank 0's reports are the
trial's and its decision reaches every rank at the same step; rank 0's return ends the trial
(the other ranks get a grace period); a replica that raises or dies fails the whole attempt
after a short window that collects the failures it caused, and the job's restart policy says
whether that is a crash (retried from the latest checkpoint) or an error. A replica whose actor
died or whose node left the cluster counts as killed by a signal, as a lost pod does in
Kubeflow. A trial without replicas is an attempt of one actor whose exception is reported at
once, and whose actor can be kept warm for the next trial.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from hypersweep.launchers._decisions import SharedDecisions
from hypersweep.launchers._failures import ReplicaFailure, failure_event
from hypersweep.launchers._ray_actor import PORT_LISTEN, PORT_RESERVE
from hypersweep.orchestrator._events import (
    Checkpointed,
    Completed,
    Crashed,
    Errored,
    Event,
    Reported,
    Stopped,
    TrialAssignment,
)
from hypersweep.orchestrator._job import ReplicaId, TrainJob
from hypersweep.orchestrator._objective import ObjectiveRef
from hypersweep.orchestrator._rendezvous import (
    cluster_addresses,
    jax_env,
    pytorch_env,
    tensorflow_env,
)

logger = logging.getLogger("hypersweep")

POLL_SECONDS = 30.0
"""How long one ``messages`` call waits in the actor before it returns empty-handed."""

LINGER_SECONDS = 1.0
"""How long an actor holds reports that await no answer, to send them in one batch.

Each batch costs the driver a Ray call, whatever its size, so fewer, larger batches are what
lets one driver keep up with hundreds of trials; a report that waits for a decision, a
checkpoint or the trial's end sends the batch at once, so only the storage and callbacks see
the reports between decisions up to this much later."""

Phase = Literal["starting", "running", "finishing", "failing", "done"]


def describe_actor_error(error: BaseException) -> str:
    """A one-line reading of why a Ray actor call failed (Ray's messages span many lines)."""
    text = " ".join(str(error).split())
    marker = "The actor is dead because "
    if marker in text:
        reason = text.split(marker, 1)[1].split(". ", 1)[0].rstrip(".")
        return f"the Ray actor died: {reason}"
    head = text.split(". ", 1)[0][:200] or "no details"
    return f"the Ray actor was lost ({type(error).__name__}: {head})"


@dataclass
class SharedActor:
    """An actor that runs up to ``slots`` trials at once (``trials_per_actor``), in the
    placement group it owns; ``assigned`` slots have been given to trials so far.

    The driver talks to the actor, not to each slot: one long-polling ``messages`` call
    returns what every slot said, and the answers of a pass of the driver's loop go in one
    ``decide_many`` call, so that the driver's Ray calls grow with actors, not trials.
    """

    actor: Any
    placement_group: Any
    slots: int
    assigned: int = 0
    dead: bool = False
    placed: bool = False  # a slot's prepare() answered: the actor runs
    pending: Any = None  # the outstanding messages() call
    owners: dict[int, RayAttempt] = field(default_factory=dict)  # slot -> its latest attempt
    answers: list[tuple[int, str, int | None]] = field(default_factory=list)  # not yet sent
    unanswered: int = 0  # reports of the last reply that wait and have no answer yet

    def answer(self, slot: int, decision: str, decide_from: int | None) -> None:
        """Queue a slot's answer; send the queue once every waiting report of the last reply
        has its answer (the trials need not wait for the rest of the driver's pass)."""
        self.answers.append((slot, decision, decide_from))
        self.unanswered -= 1
        if self.unanswered <= 0:
            self.send_answers()

    def poll(self) -> None:
        """Issue the next long-polling ``messages`` call, for every slot."""
        self.pending = self.actor.messages.remote(POLL_SECONDS, LINGER_SECONDS)

    def send_answers(self) -> None:
        """Send the answers decided since the last call, in one actor call."""
        if self.answers and not self.dead:
            self.actor.decide_many.remote(self.answers)
        self.answers = []
        self.unanswered = 0

    def next_slot(self) -> int | None:
        """A slot that no trial has had yet, or None."""
        if self.dead or self.assigned >= self.slots:
            return None
        self.assigned += 1
        return self.assigned - 1

    def end(self) -> None:
        """Kill the actor (with whatever its slots still run) and free its placement group."""
        self.dead = True
        kill_actor(self.actor)
        remove_group(self.placement_group)


@dataclass
class RayReplica:
    """One replica's actor and what the driver knows of it.

    A trial on a shared actor (``shared`` set) is one ``slot`` of it: every call names the
    slot, and ending the trial cancels the slot rather than killing the actor.
    """

    id: ReplicaId
    actor: Any
    placement_group: Any = None  # owned by this replica when it is a warm, reusable slot
    shared: SharedActor | None = None
    slot: int = 0
    info: dict[str, Any] | None = None  # from TrialActor.prepare: node_id, ip, pid, port
    has_objective: str | None = None  # the key of the objective the actor has loaded
    pending: Any = None  # the outstanding prepare() or messages() call
    pending_kind: Literal["prepare", "messages"] = "prepare"
    finished: bool = False
    dead: bool = False
    waiting_step: int | None = None

    def poll(self) -> None:
        """Issue the next long-polling ``messages`` call (a shared actor's slots have one,
        the actor's own)."""
        if self.shared is not None:
            return
        self.pending = self.actor.messages.remote(POLL_SECONDS, LINGER_SECONDS)
        self.pending_kind = "messages"

    def end(self) -> None:
        """Kill this replica's actor, or give up its slot of a shared actor that runs on."""
        self.dead = self.finished = True
        self.pending = None
        if self.shared is None:
            kill_actor(self.actor)
            remove_group(self.placement_group)
        elif not self.shared.dead:
            self.actor.cancel.remote(self.slot)


@dataclass
class RayAttempt:
    """One attempt of one trial: its replicas (rank order), placement group and phase.

    ``phase`` is ``starting`` until every replica has been placed and told to run; then
    ``running``; then ``finishing`` (rank 0 ended, the others get ``grace`` seconds) or
    ``failing`` (a replica failed, ``failure_window`` seconds to collect the failures that
    follow); then ``done``. ``reusable`` says that a trial without replicas ended normally and
    its actor may run the next trial.
    """

    assignment: TrialAssignment
    job: TrainJob | None
    replicas: list[RayReplica]
    placement_group: Any = None
    grace: float = 5.0
    failure_window: float = 1.0
    phase: Phase = "starting"
    deadline: float | None = None
    reusable: bool = False
    started: float = field(default_factory=time.monotonic)
    _shared: SharedDecisions = field(default_factory=SharedDecisions)
    _failures: list[ReplicaFailure] = field(default_factory=list)
    # Whether each of rank 0's reports passed on (and not yet answered) awaits its answer:
    # the orchestrator answers every report in order; only those that wait get the answer.
    _awaits: deque[bool] = field(default_factory=deque)

    @property
    def trial_number(self) -> int:
        return self.assignment.trial_number

    @property
    def world_size(self) -> int:
        return len(self.replicas)

    # --- start ---------------------------------------------------------------------------

    def hold_port(self, rank: int) -> str | None:
        """What replica ``rank`` must reserve before the rendezvous environment is known."""
        if self.job is None:
            return None
        if self.job.framework == "pytorch":
            return PORT_LISTEN if rank == 0 else None
        if self.job.framework == "jax":  # process 0's coordinator binds it
            return PORT_RESERVE if rank == 0 else None
        return PORT_RESERVE

    def prepare(self) -> None:
        """Ask every replica where it runs (each answers once its actor is placed)."""
        for member in self.replicas:
            member.pending = member.actor.prepare.remote(self.hold_port(member.id.rank))
            member.pending_kind = "prepare"

    def on_prepared(
        self, member: RayReplica, info: dict[str, Any], objective: ObjectiveRef, payload: Any = None
    ) -> None:
        """Record a placed replica; once all are placed, start every one of them."""
        member.info = info
        if self.phase == "starting" and all(m.info is not None for m in self.replicas):
            self.run(objective, payload)

    def run(self, objective: ObjectiveRef, payload: Any = None) -> None:
        """Give every replica its environment and start the attempt.

        ``payload`` is the objective put in Ray's object store once for the sweep: a new actor
        gets it from there (once per node) rather than in each call's arguments.
        """
        environments = self._environments()
        shipped = objective if payload is None else payload
        # The order trials are dispatched in (retries before new trials) is the driver's.
        logger.debug(
            "Dispatching trial %d attempt %d to its actor(s)",
            self.trial_number,
            self.assignment.attempt,
        )
        for member in self.replicas:
            rank = member.id.rank
            send = None if member.has_objective == objective.key else shipped
            replica = (rank, self.world_size) if self.job is not None else None
            serve_store = self.job is not None and self.hold_port(rank) == PORT_LISTEN
            member.actor.run.remote(
                send,
                objective.key,
                self.assignment,
                environments[rank],
                replica,
                serve_store,
                member.slot,
            )
            member.has_objective = objective.key
            if member.pending is None:  # a warm actor is being polled already
                member.poll()
        self.phase = "running"

    def _environments(self) -> list[dict[str, str]]:
        """Each replica's rendezvous environment, from where the replicas were placed."""
        job = self.job
        if job is None:
            # Ray sets CUDA_VISIBLE_DEVICES only for actors that asked for GPUs: as locally,
            # a trial without GPUs sees none.
            gpus = (self.replicas[0].info or {}).get("gpus")
            return [{} if gpus else {"CUDA_VISIBLE_DEVICES": ""}]
        infos = [member.info or {} for member in self.replicas]
        if job.framework == "pytorch":
            master = infos[0]
            rendezvous = [
                pytorch_env(
                    job,
                    rank,
                    master_addr=master["ip"],
                    master_port=master["port"],
                    agent_store=True,
                )
                for rank in range(self.world_size)
            ]
        elif job.framework == "jax":
            coordinator = infos[0]
            rendezvous = [
                jax_env(
                    job,
                    rank,
                    coordinator_addr=coordinator["ip"],
                    coordinator_port=coordinator["port"],
                )
                for rank in range(self.world_size)
            ]
        else:
            cluster = cluster_addresses(
                job, lambda replica: infos[replica.rank]["ip"], lambda r: infos[r.rank]["port"]
            )
            rendezvous = [tensorflow_env(job, rank, cluster) for rank in range(self.world_size)]
        environments = []
        for member, info in zip(self.replicas, infos, strict=True):
            rank = member.id.rank
            group = job.group_of(rank)
            env = {**job.env, **group.env, **rendezvous[rank]}
            if not info.get("gpus"):
                # Ray sets CUDA_VISIBLE_DEVICES only for actors that asked for GPUs; as locally,
                # a replica without GPUs sees none. (Ray sets OMP_NUM_THREADS from num_cpus.)
                env["CUDA_VISIBLE_DEVICES"] = ""
            environments.append(env)
        return environments

    # --- messages ------------------------------------------------------------------------

    def awaiting(self) -> int:
        """Rank 0's reports passed on that wait for their answer."""
        return sum(self._awaits)

    def on_messages(self, member: RayReplica, messages: list[tuple[Any, ...]]) -> list[Event]:
        """Handle a batch from ``member``; poll it again unless the attempt is over for it."""
        events: list[Event] = []
        for message in messages:
            self._on_message(member, message, events)
        if not member.dead and (self.phase != "done" or self.reusable):
            member.poll()
        else:
            member.pending = None
        return events

    def _on_message(
        self, member: RayReplica, message: tuple[Any, ...], events: list[Event]
    ) -> None:
        kind = message[0]
        rank = member.id.rank
        number = self.trial_number
        if kind == "report":
            if rank == 0:
                if self.phase == "running":
                    waits = message[3] if len(message) > 3 else True
                    self._awaits.append(waits)
                    if waits:
                        self._shared.pending = message[1]
                    events.append(Reported(number, message[1], message[2]))
            else:
                self._answer_or_wait(member, message[1])
        elif kind == "sync":  # every message before it has been handled
            if not member.dead:
                member.actor.acknowledge.remote(member.slot)
        elif kind == "checkpoint":
            if rank == 0 and self.phase == "running":
                events.append(Checkpointed(number, message[1], message[2]))
        elif kind in ("result", "stopped"):
            member.finished = True
            if rank == 0 and self.phase == "running":
                if kind == "result":
                    events.append(Completed(number, message[1]))
                else:
                    events.append(Stopped(number, message[1]))
                if self.job is None:
                    self._end(reusable=True)
                else:
                    self._enter("finishing", self.grace)
                    self._release_waiting()
        elif kind == "error":
            member.finished = True
            if self.job is None:
                if self.phase == "running":
                    events.append(Errored(number, message[1], message[2]))
                    self._end(reusable=True)
            elif self.phase in ("starting", "running", "failing"):
                self._fail(member, f"raised {message[1]}", message[2], died=False, by_signal=False)

    def on_death(self, member: RayReplica, error: BaseException) -> list[Event]:
        """``member``'s actor died (killed, out of memory, its node gone) or never started."""
        member.dead = member.finished = True
        member.pending = None
        if member.shared is not None:  # its other slots' trials learn it from their calls
            member.shared.end()
        events: list[Event] = []
        if self.phase in ("starting", "running", "failing"):
            what = describe_actor_error(error)
            if self.job is None:
                events.append(Crashed(self.trial_number, what))
                self._end(reusable=False)
            else:
                self._fail(member, what, "", died=True, by_signal=True)
        return events

    def _fail(
        self, member: RayReplica, what: str, details: str, *, died: bool, by_signal: bool
    ) -> None:
        failure = ReplicaFailure.of(
            member.id, self.world_size, what, details, died=died, by_signal=by_signal
        )
        self._failures.append(failure)
        if self.phase in ("starting", "running"):
            self._enter("failing", self.failure_window)

    def _enter(self, phase: Literal["finishing", "failing"], seconds: float) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds

    def _end(self, *, reusable: bool) -> None:
        self.phase = "done"
        self.deadline = None
        self.reusable = reusable

    # --- decisions -----------------------------------------------------------------------

    def respond(self, decision: str, decide_from: int | None = 0) -> None:
        """Rank 0's pending report gets ``decision``; so does every rank waiting at its step.

        ``decide_from`` goes with it to a trial without replicas: its reports before that step
        will not wait for an answer. Every report of a multi-replica trial waits (its other
        ranks must get rank 0's decision at the same step).
        """
        if self.phase != "running":
            return
        if self._awaits and not self._awaits.popleft():
            return  # the answer to a report that did not wait for it
        step = self._shared.decide(decision)
        if step is None:
            return
        rank0 = self.replicas[0]
        if rank0.shared is not None:  # sent with the actor's other answers
            rank0.shared.answer(rank0.slot, decision, decide_from)
        else:
            rank0.actor.decide.remote(decision, decide_from if self.job is None else 0)
        for member in self.replicas[1:]:
            if member.waiting_step is not None and member.waiting_step <= step:
                self._answer(member, self._shared.settled(member.waiting_step))

    def _answer_or_wait(self, member: RayReplica, step: int) -> None:
        decision = self._shared.answer(step, rank0_ended=self.phase == "finishing")
        if decision is None:
            member.waiting_step = step
        else:
            self._answer(member, decision)

    def _answer(self, member: RayReplica, decision: str) -> None:
        member.waiting_step = None
        if not member.dead:
            member.actor.decide.remote(decision)

    def _release_waiting(self) -> None:
        for member in self.replicas[1:]:
            if member.waiting_step is not None:
                self._answer(member, self._shared.settled(member.waiting_step))

    # --- ending --------------------------------------------------------------------------

    def tick(self, now: float) -> list[Event]:
        """End a finishing or failing attempt once settled or past its deadline."""
        if self.phase not in ("finishing", "failing"):
            return []
        settled = all(member.finished for member in self.replicas)
        if not settled and (self.deadline is None or now < self.deadline):
            return []
        failing = self.phase == "failing"
        self._end(reusable=False)
        return [self._failure_event()] if failing else []

    def _failure_event(self) -> Event:
        assert self.job is not None
        return failure_event(self.trial_number, self.job, self._failures)

    def next_deadline(self) -> float | None:
        return self.deadline if self.phase in ("finishing", "failing") else None

    def kill(self) -> None:
        """End every replica (kill its actor, or cancel its slot of a shared actor) and give
        the placement group back to the cluster."""
        self._end(reusable=False)
        for member in self.replicas:
            member.end()
        remove_group(self.placement_group)


def kill_actor(actor: Any) -> None:
    """Kill a Ray actor now; an actor that is already gone is fine."""
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception as error:  # noqa: BLE001 - dead already, or the cluster is going away
        logger.debug("could not kill actor %s: %s", actor, error)


def remove_group(group: Any) -> None:
    """Remove a placement group (and whatever still runs in it), if there is one."""
    if group is None:
        return
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(group)
    except Exception as error:  # noqa: BLE001 - removed already, or the cluster is going away
        logger.debug("could not remove placement group %s: %s", group, error)
