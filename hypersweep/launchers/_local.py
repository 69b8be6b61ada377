"""The embedded default: trials run in worker processes on this machine.

Workers are started once and reused across trials (a trial that ends normally, is pruned or
raises leaves its worker warm), so per-trial overhead is a message round trip, not a Python
start-up. A worker that dies mid-trial (SIGKILL, OOM) is noticed at once through its socket and
reported as a crash, which the orchestrator retries from the trial's checkpoint.

A sweep with a :class:`~hypersweep.orchestrator._job.TrainJob` runs each trial as a gang of
replica processes instead (see ``_gang``). PyTorch replicas are lent by a pool of warm workers
that imported torch once (``_warm_pool``), plus a ready spare that takes a lost replica's place:
each attempt gets a fresh store, port, process group and environment, but not a fresh process.
TensorFlow replicas start afresh for every attempt:
a TF process joins one cluster for its whole life.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path

from hypersweep._errors import ConfigError
from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.launchers._elastic import ElasticGang
from hypersweep.launchers._gang import Gang
from hypersweep.launchers._process import Worker, describe_exit
from hypersweep.launchers._resources import GpuPool, PortAllocator, detect_gpus
from hypersweep.launchers._warm_pool import WARM_FRAMEWORKS, WarmPool
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
from hypersweep.orchestrator._job import TrainJob

__all__ = ["LocalLauncher", "describe_exit"]

_FRAMEWORK_MODULES = {
    "pytorch": ("torch", "torch"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "jax": ("jax", "jax"),
}


class LocalLauncher(Launcher):
    """Runs each trial in a local worker process, ``max_concurrent`` at a time.

    Args:
        max_concurrent: trials running at once; defaults to the number of CPUs (for
            multi-replica trials: the number of CPUs divided by the replicas per trial).
        reuse_workers: keep workers warm between trials (set False to isolate every trial);
            for PyTorch multi-replica trials, keep a pool of warm replica workers (and a
            ready spare for a gang restart).
        log_dir: if set, each trial's stdout and stderr go to ``log_dir/trial-NNNNN.log``
            (``trial-NNNNN-rankR.log`` per replica) instead of this terminal.
        gpus: GPU ids that multi-replica trials may use; None detects them
            (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``).
        replica_grace: seconds the other replicas of a trial get to end by themselves once
            rank 0 has returned or stopped, before they are killed.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        *,
        reuse_workers: bool = True,
        log_dir: str | os.PathLike[str] | None = None,
        gpus: list[str] | list[int] | None = None,
        replica_grace: float = 5.0,
    ) -> None:
        self._max_concurrent_given = max_concurrent
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.reuse_workers = reuse_workers
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.replica_grace = replica_grace
        self._gpu_ids = None if gpus is None else [str(gpu) for gpu in gpus]
        self._context: SweepContext | None = None
        self._idle: list[Worker] = []
        self._busy: dict[int, Worker] = {}
        self._env: dict[str, str] = {}
        # Multi-replica trials: running gangs by trial, gangs whose outcome is reported but
        # whose processes are still ending, and launches waiting for GPUs.
        self._job: TrainJob | None = None
        self._gangs: dict[int, Gang] = {}
        self._draining: list[Gang] = []
        self._pending: list[TrialAssignment] = []
        self._backlog: list[Event] = []
        self._ports = PortAllocator()
        self._gpus = GpuPool([])
        self._pool: WarmPool | None = None

    def start(self, context: SweepContext) -> None:
        self._context = context
        self._env = dict(os.environ)
        self._env["HYPERSWEEP_SYS_PATH"] = json.dumps([p or os.getcwd() for p in sys.path])
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self._job = context.job
        if self._job is not None:
            self._prepare_job(self._job)
            if self.reuse_workers and self._job.framework in WARM_FRAMEWORKS:
                size = self.max_concurrent * self._job.world_size
                self._pool = WarmPool(self._job.framework, self._env, size)
                self._pool.fill()  # they import while the sweep gets going

    def _prepare_job(self, job: TrainJob) -> None:
        """Check that this machine can run the job at all, before any trial starts."""
        module, extra = _FRAMEWORK_MODULES[job.framework]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"replicas.framework: {job.framework} trials need {module}; "
                f"pip install 'hypersweep[{extra}]'"
            )
        if self._max_concurrent_given is None:
            self.max_concurrent = max(1, (os.cpu_count() or 1) // job.world_size)
        if job.gpus:
            ids = self._gpu_ids if self._gpu_ids is not None else detect_gpus()
            self._gpus = GpuPool(ids)
            if job.gpus > self._gpus.total:
                found = ", ".join(self._gpus.ids) or "none"
                raise ConfigError(
                    f"replicas.gpus_per_replica: a trial needs {job.gpus} GPUs "
                    f"({job.world_size} replicas) but this machine has {self._gpus.total} "
                    f"(found: {found}); use fewer replicas or gpus_per_replica=0 to run on CPU"
                )

    def free_slots(self) -> int:
        if self._job is None:
            return self.max_concurrent - len(self._busy)
        used = len(self._gangs) + len(self._draining) + len(self._pending)
        free = self.max_concurrent - used
        if self._job.gpus:
            unclaimed = self._gpus.free - len(self._pending) * self._job.gpus
            free = min(free, unclaimed // self._job.gpus)
        return max(0, free)

    def launch(self, assignment: TrialAssignment) -> None:
        assert self._context is not None, "start() first"
        if self._job is not None:
            self._pending.append(assignment)
            self._start_pending()
            return
        worker = self._idle.pop() if self._idle else Worker(self._env)
        objective = self._context.objective
        if worker.objective_key != objective.key:
            worker.connection.send(("objective", objective))
            worker.objective_key = objective.key
        log_path = None
        if self.log_dir is not None:
            log_path = str(self.log_dir / f"trial-{assignment.trial_number:05d}.log")
        worker.trial_number = assignment.trial_number
        self._busy[assignment.trial_number] = worker
        try:
            worker.connection.send(("run", objective.key, assignment, log_path))
        except OSError:
            pass  # a dead worker shows up as a crash at the next poll

    def _start_pending(self) -> None:
        """Start the gangs waiting for GPUs, in order, as far as free GPUs allow."""
        assert self._context is not None and self._job is not None
        while self._pending:
            assignment = self._pending[0]
            job = self._job.for_trial(assignment.sweep_name, assignment.trial_number)
            gpus = self._gpus.acquire(job.gpus) if job.gpus else []
            if gpus is None:
                return
            self._pending.pop(0)
            if job.min_replicas is None:
                gang = Gang(assignment, job, gpus, grace=self.replica_grace, pool=self._pool)
            else:  # Replicas(n=(min, max)): each round starts fresh processes
                gang = ElasticGang(assignment, job, gpus, grace=self.replica_grace)
            try:
                gang.start(self._context.objective, self._env, self._ports, self.log_dir)
            except OSError as error:
                self._gpus.release(gpus)
                message = f"could not start the trial's replicas: {error}"
                self._backlog.append(Crashed(assignment.trial_number, message))
                continue
            self._gangs[assignment.trial_number] = gang

    def poll(self, timeout: float) -> list[Event]:
        events, self._backlog = self._backlog, []
        handlers: dict[Connection, Callable[[list[Event]], None]] = {}
        for worker in (*self._busy.values(), *self._idle):
            handlers[worker.connection] = functools.partial(self._drain, worker)
        self._dispatch(handlers, 0.0 if events else timeout, events)
        self._settle_gangs(events)
        return events

    def _dispatch(
        self,
        handlers: dict[Connection, Callable[[list[Event]], None]],
        timeout: float,
        events: list[Event],
    ) -> None:
        """Wait up to ``timeout`` (or a gang's deadline) and handle what the processes sent."""
        gangs = (*self._gangs.values(), *self._draining)
        for gang in gangs:
            for connection, member in gang.connections().items():
                handlers[connection] = functools.partial(gang.drain, member)
        deadlines = [gang.deadline for gang in gangs if gang.deadline is not None]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
        if handlers:
            for ready in wait(list(handlers), timeout):
                assert isinstance(ready, Connection)
                handlers[ready](events)
        elif timeout > 0:
            time.sleep(timeout)

    def _settle_gangs(self, events: list[Event]) -> None:
        """Move gangs whose outcome is reported to draining; forget those that have ended."""
        now = time.monotonic()
        for number, gang in list(self._gangs.items()):
            gang.tick(now, events)
            if gang.phase in ("finishing", "done"):
                del self._gangs[number]
                if gang.phase == "finishing":
                    self._draining.append(gang)
                else:
                    self._gpus.release(gang.gpus)
        for gang in list(self._draining):
            gang.tick(now, events)
            if gang.phase == "done":
                self._draining.remove(gang)
                self._gpus.release(gang.gpus)
        if self._pending:
            self._start_pending()

    def _drain(self, worker: Worker, events: list[Event]) -> None:
        while True:
            try:
                message = worker.connection.recv()
            except (EOFError, OSError):
                self._on_death(worker, events)
                return
            number = worker.trial_number
            kind = message[0]
            if number is not None:
                if kind == "report":
                    events.append(Reported(number, message[1], message[2]))
                elif kind == "checkpoint":
                    events.append(Checkpointed(number, message[1], message[2]))
                elif kind == "result":
                    events.append(Completed(number, message[1]))
                    self._release(worker)
                elif kind == "stopped":
                    events.append(Stopped(number, message[1]))
                    self._release(worker)
                elif kind == "error":
                    events.append(Errored(number, message[1], message[2]))
                    self._release(worker)
            if worker.connection.closed or not worker.connection.poll(0):
                return

    def _release(self, worker: Worker) -> None:
        assert worker.trial_number is not None
        del self._busy[worker.trial_number]
        worker.trial_number = None
        if self.reuse_workers:
            self._idle.append(worker)
        else:
            self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        try:
            worker.connection.send(("exit",))
            worker.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        worker.kill()

    def _on_death(self, worker: Worker, events: list[Event]) -> None:
        number = worker.trial_number
        worker.kill()
        if number is not None:
            del self._busy[number]
            events.append(Crashed(number, describe_exit(worker.process.returncode)))
        elif worker in self._idle:
            self._idle.remove(worker)

    def respond(self, trial_number: int, decision: str) -> None:
        gang = self._gangs.get(trial_number)
        if gang is not None:
            gang.respond(decision)
            return
        worker = self._busy.get(trial_number)
        if worker is None:
            return
        try:
            worker.connection.send(("decision", decision))
        except OSError:
            pass  # the death is reported by the next poll

    def stop(self, trial_number: int) -> None:
        gang = self._gangs.pop(trial_number, None)
        if gang is not None:
            gang.kill()
            self._gpus.release(gang.gpus)
        self._pending = [a for a in self._pending if a.trial_number != trial_number]
        worker = self._busy.pop(trial_number, None)
        if worker is not None:
            worker.kill()

    def shutdown(self) -> None:
        for gang in self._gangs.values():
            gang.kill()
            self._gpus.release(gang.gpus)
        self._gangs.clear()
        self._pending.clear()
        # Gangs whose rank 0 has finished are ending by themselves: let them, within their
        # grace period, so that the other ranks' last writes are not cut off.
        while self._draining:
            ignored: list[Event] = []
            self._dispatch({}, 0.1, ignored)
            self._settle_gangs(ignored)
        for worker in self._busy.values():
            worker.kill()
        self._busy.clear()
        for worker in self._idle:
            self._retire(worker)
        self._idle.clear()
        if self._pool is not None:
            self._pool.shutdown()
