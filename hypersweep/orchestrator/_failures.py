"""Failed trials: when a sweep should give up, and what a failure means for a newcomer.

A bug that fails every trial (a typo, a wrong signature) would otherwise burn the whole budget
and end with no result and no word. By default a sweep stops as soon as its first few finished
trials all failed, and the error shows the objective's traceback. Two mistakes of people coming
from Ray Tune and Optuna are recognised and explained.
"""

from __future__ import annotations

import re

from hypersweep._errors import SweepFailed

__all__ = ["FAIL_FAST_TRIALS", "fail_fast_count", "fail_fast_error", "migration_hint"]

#: Finished trials that must all have failed, with none succeeded, before a sweep stops.
FAIL_FAST_TRIALS = 3

_OPTUNA_TRIAL = re.compile(
    r"'dict' object has no attribute '(suggest_\w+|report|should_prune|set_user_attr|params)'"
)


def fail_fast_count(max_concurrent: int | None) -> int:
    """How many failures, with no success, stop a sweep: 3, or one per concurrent trial."""
    return max(FAIL_FAST_TRIALS, max_concurrent or 0)


def migration_hint(error: str) -> str | None:
    """What to write instead, if ``error`` comes from a Ray Tune or Optuna habit."""
    match = _OPTUNA_TRIAL.search(error)
    if match:
        return (
            f"the objective called trial.{match.group(1)}() on its argument, which is the "
            "trial's config (a dict), not an Optuna trial: write def objective(config), read "
            "values as config['lr'], give the space to tune() (e.g. {'lr': "
            "hs.loguniform(1e-4, 1e-1)}) and report with hs.report(step, loss=x)"
        )
    return None


def fail_fast_error(name: str, count: int, number: int, details: str) -> SweepFailed:
    """The error a sweep ends with when its first ``count`` finished trials all failed."""
    return SweepFailed(
        f"the first {count} finished trials of sweep {name!r} all failed and none succeeded, "
        "so the sweep stopped rather than fail the rest of its budget (pass max_failed_trials "
        f"to set another limit). Trial {number} failed with:\n{details.rstrip()}"
    )
