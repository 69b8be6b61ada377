"""Proposals as a function of (seed, trial number), and no repeated configs.

Optuna's samplers draw from one random stream per sampler object, seeded once. A driver that is
restarted, or a second driver that joins the sweep, builds a new sampler with the same seed and
replays that stream from its start: the first configs of the sweep are proposed again
(optuna#1547, optuna#3055 for parallel workers). Here a trial's randomness is seeded from the
sweep's seed and the trial's number instead, so it does not matter which driver proposes it or
how many proposals that driver made before.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler, QMCSampler, RandomSampler
from optuna.samplers._lazy_random_state import LazyRandomState

from hypersweep.strategies._trial_scan import TrialScan

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

__all__ = ["TrialNumberQMCSampler", "TrialSeededSampler", "space_distributions", "trial_seed"]


def trial_seed(seed: int, number: int, tag: str) -> int:
    """A 32-bit seed for the randomness that trial ``number`` uses for ``tag``."""
    digest = hashlib.sha256(f"{seed}:{number}:{tag}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _DistributionRecorder:
    """Stands in for an Optuna trial to read the distribution each domain of a space asks for."""

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        from optuna.distributions import FloatDistribution

        self.distributions[name] = FloatDistribution(low, high, log=log, step=step)
        return low

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        from optuna.distributions import IntDistribution

        self.distributions[name] = IntDistribution(low, high, log=log, step=step)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        self.distributions[name] = CategoricalDistribution(choices)
        return choices[0]


def space_distributions(domains: dict[str, Any]) -> dict[str, BaseDistribution] | None:
    """The Optuna distribution of each flattened domain, as sampling asks for it; None if some
    domain asks in another way (then configs are sampled one parameter at a time)."""
    recorder = _DistributionRecorder()
    try:
        for name, domain in domains.items():
            domain.suggest(recorder, name)
    except (AttributeError, TypeError, ValueError):
        return None
    if set(recorder.distributions) != set(domains):
        return None
    return recorder.distributions


def _random_states(sampler: Any) -> list[LazyRandomState]:
    """The random states of ``sampler`` and of the samplers it delegates to (start-up trials)."""
    found = []
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            found.append(value)
        elif isinstance(value, BaseSampler):
            found.extend(_random_states(value))
    return found


class TrialSeededSampler(BaseSampler):
    """Wraps an Optuna sampler so that trial ``n`` draws its randomness from ``(seed, n)``.

    Before each call that samples for a trial, the random states of the sampler (and of the
    random sampler it uses for its start-up trials) are seeded from ``(seed, trial number,
    parameter)``. A trial's proposal then depends only on the seed, its number and the trials
    before it, never on how many proposals this driver made before: a sweep interrupted and
    resumed, or shared by several drivers, proposes for the random and qmc strategies and for
    the random start-up trials of TPE, GP and CMA-ES, trial by trial, what an uninterrupted one
    proposes.

    It also refuses exact repeats. Once a trial after the first one is sampled, its whole
    config is drawn at once, as Optuna's relative sampling: the wrapped sampler's proposal if no
    other trial of the sweep (finished, running or queued) has that config, else a random
    config that none has, drawn from ``(seed, n)`` too. Model based samplers (TPE on a small
    discrete space especially) otherwise propose configs they already evaluated.

    Args:
        sampler: the Optuna sampler that proposes.
        seed: the sweep's seed.
        distributions: every parameter's distribution (``space_distributions``); None for a
            space whose parameters vary from trial to trial (no repeat is then refused).
        attempts: random redraws tried before the unused configs of a discrete space are listed.
    """

    def __init__(
        self,
        sampler: BaseSampler,
        seed: int,
        *,
        distributions: dict[str, BaseDistribution] | None,
        attempts: int = 32,
    ) -> None:
        self.sampler = sampler
        self.seed = seed
        self.distributions = distributions or {}
        self.attempts = attempts
        self._states = _random_states(sampler)
        self._own_space: dict[int, dict[str, BaseDistribution]] = {}  # per trial: the sampler's
        # The configs the sweep's trials have, by config: the trial number that has it. Read
        # from storage at the first proposal and again every ``_rescan_every`` proposals (other
        # drivers' configs); this driver's own proposals are added as they are made. Reading
        # every trial for every proposal would make each proposal cost O(trials).
        self._taken: dict[tuple[Any, ...], int] = {}
        self._scan = TrialScan()  # other drivers' configs: refused from the next read on
        self._checked: set[int] = set()  # trials whose whole config is drawn and checked at once

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped sampler (e.g. GridSampler.is_exhausted) stay reachable.
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def __str__(self) -> str:
        return str(self.sampler)

    def _reseed(self, trial: FrozenTrial, tag: str) -> None:
        for index, state in enumerate(self._states):
            state.rng.seed(trial_seed(self.seed, trial.number, f"{tag}#{index}"))

    def reseed_rng(self) -> None:
        """Nothing to do: every trial is seeded from its number (Optuna calls this per thread)."""

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._reseed(trial, "before_trial")
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        self._reseed(trial, "search_space")
        own = self.sampler.infer_relative_search_space(study, trial)
        self._own_space[trial.number] = own
        if not self.distributions:
            return own
        self._refresh_taken(study)
        if not self._taken or (len(self._taken) == 1 and trial.number in self._taken.values()):
            self._scan.read_next_time()  # read again for the next trial: this config is unseen
            return own  # the first config: nothing to repeat, sampled as Optuna would
        self._checked.add(trial.number)
        return {**self.distributions, **own}

    def _refresh_taken(self, study: Study) -> None:
        """Read every trial's config from storage when due (amortized O(1) per proposal)."""
        names = self.distributions.keys()
        for other in self._scan.due_trials(study, len(self._taken)):
            if other.params and other.params.keys() >= names:
                self._taken.setdefault(_config_key(other.params), other.number)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        own = self._own_space.pop(trial.number, search_space)
        self._reseed(trial, "relative")
        params = dict(self.sampler.sample_relative(study, trial, own) if own else {})
        if trial.number not in self._checked or trial.params:
            self._checked.discard(trial.number)
            return params  # the first config, or a space without fixed parameters
        self._checked.discard(trial.number)
        # The whole config now: the sampler's own choice for each parameter, seeded as
        # sample_independent would seed it.
        for name in sorted(set(self.distributions) - set(params)):
            self._reseed(trial, name)
            params[name] = self.sampler.sample_independent(study, trial, name, search_space[name])
        if self._taken.get(_config_key(params), trial.number) != trial.number:
            params = self._new_config(study, trial, search_space) or params
        self._taken.setdefault(_config_key(params), trial.number)
        return params

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._reseed(trial, param_name)
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def _new_config(
        self,
        study: Study,
        trial: FrozenTrial,
        space: dict[str, BaseDistribution],
    ) -> dict[str, Any] | None:
        """A random config not in ``taken``: drawn, or else picked among the unused ones."""
        random = RandomSampler()
        for attempt in range(self.attempts):
            random._rng.rng.seed(trial_seed(self.seed, trial.number, f"redraw@{attempt}"))
            config = {
                name: random.sample_independent(study, trial, name, space[name])
                for name in sorted(space)
            }
            if _config_key(config) not in self._taken:
                return config
        choices = _finite_values(space)
        if choices is None:
            return None
        names = sorted(choices)
        size = math.prod(len(choices[name]) for name in names)
        if size > _MAX_LISTED:
            return None
        unused = [
            config
            for values in itertools.product(*(choices[name] for name in names))
            if (config := dict(zip(names, values, strict=True)))
            and _config_key(config) not in self._taken
        ]
        if not unused:
            return None  # every config was tried: a repeat is all that is left
        pick = random._rng.rng.randint(len(unused))
        return unused[int(pick)]


_MAX_LISTED = 100_000  # discrete spaces up to this size are listed to find an unused config


def _config_key(params: dict[str, Any]) -> tuple[Any, ...]:
    """A hashable form of a config (Optuna's parameter values are hashable scalars)."""
    return tuple(sorted(params.items()))


def _finite_values(space: dict[str, BaseDistribution]) -> dict[str, list[Any]] | None:
    """Every value of each parameter, if all of them are discrete."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values: dict[str, list[Any]] = {}
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            values[name] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            values[name] = list(range(distribution.low, distribution.high + 1, distribution.step))
        else:
            return None
    return values


class TrialNumberQMCSampler(QMCSampler):
    """Optuna's QMC sampler, giving trial ``n`` the ``n``-th point of the sequence.

    Optuna numbers the points with a counter in the study, read and written without a lock
    (two drivers can take the same point) and independent of the trial's number.
    """

    _number: int = 0

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._number = trial.number
        return super().sample_relative(study, trial, search_space)

    def _find_sample_id(self, study: Study, search_space: dict[str, BaseDistribution]) -> int:
        return self._number
