"""Acceptance tests of the local control plane used by every Kubernetes test.

They prove that what the rest of the suite relies on is real: the kube-scheduler places pods by
resources, labels and taints; the API server validates CRDs and enforces RBAC; the
controller-manager garbage-collects; kwok makes pool nodes behave; the node agent really runs
pod commands and reports their exit codes; and several clusters can run side by side.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import k8s_unavailable_reason, skip_or_fail_k8s

from hypersweep.testing import (
    BUILD_COMMAND,
    DEFAULT_K8S_VERSION,
    NODE_AGENT_LABEL,
    POOL_LABEL,
    LocalCluster,
    NodeAgent,
    NodeAgentProcess,
    create_node_pool,
    expand_vars,
    find_binaries,
    wait_until,
)

from .conftest import TRIAL_CRD, TRIAL_CRD_GROUP

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

GPU_POOL = "gpu"
TPU_POOL = "tpu"
CPU_POOL = "cpu"


def core(api: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api)


def read_pod(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """A pod as plain JSON (camelCase, exactly as the API server returns it)."""
    raw = core(api).read_namespaced_pod(name, namespace, _preload_content=False)
    return dict(json.loads(raw.data))


def wait_for_phase(api: Any, namespace: str, name: str, phases: set[str]) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        pod = read_pod(api, namespace, name)
        return pod if pod["status"].get("phase") in phases else None

    pod = wait_until(reached, what=f"pod {name} to reach {sorted(phases)}")
    assert pod is not None
    return pod


def pod_body(
    name: str,
    command: list[str] | None = None,
    *,
    node_selector: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "example.invalid/trial:latest"}
    if command is not None:
        container["command"] = command
    if limits:
        container["resources"] = {"limits": limits, "requests": limits}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart_policy,
            "nodeSelector": node_selector or {},
            "tolerations": tolerations or [],
            "containers": [container],
        },
    }


# --------------------------------------------------------------------------------------------
# Without a cluster
# --------------------------------------------------------------------------------------------


def test_build_script_pins_the_harness_version() -> None:
    script = (REPO / "hack" / "k8s" / "build.sh").read_text()
    match = re.search(r'^KUBERNETES_VERSION="(v[0-9.]+)"', script, re.MULTILINE)
    assert match, "KUBERNETES_VERSION not found in hack/k8s/build.sh"
    assert match.group(1) == DEFAULT_K8S_VERSION


def test_find_binaries_explains_how_to_build(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    check = find_binaries(tmp_path)
    assert not check.ok
    assert "etcd" in check.found
    assert "kube-apiserver" in check.missing and "kwok" in check.missing
    assert BUILD_COMMAND in check.describe()


def test_expand_vars_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_vars("$(A)-$(B)", env) == "1-two"
    assert expand_vars("$(MISSING) $$(A) $$", env) == "$(MISSING) $(A) $"


def test_control_plane_binaries_available() -> None:
    """Fails (rather than skips) when HYPERSWEEP_REQUIRE_K8S=1 and the binaries are missing;
    when present, every Kubernetes binary runs and is the pinned version (a stale cache from an
    older build would otherwise test another Kubernetes than the one the suite names)."""
    reason = k8s_unavailable_reason()
    if reason is not None:
        skip_or_fail_k8s(reason)
    directory = find_binaries().directory
    for name, args in (
        ("kube-apiserver", ["--version"]),
        ("kube-controller-manager", ["--version"]),
        ("kube-scheduler", ["--version"]),
        ("kubectl", ["version", "--client"]),
    ):
        ran = subprocess.run(
            [str(directory / name), *args], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, (name, ran.stderr)
        assert DEFAULT_K8S_VERSION in ran.stdout, (name, ran.stdout)
    etcd = subprocess.run(
        [str(directory / "etcd"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert etcd.returncode == 0 and "etcd Version:" in etcd.stdout, etcd.stdout


# --------------------------------------------------------------------------------------------
# Scheduling on kwok node pools
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pools(k8s_api: Any) -> dict[str, list[str]]:
    """Three pools: plain CPU nodes, tainted GPU nodes and TPU nodes."""
    return {
        CPU_POOL: create_node_pool(k8s_api, CPU_POOL, 2, capacity={"cpu": "16"}),
        GPU_POOL: create_node_pool(
            k8s_api,
            GPU_POOL,
            2,
            labels={"accelerator": "nvidia-h100"},
            taints=["nvidia.com/gpu=present:NoSchedule"],
            capacity={"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "4"},
        ),
        TPU_POOL: create_node_pool(
            k8s_api, TPU_POOL, 1, capacity={"cpu": "96", "google.com/tpu": "8"}
        ),
    }


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_kubectl_lists_the_pools(k8s_cluster: LocalCluster, pools: dict[str, list[str]]) -> None:
    out = k8s_cluster.kubectl("get", "nodes", "-l", POOL_LABEL, "-o", "json").stdout
    nodes = {n["metadata"]["name"]: n for n in json.loads(out)["items"]}
    for pool, names in pools.items():
        for name in names:
            assert nodes[name]["metadata"]["labels"][POOL_LABEL] == pool
    assert nodes[pools[GPU_POOL][0]]["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert nodes[pools[TPU_POOL][0]]["status"]["allocatable"]["google.com/tpu"] == "8"
    table = k8s_cluster.kubectl("get", "nodes", "-L", POOL_LABEL).stdout
    assert re.search(rf"^{pools[GPU_POOL][0]}\s+Ready\b", table, re.MULTILINE), table


def test_gpu_pod_is_scheduled_on_the_gpu_pool_and_runs(
    k8s_api: Any, k8s_namespace: str, pools: dict[str, list[str]]
) -> None:
    body = pod_body(
        "gpu-trial",
        node_selector={POOL_LABEL: GPU_POOL},
        limits={"nvidia.com/gpu": "1", "cpu": "1"},
        tolerations=[GPU_TOLERATION],
    )
    core(k8s_api).create_namespaced_pod(k8s_namespace, body)
    pod = wait_for_phase(k8s_api, k8s_namespace, "gpu-trial", {"Running"})
    assert pod["spec"]["nodeName"] in pools[GPU_POOL]
    scheduled = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert scheduled["PodScheduled"] == "True"


def test_taints_keep_pods_without_toleration_off_the_gpu_pool(
    k8s_api: Any, k8s_namespace: str, pools: dict[str, list[str]]
) -> None:
    core(k8s_api).create_namespaced_pod(k8s_namespace, pod_body("cpu-trial"))
    pod = wait_for_phase(k8s_api, k8s_namespace, "cpu-trial", {"Running"})
    assert pod["spec"]["nodeName"] not in pools[GPU_POOL]


def test_pod_no_pool_can_fit_stays_pending_with_the_scheduler_reason(
    k8s_api: Any, k8s_namespace: str, pools: dict[str, list[str]]
) -> None:
    body = pod_body(
        "too-big",
        node_selector={POOL_LABEL: GPU_POOL},
        limits={"nvidia.com/gpu": "64"},
        tolerations=[GPU_TOLERATION],
    )
    core(k8s_api).create_namespaced_pod(k8s_namespace, body)

    def unschedulable() -> dict[str, Any] | None:
        pod = read_pod(k8s_api, k8s_namespace, "too-big")
        for cond in pod["status"].get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond["status"] == "False":
                return dict(cond)
        return None

    cond = wait_until(unschedulable, what="the scheduler to give up on the pod")
    assert cond is not None
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    pod = read_pod(k8s_api, k8s_namespace, "too-big")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


# --------------------------------------------------------------------------------------------
# API server and controller-manager
# --------------------------------------------------------------------------------------------

CRD_GROUP = TRIAL_CRD_GROUP


@pytest.fixture(scope="module")
def trial_crd(k8s_cluster: LocalCluster) -> str:
    """The test CRD ``Trial`` installed at cluster start; returns its plural."""
    name = TRIAL_CRD["metadata"]["name"]
    out = k8s_cluster.kubectl("get", "crd", name, "-o", "json").stdout
    conditions = {c["type"]: c["status"] for c in json.loads(out)["status"]["conditions"]}
    assert conditions["Established"] == "True"
    return str(TRIAL_CRD["spec"]["names"]["plural"])


def test_crds_can_be_installed_while_running(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    crd = copy.deepcopy(TRIAL_CRD)
    crd["metadata"]["name"] = f"notes.{CRD_GROUP}"
    crd["spec"]["names"] = {"plural": "notes", "singular": "note", "kind": "Note"}
    assert k8s_cluster.install_crds([crd]) == [f"notes.{CRD_GROUP}"]
    note = {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Note",
        "metadata": {"name": "n1", "namespace": k8s_namespace},
        "spec": {"learningRate": 1, "epochs": 2},
    }
    k8s_cluster.kubectl("create", "-f", "-", input=json.dumps(note))
    out = k8s_cluster.kubectl("get", "notes", "-n", k8s_namespace, "-o", "name").stdout
    assert out.strip() == f"note.{CRD_GROUP}/n1"


def test_crd_with_structural_schema_validates_objects(
    k8s_api: Any, k8s_namespace: str, trial_crd: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom: Any = client.CustomObjectsApi(k8s_api)

    def trial(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{CRD_GROUP}/v1",
            "kind": "Trial",
            "metadata": {"name": name},
            "spec": spec,
        }

    # A valid object is accepted.
    custom.create_namespaced_custom_object(
        CRD_GROUP, "v1", k8s_namespace, trial_crd, trial("ok", {"learningRate": 0.1})
    )
    # An invalid one is refused by the API server with 422, naming the field.
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(
            CRD_GROUP, "v1", k8s_namespace, trial_crd, trial("bad", {"learningRate": -1})
        )
    assert refused.value.status == 422
    assert "spec.learningRate" in str(refused.value.body)
    with pytest.raises(ApiException) as missing:
        custom.create_namespaced_custom_object(
            CRD_GROUP, "v1", k8s_namespace, trial_crd, trial("empty", {"epochs": 3})
        )
    assert missing.value.status == 422
    assert "spec.learningRate" in str(missing.value.body)


def test_garbage_collector_deletes_orphaned_dependents(
    k8s_cluster: LocalCluster, k8s_api: Any, k8s_namespace: str, trial_crd: str
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom: Any = client.CustomObjectsApi(k8s_api)
    owner = custom.create_namespaced_custom_object(
        CRD_GROUP,
        "v1",
        k8s_namespace,
        trial_crd,
        {
            "apiVersion": f"{CRD_GROUP}/v1",
            "kind": "Trial",
            "metadata": {"name": "owner"},
            "spec": {"learningRate": 0.5},
        },
    )
    owner_ref = {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Trial",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    api = core(k8s_api)
    for name in ("child-a", "child-b"):
        api.create_namespaced_config_map(
            k8s_namespace,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "ownerReferences": [owner_ref]},
                "data": {"k": "v"},
            },
        )
    # Foreground deletion only completes once the GC removed the blocking dependents.
    custom.delete_namespaced_custom_object(
        CRD_GROUP, "v1", k8s_namespace, trial_crd, "owner", propagation_policy="Foreground"
    )

    def gone(name: str) -> bool:
        try:
            api.read_namespaced_config_map(name, k8s_namespace)
        except ApiException as err:
            return err.status == 404
        return False

    wait_until(lambda: gone("child-a") and gone("child-b"), what="GC of the dependents")
    out = k8s_cluster.kubectl("get", f"trials.{CRD_GROUP}", "-n", k8s_namespace, "-o", "name")
    assert "owner" not in out.stdout


def test_rbac_is_enforced(k8s_cluster: LocalCluster, k8s_namespace: str) -> None:
    viewer = k8s_cluster.user_kubeconfig(f"viewer-{uuid.uuid4().hex[:6]}")
    denied = k8s_cluster.kubectl("get", "pods", "-n", k8s_namespace, kubeconfig=viewer, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    user = json.loads(viewer.read_text())["users"][0]["name"]
    k8s_cluster.kubectl(
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        f"--user={user}",
        "-n",
        k8s_namespace,
    )
    wait_until(
        lambda: (
            k8s_cluster.kubectl(
                "get", "pods", "-n", k8s_namespace, kubeconfig=viewer, check=False
            ).returncode
            == 0
        ),
        what="the role binding to take effect",
    )


# --------------------------------------------------------------------------------------------
# Node agent: pods that really run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_agent(k8s_cluster: LocalCluster) -> Iterator[NodeAgentProcess]:
    agent = k8s_cluster.start_node_agent("agent-0", labels={POOL_LABEL: "local"})
    yield agent


AGENT_SELECTOR = {NODE_AGENT_LABEL: "true"}


def test_node_agent_runs_a_pod_to_success(
    k8s_api: Any, k8s_namespace: str, node_agent: NodeAgentProcess, tmp_path: Path
) -> None:
    out = tmp_path / "result.txt"
    script = f'echo "$POD_NAME $POD_NAMESPACE $POD_IP $GREETING" > {out}'
    body = pod_body("writer", ["sh", "-c", script], node_selector=AGENT_SELECTOR)
    body["spec"]["containers"][0]["env"] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    core(k8s_api).create_namespaced_pod(k8s_namespace, body)
    pod = wait_for_phase(k8s_api, k8s_namespace, "writer", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == node_agent.node_name
    assert pod["status"]["podIP"] == "127.0.0.1"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert out.read_text().split() == ["writer", k8s_namespace, "127.0.0.1", "hello"]


def test_node_agent_reports_a_failing_exit_code(
    k8s_api: Any, k8s_namespace: str, node_agent: NodeAgentProcess
) -> None:
    body = pod_body("crasher", ["sh", "-c", "echo failing; exit 3"], node_selector=AGENT_SELECTOR)
    core(k8s_api).create_namespaced_pod(k8s_namespace, body)
    pod = wait_for_phase(k8s_api, k8s_namespace, "crasher", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    log = node_agent.container_log(k8s_namespace, "crasher", "main")
    assert log.read_text().strip() == "failing"


def test_node_agent_restarts_on_failure(
    k8s_api: Any, k8s_namespace: str, node_agent: NodeAgentProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "attempts"
    script = f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 2 ]"
    body = pod_body(
        "flaky", ["sh", "-c", script], node_selector=AGENT_SELECTOR, restart_policy="OnFailure"
    )
    core(k8s_api).create_namespaced_pod(k8s_namespace, body)
    pod = wait_for_phase(k8s_api, k8s_namespace, "flaky", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded"
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1


def test_node_agent_kills_the_process_of_a_deleted_pod(
    k8s_api: Any, k8s_namespace: str, node_agent: NodeAgentProcess, tmp_path: Path
) -> None:
    from kubernetes.client.exceptions import ApiException

    pid_file = tmp_path / "pid"
    body = pod_body(
        # "$$$$" reaches the shell as "$$": Kubernetes expands $(VAR) and "$$" escapes "$".
        "sleeper",
        ["sh", "-c", f"echo $$$$ > {pid_file}; exec sleep 300"],
        node_selector=AGENT_SELECTOR,
    )
    api = core(k8s_api)
    api.create_namespaced_pod(k8s_namespace, body)
    wait_for_phase(k8s_api, k8s_namespace, "sleeper", {"Running"})
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the pid file")
    pid = int(pid_file.read_text())
    api.delete_namespaced_pod("sleeper", k8s_namespace)

    def pod_gone() -> bool:
        try:
            api.read_namespaced_pod("sleeper", k8s_namespace)
        except ApiException as err:
            return err.status == 404
        return False

    wait_until(pod_gone, what="the pod to be removed")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_node_agent_runs_in_process(
    k8s_cluster: LocalCluster, k8s_namespace: str, tmp_path: Path
) -> None:
    name = "agent-inproc"
    api = k8s_cluster.api_client()
    with NodeAgent(api, name, workdir=tmp_path / "agent", labels={"inproc": "yes"}) as agent:
        body = pod_body("echo", ["echo", "$(GREETING)", "from", "$(HOSTNAME)"])
        body["spec"]["nodeSelector"] = {"inproc": "yes"}
        body["spec"]["tolerations"] = [{"operator": "Exists"}]  # before not-ready is lifted
        body["spec"]["containers"][0]["env"] = [{"name": "GREETING", "value": "hi"}]
        core(api).create_namespaced_pod(k8s_namespace, body)
        pod = wait_for_phase(api, k8s_namespace, "echo", {"Succeeded", "Failed"})
        assert pod["status"]["phase"] == "Succeeded"
        # $(HOSTNAME) is not a container variable: Kubernetes leaves it as written.
        log = agent.container_log(k8s_namespace, "echo", "main").read_text()
        assert log.strip() == "hi from $(HOSTNAME)"
    core(api).delete_node(name)


# --------------------------------------------------------------------------------------------
# Isolation
# --------------------------------------------------------------------------------------------


def test_two_clusters_run_at_once(k8s_cluster: LocalCluster, k8s_api: Any) -> None:
    with LocalCluster() as second:
        assert second.apiserver_port != k8s_cluster.apiserver_port
        assert second.workdir != k8s_cluster.workdir
        second.kubectl("create", "namespace", "only-in-second")
        first_ns = k8s_cluster.kubectl("get", "namespaces", "-o", "name").stdout
        second_ns = second.kubectl("get", "namespaces", "-o", "name").stdout
        assert "namespace/only-in-second" in second_ns
        assert "namespace/only-in-second" not in first_ns
        pids = second.pids
        assert len(pids) == 5  # etcd, apiserver, controller-manager, scheduler, kwok
        workdir = second.workdir
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()
    # The first cluster is unaffected.
    assert "default" in k8s_cluster.kubectl("get", "namespaces").stdout
