"""One background thread per tracker, so a slow tracking server never slows the sweep loop."""

from __future__ import annotations

import atexit
import importlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hypersweep._errors import ConfigError

logger = logging.getLogger("hypersweep")

# A worker's thread ends after this many idle seconds (a long-lived operator runs many sweeps'
# callbacks); the next submit starts a new one.
_IDLE_S = 60.0

# Every worker with calls in flight, so that flush_all() (and the interpreter's exit) can wait
# for logging that the sweep did not wait for.
_LIVE: weakref.WeakSet[BackgroundWorker] = weakref.WeakSet()


def require(module: str, package: str, callback: str) -> ModuleType:
    """Import ``module`` or raise a ConfigError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"callbacks: {callback} needs the {package!r} package; "
            f"pip install 'hypersweep[tracking]' (or pip install {package})"
        ) from None


def flush_all(timeout: float | None = None) -> bool:
    """Wait until every tracker callback's queued logging was sent; True if it all was.

    The MLflow callback does not hold up the end of a sweep for its tracking server; this is
    how a program waits for it (the interpreter's exit does it too).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    done = True
    for _ in range(2):  # a worker's last call may queue one on another (a sweep's closing tags)
        for worker in list(_LIVE):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = worker.flush(left) and done
    return done


def _flush_at_exit() -> None:
    # atexit runs before daemon threads stop, so the workers can still send what is queued.
    for _ in range(2):
        for worker in list(_LIVE):
            worker.flush(worker.exit_timeout)


atexit.register(_flush_at_exit)


class BackgroundWorker:
    """Runs submitted calls in order on one daemon thread; :meth:`flush` waits for them.

    A call that raises is logged (the first time only) and the next one runs: a tracker's
    outage loses some logging, never the sweep. What is still queued when the interpreter exits
    is sent first, waiting at most ``exit_timeout`` seconds.
    """

    def __init__(self, name: str, exit_timeout: float | None = 600.0) -> None:
        self.name = name
        self.exit_timeout = exit_timeout
        self.errors = 0
        self.broken = False  # set after the first error: the rest is skipped, not retried
        self._queue: queue.Queue[Callable[[], Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = False  # guarded by _start: whether a thread takes calls from the queue
        self._start = threading.Lock()

    def submit(self, call: Callable[[], Any]) -> None:
        with self._start:
            self._queue.put(call)
            _LIVE.add(self)
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted call ran, at most ``timeout`` seconds; True if they did."""
        if self._thread is None:
            return True
        done = self._queue.all_tasks_done
        deadline = None if timeout is None else time.monotonic() + timeout
        with done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    logger.warning(
                        "%s: %d calls still queued after %.0f s; not waiting longer",
                        self.name,
                        self._queue.unfinished_tasks,
                        timeout,
                    )
                    return False
                done.wait(left)
        return True

    def _run(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._start:
                    if self._queue.empty():
                        self._running = False
                        _LIVE.discard(self)
                        return
                continue
            try:
                if not self.broken:
                    call()
            except Exception:
                # A tracker that failed once (down, refused, misconfigured) is given up for
                # this sweep: its client retries each call with backoff for minutes.
                self.errors += 1
                self.broken = True
                logger.exception(
                    "%s: logging failed, so it stops for this sweep; the sweep goes on", self.name
                )
            finally:
                self._queue.task_done()
