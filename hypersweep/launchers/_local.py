"""The embedded default: trials run in worker processes on this machine.

Workers are started once and reused across trials (a trial that ends normally, is pruned or
raises leaves its worker warm), so per-trial overhead is a message round trip, not a Python
start-up. A worker that dies mid-trial (SIGKILL, OOM) is noticed at once through its socket and
reported as a crash, which the orchestrator retries from the trial's checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

from hypersweep.launchers._base import Launcher, SweepContext
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


def describe_exit(returncode: int | None) -> str:
    """A human reading of a process's exit status."""
    if returncode is None:
        return "the worker stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory, or killed)" if -returncode == signal.SIGKILL else ""
        return f"the worker was killed by {name}{hint}"
    return f"the worker exited with code {returncode}"


class _Worker:
    def __init__(self, env: dict[str, str]) -> None:
        parent_end, child_end = socket.socketpair()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypersweep.launchers._worker",
                str(child_end.fileno()),
                str(os.getpid()),
            ],
            pass_fds=(child_end.fileno(),),
            env=env,
            start_new_session=True,  # own process group: Ctrl-C reaches only the driver
        )
        child_end.close()
        self.connection = Connection(parent_end.detach())
        self.objective_key: str | None = None
        self.trial_number: int | None = None

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.connection.close()


class LocalLauncher(Launcher):
    """Runs each trial in a local worker process, ``max_concurrent`` at a time.

    Args:
        max_concurrent: trials running at once; defaults to the number of CPUs.
        reuse_workers: keep workers warm between trials (set False to isolate every trial).
        log_dir: if set, each trial's stdout and stderr go to ``log_dir/trial-NNNNN.log``
            instead of this terminal.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        *,
        reuse_workers: bool = True,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.reuse_workers = reuse_workers
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._context: SweepContext | None = None
        self._idle: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._env: dict[str, str] = {}

    def start(self, context: SweepContext) -> None:
        self._context = context
        self._env = dict(os.environ)
        self._env["HYPERSWEEP_SYS_PATH"] = json.dumps([p or os.getcwd() for p in sys.path])
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)

    def free_slots(self) -> int:
        return self.max_concurrent - len(self._busy)

    def launch(self, assignment: TrialAssignment) -> None:
        assert self._context is not None, "start() first"
        worker = self._idle.pop() if self._idle else _Worker(self._env)
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

    def poll(self, timeout: float) -> list[Event]:
        workers = {worker.connection: worker for worker in (*self._busy.values(), *self._idle)}
        if not workers:
            time.sleep(timeout)
            return []
        events: list[Event] = []
        for connection in wait(list(workers), timeout):
            assert isinstance(connection, Connection)
            self._drain(workers[connection], events)
        return events

    def _drain(self, worker: _Worker, events: list[Event]) -> None:
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

    def _release(self, worker: _Worker) -> None:
        assert worker.trial_number is not None
        del self._busy[worker.trial_number]
        worker.trial_number = None
        if self.reuse_workers:
            self._idle.append(worker)
        else:
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        try:
            worker.connection.send(("exit",))
            worker.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        worker.kill()

    def _on_death(self, worker: _Worker, events: list[Event]) -> None:
        number = worker.trial_number
        worker.kill()
        if number is not None:
            del self._busy[number]
            events.append(Crashed(number, describe_exit(worker.process.returncode)))
        elif worker in self._idle:
            self._idle.remove(worker)

    def respond(self, trial_number: int, decision: str) -> None:
        worker = self._busy.get(trial_number)
        if worker is None:
            return
        try:
            worker.connection.send(("decision", decision))
        except OSError:
            pass  # the death is reported by the next poll

    def stop(self, trial_number: int) -> None:
        worker = self._busy.pop(trial_number, None)
        if worker is not None:
            worker.kill()

    def shutdown(self) -> None:
        for worker in self._busy.values():
            worker.kill()
        self._busy.clear()
        for worker in self._idle:
            self._retire(worker)
        self._idle.clear()

    def worker_pids(self) -> dict[int, int]:
        """Trial number -> pid of the worker running it (for tests and tooling)."""
        return {number: worker.process.pid for number, worker in self._busy.items()}
