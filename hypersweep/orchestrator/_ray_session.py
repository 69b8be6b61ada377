"""Ray Tune's trial-side calls inside a hypersweep trial: trainables run unchanged.

A Ray Tune function trainable calls ``tune.report(metrics, checkpoint=...)`` and
``tune.get_checkpoint()``; both look up Ray's session (``get_session()``) at call time, however
they were imported. While a hypersweep trial runs in a process where Ray Tune is loaded, a
stand-in session takes that place and turns them into :func:`hypersweep.report`,
:func:`hypersweep.checkpoint` and :func:`hypersweep.restore`. A trainable that returns nothing
gets its last reported metrics as its result, as in Ray Tune.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hypersweep.orchestrator import _reporting

__all__ = ["RayTuneSession", "ray_tune_session"]

_SESSION_MODULE = "ray.train._internal.session"


class RayTuneSession:
    """What Ray's ``report`` and ``get_checkpoint`` read from a session, backed by hypersweep."""

    def __init__(self) -> None:
        self.last_metrics: dict[str, float] | None = None

    def report(self, metrics: Mapping[str, Any], *, checkpoint: Any = None, **_: Any) -> None:
        """``tune.report``: numbers are reported (others skipped, as Ray Tune's results keep
        them apart); a checkpoint folder is copied as the trial's checkpoint first."""
        numbers = {
            str(name): float(value)
            for name, value in metrics.items()
            if isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        }
        context = _reporting.get_trial_context()
        step = (context.last_step + 1) if context is not None else None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                _reporting.checkpoint(folder, step=step)
        self.last_metrics = numbers
        _reporting.report(step, **numbers)

    @property
    def loaded_checkpoint(self) -> Any:
        """``tune.get_checkpoint()``: the trial's latest checkpoint folder, or None."""
        from ray.tune import Checkpoint

        context = _reporting.get_trial_context()
        if context is None or context.restore_path is None:
            return None
        restored = _reporting.restore()
        return Checkpoint.from_directory(restored) if isinstance(restored, str) else None


@contextmanager
def ray_tune_session() -> Iterator[RayTuneSession | None]:
    """Stand in for Ray's session while the block runs, if Ray Tune or Train is loaded.

    Nothing is imported otherwise: the objective imported Ray Tune (when loaded) if it uses it.
    """
    if "ray.tune" not in sys.modules and "ray.train" not in sys.modules:
        yield None
        return
    import importlib

    module: Any = importlib.import_module(_SESSION_MODULE)
    if module.get_session() is not None:  # a real Ray Tune/Train session: leave it alone
        yield None
        return
    session = RayTuneSession()
    module._session = session
    try:
        yield session
    finally:
        if module._session is session:
            module._session = None
