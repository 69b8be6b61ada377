"""Callbacks: what the sweep loop tells experiment trackers and monitors, in the driver.

A :class:`Callback` sees the sweep start and end and each trial's lifecycle (start, reports,
checkpoints, pause, promotion, end). Callbacks run in the driver (or the operator), never in
the trial, so objectives stay light and need no tracker credentials. The loop calls them through
one :class:`CallbackDispatcher`, which keeps a raising callback from breaking the sweep: its
first error is logged, later ones are counted silently, and the sweep goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult

logger = logging.getLogger("hypersweep")


@dataclass(frozen=True)
class SweepInfo:
    """The sweep a callback reports on."""

    name: str
    metric: str | list[str]
    """The metric, or the list of metrics a sweep with several objectives optimizes."""
    mode: str | list[str]
    settings: dict[str, Any]
    """The sweep's plain-data settings (space, strategy, budget...), as stored with it."""
    storage: str
    resumed: bool
    stored: SweepResult | None = None
    """The sweep as stored when the loop starts (trials of earlier runs, queued slots)."""


@dataclass(frozen=True)
class TrialInfo:
    """One attempt of one trial, as a callback sees it."""

    sweep: str
    number: int
    config: dict[str, Any]
    attempt: int
    resumed: bool = False
    """True when the trial ran before (interrupted, paused and promoted, or retried)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The config flattened to ``a.b``-style names (what trackers store as parameters)."""


class Callback:
    """Hooks into a sweep's lifecycle; override the ones you need (all default to no-ops).

    Every hook runs in the driver's loop: keep it quick, or hand work to a thread (the
    built-in :mod:`hypersweep.integrations` log asynchronously and flush in
    :meth:`on_sweep_end`).
    """

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        """The loop starts (also when it resumes or joins a stored sweep)."""

    def on_trial_start(self, trial: TrialInfo) -> None:
        """A trial (or a retry, resume or promotion of it) is launched."""

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        """The trial reported ``metrics`` at ``step``."""

    def on_checkpoint(self, trial: TrialInfo, path: str, step: int | None) -> None:
        """The trial saved a checkpoint at ``path``."""

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        """The scheduler paused the trial at ``step``; a promotion may resume it later."""

    def on_trial_promote(self, trial: TrialInfo) -> None:
        """The scheduler promoted a paused trial; :meth:`on_trial_start` follows."""

    def on_trial_interrupt(self, trial: TrialInfo) -> None:
        """The driver stopped the trial (Ctrl-C, sweep stop) and queued it to resume."""

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        """The trial ended: ``state`` is ``completed``, ``pruned`` (stopped early) or ``failed``.

        ``metrics`` are the final metrics (the returned dict, or the latest report); ``value``
        is the sweep's metric among them (None with several objectives: see ``metrics``).
        """

    def on_sweep_end(self, result: SweepResult) -> None:
        """The loop ended (budget used, stopped, or interrupted); ``result`` has every trial."""


class CallbackDispatcher:
    """Calls every callback's hook; an error is logged once per callback, never raised.

    The sweep loop holds one dispatcher and calls it from the few places that already see each
    event, so tracking adds no branches to the loop itself.
    """

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        self.errors: dict[int, int] = {}  # callback index -> errors seen

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if not hook.startswith("on_") or not hasattr(Callback, hook):
            raise AttributeError(hook)

        def dispatch(*args: Any) -> None:
            for index, callback in enumerate(self.callbacks):
                try:
                    getattr(callback, hook)(*args)
                except Exception:
                    count = self.errors.get(index, 0)
                    self.errors[index] = count + 1
                    if count == 0:
                        logger.exception(
                            "Callback %s failed in %s; the sweep goes on (further errors of "
                            "this callback are not logged)",
                            type(callback).__name__,
                            hook,
                        )

        return dispatch


def _registry() -> dict[str, Callable[..., Callback]]:
    from hypersweep import integrations

    return {
        "mlflow": integrations.MLflowCallback,
        "tensorboard": integrations.TensorBoardCallback,
        "wandb": integrations.WandbCallback,
    }


CALLBACK_NAMES = ("mlflow", "tensorboard", "wandb")


def make_callbacks(values: Sequence[Any] | None, field_name: str = "callbacks") -> list[Callback]:
    """Callbacks from ``tune(callbacks=...)`` or a sweep file's ``callbacks:`` list.

    Each item is a :class:`Callback`, or a one-key mapping ``{name: {arguments}}`` naming a
    built-in (``mlflow``, ``tensorboard``, ``wandb``). Raises ConfigError naming the item.
    """
    if values is None:
        return []
    if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence):
        raise ConfigError(
            f"{field_name}: expected a list of callbacks, e.g. [{{mlflow: {{}}}}], got {values!r}"
        )
    built: list[Callback] = []
    for index, value in enumerate(values):
        where = f"{field_name}.{index}"
        if isinstance(value, Callback):
            built.append(value)
            continue
        if isinstance(value, str):
            value = {value: {}}
        if not isinstance(value, Mapping) or len(value) != 1:
            raise ConfigError(
                f"{where}: expected a Callback or one of {', '.join(CALLBACK_NAMES)} as "
                f"{{name: {{arguments}}}}, got {value!r}"
            )
        ((name, arguments),) = value.items()
        if name not in CALLBACK_NAMES:
            raise ConfigError(
                f"{where}: unknown callback {name!r}; choose one of {', '.join(CALLBACK_NAMES)}"
            )
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, Mapping):
            raise ConfigError(f"{where}.{name}: expected a mapping of arguments, got {arguments!r}")
        try:
            built.append(_registry()[name](**arguments))
        except TypeError as error:
            raise ConfigError(f"{where}.{name}: {error}") from None
    return built


def callbacks_to_data(values: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """The declarative callbacks (``{name: {...}}``) stored with the sweep for ``resume``."""
    if not values:
        return None
    data = [
        {value: {}} if isinstance(value, str) else dict(value)
        for value in values
        if isinstance(value, (str, Mapping))
    ]
    return data or None
