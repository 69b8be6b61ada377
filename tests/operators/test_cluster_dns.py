"""TrainJobs with the production addressing: replicas meet at their cluster DNS names.

In a cluster the controller sets ``MASTER_ADDR`` and ``TF_CONFIG`` to the replicas' DNS names
(``<job>-<role>-<i>.<job>.<namespace>.svc``, through the job's headless Service), every
replica listening on the same port at its own IP. Here a node agent in cluster-DNS mode
(:mod:`hypersweep.testing._cluster_dns`) gives each pod an address of its own and resolves
those names as cluster DNS would, and the operator runs without ``--replica-host``: so a
wrong name, or two replicas given one address, fails the job.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import Namespace, OperatorProcess, free_port, kubectl_json, wait_until
from .test_trainjob import container, create, wait_finished

pytestmark = pytest.mark.k8s

NODE = "dns-0"
#: Only pods that ask for it run on the cluster-DNS node: other tests read agent-0's logs.
TAINT_KEY = "hypersweep.io/cluster-dns"
ON_DNS_NODE: dict[str, Any] = {
    "nodeSelector": {"kubernetes.io/hostname": NODE},
    "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
def dns_node(cluster: LocalCluster) -> str:
    cluster.start_node_agent(NODE, cluster_dns=True, taints=[f"{TAINT_KEY}=true:NoSchedule"])
    return NODE


@pytest.fixture
def dns_operator(
    cluster: LocalCluster,
    operator_kubeconfig: Path,
    namespace: Namespace,
    tmp_path: Path,
    dns_node: str,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log")
    process.replica_host = None  # production addressing: DNS names, one port for all
    process.start()
    try:
        yield process
    finally:
        process.stop()


def replica(spec: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "restartPolicy": "Never",
        "template": {"spec": {"containers": [spec], **ON_DNS_NODE}},
    }


def dns_pod_log(cluster: LocalCluster, namespace: str, pod: str, name: str) -> str:
    path = Path(cluster.workdir) / "node-agents" / NODE / "pods" / namespace / pod / f"{name}.log"
    return path.read_text() if path.exists() else ""


def pod_env(cluster: LocalCluster, namespace: str, pod: str) -> dict[str, str]:
    spec = kubectl_json(cluster, "get", "pod", pod, "-n", namespace)["spec"]
    return {e["name"]: e.get("value", "") for e in spec["containers"][0].get("env") or []}


def pod_ip(cluster: LocalCluster, namespace: str, pod: str) -> str:
    return str(kubectl_json(cluster, "get", "pod", pod, "-n", namespace)["status"]["podIP"])


def test_pytorch_job_meets_at_the_masters_dns_name(
    cluster: LocalCluster, namespace: Namespace, dns_operator: OperatorProcess
) -> None:
    port = free_port()
    spec = container("pytorch", "torch", port, {"OMP_NUM_THREADS": "1"})
    create(
        cluster,
        namespace.name,
        "ddp",
        {
            "pytorchReplicaSpecs": {"Master": replica(spec), "Worker": replica(spec)},
            "runPolicy": {"cleanPodPolicy": "None"},  # keep the pods: their IPs are checked
        },
    )
    status = wait_finished(cluster, namespace.name, "ddp", timeout=240)
    logs = {
        pod: dns_pod_log(cluster, namespace.name, pod, "pytorch")
        for pod in ("ddp-master-0", "ddp-worker-0")
    }
    assert "Succeeded" in status["true"], (status, logs, dns_operator.log_tail())
    master_name = f"ddp-master-0.ddp.{namespace.name}.svc"
    env = pod_env(cluster, namespace.name, "ddp-worker-0")
    assert env["MASTER_ADDR"] == master_name
    assert env["MASTER_PORT"] == str(port)
    master_ip = pod_ip(cluster, namespace.name, "ddp-master-0")
    worker_ip = pod_ip(cluster, namespace.name, "ddp-worker-0")
    assert master_ip != worker_ip and "127.0.0.1" not in (master_ip, worker_ip)
    # Each rank resolved the master's name to the master pod's own address.
    for rank, pod in enumerate(("ddp-master-0", "ddp-worker-0")):
        assert f"rank {rank} of 2: all_reduce=3.0" in logs[pod], logs
        assert f"master={master_name} ({master_ip})" in logs[pod], logs


def test_tensorflow_workers_meet_at_their_dns_names_on_one_port(
    cluster: LocalCluster, namespace: Namespace, dns_operator: OperatorProcess
) -> None:
    port = free_port()
    create(
        cluster,
        namespace.name,
        "mwms",
        {
            "tfReplicaSpecs": {"Worker": replica(container("tensorflow", "tf-config", port), 2)},
            "runPolicy": {"cleanPodPolicy": "None"},
        },
    )
    status = wait_finished(cluster, namespace.name, "mwms", timeout=180)
    names = [f"mwms-worker-{i}.mwms.{namespace.name}.svc" for i in range(2)]
    logs = [dns_pod_log(cluster, namespace.name, f"mwms-worker-{i}", "tensorflow") for i in (0, 1)]
    assert "Succeeded" in status["true"], (status, logs, dns_operator.log_tail())
    tf_config = json.loads(pod_env(cluster, namespace.name, "mwms-worker-1")["TF_CONFIG"])
    assert tf_config["cluster"] == {"worker": [f"{name}:{port}" for name in names]}
    assert tf_config["task"] == {"type": "worker", "index": 1}

    def met(index: int) -> bool:
        ip = pod_ip(cluster, namespace.name, f"mwms-worker-{index}")
        log = dns_pod_log(cluster, namespace.name, f"mwms-worker-{index}", "tensorflow")
        # Listening on its own name's address, on the port both share, and heard the peer.
        return f"worker-{index} at {names[index]}:{port} ({ip}) heard from" in log

    wait_until(lambda: met(0) and met(1), 30, "both workers to meet their peer")


RESOLVE = """
import socket, sys
for name in sys.argv[1:]:
    try:
        print(name, socket.gethostbyname(name))
    except OSError:
        print(name, "unresolved")
print("hostname", socket.gethostname())
"""


def test_only_the_names_cluster_dns_serves_resolve(
    cluster: LocalCluster, namespace: Namespace, dns_node: str
) -> None:
    ns = namespace.name
    good = f"box.sub.{ns}.svc"
    wrong = [f"box.other.{ns}.svc", f"box.sub.{ns}-x.svc", f"ghost.sub.{ns}.svc"]
    names = [good, f"{good}.cluster.local", *wrong]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "box"},
        "spec": {
            "hostname": "box",
            "subdomain": "sub",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "none",
                    "command": [sys.executable, "-c", RESOLVE, *names],
                }
            ],
            **ON_DNS_NODE,
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict[str, Any] | None:
        status = kubectl_json(cluster, "get", "pod", "box", "-n", ns).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(finished, 60, "the resolving pod to finish")
    log = dns_pod_log(cluster, ns, "box", "main")
    assert status["phase"] == "Succeeded", log
    ip = status["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    lines = dict(line.split(" ", 1) for line in log.splitlines())
    assert lines[good] == ip and lines[f"{good}.cluster.local"] == ip, log
    assert all(lines[name] == "unresolved" for name in wrong), log
    assert lines["hostname"] == f"{good}.cluster.local", log
