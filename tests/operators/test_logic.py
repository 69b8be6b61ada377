"""The operator's logic without a cluster: the TrainJob controller's decisions, rendezvous
environments, trial templates, and the report protocol between a trial and its launcher."""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
from typing import Any

import pytest

from hypersweep.kube._informer import WorkQueue, enqueue_owner
from hypersweep.launchers._kubernetes import substitute_parameters
from hypersweep.operators._sweep import goal_reached, scrub
from hypersweep.operators._trainjob import (
    JobSpec,
    Networking,
    SpecError,
    decide,
    rendezvous_env,
    set_condition,
)
from hypersweep.operators.trial_entrypoint import replica_rank
from hypersweep.testing import wait_until

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def template(name: str = "pytorch") -> dict[str, Any]:
    return {"spec": {"containers": [{"name": name, "image": "x", "command": ["train"]}]}}


def pytorch_job(workers: int = 1, **run_policy: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "job", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {
            "framework": "pytorch",
            "replicaSpecs": {
                "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template()},
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "OnFailure",
                    "template": template(),
                },
            },
            "runPolicy": {"backoffLimit": 2, "cleanPodPolicy": "Running", **run_policy},
        },
    }


def pod(
    name: str, phase: str, restart: int = 0, exit_code: int | None = None, uid: str = "uid-1"
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "pytorch", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
        ]
    return {
        "metadata": {
            "name": name,
            "uid": f"pod-{name}-{restart}",
            "labels": {"hypersweep.io/restart-count": str(restart)},
            "ownerReferences": [{"uid": uid}],
        },
        "status": status,
    }


def run(job: dict[str, Any], pods: list[dict[str, Any]], now: dt.datetime = NOW) -> Any:
    return decide(job, JobSpec.from_spec(job["spec"]), pods, [], now)


def true_conditions(plan: Any) -> set[str]:
    return {c["type"] for c in plan.status["conditions"] if c["status"] == "True"}


def with_status(job: dict[str, Any], plan: Any) -> dict[str, Any]:
    return {**job, "status": plan.status}


# --- the TrainJob controller's decisions --------------------------------------------------


def test_a_new_job_gets_a_pod_per_replica_and_one_headless_service() -> None:
    plan = run(pytorch_job(workers=2), [])
    names = sorted(p["metadata"]["name"] for p in plan.create_pods)
    assert names == ["job-master-0", "job-worker-0", "job-worker-1"]
    assert [s["metadata"]["name"] for s in plan.create_services] == ["job"]
    worker = next(p for p in plan.create_pods if p["metadata"]["name"] == "job-worker-1")
    # <pod>.<job>.<ns>.svc: the pod's hostname under the job's Service, its subdomain.
    assert (worker["spec"]["hostname"], worker["spec"]["subdomain"]) == ("job-worker-1", "job")
    env = {e["name"]: e["value"] for e in worker["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "job-master-0.job.ns.svc"
    assert env["MASTER_PORT"] == "23456"
    assert (env["WORLD_SIZE"], env["RANK"], env["PET_NODE_RANK"]) == ("3", "2", "2")
    assert worker["spec"]["restartPolicy"] == "Never"
    assert worker["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert worker["spec"]["containers"][0]["ports"][-1] == {
        "name": "pytorchjob-port",
        "containerPort": 23456,
        "protocol": "TCP",
    }
    service = plan.create_services[0]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"] == {"hypersweep.io/job-name": "job"}
    assert [p["port"] for p in service["spec"]["ports"]] == [23456]
    assert true_conditions(plan) == {"Created"}
    assert plan.status["restartCount"] == 0


def test_the_same_observed_state_gives_the_same_decision() -> None:
    job = pytorch_job()
    first = run(job, [])
    job = with_status(job, first)
    pods = [pod("job-master-0", "Running"), pod("job-worker-0", "Running")]
    second = run(job, pods)
    assert not second.create_pods and not second.delete_pods
    assert "Running" in true_conditions(second)
    again = run(with_status(job, second), pods)
    assert again.status == second.status and not again.events


def test_a_replica_killed_by_a_signal_restarts_the_whole_gang() -> None:
    job = with_status(pytorch_job(), run(pytorch_job(), []))
    pods = [pod("job-master-0", "Running"), pod("job-worker-0", "Failed", exit_code=137)]
    plan = run(job, pods)
    assert plan.status["restartCount"] == 1
    assert "Restarting" in true_conditions(plan)
    assert sorted(p["metadata"]["name"] for p in plan.delete_pods) == [
        "job-master-0",
        "job-worker-0",
    ]
    assert any(
        reason == "Restarting" and "killed by signal 9" in text for _, reason, text in plan.events
    )
    # Next round: the old start's pods are stale; new ones start once their names are free.
    job = with_status(job, plan)
    terminating = copy.deepcopy(pods)
    later = run(job, terminating)
    assert not later.create_pods and later.requeue_after is not None
    fresh = run(job, [])
    assert all(
        p["metadata"]["labels"]["hypersweep.io/restart-count"] == "1" for p in fresh.create_pods
    )


def test_a_replica_on_a_deleted_node_restarts_the_gang_whatever_its_policy() -> None:
    job = pytorch_job()
    for role in job["spec"]["replicaSpecs"].values():
        role["restartPolicy"] = "ExitCode"  # the master's exit 1 alone would fail the job
    job = with_status(job, run(job, []))
    master, worker = pod("job-master-0", "Failed", exit_code=1), pod("job-worker-0", "Running")
    master["spec"], worker["spec"] = {"nodeName": "node-a"}, {"nodeName": "node-b"}
    plan = decide(job, JobSpec.from_spec(job["spec"]), [master, worker], [], NOW, nodes={"node-a"})
    assert plan.status["restartCount"] == 1 and "Failed" not in true_conditions(plan)
    # The pod on the lost node is removed at once (no kubelet will), the other gracefully.
    assert [p["metadata"]["name"] for p in plan.force_delete_pods] == ["job-worker-0"]
    assert [p["metadata"]["name"] for p in plan.delete_pods] == ["job-master-0"]
    assert any("was lost with its node node-b" in text for _, _, text in plan.events)
    # Without node information the same failure is the master's own: fatal under ExitCode.
    assert "Failed" in true_conditions(run(job, [master, worker]))


def test_a_pod_that_vanishes_from_a_running_gang_restarts_it() -> None:
    job = with_status(pytorch_job(), run(pytorch_job(), []))
    running = [pod("job-master-0", "Running"), pod("job-worker-0", "Running")]
    job = with_status(job, run(job, running))
    assert "Running" in true_conditions(run(job, running))
    plan = run(job, running[:1])
    assert plan.status["restartCount"] == 1
    assert any("disappeared" in text for _, _, text in plan.events)


def test_a_restarted_gang_waits_for_admission_before_creating_pods() -> None:
    job = pytorch_job()
    job["status"] = {"restartCount": 1, "conditions": []}
    spec = JobSpec.from_spec(job["spec"])
    waiting = decide(job, spec, [], [], NOW, admitted=False)
    assert waiting.awaiting_admission and not waiting.create_pods
    assert waiting.requeue_after is not None
    restarting = next(c for c in waiting.status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "WaitingForCapacity"
    admitted = decide(job, spec, [], [], NOW, admitted=True)
    assert len(admitted.create_pods) == 2


@pytest.mark.parametrize(
    ("policy", "code", "outcome"),
    [
        ("OnFailure", 1, "restart"),
        ("ExitCode", 1, "Failed"),
        ("ExitCode", 137, "restart"),
        ("Never", 137, "Failed"),
    ],
)
def test_restart_policies(policy: str, code: int, outcome: str) -> None:
    job = pytorch_job()
    job["spec"]["replicaSpecs"]["Worker"]["restartPolicy"] = policy
    job = with_status(job, run(job, []))
    plan = run(job, [pod("job-master-0", "Running"), pod("job-worker-0", "Failed", exit_code=code)])
    if outcome == "restart":
        assert plan.status["restartCount"] == 1
    else:
        assert "Failed" in true_conditions(plan) and plan.status["restartCount"] == 0


def test_the_backoff_limit_fails_the_job() -> None:
    job = pytorch_job()
    job["status"] = {"restartCount": 2, "conditions": []}
    plan = run(
        job,
        [
            pod("job-master-0", "Failed", restart=2, exit_code=137),
            pod("job-worker-0", "Running", restart=2),
        ],
    )
    assert "Failed" in true_conditions(plan)
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert [p["metadata"]["name"] for p in plan.delete_pods] == [
        "job-worker-0"
    ]  # cleanPodPolicy Running


def test_the_master_succeeding_ends_the_job_and_cleans_running_pods() -> None:
    job = with_status(pytorch_job(), run(pytorch_job(), []))
    plan = run(job, [pod("job-master-0", "Succeeded", exit_code=0), pod("job-worker-0", "Running")])
    assert "Succeeded" in true_conditions(plan)
    assert plan.status["conditions"][-1]["type"] == "Succeeded"
    assert [p["metadata"]["name"] for p in plan.delete_pods] == ["job-worker-0"]
    assert plan.status["replicaStatuses"]["Master"] == {"active": 0, "succeeded": 1, "failed": 0}


def test_pods_of_another_owner_are_left_alone() -> None:
    job = with_status(pytorch_job(), run(pytorch_job(), []))
    foreign = pod("job-master-0", "Running", uid="an-older-job")
    plan = run(job, [foreign])
    assert foreign not in plan.delete_pods
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["job-worker-0"]
    assert plan.requeue_after == 1.0


def test_suspend_deletes_pods_and_the_deadline_fails_the_job() -> None:
    job = with_status(pytorch_job(suspend=True), run(pytorch_job(), []))
    plan = run(job, [pod("job-master-0", "Running"), pod("job-worker-0", "Running")])
    assert "Suspended" in true_conditions(plan) and len(plan.delete_pods) == 2
    assert "startTime" not in plan.status
    job = pytorch_job(activeDeadlineSeconds=10)
    job = with_status(job, run(job, []))
    assert run(job, [], NOW + dt.timedelta(seconds=5)).requeue_after == pytest.approx(5.0)
    late = run(job, [], NOW + dt.timedelta(seconds=11))
    assert "Failed" in true_conditions(late)


def test_ttl_deletes_a_finished_job() -> None:
    job = pytorch_job(ttlSecondsAfterFinished=30)
    job["status"] = {
        "completionTime": "2026-11-28T12:00:00Z",
        "conditions": [{"type": "Succeeded", "status": "True"}],
    }
    assert run(job, [], NOW + dt.timedelta(seconds=10)).requeue_after == pytest.approx(20.0)
    assert run(job, [], NOW + dt.timedelta(seconds=31)).delete_job


def test_a_job_collected_within_a_minute_records_warnings_only() -> None:
    """Each Event outlives its object by an hour: a short-TTL job (a long sweep's trial) keeps
    its Normal ones in its conditions only; a job that stays records them."""
    for ttl, normal in ((None, True), (60, False), (61, True)):
        job = pytorch_job() if ttl is None else pytorch_job(ttlSecondsAfterFinished=ttl)
        plan = run(job, [])
        assert ("Normal", "Created", "TrainJob job is created") in plan.events
        assert plan.normal_events is normal, ttl


def test_conditions_turning_true_move_last() -> None:
    conditions: list[dict[str, Any]] = []
    assert set_condition(conditions, "Running", True, "A", "a", "t1")
    assert set_condition(conditions, "Succeeded", True, "B", "b", "t2")
    assert not set_condition(conditions, "Failed", False, "C", "c", "t3")  # absent stays absent
    assert set_condition(conditions, "Running", False, "B", "b", "t4")
    assert [c["type"] for c in conditions] == ["Running", "Succeeded"]
    assert set_condition(conditions, "Running", True, "D", "d", "t5")
    assert [c["type"] for c in conditions] == ["Succeeded", "Running"]


# --- specs and rendezvous -----------------------------------------------------------------


def test_kubeflow_aliases_and_errors_name_the_field() -> None:
    spec = JobSpec.from_spec(
        {"tfReplicaSpecs": {"Worker": {"replicas": 2, "template": template("tensorflow")}}}
    )
    assert spec.framework == "tensorflow" and spec.port() == 2222
    with pytest.raises(SpecError, match=r"spec.pytorchReplicaSpecs: a PyTorch job needs a Master"):
        JobSpec.from_spec({"pytorchReplicaSpecs": {"Worker": {"template": template()}}})
    with pytest.raises(SpecError, match=r"spec.replicaSpecs.Worker.replicas"):
        JobSpec.from_spec(
            {
                "framework": "generic",
                "replicaSpecs": {"Worker": {"replicas": -1, "template": template()}},
            }
        )


def test_a_jaxjob_spec_gives_worker_0s_dns_name_as_the_coordinator() -> None:
    spec = JobSpec.from_spec(
        {"jaxReplicaSpecs": {"Worker": {"replicas": 3, "template": template("jax")}}}
    )
    assert spec.framework == "jax" and spec.port() == 6666  # JAXJob's default jaxjob-port
    env = rendezvous_env(spec, "lm", "ml", 2, Networking())
    assert env["JAX_COORDINATOR_ADDRESS"] == "lm-worker-0.lm.ml.svc:6666"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", "2")
    assert (env["COORDINATOR_ADDRESS"], env["COORDINATOR_PORT"]) == (
        "lm-worker-0.lm.ml.svc",
        "6666",
    )
    with pytest.raises(SpecError, match=r"spec.jaxReplicaSpecs: jax replica roles are Worker"):
        JobSpec.from_spec({"jaxReplicaSpecs": {"Master": {"template": template("jax")}}})
    with pytest.raises(SpecError, match=r"spec.framework: jaxReplicaSpecs needs framework jax"):
        JobSpec.from_spec(
            {"framework": "pytorch", "jaxReplicaSpecs": {"Worker": {"template": template("jax")}}}
        )


def test_tensorflow_cluster_by_dns_leaves_the_evaluator_out() -> None:
    spec = JobSpec.from_spec(
        {
            "tfReplicaSpecs": {
                "Chief": {"replicas": 1, "template": template("tensorflow")},
                "Worker": {"replicas": 2, "template": template("tensorflow")},
                "PS": {"replicas": 1, "template": template("tensorflow")},
                "Evaluator": {"replicas": 1, "template": template("tensorflow")},
            }
        }
    )
    config = json.loads(rendezvous_env(spec, "mnist", "ml", 4, Networking())["TF_CONFIG"])
    assert config["cluster"] == {
        "chief": ["mnist-chief-0.mnist.ml.svc:2222"],
        "worker": ["mnist-worker-0.mnist.ml.svc:2222", "mnist-worker-1.mnist.ml.svc:2222"],
        "ps": ["mnist-ps-0.mnist.ml.svc:2222"],
    }
    assert config["task"] == {"type": "evaluator", "index": 0}
    assert replica_rank(
        {"TF_CONFIG": rendezvous_env(spec, "mnist", "ml", 2, Networking())["TF_CONFIG"]}
    ) == (2, 3)


def test_replicas_sharing_a_network_get_ports_of_their_own() -> None:
    spec = JobSpec.from_spec(
        {
            "framework": "tensorflow",
            "replicaSpecs": {
                "Worker": {
                    "replicas": 2,
                    "template": {"spec": {"hostNetwork": True, **template("tensorflow")["spec"]}},
                }
            },
        }
    )
    config = json.loads(rendezvous_env(spec, "j", "ns", 0, Networking())["TF_CONFIG"])
    assert config["cluster"]["worker"] == ["j-worker-0.j.ns.svc:2222", "j-worker-1.j.ns.svc:2223"]
    local = json.loads(rendezvous_env(spec, "j", "ns", 1, Networking("127.0.0.1"))["TF_CONFIG"])
    assert local["cluster"]["worker"] == ["127.0.0.1:2222", "127.0.0.1:2223"]


def test_trial_parameters_are_substituted_as_in_katib() -> None:
    spec = {
        "containers": [
            {
                "args": [
                    "--lr=${trialParameters.lr}",
                    "--opt=${trialParameters.optimizer.name}",
                    "${trialParameters.missing}",
                ]
            }
        ]
    }
    out = substitute_parameters(spec, {"lr": 0.1, "optimizer": {"name": "adam"}})
    assert out["containers"][0]["args"] == ["--lr=0.1", "--opt=adam", "${trialParameters.missing}"]


def test_work_queue_coalesces_and_delays() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.add("a")
    assert queue.get(0.1) == "a"
    queue.add("a")  # while it is processed: again after done()
    assert queue.get(0.05) is None
    queue.done("a")
    assert queue.get(0.1) == "a"
    queue.done("a")
    queue.add_after("b", 0.2)
    assert queue.get(0.05) is None
    assert queue.get(1.0) == "b"
    queue.done("b")

    # The events of one object in a batch window make one timer; asking sooner moves it.
    for _ in range(100):
        queue.add_after("c", 30.0)
    queue.add_after("c", 0.1)
    queue.add_after("c", 20.0)
    assert len({key for _, key in queue._delayed}) == 1 and len(queue._delayed) == 2
    assert queue.get(5.0) == "c"
    queue.add_after("c", 0.05)  # being processed, not queued: due again
    queue.add("c")
    queue.add_after("c", 0.01)  # queued already (after done): nothing more to do
    queue.done("c")
    assert queue.get(1.0) == "c"
    queue.done("c")
    assert queue.get(0.2) == "c"  # the 0.05 s one, asked for while it was processed
    queue.done("c")
    assert queue.get(0.2) is None


def test_the_objects_of_a_deleted_owner_queue_nothing() -> None:
    """A job's pods and Service, deleted after it by the garbage collector, would queue a
    reconcile that finds nothing: with ``owner_exists`` they queue nothing."""
    queue = WorkQueue()
    owners = {("ns", "live")}
    handler = enqueue_owner(queue, "job", owner_exists=lambda ns, name: (ns, name) in owners)
    pod = {"metadata": {"namespace": "ns", "name": "p", "labels": {"job": "gone"}}}
    handler("DELETED", pod)
    handler("MODIFIED", {"metadata": {"namespace": "ns", "name": "q"}})  # no owner label
    assert queue.get(0.05) is None
    handler("DELETED", {"metadata": {**pod["metadata"], "labels": {"job": "live"}}})
    assert queue.get(0.05) == "ns/live"


def test_work_queue_hands_delayed_keys_to_idle_workers_without_waking_them_all() -> None:
    """One idle worker waits for the next delayed key, the others for queued keys: every key
    still reaches a worker when due, including one asked for sooner than the watched one."""
    queue = WorkQueue()
    got: list[str | None] = []

    def worker() -> None:
        got.append(queue.get(60.0))  # a key due late would leave it waiting a minute

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(queue._condition._waiters) == 4, what="four idle workers")  # type: ignore[attr-defined]
    queue.add_after("late", 0.3)
    wait_until(lambda: queue._watched is not None, what="a worker to watch the timer")
    queue.add_after("sooner", 0.05)
    queue.add("now")
    queue.add_after("later", 0.5)
    for thread in threads:
        thread.join(20)
    assert sorted(key or "" for key in got) == ["late", "later", "now", "sooner"]


def test_goal_and_secret_scrubbing() -> None:
    summary = {"bestTrial": {"number": 3, "value": 0.05, "params": {}}}
    assert goal_reached(summary, 0.1, "min") and not goal_reached(summary, 0.01, "min")
    assert goal_reached(summary, 0.01, "max") and not goal_reached({}, 0.1, "min")
    url = "postgresql://optuna:hunter2@db:5432/sweeps"
    assert "hunter2" not in scrub(f"could not connect to {url}; password hunter2 refused", url)
