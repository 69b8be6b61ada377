"""Sweeps over GKE TPU slice pools: one trial is one whole multi-host slice.

Slices are node groups as GKE makes them: nodes labelled with the TPU accelerator type and
topology, sharing a ``cloud.google.com/gke-nodepool`` label per slice, tainted
``google.com/tpu=present:NoSchedule``, each with ``google.com/tpu`` = chips per host. Placement,
atomicity and node loss run on kwok nodes (the real API server and kube-scheduler place the
pods; kwok runs them without processes); the JAX gang that really meets its peers at their
JobSet host names runs on node agents with cluster DNS. No real TPU is involved: what that
leaves untested is listed in README ("TPU slices").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypersweep._errors import ConfigError
from hypersweep.kube._jobspec import JobSpec
from hypersweep.kube._pools import parse_pools
from hypersweep.kube._tpu import chips_per_host, parse_tpu
from hypersweep.operators._trainjob import Networking, decide, render_pod
from hypersweep.testing import LocalCluster, create_node_pool

from .conftest import HERE, Namespace, OperatorProcess, free_port, kubectl_json, wait_until
from .test_pools import events_of, finished, status_of

# GKE's names, written out here rather than imported from the implementation, so that a typo
# there fails these tests: GKE "Plan TPUs in GKE" (node labels and the google.com/tpu
# resource), JobSet's api/jobset/v1alpha2 (pod labels and annotations), the Indexed Job's
# completion index, and the variables of GKE multi-host TPU workloads.
ACCELERATOR = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY = "cloud.google.com/gke-tpu-topology"
NODE_POOL = "cloud.google.com/gke-nodepool"
TPU = "google.com/tpu"
JOBSET_LABELS = {
    "jobset.sigs.k8s.io/jobset-name",
    "jobset.sigs.k8s.io/replicatedjob-name",
    "jobset.sigs.k8s.io/job-index",
    "batch.kubernetes.io/job-completion-index",
}
V5E = "tpu-v5-lite-podslice"
TEST_LABEL = "test.hypersweep.io/tpu"
TPU_TAINT = f"{TPU}=present:NoSchedule"


# --- pure parts ----------------------------------------------------------------------------


def node(name: str, labels: dict[str, str], chips: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "status": {"capacity": {TPU: chips}}}


def test_a_tpu_pool_selects_gke_slices_and_requests_every_chip_of_a_host() -> None:
    (pool,) = parse_pools(
        [
            {
                "name": "v5e",
                "tpu": {"accelerator": V5E, "topology": "2x4"},
                "nodeSelector": {TEST_LABEL: "x"},
            }
        ]
    )
    assert pool.node_selector == {TEST_LABEL: "x", ACCELERATOR: V5E, TOPOLOGY: "2x4"}
    assert pool.resource == TPU
    v5e = {ACCELERATOR: V5E, TOPOLOGY: "2x4", TEST_LABEL: "x"}
    # Chips per host from the nodes' capacity: 4-chip hosts make a 2x4 slice 2 hosts, 8-chip
    # hosts 1; nodes the pool does not select do not count.
    nodes = [node("a", v5e, 4), node("b", {**v5e, TEST_LABEL: "other"}, 8)]
    resolved = pool.with_chips_per_host(nodes, "pools[0]")
    assert resolved.tpu is not None and resolved.tpu.hosts == 2
    assert resolved.per_replica == 4
    main: dict[str, Any] = {"name": "jax"}
    pod: dict[str, Any] = {"containers": [main]}
    resolved.apply(pod, main)
    assert main["resources"] == {"requests": {TPU: "4"}, "limits": {TPU: "4"}}
    assert pod["nodeSelector"] == {TEST_LABEL: "x", ACCELERATOR: V5E, TOPOLOGY: "2x4"}
    eight = pool.with_chips_per_host([node("c", v5e, 8)], "pools[0]")
    assert eight.tpu is not None and eight.tpu.hosts == 1
    # The pool's plain form (the TrainJob's pool annotation) reads back the same.
    assert parse_pools([resolved.to_dict()]) == (resolved,)


def test_chips_per_host_without_nodes_and_the_errors_name_the_field() -> None:
    shape = parse_tpu({"accelerator": "tpu-v4-podslice", "topology": "2x2x4"}, "pools[0].tpu")
    assert chips_per_host(shape, [], "pools[0].tpu") == 4  # GKE's table: 16 chips, 4 hosts
    single = parse_tpu({"accelerator": V5E, "topology": "1x1"}, "pools[0].tpu")
    assert chips_per_host(single, [], "pools[0].tpu") == 1  # no more than the topology has
    unknown = parse_tpu({"accelerator": "tpu-v9", "topology": "2x2"}, "pools[0].tpu")
    with pytest.raises(ConfigError, match=r"pools\[0\]\.tpu\.chipsPerHost: no node"):
        chips_per_host(unknown, [], "pools[0].tpu")
    labels = {ACCELERATOR: V5E, TOPOLOGY: "2x4"}
    mixed = [node("a", labels, 4), node("b", labels, 8)]
    v5e = parse_tpu({"accelerator": V5E, "topology": "2x4"}, "t")
    with pytest.raises(ConfigError, match=r"t\.chipsPerHost: nodes of .* have \[4, 8\]"):
        chips_per_host(v5e, mixed, "t")
    bad_topology = {"name": "b", "tpu": {"accelerator": V5E, "topology": "2by4"}}
    with pytest.raises(ConfigError, match=r"pools\[1\]\.tpu\.topology: give the chip topology"):
        parse_pools([{"name": "a", "nodeSelector": {"a": "b"}}, bad_topology])
    with pytest.raises(ConfigError, match=r"pools\[0\]\.accelerator: a tpu pool"):
        parse_pools(
            [
                {
                    "name": "a",
                    "tpu": {"accelerator": V5E, "topology": "2x4"},
                    "accelerator": {"resource": TPU},
                }
            ]
        )


def jax_spec(replicas: int, command: list[str], port: int = 8476) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "jax",
        "image": "hypersweep:test",
        "command": command,
        "ports": [{"name": "jaxjob-port", "containerPort": port}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }
    worker = {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {"spec": {"containers": [container]}},
    }
    return {"jaxReplicaSpecs": {"Worker": worker}}


def test_a_slice_host_pod_gets_jobset_names_and_the_tpu_worker_variables() -> None:
    spec = JobSpec.from_spec(jax_spec(2, ["run"]))
    job = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": "s-trial-3",
            "namespace": "ns",
            "uid": "u",
            "annotations": {"hypersweep.io/tpu-slice": "slice-b"},
        },
    }
    hosts = ["s-trial-3-worker-0-0.s-trial-3.ns.svc", "s-trial-3-worker-0-1.s-trial-3.ns.svc"]
    for replica in spec.replicas():
        pod = render_pod(job, spec, replica, 2, Networking())
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert env["TPU_WORKER_ID"] == str(replica.rank) == env["JAX_PROCESS_ID"]
        assert env["TPU_WORKER_HOSTNAMES"] == ",".join(hosts)
        assert env["JAX_COORDINATOR_ADDRESS"] == f"{hosts[0]}:8476"
        assert env["JAX_NUM_PROCESSES"] == "2"
        assert pod["spec"]["hostname"] == f"s-trial-3-worker-0-{replica.index}"
        assert pod["spec"]["subdomain"] == "s-trial-3"
        assert pod["spec"]["nodeSelector"][NODE_POOL] == "slice-b"
        for kind in ("labels", "annotations"):
            assert set(pod["metadata"][kind]) >= JOBSET_LABELS
        labels = pod["metadata"]["labels"]
        assert labels["jobset.sigs.k8s.io/jobset-name"] == "s-trial-3"
        assert labels["jobset.sigs.k8s.io/replicatedjob-name"] == "worker"
        assert labels["jobset.sigs.k8s.io/job-index"] == "0"
        assert labels["jobset.sigs.k8s.io/replicatedjob-replicas"] == "1"
        assert labels["jobset.sigs.k8s.io/restart-attempt"] == "2"
        assert labels["batch.kubernetes.io/job-completion-index"] == str(replica.index)
    # A job on no slice keeps Kubeflow's names and no TPU variables.
    job["metadata"]["annotations"] = {}
    plain = render_pod(job, spec, spec.replicas()[1], 0, Networking())
    assert plain["spec"]["hostname"] == "s-trial-3-worker-1"
    assert "TPU_WORKER_ID" not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}


def test_a_slice_replica_on_a_not_ready_node_is_lost_and_its_pod_force_deleted() -> None:
    """The controller's decision, without a cluster: on a TPU slice a replica whose node is
    NotReady is lost (one restart, at once) and its pod is force-deleted; a job on no slice
    leaves such a pod to the node lifecycle controller."""
    spec = JobSpec.from_spec(jax_spec(2, ["run"]))
    meta = {"name": "t", "namespace": "ns", "uid": "u", "generation": 1}
    job: dict[str, Any] = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {**meta, "annotations": {"hypersweep.io/tpu-slice": "slice-a"}},
        "status": {"conditions": [{"type": "Running", "status": "True"}], "restartCount": 0},
    }

    def pod(index: int, node_name: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": f"t-worker-{index}",
                "uid": f"p{index}",
                "labels": {"hypersweep.io/restart-count": "0"},
                "ownerReferences": [{"uid": "u"}],
            },
            "spec": {"nodeName": node_name},
            "status": {"phase": "Running"},
        }

    pods = [pod(0, "a-0"), pod(1, "a-1")]
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    nodes = {"a-0", "a-1"}
    plan = decide(job, spec, pods, [], now, nodes=nodes, unready={"a-1"})
    assert plan.status["restartCount"] == 1
    assert [p["metadata"]["name"] for p in plan.force_delete_pods] == ["t-worker-1"]
    assert any("was lost with its node a-1 (NotReady" in e[2] for e in plan.events), plan.events
    restarting = next(c for c in plan.status["conditions"] if c["type"] == "Restarting")
    assert restarting["reason"] == "ReplicaLost"
    # All Ready: nothing happens; and a job on no slice waits for the node lifecycle controller.
    assert decide(job, spec, pods, [], now, nodes=nodes).status["restartCount"] == 0
    plain = {**job, "metadata": meta}
    plan = decide(plain, spec, pods, [], now, nodes=nodes, unready={"a-1"})
    assert plan.status["restartCount"] == 0 and not plan.force_delete_pods


# --- on kwok slices ------------------------------------------------------------------------


def slice_nodes(
    cluster: LocalCluster, ns: str, name: str, hosts: int = 2, chips: int = 4
) -> list[str]:
    """One v5e 2x4 slice of ``hosts`` kwok nodes: a GKE node pool of its own."""
    return create_node_pool(
        cluster.api_client(),
        f"{ns}-{name}",
        hosts,
        labels={ACCELERATOR: V5E, TOPOLOGY: "2x4", NODE_POOL: f"{ns}-{name}", TEST_LABEL: ns},
        capacity={TPU: chips},
        taints=[TPU_TAINT],
    )


def tpu_pool(ns: str) -> dict[str, Any]:
    return {
        "name": "v5e",
        "tpu": {"accelerator": V5E, "topology": "2x4"},
        "nodeSelector": {TEST_LABEL: ns},
        "tolerations": [{"key": TPU, "operator": "Exists", "effect": "NoSchedule"}],
    }


def apply_sweep(
    cluster: LocalCluster, namespace: Namespace, name: str, template: dict[str, Any], **spec: Any
) -> None:
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "mode": "min"},
            "maxTrials": 1,
            "parallelism": 1,
            "trialTemplate": template,
            "pools": [tpu_pool(namespace.name)],
            **spec,
        },
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def hold_host(cluster: LocalCluster, ns: str, node_name: str) -> str:
    """A pod of someone else's that takes every TPU chip of one host."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"hold-{node_name}"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "tolerations": [{"key": TPU, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "hold",
                    "image": "none",
                    "resources": {"requests": {TPU: "4"}, "limits": {TPU: "4"}},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    wait_until(
        lambda: kubectl_json(cluster, "get", "pod", pod["metadata"]["name"], "-n", ns)["spec"].get(
            "nodeName"
        ),
        60,
        f"the pod holding {node_name} to be placed",
    )
    return str(pod["metadata"]["name"])


def trial_pods(cluster: LocalCluster, ns: str, restart: int | None = None) -> list[dict[str, Any]]:
    selector = "hypersweep.io/job-name"
    if restart is not None:
        selector += f",hypersweep.io/restart-count={restart}"
    items: list[dict[str, Any]] = kubectl_json(cluster, "get", "pods", "-n", ns, "-l", selector)[
        "items"
    ]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def bound(pods: list[dict[str, Any]], count: int) -> list[dict[str, Any]] | None:
    placed = [p for p in pods if p["spec"].get("nodeName")]
    return placed if len(pods) == count == len(placed) else None


@pytest.mark.k8s
def test_a_slice_trial_starts_whole_on_one_slice_or_not_at_all(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """Two 2-host slices with one host of each taken: three hosts are free, but no slice is
    whole, so the trial waits with no pod at all (it would otherwise span two slices, or hold
    half a slice). Once slice b is whole again, both hosts start there together."""
    ns = namespace.name
    a = slice_nodes(cluster, ns, "a")
    b = slice_nodes(cluster, ns, "b")
    hold_host(cluster, ns, a[0])
    holder_b = hold_host(cluster, ns, b[1])
    apply_sweep(cluster, namespace, "tpu", jax_spec(2, ["sleep", "3600"]))

    def queued() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, "tpu")
        return status if status.get("queuedTrials") == 1 else None

    status = wait_until(queued, 60, "the trial to wait for a whole slice")
    assert status["by_type"]["TrialsQueued"]["reason"] == "InsufficientCapacity"
    assert "2 replicas x google.com/tpu=4" in status["by_type"]["TrialsQueued"]["message"]
    assert trial_pods(cluster, ns) == []
    assert kubectl_json(cluster, "get", "trainjobs", "-n", ns)["items"] == []

    cluster.kubectl("delete", "pod", holder_b, "-n", ns, "--wait=false")
    pods = wait_until(lambda: bound(trial_pods(cluster, ns), 2), 60, "the slice's two hosts")
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(b), "not all on slice b"
    job_name = "tpu-trial-0"
    job = kubectl_json(cluster, "get", "trainjob", job_name, "-n", ns)
    assert job["metadata"]["annotations"]["hypersweep.io/tpu-slice"] == f"{ns}-b"
    hosts = [f"{job_name}-worker-0-{i}.{job_name}.{ns}.svc" for i in range(2)]
    for pod in pods:
        index = int(pod["metadata"]["labels"]["hypersweep.io/replica-index"])
        spec = pod["spec"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["TPU_WORKER_ID"] == str(index) == env["JAX_PROCESS_ID"]
        assert env["TPU_WORKER_HOSTNAMES"] == ",".join(hosts)
        assert env["JAX_NUM_PROCESSES"] == "2" and "JAX_COORDINATOR_ADDRESS" in env
        assert spec["hostname"] == f"{job_name}-worker-0-{index}"
        assert spec["subdomain"] == job_name
        assert spec["nodeSelector"][NODE_POOL] == f"{ns}-b"
        assert spec["nodeSelector"][ACCELERATOR] == V5E
        assert spec["nodeSelector"][TOPOLOGY] == "2x4"
        assert spec["containers"][0]["resources"]["limits"][TPU] == "4"
        labels = pod["metadata"]["labels"]
        assert labels["jobset.sigs.k8s.io/jobset-name"] == job_name
        assert labels["batch.kubernetes.io/job-completion-index"] == str(index)
        assert set(pod["metadata"]["annotations"]) >= JOBSET_LABELS
    service = kubectl_json(cluster, "get", "service", job_name, "-n", ns)
    assert service["spec"]["clusterIP"] == "None"  # the subdomain that makes the names resolve
    cluster.kubectl("delete", "sweep", "tpu", "-n", ns, "--wait=false")


def counts_with_the_trial_running(
    cluster: LocalCluster, namespace: Namespace, name: str
) -> dict[str, Any]:
    """The Sweep's status once its counts (written at most every 2 s while they change) show
    its trial running."""
    return wait_until(
        lambda: (s := status_of(cluster, namespace, name)).get("trials", {}).get("running") and s,
        30,
        f"sweep {name}'s counts to show its trial running",
    )


@pytest.mark.k8s
def test_a_lost_host_restarts_the_whole_slice_on_another_slice(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """A host of the trial's slice is deleted: the gang restarts (a counted restart), every
    pod of the old start goes, and the new start is admitted whole onto the other slice (the
    broken one has a single host left)."""
    ns = namespace.name
    slices = {f"{ns}-a": slice_nodes(cluster, ns, "a"), f"{ns}-b": slice_nodes(cluster, ns, "b")}
    apply_sweep(cluster, namespace, "lost", jax_spec(2, ["sleep", "3600"]))
    first = wait_until(lambda: bound(trial_pods(cluster, ns, 0), 2), 60, "the first start")
    used = {p["spec"]["nodeSelector"][NODE_POOL] for p in first}
    assert len(used) == 1
    (old,) = used
    assert {p["spec"]["nodeName"] for p in first} == set(slices[old])
    (other,) = set(slices) - {old}
    lost = first[0]["spec"]["nodeName"]
    cluster.kubectl("delete", "node", lost, "--wait=false")

    second = wait_until(lambda: bound(trial_pods(cluster, ns, 1), 2), 90, "the restarted slice")
    assert {p["spec"]["nodeName"] for p in second} == set(slices[other])
    assert {p["spec"]["nodeSelector"][NODE_POOL] for p in second} == {other}
    assert all(p["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"] == "1" for p in second)
    wait_until(lambda: not trial_pods(cluster, ns, 0), 60, "the old start's pods to go")
    job = kubectl_json(cluster, "get", "trainjob", "lost-trial-0", "-n", ns)
    assert job["status"]["restartCount"] == 1
    events = events_of(cluster, namespace, "Restarting")
    assert any(f"was lost with its node {lost}" in e for e in events), events
    status = counts_with_the_trial_running(cluster, namespace, "lost")
    assert not status["trials"].get("failed"), status["trials"]
    cluster.kubectl("delete", "sweep", "lost", "-n", ns, "--wait=false")


@pytest.mark.k8s
def test_a_host_that_goes_not_ready_restarts_the_whole_slice_on_another_slice(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """A host of the trial's slice stops heartbeating (its node agent is frozen, as a hung
    kubelet; the node object stays): once the node lifecycle controller marks it NotReady,
    the gang restarts once, whole, on the other slice, and the pod left on the silent host
    goes at once instead of staying Terminating (its name is the new start's), well before
    the 300 s default taint eviction."""
    ns = namespace.name
    labels = {ACCELERATOR: V5E, TOPOLOGY: "2x4", NODE_POOL: f"{ns}-a", TEST_LABEL: ns}
    # Slice a: node agents (a kwok node heartbeats as long as kwok runs); slice b: kwok.
    agents = [
        cluster.start_node_agent(
            f"{ns}-a-{i}",
            labels=labels,
            capacity={"cpu": "16", "memory": "64Gi", TPU: "4"},
            taints=[TPU_TAINT],
        )
        for i in range(2)
    ]
    frozen: list[int] = []
    try:
        b = slice_nodes(cluster, ns, "b")
        holder = hold_host(cluster, ns, b[0])  # slice b is not whole: the trial starts on a
        apply_sweep(cluster, namespace, "silent", jax_spec(2, ["sleep", "3600"]))

        def running() -> list[dict[str, Any]] | None:
            pods = bound(trial_pods(cluster, ns, 0), 2)
            if pods is None:
                return None
            statuses = [(p["status"].get("containerStatuses") or [{}])[0] for p in pods]
            return pods if all("running" in (s.get("state") or {}) for s in statuses) else None

        first = wait_until(running, 120, "the first start running on slice a")
        assert {p["spec"]["nodeName"] for p in first} == {a.node_name for a in agents}
        cluster.kubectl("delete", "pod", holder, "-n", ns, "--wait=false")
        wait_until(
            lambda: (
                not kubectl_json(cluster, "get", "pods", "-n", ns, "-l", "!hypersweep.io/job-name")[
                    "items"
                ]
            ),
            60,
            "slice b to be whole again",
        )
        victim = first[0]
        silent = victim["spec"]["nodeName"]
        agent = next(a for a in agents if a.node_name == silent)
        container_id = str(victim["status"]["containerStatuses"][0]["containerID"])
        pid = int(container_id.rsplit("/", 1)[-1])
        os.kill(agent.component.process.pid, signal.SIGSTOP)  # no more heartbeats
        frozen.append(agent.component.process.pid)

        def not_ready() -> bool:
            node = kubectl_json(cluster, "get", "node", silent)
            conditions = node.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] != "True" for c in conditions)

        # The node monitor grace period (40-50 s) plus a loaded machine's delays.
        wait_until(not_ready, 240, f"node {silent} to turn NotReady")
        second = wait_until(
            lambda: bound(trial_pods(cluster, ns, 1), 2), 120, "the restarted slice"
        )
        assert {p["spec"]["nodeName"] for p in second} == set(b)
        assert {p["spec"]["nodeSelector"][NODE_POOL] for p in second} == {f"{ns}-b"}
        assert all(
            p["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"] == "1" for p in second
        )
        # Nothing of the first start is left, not even Terminating on the silent host.
        wait_until(
            lambda: (
                not kubectl_json(
                    cluster, "get", "pods", "-n", ns, "-l", "hypersweep.io/restart-count=0"
                )["items"]
            ),
            60,
            "the first start's pods to go",
        )
        assert kubectl_json(cluster, "get", "node", silent)["metadata"]["name"] == silent
        job = kubectl_json(cluster, "get", "trainjob", "silent-trial-0", "-n", ns)
        assert job["status"]["restartCount"] == 1
        events = events_of(cluster, namespace, "Restarting")
        assert any(f"was lost with its node {silent} (NotReady" in e for e in events), events
        status = counts_with_the_trial_running(cluster, namespace, "silent")
        assert not status["trials"].get("failed"), status["trials"]
        cluster.kubectl("delete", "sweep", "silent", "-n", ns, "--wait=false")
    finally:
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the silent host's process: no agent stops it
        for started in agents:
            process = started.component.process
            # A running agent stops its pods' processes on SIGTERM; the frozen one cannot.
            if process.pid in frozen:
                process.kill()
            else:
                process.terminate()
            process.wait(30)
            cluster.kubectl("delete", "node", started.node_name, "--wait=false", check=False)


@pytest.mark.k8s
def test_a_gang_that_is_not_one_replica_per_host_is_refused(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace.name
    slice_nodes(cluster, ns, "a")  # 4 chips per host: a 2x4 slice is 2 hosts
    apply_sweep(cluster, namespace, "wrong", jax_spec(4, ["sleep", "3600"]))
    status = wait_until(lambda: finished(cluster, namespace, "wrong"), 60, "the sweep to fail")
    failed = status["by_type"]["Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert "jaxReplicaSpecs.Worker.replicas" in failed["message"]
    assert "8 chips / 4 chips per host = 2 replicas, got 4" in failed["message"]
    # A slice is placed by the built-in admission only.
    apply_sweep(
        cluster,
        namespace,
        "ungated",
        jax_spec(2, ["sleep", "3600"]),
        schedulingPolicy={"gang": "none"},
    )
    status = wait_until(lambda: finished(cluster, namespace, "ungated"), 60, "the sweep to fail")
    failed = status["by_type"]["Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert "scheduling_policy.gang: pool v5e is a TPU slice pool" in failed["message"]
    assert trial_pods(cluster, ns) == []
    assert kubectl_json(cluster, "get", "trainjobs", "-n", ns)["items"] == []


# --- a real JAX gang on a slice of node agents -----------------------------------------------


@pytest.fixture
def dns_operator(
    cluster: LocalCluster, operator_kubeconfig: Path, namespace: Namespace, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log")
    process.replica_host = None  # production addressing: replicas meet at their DNS names
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.k8s
def test_a_jax_gang_meets_at_its_jobset_host_names_on_a_slice(
    cluster: LocalCluster, namespace: Namespace, dns_operator: OperatorProcess
) -> None:
    """Two node agents form a 2-host slice; the trial's two processes check TPU_WORKER_ID and
    TPU_WORKER_HOSTNAMES against JAX and against their own host names, and exchange their host
    names through JAX's coordinator at process 0's JobSet name (cluster DNS, no shared
    address)."""
    ns = namespace.name
    labels = {ACCELERATOR: V5E, TOPOLOGY: "2x4", NODE_POOL: f"{ns}-agents", TEST_LABEL: ns}
    agents = [
        cluster.start_node_agent(
            f"{ns}-host-{i}",
            labels=labels,
            capacity={"cpu": "16", "memory": "64Gi", TPU: "4"},
            taints=[TPU_TAINT],
            cluster_dns=True,
        )
        for i in range(2)
    ]
    try:
        command = [
            sys.executable,
            "-m",
            "hypersweep.operators.trial_entrypoint",
            f"{HERE / 'tpu_objectives.py'}:slice_host",
        ]
        template = jax_spec(2, command, free_port())
        container = template["jaxReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        container["resources"] = {"requests": {"cpu": "100m"}, "limits": {"memory": "2Gi"}}
        container["env"] = [{"name": "OMP_NUM_THREADS", "value": "1"}]
        apply_sweep(
            cluster,
            namespace,
            "jax",
            template,
            space={
                "lr": {"type": "float", "low": 0.0, "high": 1.0},
                "x": {"type": "constant", "value": 10.0},
            },
        )
        status = wait_until(lambda: finished(cluster, namespace, "jax"), 240, "the sweep to end")
        logs = {
            path.parent.name: path.read_text()
            for agent in agents
            for path in (Path(cluster.workdir) / "node-agents" / agent.node_name).rglob("jax.log")
        }
        trials = status.get("trials") or {}
        tails = "\n".join(f"--- {pod}:\n{log[-3000:]}" for pod, log in sorted(logs.items()))
        assert trials.get("succeeded") == 1, f"{status}\n{tails}\n{dns_operator.log_tail(40)}"
        assert status["bestTrial"]["value"] == 2 + 10.0  # both hosts met at the coordinator
        for index in range(2):
            pod = f"jax-trial-0-worker-{index}"
            assert f"host {index} of 2: jax-trial-0-worker-0-{index}." in logs[pod], logs
            assert ": ok" in logs[pod], logs
    finally:
        for agent in agents:
            agent.component.process.terminate()
            cluster.kubectl("delete", "node", agent.node_name, "--wait=false", check=False)
