"""The trial-side API: what an objective calls while it runs.

``report`` sends intermediate metrics to the driver and gets the early-stopping decision back;
``checkpoint`` and ``restore`` save and load the trial's state in the sweep's checkpoint
location (a folder, or object storage through fsspec). They work in any worker process the
launcher started for a trial. Outside a trial (an objective called by hand while debugging)
they do nothing, so the same function runs both ways.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hypersweep.orchestrator import _checkpoints, _rank_checkpoints
from hypersweep.orchestrator._jax_cluster import is_jax_replica, prepare_jax_replica
from hypersweep.orchestrator._state_copy import copy_state


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
    #: fsspec storage options of ``checkpoint_dir`` (endpoint, credentials).
    checkpoint_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The asynchronous checkpoint being uploaded: (its path, step, the upload).
    pending: tuple[str, int | None, Future[str]] | None = field(default=None, repr=False)
    #: ``checkpoint(all_ranks=True)`` calls so far in this run, and the checkpoint the run
    #: started from: where every rank puts its part of the next one, without talking.
    rank_checkpoints: int = field(default=0, repr=False)
    started_from: str | None = field(default=None, init=False, repr=False)
    #: The last asynchronous checkpoint's copy of the state, uploaded: the next one's memory.
    reusable: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.started_from = self.restore_path


_process_context: TrialContext | None = None
# Trials that share a process (a Ray actor running several trials, one thread each) keep their
# context in their own thread, so that each thread's report() is its own trial's.
_thread_contexts = threading.local()
_warned_outside = False


def _set_context(context: TrialContext | None, *, thread_only: bool = False) -> None:
    """Set the running trial's context: for the process (and the threads the objective
    starts), or with ``thread_only`` for the calling thread alone."""
    global _process_context
    if thread_only:
        _thread_contexts.context = context
        return
    _process_context = context
    if context is not None and is_jax_replica():
        prepare_jax_replica()  # before the objective calls jax.distributed.initialize()


def get_trial_context() -> TrialContext | None:
    """The running trial's context (this thread's trial on a shared actor), or None outside
    a trial."""
    context: TrialContext | None = getattr(_thread_contexts, "context", None)
    return context if context is not None else _process_context


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
    context = get_trial_context()
    if context is None:
        _outside_trial("report")
        return
    if step is None:
        step = context.last_step + 1
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"report(step=...) must be an int, got {step!r}")
    context.last_step = step
    assert context.channel is not None
    _settle(context, wait=False)  # an asynchronous checkpoint that has ended counts from now
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


def checkpoint(
    state_or_dir: Any,
    *,
    step: int | None = None,
    asynchronous: bool = False,
    all_ranks: bool = False,
) -> str | None:
    """Save a checkpoint for this trial and return its path (or URL).

    ``state_or_dir`` is any picklable object (a dict of tensors, a model) or the path of a
    directory to copy (a framework's own checkpoint folder), saved as a unit. The latest
    ``keep_checkpoints`` are kept. Only rank 0 writes in a multi-replica trial; other ranks get
    None.

    With ``all_ranks=True`` every rank of a multi-replica trial calls it at the same point and
    writes its own part, all ranks at once: an object per rank (``restore`` gives each rank its
    own), or a folder whose files are merged with the other ranks' (``torch.distributed.checkpoint``
    shards; ``restore`` gives every rank the whole folder). The checkpoint becomes visible once
    every rank's part is complete.

    With ``asynchronous=True`` the call returns once the state is copied in memory (a folder:
    copied to a local staging folder), and the upload goes on in the background while the
    trial trains; the next ``checkpoint`` call, and the trial's end, wait for it. The checkpoint
    counts (for resuming, pausing, cloning) once its upload has ended.
    """
    context = get_trial_context()
    if context is None:
        _outside_trial("checkpoint")
        return None
    if all_ranks and context.world_size > 1:
        return _checkpoint_all_ranks(context, state_or_dir, step, asynchronous)
    if context.rank != 0:
        return None
    if step is None and context.last_step >= 0:
        step = context.last_step
    # Reports not yet with the driver go before the checkpoint exists: a retry resumes after it
    # and would not report them again.
    getattr(context.channel, "flush", lambda: None)()
    _settle(context, wait=True)  # one checkpoint at a time, in order
    trial_dir = _checkpoints.trial_checkpoint_dir(context.checkpoint_dir, context.trial_number)
    options = context.checkpoint_options
    if not asynchronous:
        path = _checkpoints.write_checkpoint(
            trial_dir, state_or_dir, step=step, keep=context.keep_checkpoints, options=options
        )
        _committed(context, path, step)
        return path
    path = _checkpoints.next_checkpoint(trial_dir, options)
    snapshot, cleanup = _snapshot(context, state_or_dir)

    def upload() -> str:
        try:
            return _checkpoints.write_checkpoint(
                trial_dir,
                snapshot,
                step=step,
                keep=context.keep_checkpoints,
                options=options,
                at=path,
            )
        finally:
            cleanup()

    context.pending = (path, step, _uploader().submit(upload))
    return path


def _checkpoint_all_ranks(
    context: TrialContext, state_or_dir: Any, step: int | None, asynchronous: bool
) -> str:
    """This rank's part of the run's next all-ranks checkpoint; rank 0 also commits it."""
    if step is None and context.last_step >= 0:
        step = context.last_step
    if context.rank == 0:
        getattr(context.channel, "flush", lambda: None)()
    _settle(context, wait=True)
    context.rank_checkpoints += 1
    trial_dir = _checkpoints.trial_checkpoint_dir(context.checkpoint_dir, context.trial_number)
    sequence = _rank_checkpoints.sequence_of(context.started_from) + context.rank_checkpoints
    path = _checkpoints.checkpoint_at(trial_dir, sequence, context.checkpoint_options)
    token = f"{context.attempt}/{context.world_size}/{context.started_from}"
    options = context.checkpoint_options

    def write(state: Any) -> str:
        _rank_checkpoints.write_part(
            path,
            state,
            rank=context.rank,
            world_size=context.world_size,
            token=token,
            options=options,
        )
        if context.rank == 0:
            _rank_checkpoints.commit(
                path, world_size=context.world_size, token=token, step=step, options=options
            )
            _checkpoints.prune(trial_dir, context.keep_checkpoints, options)
        return path

    if not asynchronous:
        write(state_or_dir)
        _committed(context, path, step)
        return path
    snapshot, cleanup = _snapshot(context, state_or_dir)

    def upload() -> str:
        try:
            return write(snapshot)
        finally:
            cleanup()

    context.pending = (path, step, _uploader().submit(upload))
    return path


def _snapshot(context: TrialContext, state_or_dir: Any) -> tuple[Any, Callable[[], None]]:
    """A copy the trial may not change while it uploads, and what to do once it is uploaded.

    An object is copied into the arrays of the previous snapshot, whose upload has ended
    (``_state_copy``), and kept for the next one.
    """
    if isinstance(state_or_dir, (str, os.PathLike)) and Path(state_or_dir).is_dir():
        staging = tempfile.mkdtemp(prefix="hypersweep-checkpoint-")
        copied = shutil.copytree(state_or_dir, os.path.join(staging, "folder"))
        return copied, lambda: shutil.rmtree(staging, ignore_errors=True)
    previous, context.reusable = context.reusable, None
    snapshot = copy_state(state_or_dir, previous)

    def keep() -> None:
        context.reusable = snapshot

    return snapshot, keep


_executor: ThreadPoolExecutor | None = None


def _uploader() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hypersweep-upload")
    return _executor


def _committed(context: TrialContext, path: str, step: int | None) -> None:
    context.restore_path = path
    if context.channel is not None and context.rank == 0:  # rank 0 speaks for the trial
        context.channel.send(("checkpoint", path, step))


def _settle(context: TrialContext, *, wait: bool) -> None:
    """Tell the driver about an asynchronous checkpoint whose upload ended (waiting for it
    if ``wait``); an upload's error is raised here, in the trial."""
    if context.pending is None:
        return
    path, step, upload = context.pending
    if not wait and not upload.done():
        return
    context.pending = None
    upload.result()
    _committed(context, path, step)


def call_objective(objective: Callable[[Any], Any], config: Any) -> Any:
    """Run the objective as the current trial; its asynchronous checkpoint ends before we
    return (also when the trial is pruned or paused), so the driver sees it first."""
    try:
        return objective(config)
    finally:
        context = get_trial_context()
        if context is not None:
            _settle(context, wait=True)


def restore() -> Any:
    """This trial's latest checkpoint: the saved object, a directory path, or None.

    A retried, resumed or promoted trial calls it first to continue where it stopped.
    """
    context = get_trial_context()
    if context is None or context.restore_path is None:
        return None
    return _checkpoints.read_checkpoint(
        context.restore_path, context.checkpoint_options, rank=context.rank
    )
