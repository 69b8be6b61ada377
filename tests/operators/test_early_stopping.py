"""Early stopping on Kubernetes does what it does locally: ASHA pauses trials (their TrainJobs
suspended) and promotes them later, each promoted trial's new pod resuming from its checkpoint;
PBT replaces the worst trial by a clone that starts from a better trial's checkpoint with that
trial's config perturbed. One control loop serves both, so the decisions are the local ones."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from hypersweep.orchestrator._storage import CLONED_FROM_ATTR, PARENT_ATTR
from hypersweep.testing import LocalCluster

from .conftest import Namespace, OperatorProcess, kubectl_json, wait_until
from .objectives import ASHA_QUALITY
from .test_sweep import create_sweep, stored_trials, wait_sweep

pytestmark = pytest.mark.k8s


def marks(namespace: Namespace, number: int) -> list[str]:
    """What trial ``number``'s starts marked (first word of each line), in order."""
    path = namespace.markers / f"trial-{number}.log"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def first_start(namespace: Namespace, number: int) -> tuple[int, float]:
    """The step and theta trial ``number`` of ``lr_schedule_toy`` first started from."""
    first = marks(namespace, number)[0]
    step, theta = first.removeprefix("start-step").split("-theta")
    return int(step), float(theta)


def pod_log(cluster: LocalCluster, namespace: Namespace, pod: str) -> str:
    """Everything the node agents' containers of ``pod`` wrote (each run of the pod appends)."""
    logs = sorted(cluster.workdir.glob(f"node-agents/*/pods/{namespace.name}/{pod}/*.log"))
    return "".join(path.read_text(errors="replace") for path in logs)


def test_asha_on_kubernetes_promotes_paused_trials_from_their_checkpoints(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # One trial at a time: the order of events, so every decision, is that of the local test
    # tests/test_schedulers.py::test_asha_pauses_and_promotes_the_right_trials.
    create_sweep(
        cluster,
        namespace,
        "promote",
        "asha_curve",
        max_trials=6,
        parallelism=1,
        space={"x": {"type": "float", "low": 0.0, "high": 1.0}},
        early_stopping={
            "name": "asha",
            "settings": {"min_resource": 1, "max_resource": 9, "reduction_factor": 3},
        },
    )
    status = wait_sweep(cluster, namespace, "promote", operator, timeout=400)
    assert "Succeeded" in status["true"], status
    assert status["trials"]["total"] == 6
    assert status["trials"]["succeeded"] == 1 and status["trials"]["pruned"] == 5, status
    stored = {t.number: t for t in stored_trials(namespace, status)}
    assert sorted(stored) == list(range(6))
    by_quality = {ASHA_QUALITY[n]: t for n, t in stored.items()}

    # 0.9 was paused at rung 1, promoted, paused at rung 3, promoted again, and trained fully:
    # every step reported exactly once, its pod started three times from 0, 2 and 4.
    best = by_quality[0.9]
    assert best.state == optuna.trial.TrialState.COMPLETE
    assert sorted(best.intermediate_values) == list(range(10))
    assert best.value == pytest.approx(1 - 0.9 + 1 / 10)
    assert marks(namespace, best.number) == ["start-step0", "start-step2", "start-step4"]
    log = pod_log(cluster, namespace, f"promote-trial-{best.number}-master-0")
    assert [line for line in log.splitlines() if " starts at step " in line] == [
        f"trial {best.number} starts at step {s}" for s in (0, 2, 4)
    ], log

    # Its last TrainJob (a promotion replaces the suspended one) succeeded: its status follows
    # its pods' within the controller's batch period.
    def succeeded() -> dict[str, Any] | None:
        job = kubectl_json(
            cluster, "get", "trainjob", f"promote-trial-{best.number}", "-n", namespace.name
        )
        conditions = (job.get("status") or {}).get("conditions") or []
        done = any(c["type"] == "Succeeded" and c["status"] == "True" for c in conditions)
        return dict(job) if done else None

    job = wait_until(succeeded, 30, "the promoted trial's TrainJob to succeed")
    assert not job["spec"]["runPolicy"].get("suspend")

    # 0.8 reached rung 3 and waited there behind 0.9; the others stopped at rung 1, unresumed.
    assert by_quality[0.8].state == optuna.trial.TrialState.PRUNED
    assert max(by_quality[0.8].intermediate_values) == 3
    for quality in (0.5, 0.1, 0.7, 0.3):
        trial = by_quality[quality]
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert max(trial.intermediate_values) == 1
        assert marks(namespace, trial.number) == ["start-step0"]
    assert status["bestTrial"]["number"] == best.number


def test_pbt_on_kubernetes_clones_from_a_checkpoint_with_a_perturbed_config(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    low, high = 0.01, 1.0
    factors = (0.8, 1.2)
    create_sweep(
        cluster,
        namespace,
        "pbt",
        "lr_schedule_toy",
        max_trials=8,
        parallelism=4,
        space={
            "lr": {"type": "float", "low": low, "high": high, "log": True},
            "steps": {"type": "constant", "value": 16},
            "pause": {"type": "constant", "value": 0.15},
        },
        early_stopping={
            "name": "pbt",
            "settings": {
                "perturbation_interval": 4,
                "quantile_fraction": 0.25,
                "resample_probability": 0.0,  # every clone's lr is its parent's times a factor
                "perturbation_factors": list(factors),
                "seed": 1,
            },
        },
    )
    status = wait_sweep(cluster, namespace, "pbt", operator, timeout=400)
    assert "Succeeded" in status["true"], status
    assert status["trials"]["total"] == 8 and status["trials"]["failed"] == 0, status
    stored = {t.number: t for t in stored_trials(namespace, status)}
    assert sorted(stored) == list(range(8))
    clones = [t for t in stored.values() if t.system_attrs.get(PARENT_ATTR) is not None]
    assert clones, "PBT never exploited a better trial"
    for clone in clones:
        parent = stored[clone.system_attrs[PARENT_ATTR]]
        assert parent.number != clone.number
        # Explore: the parent's lr times one of the factors, clipped to the range.
        candidates = [min(max(parent.params["lr"] * f, low), high) for f in factors]
        assert any(clone.params["lr"] == pytest.approx(c) for c in candidates), (
            clone.params,
            parent.params,
        )
        # Exploit: the clone's pod started from the parent's checkpoint, one step past it, with
        # the parent's theta at that step: the parent's own start theta (1, or its parent's if
        # it is a clone too) times (1 - lr_parent) per step since.
        source = clone.system_attrs[CLONED_FROM_ATTR]
        assert f"trial-{parent.number:05d}" in source, source
        resumed, theta = first_start(namespace, clone.number)
        parent_step, parent_theta = first_start(namespace, parent.number)
        assert resumed > parent_step, (resumed, parent_step)  # from a checkpoint, not scratch
        expected_theta = parent_theta * (1 - parent.params["lr"]) ** (resumed - parent_step)
        assert theta == pytest.approx(expected_theta)
        if clone.intermediate_values:
            assert min(clone.intermediate_values) == resumed
            theta *= 1 - clone.params["lr"]
            expected = theta**2 + 0.5 * clone.params["lr"]
            assert clone.intermediate_values[resumed] == pytest.approx(expected)
