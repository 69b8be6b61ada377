"""Ray Tune schedulers given by their class, as a Ray Tune user writes them.

``early_stopping=ASHAScheduler(max_t=81, grace_period=1)`` becomes hypersweep's own ASHA with
the same rungs; ``HyperBandScheduler`` its Hyperband; ``MedianStoppingRule`` Optuna's median
pruner; ``FIFOScheduler`` no early stopping. Steps are the trial's reports (Ray Tune's
``training_iteration``), so a scheduler that counts anything else (``time_total_s``) is refused,
as are schedulers without an equivalent, naming the one to use instead. Nothing here runs Ray
Tune's scheduler: the sweep's own loop decides, with its pause-and-promote ASHA.
"""

from __future__ import annotations

from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._schedulers import ASHA, Hyperband, OptunaPrunerScheduler, Scheduler

__all__ = ["from_ray_scheduler"]


def from_ray_scheduler(scheduler: Any, field: str = "early_stopping") -> Scheduler | None:
    """hypersweep's equivalent of a Ray Tune scheduler instance; None for FIFO."""
    import optuna
    from ray.tune.schedulers import (
        AsyncHyperBandScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
    )

    name = type(scheduler).__name__
    if type(scheduler) is FIFOScheduler:
        return None
    known = (AsyncHyperBandScheduler, HyperBandScheduler, MedianStoppingRule)
    if not isinstance(scheduler, known):
        equivalents = {"PopulationBasedTraining": "early_stopping={'name': 'pbt', ...}"}
        hint = equivalents.get(name, "'asha', 'hyperband', 'median' or 'pbt'")
        raise ConfigError(f"{field}: Ray Tune's {name} has no equivalent here; use {hint}")
    time_attr = getattr(scheduler, "_time_attr", "training_iteration")
    if time_attr != "training_iteration":
        raise ConfigError(
            f"{field}: {name}(time_attr={time_attr!r}) counts something else than reports; "
            "hypersweep's steps are the trial's reports: use time_attr='training_iteration'"
        )
    if isinstance(scheduler, AsyncHyperBandScheduler):
        if len(scheduler._brackets) != 1:
            raise ConfigError(
                f"{field}: {name}(brackets={len(scheduler._brackets)}) has no equivalent; use "
                "brackets=1, or HyperBandScheduler for several brackets"
            )
        rungs = [milestone for milestone, _ in scheduler._brackets[0]._rungs]
        return ASHA(
            min_resource=int(min(rungs)) if rungs else 1,
            max_resource=int(scheduler._max_t),
            reduction_factor=int(scheduler._reduction_factor),
        )
    if isinstance(scheduler, HyperBandScheduler):
        return Hyperband(
            min_resource=1,
            max_resource=int(scheduler._max_t_attr),
            reduction_factor=int(scheduler._eta),
        )
    if isinstance(scheduler, MedianStoppingRule):
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=int(scheduler._min_samples_required),
            n_warmup_steps=int(scheduler._grace_period),
        )
        return OptunaPrunerScheduler(pruner)
    raise AssertionError(f"unhandled {name}")  # every known class is handled above
