"""Random replica SIGKILLs across a sweep of 4-replica trials (the small version of
``benchmarks/chaos.py``): no trial lost, and every final value equals a fault-free run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypersweep.testing import run_gang_chaos


@pytest.mark.slow
def test_random_replica_kills_lose_no_trial_and_change_no_value(run_dir: Path) -> None:
    report = run_gang_chaos(run_dir, kills=5, trials=3, replicas=4, steps=10, pause=0.1, seed=3)
    print(report.as_dict())
    assert report.kills == 5, report
    assert report.lost_trials == 0 and report.completed == 3, report
    assert report.gang_restarts >= 1, report  # the kills restarted gangs from checkpoints
    assert report.values_equal, report
