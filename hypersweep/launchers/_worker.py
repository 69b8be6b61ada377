"""A local worker process: runs trial after trial of one driver, talking over a socket.

Started as ``python -m hypersweep.launchers._worker FD`` by the local launcher. It dies with its
driver (Linux's parent-death signal, with a polling fallback), so a killed driver leaves no
orphaned worker. Each trial's stdout and stderr can go to a log file of its own.

A worker can also be one replica of a multi-replica trial (``ReplicaRun``): its rendezvous
environment was set when it started, it knows its rank, and rank 0 of a PyTorch gang serves the
``torch.distributed`` store on the socket the launcher bound for it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

from hypersweep.launchers._process import ReplicaRun
from hypersweep.orchestrator._events import TrialAssignment
from hypersweep.orchestrator._objective import Objective, ObjectiveRef
from hypersweep.orchestrator._ray_session import ray_tune_session
from hypersweep.orchestrator._reporting import (
    TrialContext,
    TrialPaused,
    TrialPruned,
    _set_context,
    call_objective,
)

_PR_SET_PDEATHSIG = 1


def serve_torch_store(listen_fd: int, world_size: int) -> Any:
    """Serve the c10d store of a PyTorch gang on an inherited listening socket.

    This is what torchrun's agent does: with ``TORCHELASTIC_USE_AGENT_STORE`` set, every rank's
    ``init_process_group()`` (env://) joins this store as a client, rank 0 included, instead of
    rank 0 binding ``MASTER_PORT`` itself, which could race with other programs for the port.
    The store lives as long as the returned object.
    """
    import torch.distributed as dist

    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=True,
        timeout=timedelta(minutes=30),  # torch's default process-group timeout
        wait_for_workers=False,
        master_listen_fd=listen_fd,
    )


def die_with_parent(parent_pid: int) -> None:
    """Make sure this process ends when the process that started it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:  # for systems without prctl
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="hypersweep-parent-watch", daemon=True).start()


class PipeChannel:
    """The trial's line to the driver over the worker's socket."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def request(self, message: tuple[Any, ...]) -> Any:
        self._connection.send(message)
        reply = self._connection.recv()
        assert reply[0] == "decision", reply
        return reply[1]

    def send(self, message: tuple[Any, ...]) -> None:
        self._connection.send(message)

    def flush(self) -> None:
        """Wait until the driver has every report sent so far, where reports may go unanswered
        (on Ray); over a local worker's socket every report waited for its answer already."""
        flush = getattr(self._connection, "flush", None)
        if flush is not None:
            flush()


def _redirect_output(log_path: str | None) -> None:
    if log_path is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)


def run_assignment(
    connection: Connection,
    objective: Objective,
    assignment: TrialAssignment,
    *,
    shared_process: bool = False,
    **context: Any,
) -> None:
    """Run one trial attempt and send its outcome; never raises for the objective's errors.

    ``shared_process``: other trials run in other threads of this process at the same time;
    the trial's context is then its thread's alone, and Ray Tune's process-wide session
    (``tune.report``) is not set up for it.
    """
    trial_context = TrialContext(
        trial_number=assignment.trial_number,
        config=assignment.config,
        sweep_name=assignment.sweep_name,
        checkpoint_dir=assignment.checkpoint_dir,
        restore_path=assignment.restore_path,
        attempt=assignment.attempt,
        keep_checkpoints=assignment.keep_checkpoints,
        checkpoint_options=dict(assignment.checkpoint_options),
        channel=PipeChannel(connection),
        **context,
    )
    try:
        # May raise (e.g. JAX set-up): the trial's error, not a crash.
        _set_context(trial_context, thread_only=shared_process)
        config = json.loads(json.dumps(assignment.config))
        if shared_process:
            result = call_objective(objective, config)
        else:
            with ray_tune_session() as ray_session:  # tune.report() in a Ray Tune trainable
                result = call_objective(objective, config)
            if result is None and ray_session.last_metrics:
                result = ray_session.last_metrics  # Ray Tune's result: the last report
    except TrialPruned:
        connection.send(("stopped", "stop"))
    except TrialPaused:
        connection.send(("stopped", "pause"))
    except Exception as error:  # noqa: BLE001 - any error of the objective fails its trial
        connection.send(("error", f"{type(error).__name__}: {error}", traceback.format_exc()))
    else:
        try:
            connection.send(("result", result))
        except Exception as error:  # noqa: BLE001 - an unpicklable result
            message = f"objective returned an unsendable {type(result).__name__}: {error}"
            connection.send(("error", message, message))
    finally:
        _set_context(None, thread_only=shared_process)
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    connection = Connection(int(argv[1]))
    die_with_parent(int(argv[2]))
    for entry in reversed(json.loads(os.environ.get("HYPERSWEEP_SYS_PATH", "[]"))):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    objectives: dict[str, Objective | str] = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return 0
        kind = message[0]
        if kind == "objective":
            ref: ObjectiveRef = message[1]
            try:
                objectives[ref.key] = ref.load()
            except Exception:  # noqa: BLE001 - reported with each trial that needs it
                objectives[ref.key] = traceback.format_exc()
        elif kind == "run":
            key, assignment, log_path = message[1], message[2], message[3]
            replica: ReplicaRun | None = message[4] if len(message) > 4 else None
            _redirect_output(log_path)
            objective = objectives[key]
            if isinstance(objective, str):
                connection.send(("error", "the objective could not be loaded", objective))
                continue
            context: dict[str, Any] = {}
            store = None
            if replica is not None:
                context = {"rank": replica.rank, "world_size": replica.world_size}
                if replica.store_fd is not None:
                    try:
                        store = serve_torch_store(replica.store_fd, replica.world_size)
                    except Exception as error:  # noqa: BLE001 - reported as this replica's error
                        problem = f"could not serve torch.distributed's store: {error}"
                        connection.send(("error", problem, traceback.format_exc()))
                        continue
            run_assignment(connection, objective, assignment, **context)
            del store
        elif kind == "exit":
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
