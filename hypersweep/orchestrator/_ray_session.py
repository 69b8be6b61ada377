"""Ray Tune's trial-side calls inside a hypersweep trial: trainables run unchanged.

A Ray Tune function trainable calls ``tune.report(metrics, checkpoint=...)`` and
``tune.get_checkpoint()``; both look up Ray's session (``get_session()``) at call time, however
they were imported. While a hypersweep trial runs, a stand-in session takes that place and
turns them into :func:`hypersweep.report`, :func:`hypersweep.checkpoint` and
:func:`hypersweep.restore`. A trainable that returns nothing gets its last reported metrics as
its result, as in Ray Tune.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hypersweep.orchestrator import _reporting
from hypersweep.orchestrator._checkpoints import checkpoint_step
from hypersweep.orchestrator._reporting import TrialPaused, TrialPruned

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
        step = _next_step(context) if context is not None else None
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                _reporting.checkpoint(folder, step=step)
        self.last_metrics = numbers
        if context is None:  # the session is only installed while a trial runs
            return
        # hs.report's own steps, without its keyword form: Ray Tune metrics may be named "step".
        assert step is not None and context.channel is not None
        context.last_step = step
        decision = context.channel.request(("report", step, numbers))
        if decision == "stop":
            raise TrialPruned(f"trial {context.trial_number} was stopped early at step {step}")
        if decision == "pause":
            raise TrialPaused(f"trial {context.trial_number} was paused at step {step}")

    @property
    def loaded_checkpoint(self) -> Any:
        """``tune.get_checkpoint()``: the trial's latest checkpoint folder, or None."""
        from ray.tune import Checkpoint

        context = _reporting.get_trial_context()
        if context is None or context.restore_path is None:
            return None
        restored = _reporting.restore()
        return Checkpoint.from_directory(restored) if isinstance(restored, str) else None


def _next_step(context: Any) -> int:
    """The step of the next report: Ray Tune's iteration count, which goes on after a restore
    from the step recorded with the checkpoint."""
    if context.last_step < 0 and context.restore_path is not None:
        restored = checkpoint_step(context.restore_path, context.checkpoint_options)
        if restored is not None:
            return restored + 1
    return int(context.last_step) + 1


class _InstallOnImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Installs the stand-in session when Ray's session module is first imported mid-trial
    (a trainable that imports Ray Tune inside the function), so nothing is imported early."""

    def __init__(self, session: RayTuneSession) -> None:
        self.session = session
        self._loader: Any = None

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _SESSION_MODULE:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if module.get_session() is None:
            module._session = self.session


@contextmanager
def ray_tune_session() -> Iterator[RayTuneSession]:
    """Stand in for Ray's session while the block runs (unless a real one is active).

    Nothing of Ray is imported here: if Ray's session module is loaded already the stand-in
    is set now, otherwise as soon as the trainable imports it.
    """
    session = RayTuneSession()
    module: Any = sys.modules.get(_SESSION_MODULE)
    hook = None
    if module is not None:
        if module.get_session() is not None:  # a real Ray Tune/Train session: leave it alone
            yield session
            return
        module._session = session
    else:
        hook = _InstallOnImport(session)
        sys.meta_path.insert(0, hook)
    try:
        yield session
    finally:
        if hook is not None and hook in sys.meta_path:
            sys.meta_path.remove(hook)
        module = sys.modules.get(_SESSION_MODULE)
        if module is not None and getattr(module, "_session", None) is session:
            module._session = None
