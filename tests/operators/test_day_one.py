"""What a first day on a real cluster runs into, on the test cluster with the operator as its
ServiceAccount: finished sweeps are cleaned up once and without errors; a sweep without a
completed trial fails and says why; a Sweep deleted and applied again at once runs; trials the
sweep ended (ASHA's paused ones too) finish, so their Services go and their TTL applies; pods
that can never start fail their trial after ``runPolicy.stalledTimeoutSeconds``, with the reason
on the TrainJob and the Sweep; trial pods carry their sweep and trial."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import (
    Namespace,
    OperatorProcess,
    kubectl_json,
    objective_command,
    trial_template,
    wait_until,
)
from .test_sweep import sweep_status, wait_sweep

pytestmark = pytest.mark.k8s

FINISHED = {"Succeeded", "Failed"}
SPACE = {
    "lr": {"type": "float", "low": 0.0, "high": 1.0},
    "steps": {"type": "constant", "value": 3},
    "pause": {"type": "constant", "value": 0.05},
}


def apply_sweep(
    cluster: LocalCluster,
    namespace: Namespace,
    name: str,
    *,
    template: dict[str, Any] | None = None,
    function: str = "learning_curve",
    **spec: Any,
) -> None:
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "space": SPACE,
            "objective": {"metric": "loss", "mode": "min"},
            "strategy": {"name": "random", "settings": {"seed": 3}},
            "maxTrials": 1,
            "parallelism": 1,
            "trialTemplate": template
            or trial_template(
                objective_command(function), {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)}
            ),
            **spec,
        },
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def outcome(status: dict[str, Any]) -> dict[str, Any]:
    """The condition that says how the sweep ended."""
    return next(c for c in status["conditions"] if c["type"] in FINISHED and c["status"] == "True")


def trainjobs(cluster: LocalCluster, namespace: Namespace, sweep: str) -> list[dict[str, Any]]:
    return kubectl_json(
        cluster, "get", "trainjobs", "-n", namespace.name, "-l", f"hypersweep.io/sweep={sweep}"
    )["items"]


def table(text: str) -> list[dict[str, str]]:
    """A ``kubectl get`` table as rows by column name (cells may be empty)."""
    lines = text.splitlines()
    header = lines[0]
    names = header.split()
    starts = [header.index(f"{name}") for name in names]
    for i in range(1, len(starts)):  # a name may also occur inside an earlier one
        starts[i] = header.index(f" {names[i]}", starts[i - 1]) + 1
    bounds = [*starts[1:], None]
    return [
        {
            name: line[start:end].strip()
            for name, start, end in zip(names, starts, bounds, strict=True)
        }
        for line in lines[1:]
    ]


def true_conditions(obj: dict[str, Any]) -> set[str]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {c["type"] for c in conditions if c["status"] == "True"}


def test_a_finished_sweep_stops_what_a_previous_leader_left_without_errors(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    apply_sweep(cluster, namespace, "done")
    status = wait_sweep(cluster, namespace, "done", operator)
    assert outcome(status)["reason"] == "MaxTrialsReached"
    operator.stop()
    # A trial TrainJob of the finished sweep that a previous leader left running.
    leftover = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "done-trial-7", "labels": {"hypersweep.io/sweep": "done"}},
        "spec": trial_template([sys.executable, "-c", "import time; time.sleep(600)"]),
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(leftover))
    operator.start()

    def stopped() -> bool:
        job = kubectl_json(cluster, "get", "trainjob", "done-trial-7", "-n", namespace.name)
        return job["metadata"].get("annotations", {}).get("hypersweep.io/outcome") == "stopped"

    wait_until(stopped, 60, "the leftover TrainJob to be stopped")
    job = wait_until(
        lambda: (
            (j := kubectl_json(cluster, "get", "trainjob", "done-trial-7", "-n", namespace.name))
            and "Succeeded" in true_conditions(j)
            and j
        ),
        60,
        "the stopped TrainJob to finish",
    )
    assert job["spec"]["runPolicy"]["suspend"] is True
    ended = next(c for c in job["status"]["conditions"] if c["type"] == "Succeeded")
    assert ended["reason"] == "SweepEnded"
    # Reconciles of the finished sweep raise nothing, at start or later.
    log = operator.log_path.read_text()
    assert "UnboundLocalError" not in log and "Traceback" not in log, operator.log_tail(80)


def test_a_sweep_without_a_completed_trial_fails_with_the_first_reason(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # The objective returns "loss", the sweep wants "val_loss".
    apply_sweep(
        cluster,
        namespace,
        "wrong-metric",
        objective={"metric": "val_loss", "mode": "min"},
        maxTrials=2,
        parallelism=2,
        maxRetries=0,
    )
    # A command with bad arguments: every replica exits 2, saying why on stderr.
    parse = "import argparse; a = argparse.ArgumentParser(); a.add_argument('--epochs', type=int)"
    bad = trial_template([sys.executable, "-c", f"{parse}; a.parse_args()", "--epochs=x"])
    bad["runPolicy"] = {"backoffLimit": 0}
    apply_sweep(cluster, namespace, "bad-args", template=bad, maxTrials=2, maxRetries=0)

    cases = (
        ("wrong-metric", "val_loss"),
        # The container's last output line is its termination message (FallbackToLogsOnError).
        ("bad-args", "exited with code 2: -c: error: argument --epochs: invalid int value: 'x'"),
    )
    for name, why in cases:
        status = wait_sweep(cluster, namespace, name, operator)
        assert "Failed" in status["true"] and "Succeeded" not in status["true"], status
        ended = outcome(status)
        assert ended["reason"] == "NoTrialCompleted"
        assert "first failure: trial " in ended["message"] and why in ended["message"], ended
        assert status["trials"]["failed"] == 2 and status["trials"]["succeeded"] == 0
    events = kubectl_json(
        cluster,
        "get",
        "events",
        "-n",
        namespace.name,
        "--field-selector",
        "involvedObject.kind=Sweep",
    )["items"]
    ends = [e for e in events if e["reason"] in ("Succeeded", "Failed")]
    assert ends and all(e["reason"] == "Failed" and e["type"] == "Warning" for e in ends), ends


def test_a_sweep_deleted_and_applied_again_runs_at_once(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    apply_sweep(cluster, namespace, "again")
    first = wait_sweep(cluster, namespace, "again", operator)
    for _ in range(3):
        cluster.kubectl("delete", "sweep", "again", "-n", namespace.name, "--timeout=120s")
        apply_sweep(cluster, namespace, "again")
        uid = sweep_status(cluster, namespace, "again")["uid"]
        assert uid != first["uid"]
        # The new Sweep is taken up at once, not after a stale copy of the old one expires.
        wait_until(
            lambda uid=uid: (
                sweep_status(cluster, namespace, "again").get("studyName") == f"again-{uid[:8]}"
            ),
            15,
            "the new Sweep's status",
        )
        status = wait_sweep(cluster, namespace, "again", operator)
        assert status["uid"] == uid and "Succeeded" in status["true"], status
        first = status


def test_trials_the_sweep_ended_finish_and_their_ttl_applies(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    template = trial_template(
        objective_command("learning_curve"), {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)}
    )
    template["runPolicy"] = {"ttlSecondsAfterFinished": 20}
    apply_sweep(
        cluster,
        namespace,
        "asha",
        template=template,
        space={
            "lr": {"type": "float", "low": 0.0, "high": 1.0},
            "steps": {"type": "constant", "value": 9},
            "pause": {"type": "constant", "value": 0.1},
        },
        maxTrials=8,
        parallelism=3,
        earlyStopping={
            "name": "asha",
            "settings": {"min_resource": 1, "max_resource": 9, "reduction_factor": 3},
        },
    )
    status = wait_sweep(cluster, namespace, "asha", operator)
    assert "Succeeded" in status["true"] and status["trials"]["pruned"] >= 1, status
    # Every TrainJob left finishes: none stays Suspended with its Service.
    wait_until(
        lambda: all(true_conditions(j) & FINISHED for j in trainjobs(cluster, namespace, "asha")),
        60,
        "every TrainJob of the sweep to finish",
    )
    for job in trainjobs(cluster, namespace, "asha"):
        outcome_seen = job["metadata"].get("annotations", {}).get("hypersweep.io/outcome")
        assert outcome_seen != "paused", job["metadata"]
    wait_until(
        lambda: (
            not kubectl_json(
                cluster, "get", "services", "-n", namespace.name, "-l", "hypersweep.io/job-name"
            )["items"]
        ),
        60,
        "the trials' Services to go",
    )
    # ttlSecondsAfterFinished deletes them all, paused-then-pruned ones included.
    wait_until(lambda: not trainjobs(cluster, namespace, "asha"), 120, "every TrainJob deleted")


def test_pods_that_cannot_start_fail_their_trial_after_the_grace_period(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    huge = trial_template(objective_command("learning_curve"))
    container = huge["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "5000"}, "limits": {"cpu": "5000"}}
    huge["runPolicy"] = {"stalledTimeoutSeconds": 20}
    apply_sweep(cluster, namespace, "too-big", template=huge, maxRetries=0)

    no_secret = trial_template(objective_command("learning_curve"))
    container = no_secret["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    container["env"].append(
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "key"}}}
    )
    no_secret["runPolicy"] = {"stalledTimeoutSeconds": 20}
    apply_sweep(cluster, namespace, "no-secret", template=no_secret, maxRetries=0)

    cases = (("too-big", "Unschedulable"), ("no-secret", "CreateContainerConfigError"))
    for name, reason in cases:
        # While the pod waits: the TrainJob and the Sweep say why.
        def stalled_now(name: str = name, reason: str = reason) -> bool:
            jobs = trainjobs(cluster, namespace, name)
            status = sweep_status(cluster, namespace, name)
            job_says = any(
                c["type"] == "Stalled" and c["status"] == "True" and c["reason"] == reason
                for j in jobs
                for c in j.get("status", {}).get("conditions") or []
            )
            sweep_says = any(
                c["type"] == "TrialsStalled" and c["status"] == "True" and c["reason"] == reason
                for c in status.get("conditions") or []
            )
            return job_says and sweep_says

        wait_until(stalled_now, 60, f"{name}: the stalled pod on the TrainJob and the Sweep")
    for name, reason in cases:
        status = wait_sweep(cluster, namespace, name, operator)
        assert "Failed" in status["true"], status
        ended = outcome(status)
        assert reason in ended["message"], ended
        (job,) = trainjobs(cluster, namespace, name)
        failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True" and failed["reason"] == reason, failed
        assert "stalledTimeoutSeconds" not in failed["message"]
        # The stalled condition is gone from the Sweep once nothing waits.
        stalled = [c for c in status["conditions"] if c["type"] == "TrialsStalled"]
        assert all(c["status"] == "False" for c in stalled), stalled
    pods = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]
    assert not [p for p in pods if p["status"].get("phase") == "Pending"]


def test_trial_pods_carry_their_sweep_and_trial(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    template = trial_template(
        objective_command("learning_curve"), {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)}
    )
    template["runPolicy"] = {"cleanPodPolicy": "None"}  # keep the pods to look at
    apply_sweep(cluster, namespace, "labels", template=template, maxTrials=2)
    wait_sweep(cluster, namespace, "labels", operator)
    for trial in (0, 1):
        pods = kubectl_json(
            cluster,
            "get",
            "pods",
            "-n",
            namespace.name,
            "-l",
            f"hypersweep.io/sweep=labels,hypersweep.io/trial={trial}",
        )["items"]
        assert [p["metadata"]["name"] for p in pods] == [f"labels-trial-{trial}-master-0"]


def test_the_per_trial_view_and_a_failed_trials_pods(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # Grid over two settings: one trial completes, the other raises in the objective.
    apply_sweep(
        cluster,
        namespace,
        "view",
        space={
            "lr": {"type": "constant", "value": 0.5},
            "steps": {"type": "grid", "values": [3, "bad"]},
            "pause": {"type": "constant", "value": 0.05},
        },
        strategy={"name": "grid"},
        maxTrials=2,
        parallelism=2,
        maxRetries=0,
    )
    status = wait_sweep(cluster, namespace, "view", operator)
    assert status["trials"]["succeeded"] == 1 and status["trials"]["failed"] == 1, status
    jobs = {
        int(j["metadata"]["labels"]["hypersweep.io/trial"]): j
        for j in trainjobs(cluster, namespace, "view")
    }
    good = next(
        n
        for n, j in jobs.items()
        if '"steps":3' in j["metadata"]["annotations"]["hypersweep.io/params"]
    )
    bad = 1 - good
    # The TrainJobs' states follow their pods' (within the controller's batch period).
    wait_until(
        lambda: all(true_conditions(j) & FINISHED for j in trainjobs(cluster, namespace, "view")),
        60,
        "both TrainJobs to finish",
    )
    text = cluster.kubectl(
        "get", "trainjobs", "-n", namespace.name, "-l", "hypersweep.io/sweep=view"
    ).stdout
    columns = text.splitlines()[0].split()
    assert columns[:7] == ["NAME", "TRIAL", "TRIAL-STATE", "VALUE", "PARAMS", "STATE", "RESTARTS"]
    assert columns[-1] == "FAILURE"
    rows = {row["NAME"]: row for row in table(text)}
    final = 0.2**2 + 1.0 / 3  # learning_curve's last loss at lr=0.5 after 3 steps
    row = rows[f"view-trial-{good}"]
    assert (row["TRIAL"], row["TRIAL-STATE"], row["VALUE"]) == (
        str(good),
        "completed",
        f"{final:.6g}",
    )
    assert row["STATE"] == "Succeeded" and row["FAILURE"] == "", row
    assert json.loads(row["PARAMS"]) == {"lr": 0.5, "pause": 0.05, "steps": 3}
    row = rows[f"view-trial-{bad}"]
    assert (row["TRIAL"], row["TRIAL-STATE"], row["STATE"]) == (str(bad), "failed", "Failed"), row
    assert row["FAILURE"].startswith("ValueError: invalid literal for int()"), row
    # The failed trial's job failed with the trial's error, without a restart, and its pod is
    # kept (cleanPodPolicy Running deletes only running pods) for its logs.
    job = kubectl_json(cluster, "get", "trainjob", f"view-trial-{bad}", "-n", namespace.name)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TrialFailed" and "ValueError" in failed["message"], failed
    assert job["status"]["restartCount"] == 0
    pod = kubectl_json(cluster, "get", "pod", f"view-trial-{bad}-master-0", "-n", namespace.name)
    assert pod["status"]["phase"] == "Failed"
    assert pod["metadata"]["labels"]["hypersweep.io/trial"] == str(bad)
    # kubectl get sweeps: paused and total, and the best value rounded.
    (row,) = table(cluster.kubectl("get", "sweeps", "-n", namespace.name).stdout)
    shown = [row[k] for k in ("BEST-TRIAL", "BEST-VALUE", "PAUSED", "TOTAL")]
    assert shown == [str(good), f"{final:.6g}", "0", "2"], row


def test_a_crashing_gang_backs_off_between_restarts(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    crash = "import sys; print('boom: no such file data.csv', file=sys.stderr); sys.exit(1)"
    spec = trial_template([sys.executable, "-c", crash])
    spec["runPolicy"] = {"backoffLimit": 3}
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "crash"},
        "spec": spec,
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
    job = wait_until(
        lambda: (
            (j := kubectl_json(cluster, "get", "trainjob", "crash", "-n", namespace.name))
            and "Failed" in true_conditions(j)
            and j
        ),
        120,
        "the crashing job to fail",
    )
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "boom: no such file data.csv" in failed["message"], failed  # its last output line
    events = kubectl_json(
        cluster,
        "get",
        "events",
        "-n",
        namespace.name,
        "--field-selector",
        "involvedObject.name=crash",
    )["items"]
    restarts = sorted(
        e["firstTimestamp"] or e["eventTime"] for e in events if e["reason"] == "Restarting"
    )
    messages = [e["message"] for e in events if e["reason"] == "Restarting"]
    assert len(messages) == 3 and all("in " in m for m in messages), messages
    # 2 s, 4 s, 8 s between the starts: four starts take 14 s or more, not two.
    from hypersweep.operators._trainjob import parse_time

    started = parse_time(job["status"]["startTime"])
    ended = parse_time(job["status"]["completionTime"])
    assert started is not None and ended is not None and restarts
    assert (ended - started).total_seconds() >= 13, (started, ended)


def test_retain_keeps_the_records_and_the_best_checkpoint(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    import optuna

    from hypersweep.orchestrator._storage import open_storage

    apply_sweep(cluster, namespace, "kept", maxTrials=3, parallelism=3, retain=True)
    status = wait_sweep(cluster, namespace, "kept", operator)
    best = status["bestTrial"]["number"]
    study = status["studyName"]
    run_dir = namespace.data_dir / namespace.name / study
    checkpoints = run_dir / "checkpoints"
    assert len(list(checkpoints.iterdir())) == 3
    cluster.kubectl("delete", "sweep", "kept", "-n", namespace.name, "--timeout=60s")
    wait_until(lambda: not trainjobs(cluster, namespace, "kept"), 60, "the TrainJobs to go")
    # The trial records stay, and only the best trial's checkpoints.
    journal = run_dir / "journal.log"
    trials = optuna.load_study(study_name=study, storage=open_storage(str(journal), study)).trials
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert [p.name for p in checkpoints.iterdir()] == [f"trial-{best:05d}"]
    assert list((checkpoints / f"trial-{best:05d}").iterdir())


def test_sweep_settings_are_checked_in_the_sweeps_terms(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    typo = trial_template([sys.executable, "-c", "pass", "--lr=${trialParameters.lrate}"])
    apply_sweep(cluster, namespace, "typo", template=typo)
    apply_sweep(
        cluster,
        namespace,
        "asha-typo",
        earlyStopping={"name": "asha", "settings": {"min_resources": 1}},
    )
    apply_sweep(
        cluster,
        namespace,
        "tpe-typo",
        strategy={"name": "tpe", "settings": {"seed": 1, "n_startup_trial": 2}},
    )
    expected = {
        "typo": "spec.trialTemplate: ${trialParameters.lrate} names no parameter of spec.space",
        "asha-typo": "spec.earlyStopping.settings.min_resources: asha has no setting",
        "tpe-typo": "spec.strategy.settings.n_startup_trial: the tpe strategy has no setting",
    }
    for name, text in expected.items():
        status = wait_sweep(cluster, namespace, name, operator, timeout=60)
        failed = outcome(status)
        assert failed["reason"] == "InvalidSpec" and text in failed["message"], failed
    assert "n_startup_trials" in outcome(sweep_status(cluster, namespace, "tpe-typo"))["message"]
    # The sampler's documented options reach it (kept by the CRD, not pruned).
    apply_sweep(
        cluster,
        namespace,
        "tpe-options",
        strategy={"name": "tpe", "settings": {"seed": 1, "n_startup_trials": 2}},
    )
    sweep = kubectl_json(cluster, "get", "sweep", "tpe-options", "-n", namespace.name)
    assert sweep["spec"]["strategy"]["settings"] == {"seed": 1, "n_startup_trials": 2}
    assert "Succeeded" in wait_sweep(cluster, namespace, "tpe-options", operator)["true"]
    explained = cluster.kubectl("explain", "sweep.spec").stdout
    assert "Trials the sweep runs in all" in explained and "retain" in explained
    assert (
        "Options of the strategy's Optuna sampler"
        in cluster.kubectl("explain", "sweep.spec.strategy").stdout
    )
