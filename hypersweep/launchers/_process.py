"""A local worker process as the driver sees it: started, talked to over a socket, killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection


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


@dataclass(frozen=True)
class ReplicaRun:
    """What a replica's worker learns about its place in its gang, beside its environment."""

    rank: int
    world_size: int
    store_fd: int | None = None  # rank 0 of a PyTorch gang serves the c10d store on this socket


class Worker:
    """A ``hypersweep.launchers._worker`` process and the driver's end of its socket.

    Each worker has a process group of its own: Ctrl-C reaches only the driver, and
    :meth:`kill` takes the worker's own children (data loader processes...) with it.
    """

    def __init__(
        self,
        env: dict[str, str],
        pass_fds: Sequence[int] = (),
        *,
        module: str = "hypersweep.launchers._worker",
        args: Sequence[str] = (),
    ) -> None:
        parent_end, child_end = socket.socketpair()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                str(child_end.fileno()),
                str(os.getpid()),
                *args,
            ],
            pass_fds=(child_end.fileno(), *pass_fds),
            env=env,
            start_new_session=True,
        )
        child_end.close()
        self.connection = Connection(parent_end.detach())
        self.objective_key: str | None = None
        self.trial_number: int | None = None

    def kill(self) -> None:
        """SIGKILL the worker's process group, reap it and close the socket."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.connection.close()
