"""One background thread per tracker, so a slow tracking server never slows the sweep loop."""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hypersweep._errors import ConfigError

logger = logging.getLogger("hypersweep")


def require(module: str, package: str, callback: str) -> ModuleType:
    """Import ``module`` or raise a ConfigError that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"callbacks: {callback} needs the {package!r} package; "
            f"pip install 'hypersweep[tracking]' (or pip install {package})"
        ) from None


class BackgroundWorker:
    """Runs submitted calls in order on one daemon thread; :meth:`flush` waits for them.

    A call that raises is logged (the first time only) and the next one runs: a tracker's
    outage loses some logging, never the sweep.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors = 0
        self.broken = False  # set after the first error: the rest is skipped, not retried
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], Any]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(call)

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
                        "%s: %d calls still queued after %.0f s; the sweep ends without them",
                        self.name,
                        self._queue.unfinished_tasks,
                        timeout,
                    )
                    return False
                done.wait(left)
        return True

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            try:
                if call is None:
                    return
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
