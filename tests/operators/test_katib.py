"""Katib Experiments run as Sweeps on the test cluster: our own Experiments in Katib's shapes
(random, grid, tpe, hyperband; a batch Job and a PyTorchJob trial; StdOut, File, TF-event and
Push collectors; medianstop; a goal; a trial interpreter without hypersweep), changed only in
apiVersion and kind. Each runs to completion with the right
number of trials and the right best trial, in the Sweep's status and Katib's
``currentOptimalTrial``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from hypersweep.testing import LocalCluster

from .conftest import HERE, Namespace, OperatorProcess, kubectl_json
from .test_sweep import stored_trials, wait_sweep

pytestmark = pytest.mark.k8s

SCRIPT = str(HERE / "katib_trial.py")


def experiment(
    name: str,
    *,
    algorithm: str = "random",
    settings: list[dict[str, str]] | None = None,
    max_trials: int | None = 4,
    parallel: int = 2,
    extra_args: list[str] | None = None,
    collector: dict[str, Any] | None = None,
    kind: str = "Job",
    goal: float | None = None,
    early: dict[str, Any] | None = None,
    grid: bool = False,
) -> dict[str, Any]:
    """A Katib Experiment (apiVersion and kind changed) whose trials run katib_trial.py."""
    container = {
        "name": "training",
        "image": "hypersweep:test",
        "command": [sys.executable, SCRIPT],
        "args": [
            "--lr=${trialParameters.learningRate}",
            "--layers=${trialParameters.numLayers}",
            "--name=${trialParameters.trialName}",
            *(extra_args or []),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    pod = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    if kind == "Job":
        trial_spec: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "spec": {"backoffLimit": 0, "template": pod},
        }
    else:
        container["name"] = "pytorch"
        trial_spec = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "spec": {
                "pytorchReplicaSpecs": {
                    "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}
                }
            },
        }
    lr: dict[str, Any] = {"min": "0.001", "max": "0.1"}
    lr.update({"list": ["0.001", "0.01", "0.1"]} if grid else {"distribution": "logUniform"})
    spec: dict[str, Any] = {
        "objective": {
            "type": "maximize",
            "objectiveMetricName": "Validation-accuracy",
            "additionalMetricNames": ["Train-accuracy"],
        },
        "algorithm": {"algorithmName": algorithm, "algorithmSettings": settings or []},
        "parallelTrialCount": parallel,
        "maxFailedTrialCount": 1,
        "parameters": [
            {
                "name": "lr",
                "parameterType": "discrete" if grid else "double",
                "feasibleSpace": {"list": lr["list"]} if grid else lr,
            },
            {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "3"}},
        ],
        "trialTemplate": {
            "primaryContainerName": "pytorch" if kind != "Job" else "training",
            "trialParameters": [
                {"name": "learningRate", "description": "learning rate", "reference": "lr"},
                {"name": "numLayers", "reference": "layers"},
                {"name": "trialName", "reference": "${trialSpec.Name}"},
            ],
            "trialSpec": trial_spec,
        },
    }
    if max_trials is not None:
        spec["maxTrialCount"] = max_trials
    if goal is not None:
        spec["objective"]["goal"] = goal
    if collector is not None:
        spec["metricsCollectorSpec"] = collector
    if early is not None:
        spec["earlyStopping"] = early
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": spec,
    }


def run(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, body: dict[str, Any]
) -> tuple[dict[str, Any], list[optuna.trial.FrozenTrial]]:
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
    status = wait_sweep(cluster, namespace, body["metadata"]["name"], operator, timeout=400)
    return status, stored_trials(namespace, status)


def check_best(status: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> None:
    """The status's best trial is the stored best, in both its own and Katib's terms."""
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(completed, key=lambda t: t.value or 0.0)
    assert status["bestTrial"]["number"] == best.number
    optimal = status["currentOptimalTrial"]
    assert optimal["bestTrialName"].endswith(f"-trial-{best.number}")
    assigned = {p["name"]: p["value"] for p in optimal["parameterAssignments"]}
    assert assigned == {
        k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in best.params.items()
    }
    metric = optimal["observation"]["metrics"][0]
    assert metric["name"] == "Validation-accuracy"
    assert float(metric["latest"]) == pytest.approx(best.value)
    assert status["trialsSucceeded"] == len(completed)


def test_random_job_experiment_with_stdout(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    body = experiment(
        "katib-random", settings=[{"name": "random_state", "value": "5"}], max_trials=4
    )
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    assert len(trials) == 4 and status["trials"]["succeeded"] == 4
    check_best(status, trials)
    # Every epoch's report arrived, and the final value is the best epoch's (maximize).
    for trial in trials:
        assert len(trial.intermediate_values) == 5
        assert trial.value == max(trial.intermediate_values.values())
        # The additional metric is kept with the trial, at its latest value (the last epoch's).
        last = trial.intermediate_values[5]
        assert trial.user_attrs["metrics"]["Train-accuracy"] == pytest.approx(
            min(last + 0.05, 1), abs=1e-5
        )
    # ${trialSpec.Name} became Kubernetes' expansion of the trial's name in the command.
    pods = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]
    command = pods[0]["spec"]["containers"][0]["command"]
    assert "--name=$(HYPERSWEEP_SWEEP)-trial-$(HYPERSWEEP_TRIAL_NUMBER)" in command
    # kubectl get sweep -o wide shows what kubectl get experiment users look for.
    wide = cluster.kubectl("get", "sweep", "katib-random", "-n", namespace.name, "-o", "wide")
    header = wide.stdout.splitlines()[0].split()
    assert {"OPTIMAL-TRIAL", "OBJECTIVE", "ALGORITHM", "STATUS"} <= set(header)
    assert status["currentOptimalTrial"]["bestTrialName"] in wide.stdout


def test_grid_pytorchjob_experiment_with_file_collector(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    collector = {
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": str(tmp_path / "metrics.log"), "kind": "File"}},
    }
    body = experiment(
        "katib-grid",
        algorithm="grid",
        max_trials=None,  # grid: every combination, 3 x 3
        parallel=3,
        kind="PyTorchJob",
        grid=True,
        collector=collector,
        extra_args=[f"--file={tmp_path / 'metrics.log'}"],
    )
    # The node agent's pods share one filesystem: one trial at a time writes the file (the
    # relay empties it when a trial starts, as a fresh pod's file would be).
    body["spec"]["parallelTrialCount"] = 1
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    assert len(trials) == 9 and status["trials"]["succeeded"] == 9
    assert sorted((t.params["lr"], t.params["layers"]) for t in trials) == sorted(
        (lr, layers) for lr in (0.001, 0.01, 0.1) for layers in (1, 2, 3)
    )
    check_best(status, trials)
    best = status["bestTrial"]["params"]
    assert (best["lr"], best["layers"]) == (0.01, 2)


def test_tpe_experiment_with_push_collector(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    body = experiment(
        "katib-tpe",
        algorithm="tpe",
        settings=[
            {"name": "random_state", "value": "3"},
            {"name": "n_startup_trials", "value": "2"},
        ],
        max_trials=4,
        extra_args=["--push"],
        collector={"collector": {"kind": "Push"}},
    )
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    assert len(trials) == 4 and status["trials"]["succeeded"] == 4
    check_best(status, trials)
    assert all(len(t.intermediate_values) == 5 for t in trials)


def test_a_trial_image_with_only_python3_runs_unchanged(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """The trial's interpreter cannot import hypersweep (the pod's PATH finds a bare
    ``python3``, the one this virtualenv was made from, and no PYTHONPATH): the relay runs from
    the source in the command, and the Experiment completes with the right best trial."""
    probe = subprocess.run(
        [str(getattr(sys, "_base_executable", None) or sys.executable), "-c", "import hypersweep"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
        capture_output=True,
        check=False,
    )
    assert probe.returncode != 0  # the interpreter the pod will find cannot import hypersweep
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").symlink_to(getattr(sys, "_base_executable", None) or sys.executable)
    body = experiment(
        "katib-bare",
        settings=[{"name": "random_state", "value": "4"}],
        max_trials=3,
        extra_args=["--bare"],
    )
    container = body["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    container["command"] = ["python3", SCRIPT]
    container["env"] = [
        {"name": "PATH", "value": f"{bare}:/usr/bin:/bin"},
        {"name": "PYTHONPATH", "value": ""},
    ]
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    assert len(trials) == 3 and status["trials"]["succeeded"] == 3
    check_best(status, trials)
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4, 5] for t in trials)
    pod = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"][0]
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python3", "-I", "-c"] and command[4:6] == ["--", "python3"]
    # katib_trial.py --bare exits 7 (a failed trial) if the relay's interpreter is not its own,
    # or if it can import hypersweep.


def test_hyperband_runs_katibs_brackets_with_the_budget_as_a_parameter(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """Katib's hyperband (resource_name, eta, r_l): each rung is new trials of an unchanged
    Katib trial, the budget (``--epochs``) a parameter; a rung runs the best configs of the rung
    below with eta times the budget. r_l = 4, eta = 2: 3 brackets, 15 trials."""
    from hypersweep.strategies._brackets import HyperbandSchedule

    body = experiment(
        "katib-hyperband",
        algorithm="hyperband",
        settings=[
            {"name": "resource_name", "value": "epochs"},
            {"name": "eta", "value": "2"},
            {"name": "r_l", "value": "4"},
        ],
        max_trials=None,
        parallel=4,
        extra_args=["--epochs=${trialParameters.budget}", "--budget-matters"],
    )
    spec = body["spec"]
    spec["parameters"].append(
        {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "100"}}
    )
    spec["trialTemplate"]["trialParameters"].append({"name": "budget", "reference": "epochs"})
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    schedule = HyperbandSchedule(4, 2)
    assert len(trials) == schedule.total_trials == 15 and status["trials"]["succeeded"] == 15
    by_number = {t.number: t for t in trials}
    for position, rung in enumerate(schedule.rungs):
        numbers = range(rung.first, rung.first + rung.count)
        for number in numbers:
            # The trial got its rung's budget, and ran that many epochs.
            assert by_number[number].params["epochs"] == rung.budget
            assert sorted(by_number[number].intermediate_values) == list(range(1, rung.budget + 1))
        if rung.index == 0:
            continue
        below = schedule.rungs[position - 1]
        ranked = sorted(
            (by_number[n] for n in range(below.first, below.first + below.count)),
            key=lambda t: -(t.value or 0.0),
        )
        for slot, number in enumerate(numbers):
            mine, parent = by_number[number].params, ranked[slot].params
            assert (mine["lr"], mine["layers"]) == (parent["lr"], parent["layers"])
    check_best(status, trials)
    assert status["bestTrial"]["params"]["epochs"] == 4


def test_medianstop_stops_the_trials_that_learn_worse(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    early = {
        "algorithmName": "medianstop",
        "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"},
            {"name": "start_step", "value": "2"},
        ],
    }
    body = experiment(
        "katib-median",
        settings=[{"name": "random_state", "value": "9"}],
        max_trials=5,
        parallel=1,
        extra_args=["--fade-after=2", "--epochs=8"],
        early=early,
    )
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    states = {t.number: t.state for t in trials}
    assert len(trials) == 5
    assert [states[n] for n in (0, 1)] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [states[n] for n in (2, 3, 4)] == [optuna.trial.TrialState.PRUNED] * 3
    for trial in trials[2:]:
        assert max(trial.intermediate_values) < 8  # stopped before its last epoch
    assert status["trialsEarlyStopped"] == 3
    check_best(status, trials)


def test_a_goal_ends_the_experiment_early(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    body = experiment("katib-goal", max_trials=30, parallel=1, goal=0.05)
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    reasons = {c["type"]: c["reason"] for c in status["conditions"]}
    assert reasons["Succeeded"] == "GoalReached"
    # The budget is queued up front; the trials after the goal never start.
    started = [t for t in trials if t.state != optuna.trial.TrialState.WAITING]
    assert 1 <= len(started) < 30 and status["trials"]["succeeded"] == len(started)
    check_best(status, trials)


def test_a_refused_experiment_fails_naming_the_field(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    body = experiment("katib-mpi")
    trial_spec = body["spec"]["trialTemplate"]["trialSpec"]
    trial_spec.update(apiVersion="kubeflow.org/v2beta1", kind="MPIJob")
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
    final = wait_sweep(cluster, namespace, "katib-mpi", operator, timeout=120)
    failed = next(c for c in final["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.trialTemplate.trialSpec.kind" in failed["message"]
    assert "MPIJob is not supported" in failed["message"]


def test_the_crd_takes_either_form_but_not_a_mix(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    """The API server accepts the Katib form (tests/katib/random.yaml, kind and apiVersion
    changed) and refuses a spec with neither form's budget or with both forms' spaces."""
    import yaml

    katib = yaml.safe_load((HERE.parent / "katib" / "random.yaml").read_text())
    katib.update(apiVersion="hypersweep.io/v1alpha1", kind="Sweep")
    katib["metadata"] = {"name": "served"}

    def apply(body: dict[str, Any]) -> Any:
        return cluster.kubectl(
            "apply", "-n", namespace.name, "-f", "-", input=json.dumps(body), check=False
        )

    assert apply(katib).returncode == 0
    stored = kubectl_json(cluster, "get", "sweep", "served", "-n", namespace.name)
    assert stored["spec"]["parameters"] == katib["spec"]["parameters"]
    mixed = json.loads(json.dumps(katib))
    mixed["metadata"]["name"] = "mixed"
    mixed["spec"]["space"] = {"x": {"type": "float", "low": 0, "high": 1}}
    result = apply(mixed)
    assert result.returncode != 0 and "not both" in result.stderr, result.stderr
    neither = json.loads(json.dumps(katib))
    neither["metadata"]["name"] = "neither"
    del neither["spec"]["parameters"]
    result = apply(neither)
    assert result.returncode != 0 and "give space and maxTrials" in result.stderr, result.stderr


def test_an_operator_killed_mid_trial_counts_every_line_once(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """Metric lines printed while the operator is down reach it once it is back (the trial
    entry point retries its reports), and none is counted twice."""
    from .conftest import wait_until
    from .test_sweep import sweep_status

    body = experiment(
        "katib-restart",
        settings=[{"name": "random_state", "value": "2"}],
        max_trials=2,
        parallel=2,
        extra_args=["--epochs=12", "--sleep=0.5"],
    )
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))

    def reporting() -> bool:
        status = sweep_status(cluster, namespace, "katib-restart")
        if "studyName" not in status:
            return False
        return any(len(t.intermediate_values) >= 2 for t in stored_trials(namespace, status))

    wait_until(reporting, 240, "a trial's reports")
    operator.kill()
    operator.start()
    status = wait_sweep(cluster, namespace, "katib-restart", operator, timeout=400)
    trials = stored_trials(namespace, status)
    assert "Succeeded" in status["true"], status
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        assert sorted(trial.intermediate_values) == list(range(1, 13))
    check_best(status, trials)


def test_tf_event_collector(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Katib's TensorFlowEvent collector: scalars of the event files the trial writes (a tag
    ``train/Train-accuracy`` counts for ``Train-accuracy``)."""
    events = tmp_path / "tfevents"
    body = experiment(
        "katib-tfevent",
        settings=[{"name": "random_state", "value": "6"}],
        max_trials=3,
        parallel=1,  # the node agent's pods share one filesystem: one trial writes at a time
        extra_args=[f"--tfevents={events}"],
        collector={
            "collector": {"kind": "TensorFlowEvent"},
            "source": {"fileSystemPath": {"path": str(events), "kind": "Directory"}},
        },
    )
    status, trials = run(cluster, namespace, operator, body)
    assert "Succeeded" in status["true"], status
    assert len(trials) == 3 and status["trials"]["succeeded"] == 3
    for trial in trials:
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5]
        assert "Train-accuracy" in trial.user_attrs["metrics"]
    check_best(status, trials)
