"""The trial-side API: what an objective calls while it runs.

``report`` sends intermediate metrics to the driver and gets the early-stopping decision back;
``checkpoint`` and ``restore`` save and load the trial's state on the shared filesystem. They
work in any worker process the launcher started for a trial. Outside a trial (an objective
called by hand while debugging) they do nothing, so the same function runs both ways.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypersweep.orchestrator import _checkpoints
from hypersweep.orchestrator._jax_cluster import is_jax_replica, prepare_jax_replica


class TrialPruned(Exception):
    """Raised by :func:`report` when early stopping ends the trial.

    Let it propagate out of the objective: the trial is then recorded as pruned, not failed.
    """


class TrialPaused(BaseException):
    """Raised by :func:`report` when the scheduler pauses the trial to resume it later.

    A BaseException, so that an objective's broad ``except Exception`` does not swallow it.
    """


class Channel(Protocol):
    """How a trial talks to its driver; each launcher provides one."""

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send ``message`` and wait for the driver's answer."""

    def send(self, message: tuple[Any, ...]) -> None:
        """Send ``message`` without waiting."""


@dataclass
class TrialContext:
    """What a running trial knows about itself."""

    trial_number: int
    config: dict[str, Any]
    sweep_name: str
    checkpoint_dir: str
    restore_path: str | None = None
    attempt: int = 0
    keep_checkpoints: int = 2
    rank: int = 0
    world_size: int = 1
    channel: Channel | None = field(default=None, repr=False)
    last_step: int = -1


_current: TrialContext | None = None
_warned_outside = False


def _set_context(context: TrialContext | None) -> None:
    global _current
    _current = context
    if context is not None and is_jax_replica():
        prepare_jax_replica()  # before the objective calls jax.distributed.initialize()


def get_trial_context() -> TrialContext | None:
    """The running trial's context, or None outside a trial."""
    return _current


def _outside_trial(function: str) -> None:
    global _warned_outside
    if not _warned_outside:
        _warned_outside = True
        warnings.warn(
            f"hypersweep.{function}() was called outside a trial and does nothing; "
            "run the objective through hypersweep.tune() to record it",
            stacklevel=3,
        )


def report(step: int | None = None, **metrics: float) -> None:
    """Record this trial's metrics at ``step`` (an epoch or iteration number).

    The sweep's metric, if among ``metrics``, is what early stopping judges. Raises
    :class:`TrialPruned` when the trial should stop. On ranks other than 0 of a multi-replica
    trial the metrics are not recorded, but the same decision is returned on every rank.
    """
    if isinstance(step, Mapping):
        # Ray Tune's tune.report({"loss": x}) / train.report(dict) habit.
        raise TypeError(
            "hypersweep.report() takes the step and then the metrics as keywords: write "
            f"hs.report(step, {', '.join(f'{k}=...' for k in step) or 'loss=...'}) instead of "
            "hs.report({...}) with a dict"
        )
    context = _current
    if context is None:
        _outside_trial("report")
        return
    if step is None:
        step = context.last_step + 1
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"report(step=...) must be an int, got {step!r}")
    context.last_step = step
    assert context.channel is not None
    clean = {name: _as_float(name, value) for name, value in metrics.items()}
    decision = context.channel.request(("report", step, clean))
    if decision == "stop":
        raise TrialPruned(f"trial {context.trial_number} was stopped early at step {step}")
    if decision == "pause":
        raise TrialPaused(f"trial {context.trial_number} was paused at step {step}")


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"report(): metric {name!r} must be a number, got {value!r}") from None


def checkpoint(state_or_dir: Any, *, step: int | None = None) -> str | None:
    """Save a checkpoint for this trial and return its path.

    ``state_or_dir`` is any picklable object (a dict of tensors, a model) or the path of a
    directory to copy. The latest ``keep_checkpoints`` are kept. Only rank 0 writes in a
    multi-replica trial; other ranks get None.
    """
    context = _current
    if context is None:
        _outside_trial("checkpoint")
        return None
    if context.rank != 0:
        return None
    if step is None and context.last_step >= 0:
        step = context.last_step
    # Reports not yet with the driver go before the checkpoint exists: a retry resumes after it
    # and would not report them again.
    getattr(context.channel, "flush", lambda: None)()
    path = _checkpoints.write_checkpoint(
        _checkpoints.trial_checkpoint_dir(context.checkpoint_dir, context.trial_number),
        state_or_dir,
        step=step,
        keep=context.keep_checkpoints,
    )
    context.restore_path = str(path)
    if context.channel is not None:
        context.channel.send(("checkpoint", str(path), step))
    return str(path)


def restore() -> Any:
    """This trial's latest checkpoint: the saved object, a directory path, or None.

    A retried, resumed or promoted trial calls it first to continue where it stopped.
    """
    context = _current
    if context is None or context.restore_path is None:
        return None
    return _checkpoints.read_checkpoint(context.restore_path)
