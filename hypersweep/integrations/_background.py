"""One background thread per tracker, so a slow tracking server never slows the sweep loop."""

from __future__ import annotations

import importlib
import logging
import queue
import threading
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
        self._queue: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, call: Callable[[], Any]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(call)

    def flush(self) -> None:
        """Wait until every submitted call ran."""
        if self._thread is not None:
            self._queue.join()

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
                call()
            except Exception:
                self.errors += 1
                if self.errors == 1:
                    logger.exception(
                        "%s: logging failed; the sweep goes on (further errors are not logged)",
                        self.name,
                    )
            finally:
                self._queue.task_done()
