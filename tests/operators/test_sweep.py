"""Sweeps run end to end on the test node agent, with the operator as its ServiceAccount: trials
report over HTTP, ASHA pauses and stops trials, the status shows the best trial; an operator
killed mid-sweep and started again finishes it exactly, with the configs of an uninterrupted
seeded sweep; a trial cannot report for another;
deleting a Sweep removes everything it made; ``tune()`` runs trials as TrainJobs from Python."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

import hypersweep as hs
from hypersweep.testing import LocalCluster

from .conftest import (
    Namespace,
    OperatorProcess,
    kubectl_json,
    objective_command,
    trial_template,
    wait_until,
)

pytestmark = pytest.mark.k8s

FINISHED = {"Succeeded", "Failed"}


def create_sweep(
    cluster: LocalCluster,
    namespace: Namespace,
    name: str,
    function: str,
    *,
    max_trials: int,
    parallelism: int,
    early_stopping: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    space: dict[str, Any] | None = None,
) -> None:
    spec: dict[str, Any] = {
        "space": space or {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "loss", "mode": "min"},
        "strategy": {"name": "random", "settings": {"seed": 7}},
        "maxTrials": max_trials,
        "parallelism": parallelism,
        "trialTemplate": trial_template(
            objective_command(function),
            {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers), **(env or {})},
        ),
    }
    if early_stopping:
        spec["earlyStopping"] = early_stopping
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": spec,
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def sweep_status(cluster: LocalCluster, namespace: Namespace, name: str) -> dict[str, Any]:
    """The Sweep's status, its ``uid`` and the set of its ``true`` conditions (an empty set
    while the Sweep does not exist)."""
    found = cluster.kubectl("get", "sweep", name, "-n", namespace.name, "-o", "json", check=False)
    if found.returncode != 0:
        return {"true": set()}
    sweep = json.loads(found.stdout)
    status = sweep.get("status") or {}
    status["uid"] = sweep["metadata"]["uid"]
    status["true"] = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    return status


def wait_sweep(
    cluster: LocalCluster,
    namespace: Namespace,
    name: str,
    operator: OperatorProcess,
    timeout: float = 300,
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = sweep_status(cluster, namespace, name)
        return status if status["true"] & FINISHED else None

    try:
        return wait_until(finished, timeout, f"sweep {name} to finish")
    except AssertionError:
        print(operator.log_tail(120))
        raise


def stored_trials(namespace: Namespace, status: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    """The sweep's trials as stored in its journal on the data volume."""
    from hypersweep.orchestrator._storage import open_storage

    study = status["studyName"]
    journal = namespace.data_dir / namespace.name / study / "journal.log"
    return optuna.load_study(study_name=study, storage=open_storage(str(journal), study)).trials


def active_pods(cluster: LocalCluster, namespace: Namespace) -> list[str]:
    pods = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]
    return [
        p["metadata"]["name"] for p in pods if p["status"].get("phase") in ("Pending", "Running")
    ]


def starts(namespace: Namespace) -> dict[int, int]:
    counts = {}
    for path in namespace.markers.glob("trial-*.log"):
        counts[int(path.stem.split("-")[1])] = sum(
            1 for line in path.read_text().splitlines() if line.startswith("start")
        )
    return counts


def test_asha_sweep_end_to_end(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # Trial pods must pass the strictest Pod Security Standard (non-root, no privileges).
    cluster.kubectl(
        "label", "namespace", namespace.name, "pod-security.kubernetes.io/enforce=restricted"
    )
    create_sweep(
        cluster,
        namespace,
        "asha",
        "learning_curve",
        max_trials=8,
        parallelism=3,
        early_stopping={
            "name": "asha",
            "settings": {"min_resource": 1, "max_resource": 9, "reduction_factor": 3},
        },
    )
    status = wait_sweep(cluster, namespace, "asha", operator)
    assert "Succeeded" in status["true"], status
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Succeeded"] == [
        "MaxTrialsReached"
    ]
    trials = status["trials"]
    assert trials["total"] == 8
    assert trials["succeeded"] + trials["pruned"] == 8, trials
    assert trials["pruned"] >= 1 and trials["succeeded"] >= 1 and trials["failed"] == 0

    # The status agrees with storage, where every report went over HTTP.
    stored = stored_trials(namespace, status)
    assert len(stored) == 8
    complete = [t for t in stored if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    assert status["bestTrial"]["number"] == best.number
    assert status["bestTrial"]["value"] == pytest.approx(best.value)
    assert status["bestTrial"]["params"]["lr"] == pytest.approx(best.params["lr"])
    assert all(len(t.intermediate_values) >= 1 for t in stored)
    assert any(len(t.intermediate_values) < 9 for t in stored)  # some stopped early

    table = cluster.kubectl("get", "sweeps", "-n", namespace.name).stdout
    row = table.splitlines()[1].split()
    assert row[:3] == ["asha", "Succeeded", str(trials["succeeded"])]
    assert row[6] == str(best.number)
    jobs = kubectl_json(
        cluster, "get", "trainjobs", "-n", namespace.name, "-l", "hypersweep.io/sweep=asha"
    )["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(
        f"asha-trial-{n}" for n in range(8)
    )
    wait_until(lambda: not active_pods(cluster, namespace), 60, "no trial pod left running")

    def ended(job: dict[str, Any]) -> bool:
        states = {c["type"] for c in job["status"]["conditions"] if c["status"] == "True"}
        return bool(states & {"Succeeded", "Failed", "Suspended"})

    # The TrainJobs' states follow their pods' (within the controller's batch period).
    wait_until(
        lambda: all(
            ended(job)
            for job in kubectl_json(cluster, "get", "trainjobs", "-n", namespace.name)["items"]
        ),
        30,
        "every TrainJob ended",
    )
    # A completed trial's TrainJob succeeded; one stopped early was suspended, and says why.
    jobs = kubectl_json(cluster, "get", "trainjobs", "-n", namespace.name)["items"]
    by_trial = {int(j["metadata"]["labels"]["hypersweep.io/trial"]): j for j in jobs}
    for trial in stored:
        job = by_trial[trial.number]
        states = {c["type"] for c in job["status"]["conditions"] if c["status"] == "True"}
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert "Succeeded" in states, job["status"]
        else:
            # Suspended, or already exited by itself after the decision (a paused trial does).
            suspended = job["spec"]["runPolicy"].get("suspend") and "Suspended" in states
            assert suspended or "Succeeded" in states, job["status"]
            assert job["metadata"]["annotations"]["hypersweep.io/outcome"] in ("paused", "pruned")
    events = cluster.kubectl(
        "get", "events", "-n", namespace.name, "--field-selector", "involvedObject.kind=Sweep"
    ).stdout
    assert "Started" in events and "Succeeded" in events


def test_a_sweep_with_several_objectives_constraints_and_branches(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "front"},
        "spec": {
            "space": {
                "optimizer": {
                    "type": "categorical",
                    "values": [
                        {"name": "sgd", "lr": {"type": "float", "low": 0.0, "high": 1.0}},
                        {"name": "adam", "beta": {"type": "float", "low": 0.0, "high": 1.0}},
                    ],
                }
            },
            "objective": {
                "metrics": [{"name": "loss", "mode": "min"}, {"name": "size", "mode": "min"}],
                "constraints": {"memory_gb": {"max": 8}},
            },
            "strategy": {"name": "nsga2", "settings": {"seed": 3}},
            "maxTrials": 16,
            "parallelism": 4,
            "trialTemplate": trial_template(
                objective_command("two_objectives"),
                {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)},
            ),
        },
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
    status = wait_sweep(cluster, namespace, "front", operator)
    assert "Succeeded" in status["true"], status
    trials = status["trials"]
    assert trials["succeeded"] == 16 and trials["failed"] == 0, trials  # only chosen keys
    assert "bestTrial" not in status

    stored = stored_trials(namespace, status)
    infeasible = [t for t in stored if t.user_attrs["feasible"] is False]
    feasible = [t for t in stored if t.user_attrs["feasible"] is True]
    assert trials["infeasible"] == len(infeasible) > 0
    assert all(t.user_attrs["metrics"]["memory_gb"] > 8 for t in infeasible)
    # Every feasible trial is on the front (one trade-off line); the status lists ten at most.
    front = status["paretoFront"]
    assert front["size"] == len(feasible)
    listed = front["trials"]
    assert len(listed) == min(10, len(feasible))
    by_number = {t.number: t for t in stored}
    for entry in listed:
        trial = by_number[entry["number"]]
        assert trial.user_attrs["feasible"] is True
        assert entry["values"] == pytest.approx({"loss": trial.values[0], "size": trial.values[1]})
        branch = trial.params["optimizer"]
        assert set(entry["params"]) == {
            "optimizer",
            f"optimizer[{branch}].{'lr' if branch == 0 else 'beta'}",
        }
    assert {t.params["optimizer"] for t in stored} == {0, 1}

    def front_event() -> bool:
        events = cluster.kubectl(
            "get", "events", "-n", namespace.name, "--field-selector", "involvedObject.kind=Sweep"
        ).stdout
        return f"the Pareto front has {len(feasible)} trials" in events

    wait_until(front_event, 30, "the Succeeded event naming the front's size")


def test_operator_killed_mid_sweep_finishes_exactly(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    space = {
        "lr": {"type": "float", "low": 0.0, "high": 1.0},
        "steps": {"type": "constant", "value": 8},
        "pause": {"type": "constant", "value": 0.4},
    }
    create_sweep(
        cluster, namespace, "exact", "learning_curve", max_trials=6, parallelism=2, space=space
    )

    def mid_sweep() -> bool:
        trials = sweep_status(cluster, namespace, "exact").get("trials") or {}
        started = set(starts(namespace))
        running = [
            pod for pod in active_pods(cluster, namespace) if int(pod.split("-")[2]) in started
        ]
        return trials.get("succeeded", 0) >= 1 and bool(running)

    # Kill while a trial's objective runs (each takes over 3 s) and another has finished.
    wait_until(mid_sweep, 180, "a finished trial and a running one")
    operator.kill()
    operator.start()
    status = wait_sweep(cluster, namespace, "exact", operator)
    assert "Succeeded" in status["true"], status
    assert status["trials"]["succeeded"] == 6 and status["trials"]["failed"] == 0

    stored = stored_trials(namespace, status)
    assert sorted(t.number for t in stored) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in stored)
    jobs = kubectl_json(cluster, "get", "trainjobs", "-n", namespace.name)["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"exact-trial-{n}" for n in range(6)]
    # Every trial's objective started once: the trials running at the kill were adopted by the
    # restarted operator, not started again.
    assert starts(namespace) == dict.fromkeys(range(6), 1), starts(namespace)
    wait_until(lambda: not active_pods(cluster, namespace), 60, "no trial pod left running")
    pods = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]
    owners = {j["metadata"]["uid"] for j in jobs}
    assert all(ref["uid"] in owners for p in pods for ref in p["metadata"]["ownerReferences"])
    assert "adopted its running TrainJob" in operator.log_path.read_text()
    # The restarted operator's seeded strategy went on where the first left off: trial by trial
    # the configs of an uninterrupted sweep with that seed, not its first configs again.
    reference = hs.tune(
        {"lr": hs.uniform(0.0, 1.0)},
        _lr_loss,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        strategy="random",
        seed=7,
        name="uninterrupted",
        storage=str(namespace.data_dir / "uninterrupted.log"),
        verbose=False,
    )
    assert {t.number: t.params["lr"] for t in stored} == {
        t.number: t.config["lr"] for t in reference.trials
    }


def _lr_loss(config: dict[str, Any]) -> float:
    return float(config["lr"])


def test_a_sweep_whose_trials_all_fail_stops_after_the_first_three(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """The operator runs the same loop as tune(): a systematic bug fails fast there too."""
    create_sweep(cluster, namespace, "broken", "optuna_habit", max_trials=12, parallelism=2)
    status = wait_sweep(cluster, namespace, "broken", operator)
    assert "Failed" in status["true"], status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "fail fast" in failed["message"], failed
    assert status["trials"]["failed"] == 3 and status["trials"]["succeeded"] == 0, status
    assert len(starts(namespace)) <= 4  # not the 12 of the budget
    stored = stored_trials(namespace, status)
    errors = [t.system_attrs.get("fail_reason", "") for t in stored if t.state.name == "FAIL"]
    assert errors and all("def objective(config)" in error for error in errors), errors


def _post(url: str, token: str | None, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_a_trial_cannot_report_for_another(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    create_sweep(
        cluster,
        namespace,
        "tokens",
        "wait_for_release",
        max_trials=2,
        parallelism=2,
        env={"HYPERSWEEP_TEST_RELEASE": str(release)},
    )

    def token(trial: int) -> str | None:
        found = cluster.kubectl(
            "get",
            "secret",
            f"tokens-trial-{trial}-trial",
            "-n",
            namespace.name,
            "-o",
            "json",
            check=False,
        )
        if found.returncode != 0:
            return None
        return base64.b64decode(json.loads(found.stdout)["data"]["token"]).decode()

    wait_until(
        lambda: (
            (sweep_status(cluster, namespace, "tokens").get("trials") or {}).get("running") == 2
        ),
        120,
        "both trials",
    )
    first, second = wait_until(lambda: token(0)), wait_until(lambda: token(1))
    assert first != second
    base = f"{operator.url}/v1/namespaces/{namespace.name}/sweeps/tokens/trials"
    forged = {
        "session": "forged",
        "seq": 1,
        "attempt": 0,
        "rank": 0,
        "message": {"kind": "result", "result": -1e9},
    }
    assert _post(f"{base}/1", first, forged) == 403  # trial 0's token, for trial 1
    assert _post(f"{base}/0", second, forged) == 403
    assert _post(f"{base}/0", "not-a-token", forged) == 403
    assert _post(f"{base}/0", None, forged) == 401
    assert "wrong token" in operator.log_path.read_text()
    secret = kubectl_json(cluster, "get", "secret", "tokens-trial-0-trial", "-n", namespace.name)
    # Owned by its TrainJob (which the Sweep owns): it goes with the job.
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "TrainJob" and owner["name"] == "tokens-trial-0", owner
    job = kubectl_json(cluster, "get", "trainjob", "tokens-trial-0", "-n", namespace.name)
    assert owner["uid"] == job["metadata"]["uid"], (owner, job["metadata"])
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Sweep"

    release.touch()
    status = wait_sweep(cluster, namespace, "tokens", operator)
    assert status["trials"]["succeeded"] == 2
    assert status["bestTrial"]["value"] >= 0  # the forged -1e9 never counted
    log = operator.log_path.read_text()
    assert first not in log and second not in log  # tokens are never logged
    assert first not in json.dumps({k: v for k, v in status.items() if k != "true"})


def test_deleting_a_sweep_removes_what_it_made(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    create_sweep(
        cluster,
        namespace,
        "gone",
        "wait_for_release",
        max_trials=3,
        parallelism=2,
        env={"HYPERSWEEP_TEST_RELEASE": str(tmp_path / "never")},
    )
    wait_until(lambda: len(active_pods(cluster, namespace)) == 2, 120, "two trial pods")
    study = sweep_status(cluster, namespace, "gone")["studyName"]
    run_dir = namespace.data_dir / namespace.name / study
    assert (run_dir / "journal.log").exists()
    cluster.kubectl("delete", "sweep", "gone", "-n", namespace.name, "--timeout=120s")

    def all_gone() -> bool:
        left = [
            kubectl_json(
                cluster, "get", kind, "-n", namespace.name, "-l", "hypersweep.io/sweep=gone"
            )["items"]
            for kind in ("trainjobs", "secrets")
        ]
        return not any(left) and not active_pods(cluster, namespace)

    wait_until(all_gone, 120, "the sweep's TrainJobs, Secrets and pods to be deleted")
    assert not run_dir.exists()


def test_tune_runs_trials_as_trainjobs_from_python(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    from hypersweep.kube._client import Kube
    from hypersweep.launchers import KubernetesLauncher

    from .conftest import free_port

    port = free_port()
    launcher = KubernetesLauncher(
        namespace.name,
        trial_template=trial_template(
            [sys.executable, "-m", "hypersweep.operators.trial_entrypoint"]
        ),
        max_concurrent=2,
        kube=Kube(cluster.api_client()),
        report_url=f"http://127.0.0.1:{port}",
        report_port=port,
    )

    def objective(config: dict[str, Any]) -> float:  # shipped to the pods by value
        import hypersweep

        for step in range(3):
            hypersweep.report(step, loss=config["x"] ** 2 + 1 / (step + 1))
        return float(config["x"] ** 2)

    result = hs.tune(
        {"x": hs.uniform(-1, 1)},
        objective,
        metric="loss",
        n_trials=3,
        name="from-python",
        seed=0,
        launcher=launcher,
        storage=str(tmp_path / "journal.log"),
    )
    assert [t.state for t in result.trials] == ["completed"] * 3
    assert result.best_value == pytest.approx(min(t.value for t in result.trials))
    jobs = kubectl_json(
        cluster, "get", "trainjobs", "-n", namespace.name, "-l", "hypersweep.io/sweep=from-python"
    )["items"]
    assert len(jobs) == 3
    env = jobs[0]["spec"]["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    shipped = next(e for e in env if e["name"] == "HYPERSWEEP_OBJECTIVE_PICKLE")
    assert shipped["valueFrom"]["secretKeyRef"]["key"] == "objective.pkl"  # not in the spec
