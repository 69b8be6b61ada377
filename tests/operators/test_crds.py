"""The API server itself accepts the CRDs and refuses invalid TrainJobs and Sweeps, naming the
field, through the schemas' constraints and CEL rules."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import Namespace, kubectl_json, trial_template

pytestmark = pytest.mark.k8s


def trainjob(name: str = "job", **spec: Any) -> dict[str, Any]:
    body = trial_template(["python", "-c", "pass"])
    body.update(spec)
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": body,
    }


def sweep(name: str = "sweep", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}},
        "objective": {"metric": "loss"},
        "maxTrials": 4,
        "trialTemplate": trial_template(["python", "-c", "pass"]),
    }
    body.update(spec)
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": body,
    }


def apply(
    cluster: LocalCluster, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)


def test_crds_are_served_with_defaults_and_columns(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    result = apply(cluster, namespace.name, trainjob())
    assert result.returncode == 0, result.stderr
    stored = kubectl_json(cluster, "get", "trainjob", "job", "-n", namespace.name)
    run_policy = stored["spec"]["runPolicy"]
    assert run_policy == {
        "backoffLimit": 3,
        "cleanPodPolicy": "Running",
        "suspend": False,
        "stalledTimeoutSeconds": 300,
    }
    assert stored["spec"]["replicaSpecs"]["Master"]["restartPolicy"] == "OnFailure"
    assert apply(cluster, namespace.name, sweep()).returncode == 0
    stored = kubectl_json(cluster, "get", "sweep", "sweep", "-n", namespace.name)
    assert stored["spec"]["strategy"] == {"name": "tpe"}
    assert stored["spec"]["parallelism"] == 3
    assert stored["spec"]["storage"] == {"persistentVolumeClaim": {"claimName": "hypersweep-data"}}
    header = cluster.kubectl("get", "sweeps", "-n", namespace.name).stdout.splitlines()[0].split()
    assert header[:8] == [
        "NAME",
        "STATE",
        "SUCCEEDED",
        "PRUNED",
        "FAILED",
        "RUNNING",
        "BEST-TRIAL",
        "BEST-VALUE",
    ]
    header = cluster.kubectl("get", "tj", "-n", namespace.name).stdout.splitlines()[0].split()
    # A trial's TrainJob shows its trial first (empty for a TrainJob of no sweep).
    assert header[:7] == ["NAME", "TRIAL", "TRIAL-STATE", "VALUE", "PARAMS", "STATE", "RESTARTS"]


def test_a_kubeflow_pytorchjob_ports_by_changing_apiversion_and_kind(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    manifest = """
apiVersion: hypersweep.io/v1alpha1   # was kubeflow.org/v1
kind: TrainJob                       # was PyTorchJob
metadata:
  name: pytorch-simple
spec:
  pytorchReplicaSpecs:
    Master:
      replicas: 1
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: pytorch
              image: docker.io/kubeflowkatib/pytorch-mnist:v1beta1-45c5727
              command: ["python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1"]
    Worker:
      replicas: 1
      restartPolicy: OnFailure
      template:
        spec:
          containers:
            - name: pytorch
              image: docker.io/kubeflowkatib/pytorch-mnist:v1beta1-45c5727
              command: ["python3", "/opt/pytorch-mnist/mnist.py", "--epochs=1"]
  runPolicy:
    cleanPodPolicy: None
"""
    result = cluster.kubectl(
        "apply", "-n", namespace.name, "--dry-run=server", "-f", "-", input=manifest, check=False
    )
    assert result.returncode == 0, result.stderr


def _without(body: dict[str, Any], *path: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return body


def _with(body: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    target = body
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return body


BASE_JOB = trainjob("bad")
WORKER = copy.deepcopy(BASE_JOB["spec"]["replicaSpecs"]["Master"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _with(BASE_JOB, -1, "spec", "replicaSpecs", "Master", "replicas"),
            "spec.replicaSpecs.Master.replicas",
        ),
        (
            _with(
                _without(BASE_JOB, "spec", "replicaSpecs", "Master"),
                WORKER,
                "spec",
                "replicaSpecs",
                "Worker",
            ),
            "needs a Master replica",
        ),
        (_with(BASE_JOB, 2, "spec", "replicaSpecs", "Master", "replicas"), "exactly one Master"),
        (
            _with(BASE_JOB, WORKER, "spec", "replicaSpecs", "Chief"),
            "pytorch replica roles are Master, Worker",
        ),
        (
            _with(BASE_JOB, "Sometimes", "spec", "replicaSpecs", "Master", "restartPolicy"),
            "spec.replicaSpecs.Master.restartPolicy",
        ),
        (_with(BASE_JOB, "mxnet", "spec", "framework"), "spec.framework"),
        (_without(BASE_JOB, "spec", "framework"), "spec.framework"),
        (
            _with(BASE_JOB, {"Worker": WORKER}, "spec", "tfReplicaSpecs"),
            "exactly one of replicaSpecs",
        ),
        (_with(BASE_JOB, -5, "spec", "runPolicy", "backoffLimit"), "spec.runPolicy.backoffLimit"),
        (
            _with(BASE_JOB, "Some", "spec", "runPolicy", "cleanPodPolicy"),
            "spec.runPolicy.cleanPodPolicy",
        ),
        (
            _with(BASE_JOB, [], "spec", "replicaSpecs", "Master", "template", "spec", "containers"),
            "containers",
        ),
        (_with(BASE_JOB, "x" * 49, "metadata", "name"), "at most 48 characters"),
    ],
    ids=[
        "negative-replicas",
        "missing-master",
        "two-masters",
        "chief-in-pytorch",
        "bad-restart-policy",
        "unknown-framework",
        "framework-missing",
        "two-replica-maps",
        "negative-backoff",
        "bad-clean-pod-policy",
        "no-containers",
        "name-too-long",
    ],
)
def test_invalid_trainjobs_are_refused(
    cluster: LocalCluster, namespace: Namespace, body: dict[str, Any], expected: str
) -> None:
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr


BASE_SWEEP = sweep("bad")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _with(BASE_SWEEP, {"type": "floaty", "low": 0, "high": 1}, "spec", "space", "x"),
            "spec.space.x.type",
        ),
        (
            _with(BASE_SWEEP, {"type": "float", "low": 2, "high": 1}, "spec", "space", "x"),
            "low must not exceed high",
        ),
        (_with(BASE_SWEEP, {"type": "int", "low": 1}, "spec", "space", "x"), "need low and high"),
        (
            _with(
                BASE_SWEEP,
                {"type": "float", "low": 0, "high": 1, "log": True},
                "spec",
                "space",
                "x",
            ),
            "log-scaled",
        ),
        (
            _with(BASE_SWEEP, {"type": "categorical", "values": []}, "spec", "space", "x"),
            "spec.space.x.values",
        ),
        (_with(BASE_SWEEP, {}, "spec", "space"), "spec.space"),
        (_with(BASE_SWEEP, {"name": "hillclimb"}, "spec", "strategy"), "spec.strategy.name"),
        (_with(BASE_SWEEP, {"name": "bandit"}, "spec", "earlyStopping"), "spec.earlyStopping.name"),
        (_with(BASE_SWEEP, 0, "spec", "maxTrials"), "spec.maxTrials"),
        (_with(BASE_SWEEP, 0, "spec", "parallelism"), "spec.parallelism"),
        (_with(BASE_SWEEP, "maximize", "spec", "objective", "mode"), "spec.objective.mode"),
        (_without(BASE_SWEEP, "spec", "objective"), "spec.objective"),
        (
            _with(BASE_SWEEP, {"Worker": WORKER}, "spec", "trialTemplate", "replicaSpecs"),
            "spec.trialTemplate.replicaSpecs",
        ),
        (_with(BASE_SWEEP, "s" * 36, "metadata", "name"), "at most 35 characters"),
    ],
    ids=[
        "unknown-parameter-type",
        "low-above-high",
        "int-without-high",
        "log-from-zero",
        "no-values",
        "empty-space",
        "unknown-strategy",
        "unknown-early-stopping",
        "zero-trials",
        "zero-parallelism",
        "bad-mode",
        "no-objective",
        "template-without-master",
        "name-too-long",
    ],
)
def test_invalid_sweeps_are_refused(
    cluster: LocalCluster, namespace: Namespace, body: dict[str, Any], expected: str
) -> None:
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr


def test_a_sweeps_space_and_objective_cannot_change(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    assert apply(cluster, namespace.name, sweep("fixed")).returncode == 0
    changed = _with(
        sweep("fixed"), {"type": "float", "low": 0.5, "high": 0.9}, "spec", "space", "lr"
    )
    result = apply(cluster, namespace.name, changed)
    assert result.returncode != 0
    assert "space cannot change" in result.stderr
    more = _with(sweep("fixed"), 10, "spec", "maxTrials")
    assert apply(cluster, namespace.name, more).returncode == 0  # the budget may grow
    several = {"metrics": [{"name": "loss"}, {"name": "size"}]}
    result = apply(cluster, namespace.name, _with(more, several, "spec", "objective"))
    assert result.returncode != 0
    assert "objective.metric, mode, metrics and constraints cannot change" in result.stderr


def test_a_sweep_with_several_objectives_and_constraints_is_served(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    objective = {
        "metrics": [{"name": "loss"}, {"name": "size", "mode": "max"}],
        "constraints": {"memory_gb": {"max": 16}},
    }
    branches = {
        "type": "categorical",
        "values": [
            {"name": "sgd", "lr": {"type": "float", "low": 0.1, "high": 1}},
            {"name": "adam"},
        ],
    }
    body = _with(sweep("several"), objective, "spec", "objective")
    body = _with(body, branches, "spec", "space", "optimizer")
    result = apply(cluster, namespace.name, body)
    assert result.returncode == 0, result.stderr
    stored = kubectl_json(cluster, "get", "sweep", "several", "-n", namespace.name)["spec"]
    assert stored["objective"]["metrics"] == [
        {"name": "loss", "mode": "min"},
        {"name": "size", "mode": "max"},
    ]
    assert stored["space"]["optimizer"] == branches
    changed = _with(body, {"memory_gb": {"max": 8}}, "spec", "objective", "constraints")
    result = apply(cluster, namespace.name, changed)
    assert result.returncode != 0 and "cannot change after creation" in result.stderr
    for bad, message in (
        ({"metric": "loss", "metrics": objective["metrics"]}, "give either metric"),
        ({"metrics": objective["metrics"], "goal": 1.0}, "goal needs a single metric"),
        ({"metrics": [{"name": "loss"}]}, "spec.objective.metrics"),
        ({"metric": "loss", "constraints": {"m": {}}}, "spec.objective.constraints.m"),
    ):
        result = apply(cluster, namespace.name, _with(sweep("bad"), bad, "spec", "objective"))
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
