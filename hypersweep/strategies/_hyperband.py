"""Hyperband as a search strategy: brackets of fresh trials whose budget is a parameter.

hypersweep's ``earlyStopping: hyperband`` pauses trials at each rung and resumes the best from
their checkpoints. A trial that keeps no checkpoints (a Katib trial image: it reads its budget,
e.g. ``--num-epochs``, from the command line and trains from scratch) needs Hyperband the way
Katib's hyperband suggestion runs it: each rung is a set of *new* trials, the best configs of
the rung below run again with ``eta`` times the budget.

The schedule is Katib's (:mod:`hypersweep.strategies._brackets`). Trial ``k`` of the sweep has a
fixed place in it, so what trial ``k`` runs is a function of its number, the seed and the trials
stored before it: a restarted (or a second) driver proposes the same.
"""

from __future__ import annotations

import secrets
import zlib
from typing import TYPE_CHECKING, Any

import optuna

from hypersweep._errors import ConfigError
from hypersweep.strategies._brackets import HyperbandSchedule, Rung
from hypersweep.strategies._not_ready import StrategyNotReady

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["HyperbandSampler"]

_FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


class HyperbandSampler(optuna.samplers.BaseSampler):
    """Proposes Katib's Hyperband schedule, the budget as the parameter ``resource``.

    A rung's fresh configs are drawn at random (seeded per trial number); the configs of a
    later rung are the best of the rung below, in the study's direction, once every trial of
    that rung has ended (until then :class:`StrategyNotReady`, so the sweep runs what it can
    and waits). When fewer trials of the rung below completed than the rung runs, the rest get
    fresh configs. After the schedule, :class:`StrategyNotReady` with ``exhausted``.

    Args:
        resource: the parameter that carries the budget (Katib's ``resource_name``).
        max_resource: the largest budget (Katib's ``r_l``).
        eta: the factor between rungs (Katib's ``eta``, default 3).
        seed: the seed of the fresh configs.
    """

    def __init__(
        self, resource: str, max_resource: float, eta: int = 3, seed: int | None = None
    ) -> None:
        if not isinstance(resource, str) or not resource:
            raise ConfigError("resource: expected the name of the budget parameter")
        self.resource = resource
        self.schedule = HyperbandSchedule(max_resource, eta)
        # Unseeded, each driver draws its own base seed (as the named strategies do): two sweeps
        # do not start from the same configs. A proposed config is stored with its trial.
        self.seed = seed if seed is not None else secrets.randbits(32)
        self._copies: dict[int, dict[str, Any] | None] = {}

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        try:
            _, rung = self.schedule.place(trial.number)
        except IndexError:
            raise StrategyNotReady("the Hyperband schedule is done", exhausted=True) from None
        if param_name == self.resource:
            return rung.budget
        parent = self._parent(study, trial.number, rung)
        if parent is not None and param_name in parent:
            return parent[param_name]
        seed = zlib.crc32(f"{self.seed}:{trial.number}:{param_name}".encode())
        return optuna.samplers.RandomSampler(seed=seed).sample_independent(
            study, trial, param_name, param_distribution
        )

    def _parent(self, study: Study, number: int, rung: Rung) -> dict[str, Any] | None:
        """The params of the config trial ``number`` runs again (None: a fresh config)."""
        if rung.index == 0:
            return None
        if number in self._copies:
            return self._copies[number]
        position, _ = self.schedule.place(number)
        below = self.schedule.rungs[position - 1]
        numbers = range(below.first, below.first + below.count)
        trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in numbers}
        if len(trials) < below.count or any(t.state not in _FINISHED for t in trials.values()):
            raise StrategyNotReady(
                f"trial {number} runs the best of trials {below.first}-{numbers[-1]}, which "
                "have not all ended"
            )
        completed = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(completed, key=lambda t: (sign * float(t.value or 0.0), t.number))
        slot = number - rung.first
        parent = dict(ranked[slot].params) if slot < len(ranked) else None
        self._copies[number] = parent
        return parent
