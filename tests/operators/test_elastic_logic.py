"""Elastic TrainJobs (``elasticPolicy``) without a cluster: the spec, the ``PET_*`` variables,
and the controller's decisions when replicas are lost or wait for room."""

from __future__ import annotations

from typing import Any

import pytest

from hypersweep.kube._pools import parse_pools
from hypersweep.launchers._kubernetes import gang_demand
from hypersweep.operators._trainjob import JobSpec, Networking, SpecError, rendezvous_env

from .test_logic import pod, pytorch_job, run, true_conditions, with_status


def elastic_job(workers: int = 3, **policy: Any) -> dict[str, Any]:
    job = pytorch_job(workers=workers)
    job["spec"]["elasticPolicy"] = {"minReplicas": 2, "maxReplicas": workers + 1, **policy}
    return job


def running(job: dict[str, Any], workers: int = 3) -> tuple[dict[str, Any], list[Any]]:
    """The job once every replica runs, and its pods."""
    pods = [pod("job-master-0", "Running")] + [
        pod(f"job-worker-{i}", "Running") for i in range(workers)
    ]
    job = with_status(job, run(job, []))
    job = with_status(job, run(job, pods))
    assert "Running" in true_conditions(run(job, pods))
    return job, pods


def test_the_policy_is_kubeflows_and_bad_values_name_the_field() -> None:
    spec = JobSpec.from_spec(
        elastic_job(
            rdzvId="run-1",
            maxRestarts=4,
            rdzvConf=[{"key": "last_call_timeout", "value": "5"}],
        )["spec"]
    )
    env = rendezvous_env(spec, "job", "ns", 2, Networking())
    assert env["PET_NNODES"] == "2:4"
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "job-master-0.job.ns.svc:23456"
    assert env["PET_RDZV_ID"] == "run-1"
    assert env["PET_MAX_RESTARTS"] == "4"
    assert env["PET_RDZV_CONF"] == "last_call_timeout=5"
    # Pods sharing one address: the master's agent hosts the store, each is reached there.
    shared = rendezvous_env(spec, "job", "ns", 0, Networking(replica_host="127.0.0.1"))
    assert shared["PET_RDZV_CONF"] == "last_call_timeout=5,is_host=true"
    assert shared["PET_LOCAL_ADDR"] == "127.0.0.1"
    # A job without the policy gets no elastic variables.
    plain = rendezvous_env(JobSpec.from_spec(pytorch_job()["spec"]), "job", "ns", 1, Networking())
    assert plain["PET_NNODES"] == "2" and "PET_RDZV_BACKEND" not in plain
    for policy, field in [
        ({"minReplicas": 5}, "spec.elasticPolicy.minReplicas"),
        ({"minReplicas": 1, "maxReplicas": 3}, "outside minReplicas..maxReplicas"),
        ({"rdzvBackend": "zookeeper"}, "spec.elasticPolicy.rdzvBackend"),
        ({"rdzvBackend": "etcd"}, "spec.elasticPolicy.rdzvHost"),
        ({"maxRestarts": -1}, "spec.elasticPolicy.maxRestarts"),
    ]:
        with pytest.raises(SpecError, match=field):
            JobSpec.from_spec(elastic_job(**policy)["spec"])
    worker = pytorch_job()["spec"]["replicaSpecs"]["Worker"]
    tf = {"tfReplicaSpecs": {"Worker": worker}, "elasticPolicy": {}}
    with pytest.raises(SpecError, match="elasticPolicy: elastic gangs are PyTorch's"):
        JobSpec.from_spec(tf)


def test_a_lost_replica_with_min_replicas_left_is_replaced_without_a_restart() -> None:
    job, pods = running(elastic_job())
    pods[2] = pod("job-worker-1", "Failed", exit_code=137)
    plan = run(job, pods)
    assert plan.status["restartCount"] == 0
    assert "Restarting" not in true_conditions(plan) and "Failed" not in true_conditions(plan)
    assert [p["metadata"]["name"] for p in plan.delete_pods] == ["job-worker-1"]
    assert any(
        reason == "ElasticReplicaLost" and "goes on with 3 replicas" in text
        for _, reason, text in plan.events
    )
    # Once its pod is gone, the replica is created again in the same start (no restart).
    gone = [p for p in pods if p["metadata"]["name"] != "job-worker-1"]
    again = run(with_status(job, plan), gone)
    assert again.status["restartCount"] == 0
    assert [p["metadata"]["name"] for p in again.create_pods] == ["job-worker-1"]
    assert again.create_pods[0]["metadata"]["labels"]["hypersweep.io/restart-count"] == "0"
    assert not again.delete_pods


def test_below_min_replicas_the_gang_restarts_counted() -> None:
    job, pods = running(elastic_job())
    for index in (2, 3):
        pods[index] = pod(f"job-worker-{index - 1}", "Failed", exit_code=137)
    plan = run(job, pods)  # 2 of 4 left: min 2 would do...
    assert plan.status["restartCount"] == 0
    pods[1] = pod("job-worker-0", "Failed", exit_code=137)
    plan = run(job, pods)  # ...1 left is below it
    assert plan.status["restartCount"] == 1
    assert "Restarting" in true_conditions(plan)
    # The same loss in a job without the policy restarts the gang at once.
    fixed, fixed_pods = running(pytorch_job(workers=3))
    fixed_pods[2] = pod("job-worker-1", "Failed", exit_code=137)
    assert run(fixed, fixed_pods).status["restartCount"] == 1


def test_a_replica_waiting_for_room_does_not_fail_an_elastic_job() -> None:
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "x",
                "lastTransitionTime": "2026-11-28T11:59:00Z",  # a minute before NOW
            }
        ],
    }
    for job, survives in [
        (elastic_job(stalledTimeoutSeconds=0), True),
        (pytorch_job(workers=3, stalledTimeoutSeconds=0), False),
    ]:
        job, pods = running(job)
        pods[2]["status"] = unschedulable
        plan = run(job, pods)
        assert ("Failed" not in true_conditions(plan)) is survives, plan.status
        assert "Stalled" in true_conditions(plan)


def test_gang_admission_asks_for_min_replicas_of_an_elastic_trial() -> None:
    (pool,) = parse_pools([{"name": "cpu", "nodeSelector": {"pool": "cpu"}}])
    spec = elastic_job()["spec"]
    for role in spec["replicaSpecs"].values():
        role["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "2"}}
    assert len(gang_demand(spec, pool)) == 2  # minReplicas; the other 2 start when they fit
    del spec["elasticPolicy"]
    assert len(gang_demand(spec, pool)) == 4


def test_a_trial_under_the_elastic_agent_leaves_errors_to_its_restarts() -> None:
    from hypersweep.operators.trial_entrypoint import elastic_restarts_left

    assert not elastic_restarts_left({})  # not under torchrun: the error is the trial's
    agent = {"TORCHELASTIC_MAX_RESTARTS": "3"}
    assert elastic_restarts_left({**agent, "TORCHELASTIC_RESTART_COUNT": "2"})
    assert not elastic_restarts_left({**agent, "TORCHELASTIC_RESTART_COUNT": "3"})
