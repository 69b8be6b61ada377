"""TrainJobs run for real on the test node agent: replicas rendezvous through the environment
the controller set, a killed replica restarts the gang from its checkpoint, run policies apply.

Pods on the node agent are local processes sharing 127.0.0.1, and there is no cluster DNS; the
test operator runs with ``--replica-host=127.0.0.1``, so replica addresses are that host, each
replica on a port of its own (the controller's host-network addressing).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from hypersweep.kube._pools import parse_policy
from hypersweep.testing import LocalCluster

from .conftest import HERE, Namespace, OperatorProcess, free_port, kubectl_json, wait_until

pytestmark = pytest.mark.k8s

REPLICAS = str(HERE / "replicas.py")


def container(
    framework: str, mode: str, port: int | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": framework,
        "image": "hypersweep:test",
        "command": [sys.executable, REPLICAS, mode],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}},
    }
    if port is not None:
        name = {"pytorch": "pytorchjob-port", "jax": "jaxjob-port"}.get(framework, "tfjob-port")
        spec["ports"] = [{"name": name, "containerPort": port}]
    return spec


def replica(
    spec: dict[str, Any], replicas: int = 1, restart: str = "OnFailure", **pod: Any
) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "restartPolicy": restart,
        "template": {"spec": {"containers": [spec], **pod}},
    }


def create(cluster: LocalCluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def job_state(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    job = kubectl_json(cluster, "get", "trainjob", name, "-n", namespace)
    status = job.get("status") or {}
    status["true"] = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    return status


def wait_finished(
    cluster: LocalCluster, namespace: str, name: str, timeout: float = 120
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = job_state(cluster, namespace, name)
        return status if status["true"] & {"Succeeded", "Failed"} else None

    return wait_until(finished, timeout, f"TrainJob {name} to finish")


def pod_log(cluster: LocalCluster, namespace: str, pod: str, container_name: str) -> str:
    agent_dir = Path(cluster.workdir) / "node-agents" / "agent-0"
    path = agent_dir / "pods" / namespace / pod / f"{container_name}.log"
    return path.read_text() if path.exists() else ""


def test_pytorch_job_with_two_replicas_all_reduces(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    port = free_port()
    master = container("pytorch", "torch", port, {"OMP_NUM_THREADS": "1"})
    worker = container("pytorch", "torch", port, {"OMP_NUM_THREADS": "1"})
    create(
        cluster,
        namespace.name,
        "ddp",
        {"pytorchReplicaSpecs": {"Master": replica(master), "Worker": replica(worker)}},
    )
    status = wait_finished(cluster, namespace.name, "ddp", timeout=180)
    logs = {
        pod: pod_log(cluster, namespace.name, pod, "pytorch")
        for pod in ("ddp-master-0", "ddp-worker-0")
    }
    assert "Succeeded" in status["true"], (status, logs, operator.log_tail())
    assert "rank 0 of 2: all_reduce=3.0" in logs["ddp-master-0"]
    assert "rank 1 of 2: all_reduce=3.0" in logs["ddp-worker-0"]
    assert status["restartCount"] == 0
    assert status["replicaStatuses"]["Master"]["succeeded"] == 1
    reasons = cluster.kubectl(
        "get", "events", "-n", namespace.name, "--field-selector", "involvedObject.name=ddp"
    ).stdout
    assert "SuccessfulCreatePod" in reasons and "TrainJobSucceeded" in reasons


def test_tensorflow_job_with_two_workers_meets_through_tf_config(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    port = free_port(span=2)
    worker = container("tensorflow", "tf-config", port)
    create(
        cluster,
        namespace.name,
        "mwms",
        {
            "tfReplicaSpecs": {
                "Worker": replica(worker, replicas=2, restart="ExitCode", hostNetwork=True)
            },
            "runPolicy": {"cleanPodPolicy": "None"},  # keep worker 1: worker 0 decides success
        },
    )
    status = wait_finished(cluster, namespace.name, "mwms")
    assert "Succeeded" in status["true"], (status, operator.log_tail())
    pod = kubectl_json(cluster, "get", "pod", "mwms-worker-1", "-n", namespace.name)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    tf_config = json.loads(env["TF_CONFIG"])
    assert tf_config["cluster"] == {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]}
    assert tf_config["task"] == {"type": "worker", "index": 1}

    def met(index: int) -> bool:
        log = pod_log(cluster, namespace.name, f"mwms-worker-{index}", "tensorflow")
        return f"worker-{index} at 127.0.0.1:{port + index} (127.0.0.1) heard from" in log

    wait_until(lambda: met(0) and met(1), 30, "both workers to meet their peer")


def test_a_kubeflow_jaxjob_spec_runs_a_cross_process_psum(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    port = free_port(span=2)
    create(
        cluster,
        namespace.name,
        "jaxjob",
        {"jaxReplicaSpecs": {"Worker": replica(container("jax", "jax", port), replicas=2)}},
    )
    status = wait_finished(cluster, namespace.name, "jaxjob", timeout=180)
    logs = [pod_log(cluster, namespace.name, f"jaxjob-worker-{i}", "jax") for i in range(2)]
    assert "Succeeded" in status["true"], (status, logs, operator.log_tail())
    assert "process 0 of 2: psum=3.0" in logs[0] and "process 1 of 2: psum=3.0" in logs[1]
    pod = kubectl_json(cluster, "get", "pod", "jaxjob-worker-1", "-n", namespace.name)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    # Worker 0 hosts the coordinator, on its own port (the test operator's shared host).
    assert env["JAX_COORDINATOR_ADDRESS"] == f"127.0.0.1:{port}"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
    assert (env["COORDINATOR_ADDRESS"], env["COORDINATOR_PORT"]) == ("127.0.0.1", str(port))
    assert (env["NUM_PROCESSES"], env["PROCESS_ID"]) == ("2", "1")


def _process_id(cluster: LocalCluster, namespace: str, pod: str) -> int | None:
    status = kubectl_json(cluster, "get", "pod", pod, "-n", namespace).get("status") or {}
    for container_status in status.get("containerStatuses") or []:
        if "running" in (container_status.get("state") or {}):
            return int(str(container_status.get("containerID", "")).rsplit("/", 1)[-1])
    return None


@pytest.mark.parametrize("gang", ["none", "workload"])
def test_a_killed_replica_restarts_the_gang_from_its_checkpoint(
    cluster: LocalCluster,
    namespace: Namespace,
    operator: OperatorProcess,
    tmp_path: Path,
    gang: str,
) -> None:
    """``workload``: the replicas form a gang of kube-scheduler's own gang scheduling (the
    Workload and PodGroup a ``gang: workload`` Sweep makes per trial); the restarted gang's new
    pods join the same PodGroup and are scheduled again, whole."""
    checkpoint = tmp_path / "step"
    env = {"CHECKPOINT_FILE": str(checkpoint), "STEPS": "25"}
    master = container("pytorch", "gang", free_port(span=2), env)
    worker = container("pytorch", "gang", None, env)
    pod: dict[str, Any] = {}
    if gang == "workload":
        policy = parse_policy({"gang": "workload"})
        for _, body in policy.gang_objects({"name": "gang"}, 2):
            cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
        pod = policy.pod_template({"spec": {}}, "gang", 2)["spec"]
        assert pod == {"schedulingGroup": {"podGroupName": "gang"}}
    create(
        cluster,
        namespace.name,
        "gang",
        {
            "pytorchReplicaSpecs": {
                "Master": replica(master, **pod),
                "Worker": replica(worker, **pod),
            }
        },
    )
    wait_until(
        lambda: checkpoint.exists() and int(checkpoint.read_text()) >= 3, 90, "3 checkpointed steps"
    )
    pid = wait_until(
        lambda: _process_id(cluster, namespace.name, "gang-worker-0"), 30, "the worker's pid"
    )
    os.kill(pid, signal.SIGKILL)
    status = wait_finished(cluster, namespace.name, "gang", timeout=120)
    assert "Succeeded" in status["true"], (status, operator.log_tail())
    assert status["restartCount"] == 1
    log = pod_log(cluster, namespace.name, "gang-master-0", "pytorch")
    starts = [int(line.split()[-1]) for line in log.splitlines() if "starts at step" in line]
    assert starts[0] == 0 and starts[-1] >= 3, log  # the second start resumed
    events = cluster.kubectl(
        "get", "events", "-n", namespace.name, "--field-selector", "involvedObject.name=gang"
    ).stdout
    assert "Restarting" in events and "killed by signal 9" in events
    if gang == "workload":
        # The second start's pods were gang-scheduled through the same PodGroup.
        restarted = kubectl_json(cluster, "get", "pod", "gang-master-0", "-n", namespace.name)
        assert restarted["metadata"]["labels"]["hypersweep.io/restart-count"] == "1"
        assert restarted["spec"]["schedulingGroup"] == {"podGroupName": "gang"}


def test_run_policies(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    sleeper = {
        "name": "main",
        "image": "x",
        "command": [sys.executable, "-c", "import time; time.sleep(60)"],
    }
    failing = {
        "name": "main",
        "image": "x",
        "command": [sys.executable, "-c", "raise SystemExit(3)"],
    }
    quick = {"name": "main", "image": "x", "command": [sys.executable, "-c", "pass"]}
    generic = "generic"
    create(
        cluster,
        namespace.name,
        "deadline",
        {
            "framework": generic,
            "replicaSpecs": {"Worker": replica(sleeper)},
            "runPolicy": {"activeDeadlineSeconds": 2},
        },
    )
    create(
        cluster,
        namespace.name,
        "exitcode",
        {"framework": generic, "replicaSpecs": {"Worker": replica(failing, restart="ExitCode")}},
    )
    create(
        cluster,
        namespace.name,
        "backoff",
        {
            "framework": generic,
            "replicaSpecs": {"Worker": replica(failing)},
            "runPolicy": {"backoffLimit": 1},
        },
    )
    create(
        cluster,
        namespace.name,
        "paused",
        {"framework": generic, "replicaSpecs": {"Worker": replica(sleeper, replicas=2)}},
    )
    create(
        cluster,
        namespace.name,
        "ttl",
        {
            "framework": generic,
            "replicaSpecs": {"Worker": replica(quick)},
            "runPolicy": {"ttlSecondsAfterFinished": 1},
        },
    )

    status = wait_finished(cluster, namespace.name, "deadline")
    assert "Failed" in status["true"]
    assert any(c["reason"] == "DeadlineExceeded" for c in status["conditions"])
    status = wait_finished(cluster, namespace.name, "exitcode")
    assert "Failed" in status["true"] and status["restartCount"] == 0  # code 3 is the program's
    status = wait_finished(cluster, namespace.name, "backoff")
    assert any(c["reason"] == "BackoffLimitExceeded" for c in status["conditions"])
    assert status["restartCount"] == 1

    wait_until(
        lambda: "Running" in job_state(cluster, namespace.name, "paused")["true"],
        60,
        "paused to run",
    )
    cluster.kubectl(
        "patch",
        "trainjob",
        "paused",
        "-n",
        namespace.name,
        "--type=merge",
        "-p",
        '{"spec":{"runPolicy":{"suspend":true}}}',
    )
    wait_until(
        lambda: "Suspended" in job_state(cluster, namespace.name, "paused")["true"],
        60,
        "suspension",
    )
    wait_until(
        lambda: (
            not kubectl_json(
                cluster, "get", "pods", "-n", namespace.name, "-l", "hypersweep.io/job-name=paused"
            )["items"]
        ),
        60,
        "the suspended job's pods to go",
    )
    assert (
        kubectl_json(cluster, "get", "trainjob", "paused", "-n", namespace.name)["status"][
            "conditions"
        ][-1]["type"]
        == "Suspended"
    )

    wait_until(
        lambda: (
            cluster.kubectl("get", "trainjob", "ttl", "-n", namespace.name, check=False).returncode
            != 0
        ),
        60,
        "the TTL to delete the finished job",
    )


def test_a_job_whose_pods_the_api_server_refuses_fails_once(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # A container name that no pod may have: the schema lets it through, pod validation not.
    invalid = {"name": "Not_A_Label", "image": "x", "command": [sys.executable, "-c", "pass"]}
    create(
        cluster,
        namespace.name,
        "refused",
        {"framework": "generic", "replicaSpecs": {"Worker": replica(invalid, replicas=3)}},
    )
    status = wait_finished(cluster, namespace.name, "refused", timeout=60)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "InvalidSpec"), status
    assert "Pod refused-worker-" in failed["message"]

    def refusals() -> list[str]:
        events = kubectl_json(
            cluster,
            "get",
            "events",
            "-n",
            namespace.name,
            "--field-selector",
            "involvedObject.name=refused",
        )["items"]
        return [e["message"] for e in events if e["reason"] == "InvalidSpec"]

    # The three pods are refused together, and the job is refused once.
    assert len(wait_until(refusals, 10, "the InvalidSpec event")) == 1
