"""Gang admission is fair, and disruptions are handled as Kubeflow's operators handle them:

* a 4-replica gang is not starved by a stream of 1-replica trials sharing its pool: it starts
  within a bounded number of admissions after it arrives (no back-filling past it);
* a replica evicted through the Eviction API restarts its gang from the checkpoint, and counts
  toward ``backoffLimit``: a second eviction past the limit fails the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import (
    Namespace,
    OperatorProcess,
    free_port,
    kubectl_json,
    objective_command,
    wait_until,
)
from .test_pools import GPU, ObjectWatch, PoolAgents, apply_sweep, finished, pool
from .test_trainjob import container, create, job_state, pod_log, replica, wait_finished

pytestmark = pytest.mark.k8s


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[PoolAgents]:
    started = PoolAgents(cluster)
    yield started
    started.close()


def test_a_gang_is_not_starved_by_a_stream_of_single_replica_trials(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, agents: PoolAgents
) -> None:
    ns = namespace.name
    agents.start(f"{ns}-shared-0", f"{ns}-shared", {GPU: "4"})  # 4 single trials, or one gang
    pools = [pool("shared", f"{ns}-shared")]
    stream_trials = 16
    with ObjectWatch(cluster, namespace) as seen:
        apply_sweep(
            cluster,
            namespace,
            "stream",
            pools,
            max_trials=stream_trials,
            parallelism=4,
            replicas=1,
            command=objective_command("learning_curve"),
        )
        # The stream fills the pool first; then the gang arrives.
        wait_until(lambda: len(seen.pod_order) >= 4, 120, "the stream to fill the pool")
        arrived = len(seen.pod_order)
        apply_sweep(
            cluster,
            namespace,
            "gang",
            pools,
            max_trials=1,
            parallelism=1,
            replicas=4,
            command=objective_command("learning_curve"),
        )
        for name in ("gang", "stream"):
            status = wait_until(
                lambda name=name: finished(cluster, namespace, name), 300, f"{name} to finish"
            )
            assert status["trials"]["succeeded"] == (1 if name == "gang" else stream_trials)
    order = seen.pod_order
    first_gang_pod = next(i for i, pod in enumerate(order) if pod.startswith("gang-"))
    overtaking = [p for p in order[arrived:first_gang_pod] if p.startswith("stream-")]
    # At most the stream trials already waiting when the gang joined the queue (parallelism);
    # with back-filling every stream trial but the running ones would overtake it.
    assert len(overtaking) <= 4, (overtaking, order)
    assert len([p for p in order if p.startswith("stream-")]) == stream_trials
    # Whole, never partial: the gang's 4 pods came one after another (nothing in between).
    gang_positions = [i for i, pod in enumerate(order) if pod.startswith("gang-")]
    assert len(gang_positions) == 4


def _evict(cluster: LocalCluster, namespace: str, pod: str) -> None:
    from kubernetes import client

    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
    client.CoreV1Api(cluster.api_client()).create_namespaced_pod_eviction(pod, namespace, body)


def _starts(cluster: LocalCluster, namespace: str) -> list[int]:
    log = pod_log(cluster, namespace, "evicted-master-0", "pytorch")
    return [int(line.split()[-1]) for line in log.splitlines() if "starts at step" in line]


def test_an_evicted_replica_restarts_the_gang_and_counts_toward_backoff_limit(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "step"
    env = {"CHECKPOINT_FILE": str(checkpoint), "STEPS": "200"}
    # ExitCode: the master's own failure when its peer goes (exit 1) would fail the job; only
    # the eviction (a disruption, as Kubeflow counts it) restarts the gang.
    master = container("pytorch", "gang", free_port(span=2), env)
    worker = container("pytorch", "gang", None, env)
    spec: dict[str, Any] = {
        "pytorchReplicaSpecs": {
            "Master": replica(master, restart="ExitCode"),
            "Worker": replica(worker, restart="ExitCode"),
        },
        "runPolicy": {"backoffLimit": 1},
    }
    create(cluster, namespace.name, "evicted", spec)

    def worker_running_after(step: int) -> bool:
        if not checkpoint.exists() or int(checkpoint.read_text() or -1) < step:
            return False
        items = kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]
        pods = {p["metadata"]["name"]: p for p in items}
        worker_pod = pods.get("evicted-worker-0")
        return bool(
            worker_pod
            and not worker_pod["metadata"].get("deletionTimestamp")
            and worker_pod["status"].get("phase") == "Running"
        )

    wait_until(lambda: worker_running_after(3), 120, "3 checkpointed steps")
    _evict(cluster, namespace.name, "evicted-worker-0")
    wait_until(
        lambda: job_state(cluster, namespace.name, "evicted").get("restartCount") == 1,
        90,
        "the gang to restart",
    )
    wait_until(lambda: len(_starts(cluster, namespace.name)) >= 2, 90, "the master to start again")
    starts = _starts(cluster, namespace.name)
    assert starts[0] == 0 and starts[1] >= 3, starts  # resumed from its checkpoint
    resumed_at = starts[1]
    wait_until(lambda: worker_running_after(resumed_at + 2), 120, "two more steps")

    # The second eviction goes past backoffLimit 1: the job fails, it does not restart again.
    _evict(cluster, namespace.name, "evicted-worker-0")
    status = wait_finished(cluster, namespace.name, "evicted", timeout=120)
    assert "Failed" in status["true"], status
    assert status["restartCount"] == 1, status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert "backoff" in (failed.get("reason", "") + failed.get("message", "")).lower(), failed
