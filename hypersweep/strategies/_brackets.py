"""Katib's Hyperband schedule: brackets of rungs, each rung a number of trials at a budget.

For the largest budget ``R`` and ``eta`` (Li et al., 2018, as Katib's hyperband suggestion
computes it): ``s_max = floor(log_eta R)``; bracket ``s = s_max .. 0`` starts ``n = ceil((s_max +
1) eta^s / (s + 1))`` configs at budget ``int(R eta^-s)``; its rung ``i`` runs the best
``ceil(n_{i-1} / eta)`` configs of rung ``i - 1`` at budget ``int(R eta^(i - s))``, where
``n_i = ceil(n eta^-i)``. Pure arithmetic, without Optuna: the Katib translation sizes a sweep
with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypersweep._errors import ConfigError

__all__ = ["HyperbandSchedule", "Rung"]


@dataclass(frozen=True)
class Rung:
    """One rung of a bracket: ``count`` trials, numbered from ``first``, at ``budget``."""

    bracket: int  # s: s_max for the first bracket, down to 0
    index: int  # i: 0 for the bracket's fresh configs
    first: int
    count: int
    budget: int


class HyperbandSchedule:
    """Katib's Hyperband brackets for a maximum budget ``max_resource`` and ``eta``."""

    def __init__(self, max_resource: float, eta: int = 3) -> None:
        if isinstance(eta, bool) or int(eta) != eta or eta < 2:
            raise ConfigError(f"eta: expected an integer >= 2, got {eta!r}")
        if not max_resource >= 1:
            raise ConfigError(f"max_resource: expected a budget >= 1, got {max_resource!r}")
        self.eta = int(eta)
        self.max_resource = float(max_resource)
        # The epsilon keeps log_3(9) at 2 despite floating point.
        self.s_max = int(math.log(self.max_resource) / math.log(self.eta) + 1e-9)
        rungs: list[Rung] = []
        first = 0
        for s in range(self.s_max, -1, -1):
            n = math.ceil((self.s_max + 1) * self.eta**s / (s + 1))
            count = n
            for i in range(s + 1):
                if i > 0:
                    count = math.ceil(math.ceil(n * self.eta ** -(i - 1)) / self.eta)
                budget = int(self.max_resource * self.eta ** (i - s) + 1e-9)
                rungs.append(Rung(s, i, first, count, budget))
                first += count
        self.rungs = rungs

    @property
    def total_trials(self) -> int:
        """How many trials the whole schedule runs."""
        return sum(r.count for r in self.rungs)

    @property
    def min_budget(self) -> int:
        return min(r.budget for r in self.rungs)

    def place(self, number: int) -> tuple[int, Rung]:
        """The index of trial ``number``'s rung in :attr:`rungs`, and the rung; IndexError after
        the schedule."""
        for position, rung in enumerate(self.rungs):
            if rung.first <= number < rung.first + rung.count:
                return position, rung
        raise IndexError(number)
