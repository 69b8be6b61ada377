"""The grid strategy over a conditional space: every branch times the grid of its parameters.

Optuna's ``GridSampler`` enumerates a product of per-parameter values, which a space whose
branches have different parameters is not. This sampler lets ``GridSampler`` hand out and track
grid points (across drivers, through storage, as usual) over the indices of a precomputed list
of assignments, and answers each parameter from the trial's assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

_INDEX = "__assignment__"


class BranchGridSampler(optuna.samplers.GridSampler):
    """Runs each of ``assignments`` (dotted parameter name -> value) once."""

    def __init__(self, assignments: Sequence[dict[str, Any]], seed: int | None = None) -> None:
        super().__init__({_INDEX: list(range(len(assignments)))}, seed=seed)
        self._assignments = list(assignments)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if "grid_id" not in trial.system_attrs:
            raise ValueError("the grid strategy assigns every parameter; enqueue none")
        # GridSampler shuffles its points; the point holds the assignment's index.
        (index,) = self._all_grids[trial.system_attrs["grid_id"]]
        assignment = self._assignments[int(index)]
        if param_name not in assignment:
            raise ValueError(f"parameter {param_name!r} is not in the grid's assignment")
        return assignment[param_name]
