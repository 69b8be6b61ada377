"""Early stopping: what to do with a running trial each time it reports.

Schedulers answer :class:`Decision` values, a richer vocabulary than Optuna's prune/continue
so that a scheduler can also pause a trial (to resume it later from its checkpoint). Optuna
pruners plug in through :class:`OptunaPrunerScheduler`; they only ever answer CONTINUE or STOP.
Schedulers are pure decision logic: the orchestrator does all I/O.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    import optuna

EARLY_STOPPING_NAMES = ("median", "asha", "hyperband")


class Decision(enum.Enum):
    """A scheduler's answer to a report."""

    CONTINUE = "continue"
    STOP = "stop"
    PAUSE = "pause"


class Scheduler(abc.ABC):
    """Decides, on each intermediate report, whether a trial goes on."""

    @abc.abstractmethod
    def on_report(self, study: optuna.Study, trial: optuna.Trial, step: int) -> Decision:
        """Called after ``trial`` reported its metric for ``step`` (already in storage)."""


class OptunaPrunerScheduler(Scheduler):
    """Adapts any ``optuna.pruners.BasePruner``: a pruned trial is stopped."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def on_report(self, study: optuna.Study, trial: optuna.Trial, step: int) -> Decision:
        return (
            Decision.STOP
            if self.pruner.prune(study, trial._get_latest_trial())
            else Decision.CONTINUE
        )


def _split_settings(early_stopping: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(early_stopping, Mapping):
        settings = dict(early_stopping)
        name = settings.pop("name", None)
        if name is None:
            raise ConfigError("early_stopping: a mapping needs a 'name', e.g. {name: asha}")
        return name, settings
    return early_stopping, {}


def make_pruner(early_stopping: Any, field: str = "early_stopping") -> optuna.pruners.BasePruner:
    """The Optuna pruner for a name, a ``{name: ..., **settings}`` mapping, or a pruner."""
    import optuna

    if early_stopping is None:
        return optuna.pruners.NopPruner()
    if isinstance(early_stopping, optuna.pruners.BasePruner):
        return early_stopping
    name, settings = _split_settings(early_stopping)
    factories: dict[str, Any] = {
        "median": optuna.pruners.MedianPruner,
        "asha": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    if name not in factories:
        raise ConfigError(
            f"{field}: unknown early stopping {name!r}; expected one of "
            f"{', '.join(EARLY_STOPPING_NAMES)}, null, or an optuna.pruners.BasePruner instance"
        )
    try:
        pruner: optuna.pruners.BasePruner = factories[name](**settings)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{field}: invalid settings for {name}: {error}") from None
    return pruner


def make_scheduler(early_stopping: Any) -> Scheduler:
    """The scheduler for ``early_stopping`` (a name, settings mapping, pruner or scheduler)."""
    if isinstance(early_stopping, Scheduler):
        return early_stopping
    return OptunaPrunerScheduler(make_pruner(early_stopping))
