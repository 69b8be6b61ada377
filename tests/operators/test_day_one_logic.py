"""The TrainJob controller's decisions behind the day-one fixes, as pure functions: pods that
cannot start (an image that cannot be pulled, which the process-based test node agent cannot
produce), the back-off between gang restarts, and trials that ended for good."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypersweep.operators._trainjob import RANKS_EXIT_SECONDS, JobSpec, decide, restart_backoff

from .test_logic import NOW, pod, pytorch_job, run, true_conditions, with_status


def waiting(name: str, reason: str, message: str = "") -> dict[str, Any]:
    stuck = pod(name, "Pending")
    stuck["status"]["containerStatuses"] = [
        {"name": "pytorch", "state": {"waiting": {"reason": reason, "message": message}}}
    ]
    return stuck


def test_an_image_that_cannot_be_pulled_fails_the_job_after_the_grace_period() -> None:
    job = pytorch_job(workers=1, stalledTimeoutSeconds=60)
    job = with_status(job, run(job, []))
    pods = [
        waiting("job-master-0", "ImagePullBackOff", 'Back-off pulling image "trainer:typo"'),
        pod("job-worker-0", "Running"),
    ]
    plan = run(job, pods)
    stalled = next(c for c in plan.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "ImagePullBackOff"
    assert "trainer:typo" in stalled["message"] and "Failed" not in true_conditions(plan)
    assert plan.requeue_after == 60  # comes back when the grace period ends
    later = run(with_status(job, plan), pods, NOW + dt.timedelta(seconds=61))
    failed = next(c for c in later.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ImagePullBackOff"
    assert sorted(p["metadata"]["name"] for p in later.delete_pods) == [
        "job-master-0",
        "job-worker-0",
    ]
    # Progress (pulling, creating) is no stall.
    assert "Stalled" not in true_conditions(
        run(job, [waiting("job-master-0", "ContainerCreating")])
    )


def test_a_pod_waiting_seconds_for_room_is_not_stalled_yet() -> None:
    """Room freed a moment before the scheduler sees it comes within seconds: a pod the
    scheduler could not place is noticed (condition, Warning, the stalledTimeoutSeconds clock)
    after 15 s, the scheduler's longest back-off between two tries and then some."""
    job = pytorch_job(workers=1, stalledTimeoutSeconds=60)
    job = with_status(job, run(job, []))
    unplaced = pod("job-master-0", "Pending")
    unplaced["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available",
            "lastTransitionTime": "2026-11-28T12:00:00Z",  # NOW
        }
    ]
    pods = [unplaced, pod("job-worker-0", "Running")]
    plan = run(job, pods, NOW + dt.timedelta(seconds=2))
    assert "Stalled" not in true_conditions(plan) and not plan.events
    assert plan.requeue_after == 13.0  # looks again when the 15 s are over
    plan = run(job, pods, NOW + dt.timedelta(seconds=15))
    assert "Stalled" in true_conditions(plan)
    assert [e[:2] for e in plan.events] == [("Warning", "Unschedulable")]


def test_restarts_after_a_failure_back_off_but_a_lost_node_does_not() -> None:
    assert [restart_backoff(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert restart_backoff(20) == 120.0
    job = pytorch_job(workers=1, backoffLimit=5)
    job = with_status(job, run(job, []))
    crashed = [pod("job-master-0", "Failed", exit_code=1), pod("job-worker-0", "Running")]
    restart = run(job, crashed)
    assert restart.status["restartCount"] == 1
    job = with_status(job, restart)
    # The old pods are gone; the new ones wait 2 s, then start.
    waiting_plan = run(job, [], NOW + dt.timedelta(seconds=1))
    assert not waiting_plan.create_pods and waiting_plan.requeue_after == 1.0
    assert len(run(job, [], NOW + dt.timedelta(seconds=2)).create_pods) == 2
    # A replica lost with its node restarts the gang at once.
    lost_job = pytorch_job(workers=1)
    lost_job = with_status(lost_job, run(lost_job, []))
    on_gone = pod("job-master-0", "Running")
    on_gone["spec"] = {"nodeName": "gone"}
    spec = JobSpec.from_spec(lost_job["spec"])
    plan = decide(lost_job, spec, [on_gone, pod("job-worker-0", "Running")], [], NOW, nodes=set())
    lost_job = with_status(lost_job, plan)
    assert plan.status["restartCount"] == 1
    assert len(run(lost_job, []).create_pods) == 2


def test_a_trial_ended_for_good_finishes_its_job_without_restarts() -> None:
    job = pytorch_job(workers=1)
    job = with_status(job, run(job, []))
    failed = {
        **job,
        "metadata": {
            **job["metadata"],
            "annotations": {
                "hypersweep.io/outcome": "failed",
                "hypersweep.io/failure": "ValueError: bad lr",
            },
        },
    }
    running = [pod("job-master-0", "Running"), pod("job-worker-0", "Running")]
    assert not true_conditions(run(failed, running)) & {"Failed", "Succeeded"}  # exiting
    exited = [pod("job-master-0", "Failed", exit_code=1), pod("job-worker-0", "Running")]
    plan = run(failed, exited)
    assert plan.status["restartCount"] == 0 and not plan.create_pods
    ended = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert ended["reason"] == "TrialFailed" and "ValueError: bad lr" in ended["message"]
    # cleanPodPolicy Running: the running worker goes, the failed master stays for its logs.
    assert [p["metadata"]["name"] for p in plan.delete_pods] == ["job-worker-0"]
    # A paused trial's suspended job stays suspended; once pruned, it finishes.
    suspended = pytorch_job(workers=1, suspend=True)
    suspended["metadata"]["annotations"] = {"hypersweep.io/outcome": "paused"}
    assert "Suspended" in true_conditions(run(suspended, []))
    suspended["metadata"]["annotations"] = {"hypersweep.io/outcome": "pruned"}
    plan = run(suspended, [])
    ended = next(c for c in plan.status["conditions"] if c["type"] == "Succeeded")
    assert ended["reason"] == "EarlyStopped"


def test_a_pruned_trials_ranks_exit_by_themselves_within_their_grace() -> None:
    job = pytorch_job(workers=2)
    job = with_status(job, run(job, []))
    job["metadata"]["annotations"] = {"hypersweep.io/outcome": "pruned"}
    seen = NOW
    # Every rank was told to stop: none is deleted while they exit, even once one has exited.
    running = [pod(f"job-{name}", "Running") for name in ("master-0", "worker-0", "worker-1")]
    plan = decide(job, JobSpec.from_spec(job["spec"]), running, [], NOW, outcome_seen=seen)
    assert not plan.delete_pods and not true_conditions(plan) & {"Succeeded", "Failed"}
    assert plan.requeue_after is not None and 0 < plan.requeue_after <= RANKS_EXIT_SECONDS
    exiting = [pod("job-master-0", "Succeeded"), *running[1:]]
    later = NOW + dt.timedelta(seconds=RANKS_EXIT_SECONDS / 2)
    plan = decide(job, JobSpec.from_spec(job["spec"]), exiting, [], later, outcome_seen=seen)
    assert not plan.delete_pods and not true_conditions(plan) & {"Succeeded", "Failed"}
    # All exited: the job ends as pruned, deleting nothing (their logs stay).
    exited = [pod(f"job-{name}", "Succeeded") for name in ("master-0", "worker-0", "worker-1")]
    plan = decide(job, JobSpec.from_spec(job["spec"]), exited, [], later, outcome_seen=seen)
    ended = next(c for c in plan.status["conditions"] if c["type"] == "Succeeded")
    assert ended["reason"] == "EarlyStopped" and not plan.delete_pods
    assert "Suspended" not in true_conditions(plan)
    # A rank still running once the grace is over is deleted, and the job ends all the same.
    past = NOW + dt.timedelta(seconds=RANKS_EXIT_SECONDS + 1)
    plan = decide(job, JobSpec.from_spec(job["spec"]), exiting, [], past, outcome_seen=seen)
    assert "Succeeded" in true_conditions(plan)
    assert sorted(p["metadata"]["name"] for p in plan.delete_pods) == [
        "job-worker-0",
        "job-worker-1",
    ]
