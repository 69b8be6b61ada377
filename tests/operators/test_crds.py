"""The API server itself accepts the CRDs and refuses invalid TrainJobs and Sweeps, naming the
field, through the schemas' constraints and CEL rules."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hypersweep.operators._crds import PODTEMPLATE_SCHEMA, crd_manifests
from hypersweep.testing import LocalCluster

from .conftest import REPO, Namespace, kubectl_json, trial_template

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


# -- the pod template: core/v1 PodTemplateSpec's schema, from the API server's OpenAPI ----------

MASTER_POD = ("replicaSpecs", "Master", "template", "spec")
CONTAINER = "containers[0]"


def _typo(body: dict[str, Any], spec_path: tuple[str, ...], field: str, value: Any) -> Any:
    """``body`` with ``field`` set in the first container of the pod spec at ``spec_path``."""
    body = copy.deepcopy(body)
    target = body["spec"]
    for key in spec_path:
        target = target[key]
    target["containers"][0][field] = value
    return body


def _kubeflow_job(replicas: str, role: str) -> dict[str, Any]:
    """A Kubeflow-shaped TrainJob (``pytorchReplicaSpecs`` or ``tfReplicaSpecs``)."""
    spec = trial_template(["python", "-c", "pass"])
    template = spec["replicaSpecs"]["Master"]
    return {**trainjob("kubeflow"), "spec": {replicas: {role: template}}}


LIMITS = {"limits": {"cpu": "1"}}
ENV = [{"name": "LR", "value": "0.1"}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            _typo(BASE_JOB, MASTER_POD, "resource", LIMITS),
            f"spec.replicaSpecs.Master.template.spec.{CONTAINER}.resource",
        ),
        (
            _typo(BASE_JOB, MASTER_POD, "envv", ENV),
            f"spec.replicaSpecs.Master.template.spec.{CONTAINER}.envv",
        ),
        (
            _typo(
                _kubeflow_job("pytorchReplicaSpecs", "Master"),
                ("pytorchReplicaSpecs", "Master", "template", "spec"),
                "resource",
                LIMITS,
            ),
            f"spec.pytorchReplicaSpecs.Master.template.spec.{CONTAINER}.resource",
        ),
        (
            _typo(
                _kubeflow_job("tfReplicaSpecs", "Worker"),
                ("tfReplicaSpecs", "Worker", "template", "spec"),
                "envv",
                ENV,
            ),
            f"spec.tfReplicaSpecs.Worker.template.spec.{CONTAINER}.envv",
        ),
        (
            _typo(BASE_SWEEP, ("trialTemplate", *MASTER_POD), "resource", LIMITS),
            f"spec.trialTemplate.replicaSpecs.Master.template.spec.{CONTAINER}.resource",
        ),
        (
            _typo(BASE_SWEEP, ("trialTemplate", *MASTER_POD), "envv", ENV),
            f"spec.trialTemplate.replicaSpecs.Master.template.spec.{CONTAINER}.envv",
        ),
        (
            _with(BASE_JOB, {"a100": "true"}, "spec", *MASTER_POD, "nodeSelecter"),
            "spec.replicaSpecs.Master.template.spec.nodeSelecter",
        ),
        (
            _with(BASE_SWEEP, {"team": "a"}, "spec", "trialTemplate", *MASTER_POD[:-1], "labels"),
            "spec.trialTemplate.replicaSpecs.Master.template.labels",
        ),
    ],
    ids=[
        "trainjob-resource",
        "trainjob-envv",
        "pytorchjob-resource",
        "tfjob-envv",
        "sweep-resource",
        "sweep-envv",
        "pod-nodeSelecter",
        "sweep-labels-outside-metadata",
    ],
)
def test_pod_template_typos_are_refused_at_apply(
    cluster: LocalCluster, namespace: Namespace, body: dict[str, Any], field: str
) -> None:
    # kubectl apply validates strictly by default (--validate=strict): an unknown field is an
    # error, not a field pruned in silence.
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0, result.stdout
    assert f'unknown field "{field}"' in result.stderr, result.stderr


def test_pod_template_fields_of_the_wrong_type_are_refused(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    body = _typo(BASE_SWEEP, ("trialTemplate", *MASTER_POD), "command", "python train.py")
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0
    field = f"spec.trialTemplate.replicaSpecs.Master.template.spec.{CONTAINER}.command"
    assert f"{field}: Invalid value" in result.stderr, result.stderr
    assert "must be of type array" in result.stderr, result.stderr
    body = _typo(BASE_JOB, MASTER_POD, "resources", {"limits": {"memory": ["1Gi"]}})
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0
    field = f"spec.replicaSpecs.Master.template.spec.{CONTAINER}.resources.limits.memory"
    assert field in result.stderr, result.stderr
    # Quantities are strings or integers, as in Kubeflow's CRDs: 0.5 must be written "0.5".
    body = _typo(BASE_JOB, MASTER_POD, "resources", {"limits": {"cpu": 0.5}})
    result = apply(cluster, namespace.name, body)
    assert result.returncode != 0
    field = f"spec.replicaSpecs.Master.template.spec.{CONTAINER}.resources.limits.cpu"
    assert f"{field} in body must be of type integer,string" in result.stderr, result.stderr
    body = _typo(BASE_JOB, MASTER_POD, "resources", {"limits": {"cpu": "0.5", "nvidia.com/gpu": 1}})
    assert apply(cluster, namespace.name, body).returncode == 0


def test_a_rich_pod_template_is_stored_as_written(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    # The schema must prune nothing a pod accepts: what is applied is what the controller reads.
    pod = {
        "metadata": {"labels": {"team": "vision"}, "annotations": {"note": "x"}},
        "spec": {
            "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
            "containers": [
                {
                    "name": "pytorch",
                    "image": "hypersweep:test",
                    "command": ["python", "-c", "pass"],
                    "args": ["--lr=${trialParameters.lr}"],
                    "env": [
                        {"name": "LR", "value": "${trialParameters.lr}"},
                        {
                            "name": "NODE",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                        },
                    ],
                    "envFrom": [{"secretRef": {"name": "creds", "optional": True}}],
                    "ports": [{"containerPort": 29500, "name": "dist", "protocol": "TCP"}],
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "1Gi"},
                        "limits": {"nvidia.com/gpu": 1, "memory": "2Gi"},
                    },
                    "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "readinessProbe": {"tcpSocket": {"port": "dist"}, "periodSeconds": 5},
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            "nodeSelector": {"hypersweep.io/pool": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 10,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"team": "vision"}},
                            },
                        }
                    ]
                }
            },
            "priorityClassName": "high",
            "serviceAccountName": "trainer",
        },
    }
    body = _with(BASE_SWEEP, pod, "spec", "trialTemplate", *MASTER_POD[:-1])
    body = _with(body, "rich", "metadata", "name")
    body = _with(body, {"lr": {"type": "float", "low": 0.01, "high": 0.1}}, "spec", "space")
    result = apply(cluster, namespace.name, body)
    assert result.returncode == 0, result.stderr
    assert "unknown field" not in result.stderr, result.stderr
    stored = kubectl_json(cluster, "get", "sweep", "rich", "-n", namespace.name)
    assert stored["spec"]["trialTemplate"]["replicaSpecs"]["Master"]["template"] == pod


def test_example_manifests_pass_the_api_servers_validation(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    for path in sorted((REPO / "examples" / "k8s").glob("*.yaml")):
        result = cluster.kubectl(
            "apply", "-n", namespace.name, "--dry-run=server", "-f", str(path), check=False
        )
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        assert not result.stderr, f"{path.name}: {result.stderr}"  # no warnings either


def test_the_crds_apply_client_side(cluster: LocalCluster) -> None:
    # README's `kubectl apply -k deploy/base` applies client-side, which records the whole CRD
    # in an annotation the API server limits to 256 KiB: the embedded pod schemas must fit.
    result = cluster.kubectl("apply", "--dry-run=server", "-k", str(REPO / "deploy" / "crds"))
    assert "trainjobs.hypersweep.io" in result.stdout and "sweeps.hypersweep.io" in result.stdout
    for crd in crd_manifests():
        assert len(json.dumps(crd, separators=(",", ":"))) < 256 * 1024 - 16 * 1024


def test_the_pod_template_schema_is_generated_from_the_api_server(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    document = tmp_path / "openapi-v1.json"
    document.write_text(cluster.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
    script = REPO / "hack" / "podtemplate_schema.py"
    generated = subprocess.run(
        [sys.executable, str(script), "--openapi", str(document), "--output", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = REPO / "hypersweep" / "operators" / PODTEMPLATE_SCHEMA
    assert committed.read_text() == generated, (
        f"{committed.name} is stale: run `python hack/podtemplate_schema.py`"
    )


def test_a_kubeflow_jaxjob_ports_by_changing_its_kind(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    jaxjob = _without(
        _with(BASE_JOB, {"Worker": WORKER}, "spec", "jaxReplicaSpecs"), "spec", "framework"
    )
    del jaxjob["spec"]["replicaSpecs"]
    result = apply(cluster, namespace.name, jaxjob)
    assert result.returncode == 0, result.stderr
    refused = apply(cluster, namespace.name, _with(jaxjob, "pytorch", "spec", "framework"))
    assert refused.returncode != 0
    assert "jaxReplicaSpecs needs framework jax" in refused.stderr, refused.stderr
    # Its pod templates are not checked at apply (the controller and the pods' own admission
    # do), where the same template under replicaSpecs is refused by the CRD's schema.
    bad_template = copy.deepcopy(WORKER)
    bad_template["template"]["spec"]["containers"][0]["ports"] = "6666"
    loose = _with(jaxjob, {"Worker": bad_template}, "spec", "jaxReplicaSpecs")
    assert apply(cluster, namespace.name, _with(loose, "loose", "metadata", "name")).returncode == 0
    strict = _with(BASE_JOB, {"Master": bad_template}, "spec", "replicaSpecs")
    refused = apply(cluster, namespace.name, _with(strict, "strict", "metadata", "name"))
    assert refused.returncode != 0 and "ports" in refused.stderr, refused.stderr
