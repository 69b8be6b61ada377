"""The operator SIGKILLed at random moments during one ASHA sweep and started again each time
(the small version of ``benchmarks/chaos.py``): exactly ``maxTrials`` trials, one TrainJob per
trial number, never more pods of a trial than its gang, nothing left behind, no report lost,
no trial started over from scratch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hypersweep.testing import (
    LocalCluster,
    chaos_sweep,
    run_operator_chaos,
    run_trainjob_gang_chaos,
)

from .conftest import Namespace, OperatorProcess

pytestmark = pytest.mark.k8s


def test_operator_sigkilled_during_an_asha_sweep_loses_and_duplicates_nothing(
    cluster: LocalCluster, namespace: Namespace, operator_kubeconfig: Path, tmp_path: Path
) -> None:
    # A short lease: a SIGKILLed leader never releases it, and its successor waits it out.
    operator = OperatorProcess(
        operator_kubeconfig, namespace, tmp_path / "operator.log", lease_duration=3
    )
    operator.start()
    command = [
        sys.executable,
        "-m",
        "hypersweep.operators.trial_entrypoint",
        "hypersweep.testing._chaos:chaos_curve",
    ]
    # Long enough to outlast the kills: steps of 0.3 s, kills 0.3-2 s after each takeover.
    sweep = chaos_sweep(
        "chaos", command, namespace.markers, max_trials=10, parallelism=2, pause=0.3
    )
    try:
        report = run_operator_chaos(
            cluster,
            namespace.name,
            lambda study: namespace.data_dir / namespace.name / study / "journal.log",
            operator,
            sweep,
            namespace.markers,
            kills=4,
            seed=5,
            delay=(0.3, 2.0),
            log=print,
        )
    except Exception:
        print(operator.log_tail(150))
        raise
    finally:
        operator.stop()
    print(report.as_dict())
    assert report.kills == 4, report
    assert report.succeeded and report.trials == report.max_trials == 10, report
    assert sum(report.trial_states.values()) == 10, report
    assert report.duplicate_trainjobs == 0 and report.extra_starts == 0, report
    assert report.pods_beyond_gang == 0, report
    assert report.orphaned_pods == 0 and report.orphaned_secrets == 0, report
    assert report.lost_reports == 0, report
    assert report.restarted_from_scratch == 0, report


def test_replicas_of_trainjob_gangs_sigkilled_lose_no_trial_and_change_no_value(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "hypersweep.operators.trial_entrypoint",
        "hypersweep.testing._chaos:chaos_curve",
    ]
    try:
        report = run_trainjob_gang_chaos(
            cluster,
            namespace.name,
            lambda study: namespace.data_dir / namespace.name / study / "journal.log",
            command,
            namespace.markers,
            kills=6,
            trials=4,
            replicas=4,
            parallelism=2,
            steps=30,  # 9 s a trial: the kills land while gangs run
            pause=0.3,
            seed=3,
            delay=(0.5, 1.5),
            log=print,
        )
    except Exception:
        print(operator.log_tail(150))
        raise
    print(report.as_dict())
    assert report.kills == 6, report
    assert report.lost_trials == 0 and report.completed == 4, report
    assert report.gang_restarts >= 1, report
    assert report.values_equal and report.max_abs_difference == 0.0, report
