"""One attempt of a multi-replica trial on this machine: a gang of worker processes.

The replicas start together and end together. The launcher supervises them itself instead of
handing them to torch's elastic agent (``torch.distributed.run``): the agent restarts workers on
its own and knows nothing of the sweep, whereas here a failure must stop the whole gang, be
counted against the trial's retries, resume from the trial's checkpoint, and a pruning decision
must reach every rank; and TensorFlow has no agent at all. What torchrun's agent does for
rendezvous is kept as it is: the c10d store is served on a port allocated by the launcher, and
every rank joins it as a client (``TORCHELASTIC_USE_AGENT_STORE``), so user code calls
``init_process_group()`` exactly as under torchrun.

How a report becomes one decision on every rank: each rank's ``hypersweep.report(step)`` sends
its report and blocks. Rank 0's report goes to the orchestrator (it is the trial's metric); the
other ranks' reports wait here until rank 0's decision for that step is known, and then get the
same answer. So at any step every rank continues, or every rank raises ``TrialPruned``, and no
rank is left waiting in a collective for a rank that stopped.

When a replica fails (an exception, a signal, OOM), the others are usually left blocked in a
collective, or fail in turn because their peer is gone. The gang kills every replica and
reports the root cause with its rank: the first process death if there was one (a replica
killed by a signal takes its peers down with it), else the first exception, with its
traceback. After an exception it waits up to a second for such a death before deciding.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import send_handle
from pathlib import Path
from typing import Any, Literal

from hypersweep.launchers._decisions import SharedDecisions
from hypersweep.launchers._failures import ReplicaFailure, failure_event
from hypersweep.launchers._process import ReplicaRun, Worker, describe_exit
from hypersweep.launchers._resources import HeldPort, PortAllocator
from hypersweep.launchers._warm_pool import WarmPool, sys_path_of
from hypersweep.orchestrator._events import (
    Checkpointed,
    Completed,
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

LOCALHOST = "127.0.0.1"


@dataclass
class _Replica:
    id: ReplicaId
    worker: Worker
    finished: bool = False  # it returned, raised or died: nothing more will come from it
    dead: bool = False
    waiting_step: int | None = None  # its report waits for rank 0's decision at this step
    env: dict[str, str] | None = None  # a warm worker's environment for this replica
    reset: tuple[bool, str] | None = None  # a warm worker's answer after its replica ended
    reset_asked: bool = False  # a warm worker was asked to reset (leave its process group)


@dataclass
class Gang:
    """The processes of one attempt of one multi-replica trial, and what they have said.

    ``phase`` is ``running``; then ``finishing`` once rank 0 has returned or stopped (the
    trial's outcome is known and reported; the other ranks get ``grace`` seconds to end by
    themselves), or ``failing`` once a replica failed (after an exception, up to
    ``failure_window`` seconds for the death of a peer that may have caused it; none after a
    death); then ``done`` when every process is gone.
    """

    assignment: TrialAssignment
    job: TrainJob
    gpus: list[str]
    grace: float = 5.0
    failure_window: float = 1.0
    phase: Literal["running", "finishing", "failing", "done"] = "running"
    deadline: float | None = None
    replicas: list[_Replica] = field(default_factory=list)
    held_ports: list[HeldPort] = field(default_factory=list)
    _shared: SharedDecisions = field(default_factory=SharedDecisions)
    _failures: list[ReplicaFailure] = field(default_factory=list)
    _ports: PortAllocator | None = None
    # Warm workers (PyTorch): replicas are lent by the pool and given back when they end. A
    # failing gang then aborts its survivors (SIGUSR1) and gives them ``abort_window`` seconds
    # to come back reusable, instead of killing them.
    pool: WarmPool | None = None
    abort_window: float = 2.0
    _aborted: bool = False

    @property
    def trial_number(self) -> int:
        return self.assignment.trial_number

    # --- start ---------------------------------------------------------------------------

    def start(
        self,
        objective: ObjectiveRef,
        base_env: dict[str, str],
        ports: PortAllocator,
        log_dir: Path | None,
    ) -> None:
        """Reserve ports and start every replica; on any error, undo what was started."""
        self._ports = ports
        try:
            self._start(objective, base_env, ports, log_dir)
        except BaseException:
            self.kill()
            raise

    def _start(
        self,
        objective: ObjectiveRef,
        base_env: dict[str, str],
        ports: PortAllocator,
        log_dir: Path | None,
    ) -> None:
        job = self.job
        ids = job.replica_ids()
        store: HeldPort | None = None
        if job.framework == "pytorch":
            # The store's listening socket is bound here and inherited by rank 0, so the port
            # is never free between its allocation and its use.
            store = ports.allocate(LOCALHOST, listen=True)
            self.held_ports.append(store)
            rendezvous = [
                pytorch_env(
                    job,
                    replica.rank,
                    master_addr=LOCALHOST,
                    master_port=store.port,
                    agent_store=True,
                )
                for replica in ids
            ]
        elif job.framework == "jax":
            # Process 0's coordinator (gRPC) binds the port itself, as TF's server does.
            coordinator = ports.allocate("0.0.0.0")
            self.held_ports.append(coordinator)
            rendezvous = [
                jax_env(
                    job, replica.rank, coordinator_addr=LOCALHOST, coordinator_port=coordinator.port
                )
                for replica in ids
            ]
        else:
            # TF's gRPC server binds its port itself; the held socket keeps everyone else off
            # it until then (and stays here until the gang ends).
            self.held_ports.extend(ports.allocate("0.0.0.0") for _ in ids)
            cluster = cluster_addresses(
                job, lambda replica: LOCALHOST, lambda replica: self.held_ports[replica.rank].port
            )
            rendezvous = [tensorflow_env(job, replica.rank, cluster) for replica in ids]

        store_fd = store.fileno() if store is not None else None
        warm = self.pool.acquire(len(ids)) if self.pool is not None else None
        gpu_offset = 0
        for replica in ids:
            group = job.group_of(replica.rank)
            env = {**base_env, **job.env, **group.env, **rendezvous[replica.rank]}
            count = group.resources.gpus or 0
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus[gpu_offset : gpu_offset + count])
            gpu_offset += count
            _set_threads(env, group.resources.cpus, job.framework)
            if warm is not None:
                self.replicas.append(_Replica(replica, warm[replica.rank], env=env))
                continue
            inherit = (store_fd,) if store_fd is not None and replica.rank == 0 else ()
            self.replicas.append(_Replica(replica, Worker(env, pass_fds=inherit)))

        for member in self.replicas:
            rank = member.id.rank
            log_path = None
            if log_dir is not None:
                log_path = str(log_dir / f"trial-{self.trial_number:05d}-rank{rank}.log")
            run = ReplicaRun(rank, job.world_size, store_fd if rank == 0 else None)
            if member.env is not None:
                self._send_warm(member, objective, log_path, run)
                continue
            self._send(member, ("objective", objective))
            self._send(member, ("run", objective.key, self.assignment, log_path, run))
        if store is not None:
            store.close()  # rank 0 holds it now; the port stays counted as ours until release

    def _send_warm(
        self, member: _Replica, objective: ObjectiveRef, log_path: str | None, run: ReplicaRun
    ) -> None:
        """Hand a warm worker its replica: environment, and rank 0 the store's socket."""
        assert member.env is not None
        worker = member.worker
        try:
            if worker.objective_key != objective.key:
                worker.connection.send(("objective", objective, sys_path_of(member.env)))
                worker.objective_key = objective.key
            message = ("run", objective.key, self.assignment, log_path, run, member.env)
            worker.connection.send(message)
            if run.store_fd is not None:
                send_handle(worker.connection, run.store_fd, worker.process.pid)
        except OSError:
            pass  # a dead replica shows up at the next poll

    # --- messages ------------------------------------------------------------------------

    def connections(self) -> dict[Connection, _Replica]:
        """The sockets of the replicas still alive."""
        return {
            member.worker.connection: member
            for member in self.replicas
            if not member.dead and not member.worker.connection.closed
        }

    def drain(self, member: _Replica, events: list[Event]) -> None:
        """Handle everything replica ``member`` has sent so far."""
        connection = member.worker.connection
        while self.phase != "done":
            try:
                message = connection.recv()
            except (EOFError, OSError):
                self._on_death(member)
                return
            self._on_message(member, message, events)
            if connection.closed or not connection.poll(0):
                return

    def _on_message(self, member: _Replica, message: tuple[Any, ...], events: list[Event]) -> None:
        kind = message[0]
        rank = member.id.rank
        number = self.trial_number
        if kind == "report":
            if rank == 0:
                if self.phase == "running":
                    self._shared.pending = message[1]
                    events.append(Reported(number, message[1], message[2]))
            else:
                self._answer_or_wait(member, message[1])
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
                self._enter("finishing", self.grace)
                self._release_waiting()
        elif kind == "error":
            member.finished = True
            if self.phase in ("running", "failing"):
                self._fail(member, f"raised {message[1]}", message[2], died=False, by_signal=False)
            if self._aborted:
                # It unwound after the abort: leaving its process group now fails the
                # collectives its peers may still be blocked in, so they come back too.
                self._ask_reset(member)
        elif kind == "ready" and self.pool is not None:
            self.pool.note_ready(member.worker)  # lent while it was importing
        elif kind == "reset":
            member.reset = (bool(message[1]), str(message[2]))

    def _on_death(self, member: _Replica) -> None:
        member.worker.kill()  # reap it, and take any children it left with it
        if self.pool is not None:
            self.pool.discard(member.worker)  # its successor starts now, for the restart
        member.dead = member.finished = True
        returncode = member.worker.process.returncode
        if self.phase in ("running", "failing"):
            by_signal = returncode is None or returncode < 0 or returncode >= 128
            self._fail(member, f"{describe_exit(returncode)}", "", died=True, by_signal=by_signal)

    def _fail(
        self, member: _Replica, what: str, details: str, *, died: bool, by_signal: bool
    ) -> None:
        failure = ReplicaFailure.of(
            member.id, self.job.world_size, what, details, died=died, by_signal=by_signal
        )
        self._failures.append(failure)
        if self.phase == "running" or died:
            # A death is the root cause whatever follows: end the gang now. An exception may
            # be the echo of a peer's death that is not seen yet: wait a moment for one.
            # Warm survivors of a death are aborted now and get a moment to come back.
            window = 0.0 if died else self.failure_window
            if self.pool is not None and died:
                self._abort_survivors()
                window = max(window, self.abort_window)
            self._enter("failing", window)

    def _abort_survivors(self) -> None:
        """Interrupt the replicas still running, so they unwind and can be reused."""
        if self._aborted:
            return
        self._aborted = True
        for member in self.replicas:
            if not member.finished:
                try:
                    os.kill(member.worker.process.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass
            elif not member.dead:
                # Its leaving the process group fails the collectives its peers wait in.
                self._ask_reset(member)

    def _ask_reset(self, member: _Replica) -> None:
        if not member.reset_asked:
            member.reset_asked = True
            self._send(member, ("reset",))

    def _enter(self, phase: Literal["finishing", "failing"], seconds: float) -> None:
        self.phase = phase
        self.deadline = time.monotonic() + seconds

    # --- decisions -----------------------------------------------------------------------

    def respond(self, decision: str) -> None:
        """Rank 0's pending report gets ``decision``; so does every rank waiting at its step."""
        if self.phase != "running":
            return
        step = self._shared.decide(decision)
        if step is None:
            return
        self._send(self.replicas[0], ("decision", decision))
        for member in self.replicas[1:]:
            if member.waiting_step is not None and member.waiting_step <= step:
                self._answer(member, self._shared.settled(member.waiting_step))

    def _answer_or_wait(self, member: _Replica, step: int) -> None:
        decision = self._shared.answer(step, rank0_ended=self.phase == "finishing")
        if decision is None:
            member.waiting_step = step
        else:
            self._answer(member, decision)

    def _answer(self, member: _Replica, decision: str) -> None:
        member.waiting_step = None
        self._send(member, ("decision", decision))

    def _release_waiting(self) -> None:
        for member in self.replicas[1:]:
            if member.waiting_step is not None:
                self._answer(member, self._shared.settled(member.waiting_step))

    def _send(self, member: _Replica, message: tuple[Any, ...]) -> None:
        try:
            member.worker.connection.send(message)
        except OSError:
            pass  # a dead replica shows up at the next poll

    # --- ending --------------------------------------------------------------------------

    def tick(self, now: float, events: list[Event]) -> None:
        """End the gang once its outcome is settled: all replicas ended or the deadline passed."""
        if self.phase not in ("finishing", "failing"):
            return
        settled = all(member.finished for member in self.replicas)
        if not settled and (self.deadline is None or now < self.deadline):
            return
        if not settled and self.phase == "failing" and self.pool is not None and not self._aborted:
            # The failure window after an exception is over: abort the warm survivors rather
            # than kill them, and give them a moment to come back.
            self._abort_survivors()
            self.deadline = now + self.abort_window
            return
        failing = self.phase == "failing"
        self.kill()
        if failing:
            events.append(self._failure_event())

    def _failure_event(self) -> Event:
        return failure_event(self.trial_number, self.job, self._failures)

    def kill(self) -> None:
        """SIGKILL every replica (and its children), reap them, and release the ports.

        With a warm pool, replicas that ended by themselves go back to it instead.
        """
        self.phase = "done"
        for member in self.replicas:
            if self.pool is None:
                member.worker.kill()
            elif not member.dead:  # else it is gone already
                if member.finished:
                    self._ask_reset(member)
                    self.pool.give_back(member.worker, member.reset)
                else:
                    self.pool.discard(member.worker)
            member.dead = member.finished = True
        for held in self.held_ports:
            if self._ports is not None:
                self._ports.release(held)
            else:
                held.close()
        self.held_ports = []


def _set_threads(env: dict[str, str], cpus: float | None, framework: str) -> None:
    """Threads per replica: ``cpus`` if given, else 1 as torchrun does for several processes."""
    if cpus is None and "OMP_NUM_THREADS" in env:
        return
    threads = str(max(1, int(cpus or 1)))
    env["OMP_NUM_THREADS"] = threads
    if framework == "tensorflow":
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
