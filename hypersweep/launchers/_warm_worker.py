"""A warm replica worker: a process that imported the trial's framework once and serves gangs.

Started as ``python -m hypersweep.launchers._warm_worker FD PARENT_PID FRAMEWORK`` by the warm
pool (``_warm_pool``). It imports the framework (``torch``, ``torch.distributed``) before it
reads its first message, so that the cost of a Python start and of the import is paid while no
trial waits for it; if no trial waits yet, also what a trial imports on its path
(``torch._dynamo``, which the first ``torch.optim`` optimizer imports). Then it says it is
ready (``("ready",)``) and runs replica after replica, each of a different gang:

- every ``run`` message carries the replica's whole environment: ``os.environ`` is replaced by
  it (rendezvous variables, ``CUDA_VISIBLE_DEVICES``, thread counts), and rank 0 of a PyTorch
  gang receives the listening socket of that gang's c10d store over the worker's socket, so
  each trial gets a fresh store, port and process group;
- the objective is the code one would run under torchrun (``init_process_group()`` from the
  environment); when it ends, however it ends (returned, pruned, raised, aborted), the worker
  resets what a trial leaves behind: a process group still initialised is destroyed, output
  redirected to the trial's log goes back, the working directory and environment are restored;
- it resets when the driver asks (``("reset",)``, once the whole gang has ended, or at once
  after a failure), shutting down the TCP connections the trial left open (a peer blocked in
  a collective on one of them comes back at once), and answers
  ``("reset", reusable, why)``: not reusable once CUDA was initialised (its
  context is bound to the trial's GPUs, and after a fault it cannot be trusted), or when
  resetting failed. The pool replaces such a worker with a fresh one.

``SIGUSR1`` aborts the trial running now (a peer of its gang died): the objective unwinds with
:class:`GangAborted` at the next Python instruction, so a survivor that was computing comes
back warm; one blocked inside a collective comes back when the collective fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import stat
import sys
import traceback
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from types import FrameType
from typing import Any, cast

from hypersweep.launchers._process import ReplicaRun
from hypersweep.launchers._worker import die_with_parent, run_assignment, serve_torch_store
from hypersweep.orchestrator._objective import Objective, ObjectiveRef

# What each framework's warm worker imports ahead of its trials, before it says it is ready.
FRAMEWORK_IMPORTS = {"pytorch": ("torch", "torch.distributed")}
# What it imports afterwards while no trial waits for it: ``torch._dynamo`` is imported by the
# first ``torch.optim`` optimizer a process builds (1.4 s on a 2-core machine), on the path of
# every trial that trains.
FRAMEWORK_WARMUP = {"pytorch": ("torch._dynamo",)}


class GangAborted(BaseException):
    """Raised in a replica's objective when its gang failed elsewhere (``SIGUSR1``).

    A ``BaseException``, so that an objective's ``except Exception`` does not swallow it.
    """


_running = False


def _abort(signum: int, frame: FrameType | None) -> None:
    if _running:
        raise GangAborted("a replica of this trial's gang failed")


class _GuardedConnection:
    """The worker's socket as the trial sees it: a message is never cut by :func:`_abort`.

    ``SIGUSR1`` is held back while a message is written or read, so an abort lands between
    messages and the stream stays whole; it also remembers whether the outcome went out.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.outcome_sent = False

    def send(self, message: tuple[Any, ...]) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            self._connection.send(message)
            if message[0] in ("result", "stopped", "error"):
                self.outcome_sent = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def recv(self) -> Any:
        return self._connection.recv()


def _import(modules: tuple[str, ...] | list[str]) -> None:
    for module in modules:
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - the trial reports it when it imports the module
            return


def _tcp_sockets() -> set[int]:
    """The descriptors of this process's connected TCP sockets (Linux; none elsewhere).

    Listening ones are left out: gloo aborts the process when its listener fails.
    """
    found: set[int] = set()
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return found
    for descriptor in descriptors:
        try:
            if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
                continue
            probe = socket.socket(fileno=os.dup(descriptor))
        except OSError:
            continue
        with probe:
            if probe.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if probe.type != socket.SOCK_STREAM:
                continue
            try:
                probe.getpeername()
            except OSError:
                continue  # listening, or not connected
            found.add(descriptor)
    return found


def _shut_down(descriptors: set[int]) -> int:
    """Shut down these TCP sockets (without closing them: their owners still hold them)."""
    count = 0
    for descriptor in descriptors:
        try:
            with socket.socket(fileno=os.dup(descriptor)) as probe:
                probe.shutdown(socket.SHUT_RDWR)
            count += 1
        except OSError:
            pass  # not connected, or closed meanwhile
    return count


class _Baseline:
    """What this process looked like before its first trial, to go back to after each."""

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.sys_path = list(sys.path)
        self.stdout = os.dup(1)
        self.stderr = os.dup(2)
        self.sockets: set[int] = set()  # TCP sockets open before the trial began

    def enter(self, env: dict[str, str]) -> None:
        """Make the process look as if it had been started with ``env`` for this trial."""
        self.sockets = _tcp_sockets()
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = self.sys_path
        for entry in reversed(json.loads(env.get("HYPERSWEEP_SYS_PATH", "[]"))):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        torch = sys.modules.get("torch")
        threads = env.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit():
            # torch read OMP_NUM_THREADS when the pool imported it; this trial may differ.
            torch.set_num_threads(int(threads))

    def restore(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.stdout, 1)
        os.dup2(self.stderr, 2)
        os.chdir(self.cwd)


def reset_framework(baseline: _Baseline | None = None) -> tuple[bool, str]:
    """Undo the trial's framework state; whether this process can serve another trial.

    After a failed collective, torch can keep the destroyed process group's gloo connections
    open (its C++ objects outlive the Python ones). A peer still blocked in a collective on one
    of them would wait for gloo's timeout (30 minutes), out of reach of any signal. So the TCP
    connections the trial opened and left behind are shut down: the blocked peer's collective
    fails at once, and it comes back too. (The connections are the trial's: nothing may carry
    a connection from one trial to the next on a reused worker.)
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return True, ""
    if torch.cuda.is_initialized():
        return False, "CUDA was initialised (its context is bound to the trial's GPUs)"
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        try:
            distributed.destroy_process_group()
        except Exception as error:  # noqa: BLE001 - such a worker is replaced
            return False, f"destroy_process_group() failed: {error}"
    if baseline is not None:
        _shut_down(_tcp_sockets() - baseline.sockets)
    return True, ""


def _run(
    connection: Connection,
    baseline: _Baseline,
    objective: Objective | str,
    message: tuple[Any, ...],
) -> None:
    global _running
    assignment, log_path, replica, env = message[2], message[3], message[4], message[5]
    replica_run: ReplicaRun = replica
    if replica_run.store_fd is not None:  # the store's socket follows the message
        replica_run = dataclasses.replace(replica_run, store_fd=recv_handle(connection))
    baseline.enter(env)
    if log_path is not None:
        descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.close(descriptor)
    store = None
    try:
        if isinstance(objective, str):
            connection.send(("error", "the objective could not be loaded", objective))
            return
        if replica_run.store_fd is not None:
            try:
                store = serve_torch_store(replica_run.store_fd, replica_run.world_size)
            except Exception as error:  # noqa: BLE001 - reported as this replica's error
                os.close(replica_run.store_fd)
                problem = f"could not serve torch.distributed's store: {error}"
                connection.send(("error", problem, traceback.format_exc()))
                return
        context: dict[str, Any] = {"rank": replica_run.rank, "world_size": replica_run.world_size}
        guarded = _GuardedConnection(connection)
        _running = True
        try:
            run_assignment(cast(Connection, guarded), objective, assignment, **context)
        except GangAborted as error:
            _running = False
            if not guarded.outcome_sent:
                connection.send(("error", f"GangAborted: {error}", traceback.format_exc()))
        finally:
            _running = False
    finally:
        # Stay as the replica ended (process group, store) until the gang has ended: a peer
        # may still be joining or failing, and must see this replica as it was, not gone.
        while True:
            try:
                request = connection.recv()
            except (EOFError, OSError):
                os._exit(0)
            if request[0] == "reset":
                break
        reusable, why = reset_framework(baseline)
        del store  # closes the store's socket: its port is free again
        baseline.restore()
        connection.send(("reset", reusable, why))


def main(argv: list[str]) -> int:
    connection = Connection(int(argv[1]))
    die_with_parent(int(argv[2]))
    signal.signal(signal.SIGUSR1, _abort)
    _import(FRAMEWORK_IMPORTS.get(argv[3], ()))
    baseline = _Baseline()
    # Until the first message comes (nothing waits for this process yet), import what a
    # trial would import on its path. Only then: an import cannot be cut short, and one
    # running when a trial comes would delay it.
    for module in FRAMEWORK_WARMUP.get(argv[3], ()):
        if connection.poll(0):
            break
        _import([module])
    try:
        connection.send(("ready",))  # the pool lends ready workers first
    except OSError:
        return 0
    objectives: dict[str, Objective | str] = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return 0
        kind = message[0]
        if kind == "objective":
            ref: ObjectiveRef = message[1]
            sys.path[:] = baseline.sys_path
            for entry in reversed(json.loads(message[2])):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            try:
                objectives[ref.key] = ref.load()
            except Exception:  # noqa: BLE001 - reported with each trial that needs it
                objectives[ref.key] = traceback.format_exc()
        elif kind == "run":
            _run(connection, baseline, objectives[message[1]], message)
        elif kind == "exit":
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
