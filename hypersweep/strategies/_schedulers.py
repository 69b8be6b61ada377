"""Early stopping: what to do with a running trial each time it reports.

Schedulers answer :class:`Decision` values: CONTINUE, STOP, or PAUSE (checkpoint, free the
worker, and resume later). The orchestrator also asks a scheduler which paused trial to resume
next (:meth:`Scheduler.choose_resume`) and, after a STOP, whether to start a new trial from the
stopped one's better peer (:meth:`Scheduler.clone_for`, population-based training).

Schedulers are pure decision logic over the study's trials, like Optuna's pruners: they hold no
state that storage does not, so a restarted driver (or another one) makes the same decisions.
Optuna pruners plug in through :class:`OptunaPrunerScheduler` and only ever STOP.
"""

from __future__ import annotations

import abc
import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

EARLY_STOPPING_NAMES = ("median", "asha", "hyperband", "pbt")


class Decision(enum.Enum):
    """A scheduler's answer to a report."""

    CONTINUE = "continue"
    STOP = "stop"
    PAUSE = "pause"


@dataclass(frozen=True)
class Clone:
    """Start a new trial from ``source_trial``'s latest checkpoint with ``params``."""

    source_trial: int
    params: dict[str, Any]


class Scheduler(abc.ABC):
    """Decides, on each intermediate report, whether a trial goes on."""

    #: Whether this scheduler ever answers PAUSE (the orchestrator then asks for resumes).
    can_pause: ClassVar[bool] = False

    #: Whether a trial has a checkpoint to resume or clone from; set by the orchestrator.
    has_checkpoint: Callable[[FrozenTrial], bool] = staticmethod(lambda trial: True)

    @abc.abstractmethod
    def on_report(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Decision:
        """Called after ``trial`` reported its metric for ``step`` (already in ``trial``)."""

    def choose_resume(
        self, study: optuna.Study, paused: Sequence[FrozenTrial], *, final: bool
    ) -> FrozenTrial | None:
        """The paused trial to resume now, if any.

        ``final`` is true once no new trial can start: the last chance to promote.
        """
        return None

    def clone_for(self, study: optuna.Study, trial: FrozenTrial) -> Clone | None:
        """After STOP: a new trial to start in ``trial``'s place, if any."""
        return None

    def next_decision(self, trial_number: int, step: int) -> int | None:
        """The first step after ``step`` whose report may be answered other than CONTINUE.

        Asked after a decision at ``step``: until a report reaches the returned step, the
        trial's reports cannot change its course, so a launcher lets them go without waiting
        for the answer. None: no later report can. By default every step may decide.
        """
        return step + 1


def _next_interval_start(step: int, warmup: int, interval: int) -> int:
    """The first step after ``step`` of the form ``warmup + k * interval`` (k >= 0)."""
    if step < warmup:
        return warmup
    return warmup + ((step - warmup) // interval + 1) * interval


class OptunaPrunerScheduler(Scheduler):
    """Adapts any ``optuna.pruners.BasePruner``: a pruned trial is stopped."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def on_report(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Decision:
        return Decision.STOP if self.pruner.prune(study, trial) else Decision.CONTINUE

    def next_decision(self, trial_number: int, step: int) -> int | None:
        import optuna

        pruner = self.pruner
        if isinstance(pruner, optuna.pruners.NopPruner):
            return None
        if isinstance(
            pruner,
            (optuna.pruners.PercentilePruner, optuna.pruners.ThresholdPruner),
        ):
            # They prune only at the first report of each interval after the warm-up
            # (optuna's _is_first_in_interval_step): any report at or past the next start.
            warmup = int(getattr(pruner, "_n_warmup_steps", 0))
            interval = int(getattr(pruner, "_interval_steps", 1))
            return _next_interval_start(step, warmup, max(interval, 1))
        return step + 1


# --- asynchronous successive halving ---------------------------------------------------------


def _is_better(direction_minimize: bool) -> Callable[[float], float]:
    return (lambda v: v) if direction_minimize else (lambda v: -v)


def _value_at(trial: FrozenTrial, resource: float) -> float | None:
    """The trial's value at the first step it reported at or beyond ``resource``."""
    steps = [s for s in trial.intermediate_values if s >= resource]
    if not steps:
        return None
    value = trial.intermediate_values[min(steps)]
    return None if value is None or math.isnan(value) else float(value)


class ASHA(Scheduler):
    """Asynchronous successive halving with pause and promotion (Li et al., 2020).

    Rungs are at steps ``min_resource * reduction_factor**k``. A trial reaching a rung goes on
    if it is in the top ``1/reduction_factor`` of the trials that reached that rung so far;
    otherwise it is paused there, and resumed from its checkpoint as soon as enough worse
    trials reach the rung to put it in the top. Unlike stop-only ASHA, no early verdict is
    final. Once no new trial can start, the best paused trial of each rung is promoted even if
    the rung is small, so that the budget always ends with trials trained to ``max_resource``.

    A trial without a checkpoint cannot be paused (resuming it would retrain from zero), so
    for it the decision is the asynchronous continue-or-stop rule of the paper, as Ray Tune's
    and Optuna's ASHA make it: it continues when it is in the top ``1/reduction_factor`` of the
    trials recorded at the rung so far, itself included, and the first arrivals at a rung
    continue; otherwise it stops for good.

    Args:
        min_resource: the first rung's step.
        max_resource: the step at which a trial is fully trained (no rung at or past it).
        reduction_factor: eta; a rung promotes its top 1/eta.
    """

    can_pause = True

    def __init__(
        self,
        min_resource: int = 1,
        max_resource: int | None = None,
        reduction_factor: int = 3,
        *,
        bracket: int = 0,
        brackets: int = 1,
    ) -> None:
        if isinstance(min_resource, bool) or not isinstance(min_resource, int) or min_resource < 1:
            raise ConfigError(f"min_resource: expected an integer >= 1, got {min_resource!r}")
        if not isinstance(reduction_factor, int) or reduction_factor < 2:
            raise ConfigError(
                f"reduction_factor: expected an integer >= 2, got {reduction_factor!r}"
            )
        if max_resource is not None and (
            not isinstance(max_resource, int) or max_resource <= min_resource
        ):
            raise ConfigError(
                f"max_resource: expected an integer > min_resource ({min_resource}), "
                f"got {max_resource!r}"
            )
        self.min_resource = min_resource
        self.max_resource = max_resource
        self.reduction_factor = reduction_factor
        self.bracket = bracket
        self.brackets = brackets

    def rungs(self, up_to: float) -> list[int]:
        """Rung steps below ``max_resource`` and at most ``up_to``."""
        found = []
        resource = self.min_resource
        while resource <= up_to and (self.max_resource is None or resource < self.max_resource):
            found.append(resource)
            resource *= self.reduction_factor
        return found

    def in_bracket(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` belongs to this scheduler's bracket (Hyperband)."""
        return trial.number % self.brackets == self.bracket

    def _ranked(self, study: optuna.Study, rung: int) -> list[tuple[float, int]]:
        """(value, trial number) of every trial of the bracket that reached ``rung``, best first."""
        import optuna

        key = _is_better(study.direction == optuna.study.StudyDirection.MINIMIZE)
        ranked = []
        for other in study.get_trials(deepcopy=False):
            if not self.in_bracket(other):
                continue
            value = _value_at(other, rung)
            if value is not None:
                ranked.append((key(value), other.number))
        return sorted(ranked)

    def _top(self, study: optuna.Study, rung: int, *, final: bool) -> list[int]:
        ranked = self._ranked(study, rung)
        count = len(ranked) // self.reduction_factor
        if final:
            count = max(count, 1)
        return [number for _, number in ranked[:count]]

    def next_decision(self, trial_number: int, step: int) -> int | None:
        # A rung is decided at the first report at or past it (see on_report).
        rung = self.min_resource
        while rung <= step:
            rung *= self.reduction_factor
        return rung if self.max_resource is None or rung < self.max_resource else None

    def current_rung(self, trial: FrozenTrial) -> int | None:
        """The highest rung ``trial`` has reached, or None."""
        if not trial.intermediate_values:
            return None
        rungs = self.rungs(max(trial.intermediate_values))
        return rungs[-1] if rungs else None

    def on_report(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Decision:
        rungs = self.rungs(step)
        if not rungs or (self.max_resource is not None and step >= self.max_resource):
            return Decision.CONTINUE
        rung = rungs[-1]
        earlier = [s for s in trial.intermediate_values if s < step]
        if earlier and max(earlier) >= rung:
            return Decision.CONTINUE  # this rung was decided at an earlier report
        if not self.has_checkpoint(trial):
            return self._continue_or_stop(study, trial, rung)
        if trial.number in self._top(study, rung, final=False):
            return Decision.CONTINUE
        return Decision.PAUSE

    def _continue_or_stop(self, study: optuna.Study, trial: FrozenTrial, rung: int) -> Decision:
        """Stop-only ASHA: in the top 1/eta of the rung so far (at least the best), or stop.

        Ties continue, and a rung with fewer than eta trials keeps its best, as in Optuna's
        SuccessiveHalvingPruner.
        """
        ranked = self._ranked(study, rung)  # includes ``trial``, which just reported
        mine = next((value for value, number in ranked if number == trial.number), None)
        if mine is None:
            return Decision.CONTINUE
        cutoff = ranked[max(1, len(ranked) // self.reduction_factor) - 1][0]
        return Decision.CONTINUE if mine <= cutoff else Decision.STOP

    def choose_resume(
        self, study: optuna.Study, paused: Sequence[FrozenTrial], *, final: bool
    ) -> FrozenTrial | None:
        by_rung: dict[int, list[FrozenTrial]] = {}
        for trial in paused:
            rung = self.current_rung(trial)
            if rung is not None and self.in_bracket(trial):
                by_rung.setdefault(rung, []).append(trial)
        for rung in sorted(by_rung, reverse=True):  # finish the most trained first
            top = self._top(study, rung, final=final)
            for number in top:
                for trial in by_rung[rung]:
                    if trial.number == number:
                        return trial
        return None


class Hyperband(Scheduler):
    """Hyperband as several ASHA brackets with growing minimum resource (Li et al., 2018/2020).

    Trial ``n`` runs in bracket ``n % brackets``; bracket ``s`` starts its rungs at
    ``min_resource * reduction_factor**s``, so some brackets explore many configs cheaply and
    others give fewer configs a longer first look.
    """

    can_pause = True

    def __init__(
        self, min_resource: int = 1, max_resource: int = 81, reduction_factor: int = 3
    ) -> None:
        count = 0
        while min_resource * reduction_factor**count < max_resource:
            count += 1
        self.brackets = [
            ASHA(
                min_resource * reduction_factor**s,
                max_resource,
                reduction_factor,
                bracket=s,
                brackets=count,
            )
            for s in range(count)
        ]

    def _for(self, trial: FrozenTrial) -> ASHA:
        return self.brackets[trial.number % len(self.brackets)]

    def next_decision(self, trial_number: int, step: int) -> int | None:
        return self.brackets[trial_number % len(self.brackets)].next_decision(trial_number, step)

    def on_report(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Decision:
        return self._for(trial).on_report(study, trial, step)

    def choose_resume(
        self, study: optuna.Study, paused: Sequence[FrozenTrial], *, final: bool
    ) -> FrozenTrial | None:
        for asha in self.brackets:
            chosen = asha.choose_resume(study, paused, final=final)
            if chosen is not None:
                return chosen
        return None


# --- population-based training ---------------------------------------------------------------


class PBT(Scheduler):
    """Population-based training on checkpoints (Jaderberg et al., 2017).

    Every ``perturbation_interval`` steps, a trial in the bottom ``quantile_fraction`` of the
    live trials (by their latest report) is stopped and replaced by a new trial that starts from
    a top trial's checkpoint (exploit) with that trial's config perturbed (explore): numbers are
    multiplied by one of ``perturbation_factors`` (then clipped to their range), categories move
    to a neighbour, and with ``resample_probability`` a parameter is drawn afresh. The new trial
    records its parent, so a config's lineage can be followed.
    """

    def __init__(
        self,
        perturbation_interval: int = 4,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: tuple[float, float] = (0.8, 1.2),
        seed: int | None = None,
    ) -> None:
        if not isinstance(perturbation_interval, int) or perturbation_interval < 1:
            raise ConfigError(
                f"perturbation_interval: expected an integer >= 1, got {perturbation_interval!r}"
            )
        if not 0 < quantile_fraction <= 0.5:
            raise ConfigError(
                f"quantile_fraction: expected a number in (0, 0.5], got {quantile_fraction!r}"
            )
        if not 0 <= resample_probability <= 1:
            raise ConfigError(
                f"resample_probability: expected a number in [0, 1], got {resample_probability!r}"
            )
        self.perturbation_interval = perturbation_interval
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.perturbation_factors = tuple(perturbation_factors)
        self._rng = random.Random(seed)

    def _quantiles(self, study: optuna.Study) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        """(bottom, top) of the live population (unfinished trials), by their latest value.

        As in Ray Tune's PBT, trials running side by side are compared on their latest report.
        """
        import optuna

        key = _is_better(study.direction == optuna.study.StudyDirection.MINIMIZE)

        def latest(trial: FrozenTrial) -> float:
            return trial.intermediate_values[max(trial.intermediate_values)]

        live = [
            t
            for t in study.get_trials(deepcopy=False)
            if not t.state.is_finished() and t.intermediate_values and not math.isnan(latest(t))
        ]
        live.sort(key=lambda t: (key(latest(t)), t.number))
        count = int(len(live) * self.quantile_fraction)
        if count < 1:
            return [], []
        return live[-count:], live[:count]

    def on_report(self, study: optuna.Study, trial: FrozenTrial, step: int) -> Decision:
        if step == 0 or step % self.perturbation_interval:
            return Decision.CONTINUE
        bottom, top = self._quantiles(study)
        if trial.number not in {t.number for t in bottom}:
            return Decision.CONTINUE
        if not self._donors(top):
            return Decision.CONTINUE
        return Decision.STOP

    def next_decision(self, trial_number: int, step: int) -> int | None:
        interval = self.perturbation_interval
        return max(step // interval + 1, 1) * interval

    def _donors(self, top: list[FrozenTrial]) -> list[FrozenTrial]:
        # A finished trial has nothing left to train: cloning it would waste the budget.
        return [t for t in top if not t.state.is_finished() and self.has_checkpoint(t)]

    def clone_for(self, study: optuna.Study, trial: FrozenTrial) -> Clone | None:
        _, top = self._quantiles(study)
        donors = self._donors(top)
        if not donors:
            return None
        donor = self._rng.choice(donors)
        params = {
            name: self._explore(value, donor.distributions[name])
            for name, value in donor.params.items()
        }
        return Clone(source_trial=donor.number, params=params)

    def _explore(self, value: Any, distribution: Any) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        resample = self._rng.random() < self.resample_probability
        if isinstance(distribution, CategoricalDistribution):
            choices = list(distribution.choices)
            if resample:
                return self._rng.choice(choices)
            index = choices.index(value) + self._rng.choice((-1, 1))
            return choices[min(max(index, 0), len(choices) - 1)]
        if isinstance(distribution, (FloatDistribution, IntDistribution)):
            low, high = distribution.low, distribution.high
            if resample:
                if distribution.log:
                    new = math.exp(self._rng.uniform(math.log(low), math.log(high)))
                else:
                    new = self._rng.uniform(low, high)
            else:
                new = value * self._rng.choice(self.perturbation_factors)
            new = min(max(new, low), high)
            step = distribution.step
            if step:
                new = low + round((new - low) / step) * step
                new = min(max(new, low), high)
            return round(new) if isinstance(distribution, IntDistribution) else float(new)
        return value
