"""Local resources that concurrent trials must not share: TCP ports and GPUs.

Ports are allocated, not guessed: the kernel picks a free port for a socket bound to port 0,
and the launcher keeps that socket for as long as the trial runs, so no other program (and no
other trial) can take the port in between. How the socket is handed over depends on who serves
the port: PyTorch's c10d store listens on the very socket (its file descriptor is inherited by
rank 0), while TensorFlow's gRPC server binds the port itself, which the held socket allows
because it is bound with ``SO_REUSEADDR`` and never listens.

GPUs are a pool of ids handed to replicas through ``CUDA_VISIBLE_DEVICES``; a trial that does
not fit waits, so GPUs are never oversubscribed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence


class HeldPort:
    """A TCP port that this process keeps reserved with a bound socket until :meth:`close`."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.socket = sock
        self.host = host
        self.port: int = sock.getsockname()[1]

    def fileno(self) -> int:
        return self.socket.fileno()

    def close(self) -> None:
        self.socket.close()


class PortAllocator:
    """Hands out distinct free ports and remembers those in use until they are released."""

    def __init__(self) -> None:
        self._in_use: set[int] = set()

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    def allocate(self, host: str = "127.0.0.1", *, listen: bool = False) -> HeldPort:
        """A port reserved by a socket bound on ``host`` (listening if ``listen``).

        A listening socket is for a server that takes the descriptor over (c10d's store); a
        bound, idle one reserves a port that another process then binds with
        ``SO_REUSEADDR`` (gRPC does), while programs that do not ask for reuse are refused.
        """
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, 0))
                if listen:
                    sock.listen(128)
            except OSError:
                sock.close()
                raise
            held = HeldPort(sock, host)
            if held.port in self._in_use:
                # Only possible once a trial's server closed a port we still count as its own:
                # keep it out of circulation until that trial is released.
                sock.close()
                continue
            self._in_use.add(held.port)
            return held
        raise OSError("no free TCP port found")

    def release(self, held: HeldPort) -> None:
        """Close the socket (if still open here) and return the port."""
        held.close()
        self._in_use.discard(held.port)


def detect_gpus() -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else nvidia-smi's.

    Returns [] on a machine without NVIDIA GPUs (the same code then runs on CPU). Imports no
    framework: the driver stays light.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        # CUDA stops at the first invalid id; "-1" is the usual way to hide every GPU.
        valid = []
        for gpu in ids:
            if gpu.startswith("-"):
                break
            valid.append(gpu)
        return valid
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip().isdigit()]


class GpuPool:
    """GPU ids that replicas borrow and give back; each id is lent to one replica at a time."""

    def __init__(self, ids: Sequence[str | int]) -> None:
        self.ids: tuple[str, ...] = tuple(str(gpu) for gpu in ids)
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"GPU ids must be distinct, got {list(self.ids)}")
        self._free: list[str] = list(self.ids)

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self, count: int) -> list[str] | None:
        """``count`` free ids (lowest first), or None if fewer are free; takes all or nothing."""
        if count > len(self._free):
            return None
        taken, self._free = self._free[:count], self._free[count:]
        return taken

    def release(self, ids: Sequence[str]) -> None:
        for gpu in ids:
            if gpu in self.ids and gpu not in self._free:
                self._free.append(gpu)
        order = {gpu: i for i, gpu in enumerate(self.ids)}
        self._free.sort(key=order.__getitem__)
