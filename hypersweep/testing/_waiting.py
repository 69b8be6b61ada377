"""Free ports and waiting on conditions: the two helpers every test of a real process needs.

Tests wait on conditions, never on fixed sleeps, so that they pass on a loaded machine: the
timeout only bounds how long a failing test takes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(span: int = 1) -> int:
    """A port ``p`` such that ``p .. p+span-1`` are free on 127.0.0.1 now.

    The kernel chooses ``p`` (bind to port 0), so concurrent processes do not collide on
    guessed numbers; a port handed out before by this process is not handed out again.
    """
    with _lock:
        for _ in range(100):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = int(probe.getsockname()[1])
            if port + span > 65536 or _handed_out & set(range(port, port + span)):
                continue
            try:
                for offset in range(1, span):
                    with socket.socket() as other:
                        other.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            _handed_out.update(range(port, port + span))
            return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Poll ``predicate`` until it returns something truthy, which is returned; an
    ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
