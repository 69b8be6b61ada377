"""Sweeps over GPU node pools: gang admission with the real kube-scheduler.

Pool nodes are of two kinds here. Trials that must *finish* run on node agents labelled and
tainted as pool nodes, with GPU capacity: their pods really run the objective and exit (kwok's
pods run forever, and a trial finishes by reporting its result, which only a real process
does). Scenarios that only need pods to be *placed* (partial gangs, waiting, refusals) use kwok
node pools, where many nodes cost nothing. Each test labels and taints its own nodes, so no
other test's pods land there.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hypersweep.kube._pools import (
    NODES,
    Pool,
    parse_policy,
    parse_pools,
    place,
    quantity,
)
from hypersweep.testing import LocalCluster, create_node_pool

from .conftest import (
    Namespace,
    OperatorProcess,
    free_port,
    kubectl_json,
    objective_command,
    wait_until,
)
from .test_operator_metrics import scrape

POOL_LABEL = "test.hypersweep.io/pool"
GPU = "nvidia.com/gpu"


# --- pure parts ----------------------------------------------------------------------------


def test_quantities_and_best_fit_bin_packing() -> None:
    assert quantity("100m") == 100
    assert quantity("2") == 2000
    assert quantity("1Gi") == 2**30 * 1000
    gpu = {GPU: 1000}
    # Four 1-GPU replicas: 3 + 1 free GPUs fit them, 2 + 1 do not.
    assert place([gpu] * 4, {"a": {GPU: 3000}, "b": {GPU: 1000}}) is not None
    assert place([gpu] * 4, {"a": {GPU: 2000}, "b": {GPU: 1000}}) is None
    # A replica must fit on one node: 2 GPUs each on four 1-GPU nodes does not fit.
    assert place([{GPU: 2000}], {n: {GPU: 1000} for n in "abcd"}) is None
    # Best fit keeps the emptier node whole for a later, bigger replica.
    placement = place([gpu], {"big": {GPU: 4000}, "small": {GPU: 1000}})
    assert placement == {"small": [0]}


# The names the gang schedulers document, written out here rather than imported from the
# implementation, so a typo there fails this test:
# Kueue, "Run a plain Pod group" (kueue.sigs.k8s.io/docs/tasks/run/plain_pods/);
# scheduler-plugins' coscheduling README (kubernetes-sigs/scheduler-plugins,
# pkg/coscheduling); Volcano's PodGroup (volcano.sh/en/docs/podgroup/).
KUEUE_DOCUMENTED_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_DOCUMENTED_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_DOCUMENTED_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
COSCHEDULING_DOCUMENTED_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_DOCUMENTED_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"


def test_scheduling_policies_render_kueue_and_podgroup_objects() -> None:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}
    kueue = parse_policy({"gang": "kueue", "queueName": "team-a"})
    pod = kueue.pod_template(template, "s-trial-0", 4)
    assert pod["metadata"]["labels"] == {
        "app": "x",
        KUEUE_DOCUMENTED_QUEUE_LABEL: "team-a",
        KUEUE_DOCUMENTED_GROUP_LABEL: "s-trial-0",
    }
    assert pod["metadata"]["annotations"] == {KUEUE_DOCUMENTED_GROUP_COUNT: "4"}
    assert kueue.job_labels() == {KUEUE_DOCUMENTED_QUEUE_LABEL: "team-a"}
    assert template == {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": []}}

    plugins = parse_policy({"gang": "podGroup", "scheduleTimeoutSeconds": 60})
    pod = plugins.pod_template(template, "s-trial-0", 4)
    assert pod["metadata"]["labels"] == {"app": "x", COSCHEDULING_DOCUMENTED_LABEL: "s-trial-0"}
    assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    group = plugins.pod_group({"name": "s-trial-0", "namespace": "ns"}, 4)
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1"
    assert group["kind"] == "PodGroup"
    assert group["metadata"]["name"] == "s-trial-0"
    assert group["spec"] == {"minMember": 4, "scheduleTimeoutSeconds": 60}

    volcano = parse_policy({"gang": "podGroup", "provider": "volcano", "queueName": "q"})
    pod = volcano.pod_template(template, "s-trial-0", 4)
    assert pod["metadata"]["annotations"] == {VOLCANO_DOCUMENTED_GROUP_ANNOTATION: "s-trial-0"}
    assert pod["spec"]["schedulerName"] == "volcano"
    group = volcano.pod_group({"name": "s-trial-0"}, 4)
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"] == {"minMember": 4, "queue": "q"}
    assert parse_policy(None).pod_template(template, "g", 4) == template


def test_pools_point_pods_at_the_pool() -> None:
    (pool,) = parse_pools(
        [
            {
                "name": "a100",
                "nodeSelector": {POOL_LABEL: "a100"},
                "accelerator": {"resource": GPU, "perReplica": 2},
                "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
            }
        ]
    )
    assert isinstance(pool, Pool)
    main: dict[str, Any] = {"name": "pytorch", "resources": {"requests": {"cpu": "1"}}}
    pod: dict[str, Any] = {"containers": [main], "nodeSelector": {"zone": "z"}}
    pool.apply(pod, main)
    assert pod["nodeSelector"] == {"zone": "z", POOL_LABEL: "a100"}
    assert pod["tolerations"][0]["key"] == GPU
    assert main["resources"] == {"requests": {"cpu": "1", GPU: "2"}, "limits": {GPU: "2"}}


# --- with the control plane ----------------------------------------------------------------


def gang_template(command: list[str], replicas: int = 4, env: dict[str, str] | None = None) -> Any:
    """A PyTorch trial of one master and ``replicas - 1`` workers, all running ``command``."""
    container: dict[str, Any] = {
        "name": "pytorch",
        "image": "hypersweep:test",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }

    def role(count: int) -> dict[str, Any]:
        return {"replicas": count, "template": {"spec": {"containers": [container]}}}

    specs = {"Master": role(1), "Worker": role(replicas - 1)}
    if replicas == 1:
        del specs["Worker"]
    return {"framework": "pytorch", "replicaSpecs": specs}


def pool(name: str, label: str, resource: str = GPU, per_replica: int = 1, weight: int = 1) -> Any:
    return {
        "name": name,
        "nodeSelector": {POOL_LABEL: label},
        "accelerator": {"resource": resource, "perReplica": per_replica},
        "tolerations": [{"key": POOL_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        "weight": weight,
    }


def apply_sweep(
    cluster: LocalCluster,
    namespace: Namespace,
    name: str,
    pools: list[Any],
    *,
    max_trials: int,
    parallelism: int,
    command: list[str],
    replicas: int = 4,
    gang: str = "builtin",
    max_failed: int | None = None,
) -> None:
    spec: dict[str, Any] = {
        "space": {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "loss", "mode": "min"},
        "strategy": {"name": "random", "settings": {"seed": 3}},
        "maxTrials": max_trials,
        "parallelism": parallelism,
        "trialTemplate": gang_template(
            command, replicas, {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)}
        ),
        "pools": pools,
        "schedulingPolicy": {"gang": gang},
    }
    if max_failed is not None:
        spec["maxFailedTrials"] = max_failed
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": spec,
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def status_of(cluster: LocalCluster, namespace: Namespace, name: str) -> dict[str, Any]:
    sweep = kubectl_json(cluster, "get", "sweep", name, "-n", namespace.name)
    status: dict[str, Any] = sweep.get("status") or {}
    status["by_type"] = {c["type"]: c for c in status.get("conditions") or []}
    return status


def finished(cluster: LocalCluster, namespace: Namespace, name: str) -> dict[str, Any] | None:
    status = status_of(cluster, namespace, name)
    for kind in ("Succeeded", "Failed"):
        if (status["by_type"].get(kind) or {}).get("status") == "True":
            return status
    return None


def pods_of(cluster: LocalCluster, namespace: Namespace) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl_json(cluster, "get", "pods", "-n", namespace.name)[
        "items"
    ]
    return items


def unschedulable(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def gangs(pods: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """TrainJob -> (pods bound to a node, pods not bound)."""
    out: dict[str, tuple[int, int]] = {}
    for pod in pods:
        job = pod["metadata"]["labels"].get("hypersweep.io/job-name", "")
        bound, waiting = out.get(job, (0, 0))
        if pod["spec"].get("nodeName"):
            bound += 1
        else:
            waiting += 1
        out[job] = (bound, waiting)
    return out


def events_of(cluster: LocalCluster, namespace: Namespace, reason: str) -> list[str]:
    items = kubectl_json(cluster, "get", "events", "-n", namespace.name)["items"]
    return [e.get("message", "") for e in items if e.get("reason") == reason]


class ObjectWatch:
    """Every event of a namespace's pods and Sweeps, from API watches (no sample is missed:
    a watch delivers each change; an error in the watching thread fails the test).

    ``pods`` holds each pod's conditions seen so far merged (a condition seen once stays),
    ``nodes`` the node each pod was bound to, ``queued`` every ``status.queuedTrials`` seen.
    """

    def __init__(self, cluster: LocalCluster, namespace: Namespace) -> None:
        from kubernetes import client

        self.namespace = namespace.name
        self.core = client.CoreV1Api(cluster.api_client())
        self.custom = client.CustomObjectsApi(cluster.api_client())
        self.pods: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, str] = {}
        self.queued: list[int] = [0]
        self.pod_order: list[str] = []  # pod names in the order they were created
        self.errors: list[BaseException] = []
        self._uids: set[str] = set()
        self.done = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(self._pods,), daemon=True),
            threading.Thread(target=self._run, args=(self._sweeps,), daemon=True),
        ]

    def __enter__(self) -> ObjectWatch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for thread in self.threads:
            thread.join(10)
        if self.errors:
            raise AssertionError(f"watching failed: {self.errors!r}")

    def _run(self, follow: Any) -> None:
        try:
            follow()
        except BaseException as error:  # noqa: BLE001 - reported by __exit__
            self.errors.append(error)

    def _stream(self, list_call: Any, *args: Any) -> Iterator[dict[str, Any]]:
        from kubernetes import watch

        version = ""
        while not self.done.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                list_call, *args, resource_version=version, timeout_seconds=2
            ):
                obj = event["object"]
                obj = obj if isinstance(obj, dict) else obj.to_dict()
                version = (obj.get("metadata") or {}).get("resource_version") or (
                    obj.get("metadata") or {}
                ).get("resourceVersion", version)
                yield obj
                if self.done.is_set():
                    stream.stop()

    def _pods(self) -> None:
        for pod in self._stream(self.core.list_namespaced_pod, self.namespace):
            name = pod["metadata"]["name"]
            uid = pod["metadata"]["uid"]
            if uid not in self._uids:
                self._uids.add(uid)
                self.pod_order.append(name)
            known = self.pods.setdefault(name, {"status": {"conditions": []}})
            for condition in (pod.get("status") or {}).get("conditions") or []:
                known["status"]["conditions"].append(condition)
            if (pod.get("spec") or {}).get("node_name"):
                self.nodes[name] = pod["spec"]["node_name"]

    def _sweeps(self) -> None:
        stream = self._stream(
            self.custom.list_namespaced_custom_object,
            "hypersweep.io",
            "v1alpha1",
            self.namespace,
            "sweeps",
        )
        for sweep in stream:
            self.queued.append(int((sweep.get("status") or {}).get("queuedTrials", 0)))


class PoolAgents:
    """Node agents a test starts as pool nodes (labelled and tainted as the pool)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.started: list[Any] = []

    def start(self, node: str, label: str, capacity: dict[str, str]) -> None:
        self.started.append(
            self.cluster.start_node_agent(
                node,
                labels={POOL_LABEL: label},
                capacity={"cpu": "16", "memory": "64Gi", **capacity},
                taints=[f"{POOL_LABEL}={label}:NoSchedule"],
            )
        )

    def close(self) -> None:
        for agent in self.started:
            agent.component.process.terminate()
            self.cluster.kubectl("delete", "node", agent.node_name, "--wait=false", check=False)


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[PoolAgents]:
    started = PoolAgents(cluster)
    yield started
    started.close()


@pytest.mark.k8s
def test_gang_admission_fills_three_pools_and_every_trial_finishes(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, agents: PoolAgents
) -> None:
    ns = namespace.name
    # a100: one node of 4 GPUs (one gang); h100: two nodes of 2 (one gang across both);
    # tpu: one node of 8 TPUs, 2 per replica (one gang). Three 4-replica trials at once.
    agents.start(f"{ns}-a100-0", f"{ns}-a100", {GPU: "4"})
    agents.start(f"{ns}-h100-0", f"{ns}-h100", {GPU: "2"})
    agents.start(f"{ns}-h100-1", f"{ns}-h100", {GPU: "2"})
    agents.start(f"{ns}-tpu-0", f"{ns}-tpu", {"google.com/tpu": "8"})
    pools = [
        pool("a100", f"{ns}-a100", weight=3),
        pool("h100", f"{ns}-h100", weight=2),
        pool("tpu", f"{ns}-tpu", "google.com/tpu", per_replica=2, weight=1),
    ]
    wait_count = ("hypersweep_operator_admission_wait_seconds_count", ())
    wait_1s = ("hypersweep_operator_admission_wait_seconds_bucket", (("le", "1.0"),))
    before = scrape(operator)
    with ObjectWatch(cluster, namespace) as seen:
        apply_sweep(
            cluster,
            namespace,
            "pools",
            pools,
            max_trials=6,
            parallelism=4,
            command=objective_command("learning_curve"),
        )
        status = wait_until(
            lambda: finished(cluster, namespace, "pools"), timeout=240, what="the sweep to finish"
        )
    assert status["trials"]["succeeded"] == 6, (status, operator.log_tail())
    assert status["by_type"]["Succeeded"]["status"] == "True"
    # Every pod of every gang passed through the watch (6 trials x 4 replicas), none waited.
    assert len(seen.pods) == 24, sorted(seen.pods)
    unschedulable_pods = sorted(n for n, pod in seen.pods.items() if unschedulable(pod))
    assert not unschedulable_pods, f"pods of partial gangs waited: {unschedulable_pods}"
    pools_used = {
        p for node in seen.nodes.values() for p in ("a100", "h100", "tpu") if f"-{p}-" in node
    }
    assert pools_used == {"a100", "h100", "tpu"}
    assert max(seen.queued) >= 1  # four at once asked for, three pools' worth of room
    assert status["queuedTrials"] == 0
    # The operator's admission wait histogram: one observation per admitted gang, and the
    # queued ones waited for a whole trial to end (well over a second).
    after = scrape(operator)
    assert after[wait_count] - before.get(wait_count, 0) >= 6
    assert after[wait_count] - after[wait_1s] > before.get(wait_count, 0) - before.get(wait_1s, 0)


@pytest.mark.k8s
def test_two_sweeps_racing_for_one_small_pool_both_finish(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, agents: PoolAgents
) -> None:
    ns = namespace.name
    agents.start(f"{ns}-small-0", f"{ns}-small", {GPU: "4"})  # room for one gang at a time
    pools = [pool("small", f"{ns}-small")]
    for name in ("first", "second"):
        apply_sweep(
            cluster,
            namespace,
            name,
            pools,
            max_trials=3,
            parallelism=2,
            command=objective_command("learning_curve"),
        )
    for name in ("first", "second"):
        status = wait_until(
            lambda name=name: finished(cluster, namespace, name),
            timeout=240,
            what=f"sweep {name} to finish",
        )
        assert status["trials"]["succeeded"] == 3, (name, status["trials"], operator.log_tail(200))
    jobs = kubectl_json(cluster, "get", "trainjobs", "-n", ns)["items"]
    created = sorted(
        (j["metadata"]["creationTimestamp"], j["metadata"]["labels"]["hypersweep.io/sweep"])
        for j in jobs
    )
    order = [sweep for _, sweep in created]
    # Turns, not one sweep first: the second sweep started before the first one's last trial.
    assert order.index("second") < len(order) - 1 - order[::-1].index("first"), order


@pytest.mark.k8s
def test_without_gang_admission_partial_gangs_deadlock_a_pool(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """Two 4-replica trials on 6 GPUs: without admission both start and some gang is left
    half placed; with admission one runs whole and the other waits, visible in the status."""
    ns = namespace.name
    api = cluster.api_client()
    for kind in ("none", "gang"):
        create_node_pool(
            api,
            f"{ns}-{kind}",
            3,
            labels={POOL_LABEL: f"{ns}-{kind}"},
            capacity={GPU: 2},
            taints=[f"{POOL_LABEL}={ns}-{kind}:NoSchedule"],
        )
        apply_sweep(
            cluster,
            namespace,
            kind,
            [pool("kwok", f"{ns}-{kind}")],
            max_trials=2,
            parallelism=2,
            command=["sleep", "3600"],
            gang=kind if kind == "none" else "builtin",
        )

    def sweep_gangs(sweep: str) -> dict[str, tuple[int, int]]:
        pods = [p for p in pods_of(cluster, namespace) if p["metadata"]["name"].startswith(sweep)]
        return gangs(pods)

    # No admission: 8 pods for 6 GPUs; the scheduler binds 6 and some trial is half placed.
    def deadlocked() -> bool:
        pods = [p for p in pods_of(cluster, namespace) if p["metadata"]["name"].startswith("none")]
        placed = sum(1 for p in pods if p["spec"].get("nodeName"))
        stuck = sum(1 for p in pods if unschedulable(p))
        return len(pods) == 8 and placed == 6 and stuck == 2

    wait_until(deadlocked, timeout=60, what="six pods placed and two unschedulable")
    time.sleep(2)
    partial = {job: g for job, g in sweep_gangs("none").items() if g[0] and g[1]}
    assert partial, sweep_gangs("none")  # a gang holding GPUs while it waits for the rest
    assert deadlocked()

    # Admission: one whole gang placed, the other trial queued with no pod at all.
    def one_queued() -> dict[str, Any] | None:
        status = status_of(cluster, namespace, "gang")
        placed = sweep_gangs("gang")
        whole = [g for g in placed.values() if g == (4, 0)]
        return (
            status if status.get("queuedTrials") == 1 and len(whole) == len(placed) == 1 else None
        )

    try:
        status = wait_until(one_queued, timeout=60, what="one gang placed and one queued")
    except AssertionError:
        raise AssertionError(
            f"{status_of(cluster, namespace, 'gang')}\n{sweep_gangs('gang')}\n"
            f"{operator.log_tail(80)}"
        ) from None
    queued = status["by_type"]["TrialsQueued"]
    assert queued["status"] == "True" and queued["reason"] == "InsufficientCapacity"
    assert "4 replicas x nvidia.com/gpu=1" in queued["message"]
    assert not any(
        unschedulable(p) for p in pods_of(cluster, namespace) if "gang" in p["metadata"]["name"]
    )
    assert wait_until(lambda: events_of(cluster, namespace, "TrialsQueued"), timeout=10)
    for name in ("none", "gang"):
        cluster.kubectl("delete", "sweep", name, "-n", ns, "--wait=false")


@pytest.mark.k8s
def test_admissions_room_follows_pod_events_as_a_recount_from_the_api_would(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    """Gang admission keeps each node's used room from pod events, not by recounting every
    pod on every pass. Pods listed before admission started (by an informer it shares), then
    pods bound, finished and deleted, pods without a job label and pods of another namespace
    leave it with the room a recount from the API finds; a reserved gang's own pods count once
    (by its reservation) until all are bound, then by their requests."""
    from hypersweep.kube._client import PODS, Kube
    from hypersweep.kube._informer import Informer
    from hypersweep.kube._names import JOB_NAME_LABEL
    from hypersweep.kube._pools import GangAdmission, GangRequest, pod_requests
    from hypersweep.testing import create_namespace

    ns = namespace.name
    label = f"{ns}-room"
    api = cluster.api_client()
    kube = Kube(api)
    nodes = create_node_pool(
        api,
        label,
        2,
        labels={POOL_LABEL: label},
        capacity={GPU: 4},
        taints=[f"{POOL_LABEL}={label}:NoSchedule"],
    )
    other_ns = create_namespace(api, f"{ns}-other")

    def make_pod(name: str, node: str, gpus: int, *, job: str = "", space: str = ns) -> None:
        labels = {JOB_NAME_LABEL: job} if job else {}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": space, "labels": labels},
            "spec": {
                "nodeName": node,
                "tolerations": [{"key": POOL_LABEL, "operator": "Exists"}],
                "containers": [
                    {
                        "name": "main",
                        "image": "example.invalid/trial",
                        "resources": {
                            "requests": {GPU: str(gpus), "cpu": "250m"},
                            "limits": {GPU: str(gpus)},  # an extended resource needs both
                        },
                    }
                ],
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def recount() -> dict[str, tuple[int, int]]:
        """Free GPUs and milli-CPUs per pool node, from every pod the API holds."""
        free = {}
        for node in nodes:
            allocatable = kubectl_json(cluster, "get", "node", node)["status"]["allocatable"]
            free[node] = (quantity(allocatable[GPU]), quantity(allocatable["cpu"]))
        for pod in kubectl_json(cluster, "get", "pods", "-A")["items"]:
            node = pod["spec"].get("nodeName")
            if node in free and pod["status"].get("phase") not in ("Succeeded", "Failed"):
                needs = pod["spec"]["containers"][0]["resources"]["requests"]
                gpus, cpu = free[node]
                free[node] = (gpus - quantity(needs[GPU]), cpu - quantity(needs["cpu"]))
        return free

    def found(admission: GangAdmission) -> dict[str, tuple[int, int]]:
        free = admission.free()
        return {node: (free[node][GPU], free[node]["cpu"]) for node in nodes}

    def agrees(admission: GangAdmission) -> bool:
        return found(admission) == recount()

    # Listed by the shared informer before admission watches anything.
    make_pod("early-a", nodes[0], 1, job="early")
    make_pod("early-b", nodes[1], 2, job="early")
    trial_pods = Informer(
        kube, PODS, namespace=ns, label_selector=JOB_NAME_LABEL, index=JOB_NAME_LABEL
    )
    trial_pods.start()
    assert trial_pods.wait_synced(30)
    wait_until(lambda: len(trial_pods.list()) == 2, what="the shared informer to list both")
    admission = GangAdmission(kube, nodes=Informer(kube, NODES), trial_pods=trial_pods)
    admission.nodes.start()
    try:
        admission.start()
        wait_until(lambda: agrees(admission), what="the room of the pods listed first")
        assert found(admission)[nodes[1]][0] == 2000  # 4 GPUs, 2 used

        make_pod("plain", nodes[0], 1)  # no job label
        make_pod("elsewhere", nodes[1], 1, space=other_ns)  # another namespace
        make_pod("late", nodes[0], 1, job="late")
        cluster.kubectl("delete", "pod", "early-b", "-n", ns, "--wait=false")
        cluster.kubectl(
            "patch", "pod", "late", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Succeeded"}}),
        )  # fmt: skip
        wait_until(
            lambda: agrees(admission) and found(admission)[nodes[1]][0] == 3000,
            what="the room after pods came, finished and went",
        )
        assert found(admission)[nodes[0]][0] == 2000  # early-a and plain; late finished

        # A gang admitted onto the pool holds its room by reservation until all its pods
        # are bound, then by the pods themselves: never both.
        the_pool = Pool(
            name="room",
            node_selector={POOL_LABEL: label},
            resource=GPU,
            per_replica=2,
            tolerations=({"key": POOL_LABEL, "operator": "Exists"},),
        )
        demand = pod_requests(
            {"containers": [{"resources": {"requests": {GPU: "2", "cpu": "250m"}}}]}
        )
        request = GangRequest(f"{ns}/gang", "test", (the_pool,), {"room": [demand, demand]})

        def pumped(done: Callable[[], bool]) -> Callable[[], bool]:
            return lambda: (admission.pump(), done())[1]

        admission.submit(request)
        wait_until(pumped(lambda: request.admitted is not None), what="the gang admitted")
        reserved = found(admission)
        assert sum(gpus for gpus, _ in reserved.values()) == 1000  # 5 free, 4 reserved
        placement = admission._reserved[request.key].per_node
        for index, (node, need) in enumerate(placement.items()):
            for replica in range(need[GPU] // 2000):
                make_pod(f"gang-{index}-{replica}", node, 2, job="gang")
        wait_until(lambda: agrees(admission), what="the gang's pods counted once")
        wait_until(
            pumped(lambda: request.key not in admission._reserved),
            what="the reservation released once its pods are bound",
        )
        assert agrees(admission) and found(admission) == reserved
    finally:
        admission.stop()
        admission.nodes.stop()
        trial_pods.stop()
        cluster.kubectl("delete", "namespace", other_ns, "--wait=false", check=False)
        cluster.kubectl("delete", "node", *nodes, "--wait=false", check=False)


@pytest.mark.k8s
def test_admission_looks_at_nodes_again_when_readiness_changes_not_at_heartbeats(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    """An admission pass keeps each pool's usable nodes from the passes before it, until a
    node changes its shape or its readiness: a node that stops being Ready takes no gang from
    the next pass, and takes gangs again once Ready. A heartbeat (a node status that only
    says the node is still there) starts no pass and lists no node again. (The node lifecycle
    controller taints a node that is not Ready within moments, which changes its shape too;
    readiness counts on its own for the moments before.)"""
    from hypersweep.kube._client import Kube
    from hypersweep.kube._informer import Informer
    from hypersweep.kube._pools import GangAdmission, GangRequest, is_ready, pod_requests

    label = f"{namespace.name}-ready"
    api = cluster.api_client()
    kube = Kube(api)
    # Nodes no simulated kubelet keeps (kwok would make a node Ready again at once): the
    # test alone says whether they are Ready.
    nodes = [f"{label}-{index}" for index in range(2)]
    for node in nodes:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
        body["metadata"]["labels"] = {POOL_LABEL: label}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        room = {GPU: "4", "cpu": "8", "pods": "110"}
        status = {"capacity": room, "allocatable": room, "conditions": []}
        cluster.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}),
        )  # fmt: skip
    # Tolerating every taint: the taint the node lifecycle controller adds to a node that is
    # not Ready must not be what keeps gangs away; readiness alone must.
    pool = Pool(
        name="ready",
        node_selector={POOL_LABEL: label},
        resource=GPU,
        per_replica=4,
        tolerations=({"operator": "Exists"},),
    )
    whole_node = pod_requests({"containers": [{"resources": {"requests": {GPU: "4"}}}]})

    def gang(name: str) -> GangRequest:
        return GangRequest(f"{namespace.name}/{name}", "test", (pool,), {"ready": [whole_node] * 2})

    def set_ready(node: str, status: str, heartbeat: str = "2026-12-01T00:00:00Z") -> None:
        ready = {"type": "Ready", "status": status, "reason": "Test", "message": ""}
        ready |= {"lastHeartbeatTime": heartbeat, "lastTransitionTime": "2026-12-01T00:00:00Z"}
        cluster.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"conditions": [ready]}}),
        )  # fmt: skip

    def seen(node: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        return lambda: (found := admission.nodes.get("", node)) is not None and check(found)

    admission = GangAdmission(kube, nodes=Informer(kube, NODES))
    admission.nodes.start()

    def pumped(done: Callable[[], bool]) -> Callable[[], bool]:
        return lambda: (admission.pump(), done())[1]

    try:
        for node in nodes:
            set_ready(node, "True")
        admission.start()
        first = gang("first")
        admission.submit(first)
        wait_until(pumped(lambda: first.admitted is not None), what="a gang on both nodes")
        admission.withdraw(first.key)

        # A heartbeat: the Ready condition's time moves, nothing else does.
        passes, version = admission._changes, admission._usable_version
        set_ready(nodes[1], "True", heartbeat="2030-01-01T00:00:00Z")
        wait_until(
            seen(nodes[1], lambda n: "2030" in json.dumps(n["status"]["conditions"])),
            what="the heartbeat seen",
        )
        assert (admission._changes, admission._usable_version) == (passes, version)

        set_ready(nodes[0], "False")
        wait_until(seen(nodes[0], lambda n: not is_ready(n)), what="the node seen not Ready")
        second = gang("second")
        admission.submit(second)
        wait_until(pumped(lambda: bool(second.reason)), what="a pass to try the second gang")
        assert second.admitted is None, "a gang was admitted onto a node that is not Ready"

        set_ready(nodes[0], "True")
        wait_until(pumped(lambda: second.admitted is not None), what="the gang admitted")
    finally:
        admission.stop()
        admission.nodes.stop()
        cluster.kubectl("delete", "node", *nodes, "--wait=false", check=False)


@pytest.mark.k8s
def test_a_trial_that_fits_no_pool_is_refused(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace.name
    create_node_pool(
        cluster.api_client(),
        f"{ns}-tiny",
        1,
        labels={POOL_LABEL: f"{ns}-tiny"},
        capacity={GPU: 4},
        taints=[f"{POOL_LABEL}={ns}-tiny:NoSchedule"],
    )
    # 4 replicas x 2 GPUs = 8 GPUs, on a pool of one 4-GPU node: never fits.
    apply_sweep(
        cluster,
        namespace,
        "huge",
        [pool("tiny", f"{ns}-tiny", per_replica=2)],
        max_trials=1,
        parallelism=1,
        command=["sleep", "3600"],
        max_failed=1,
    )
    status = wait_until(
        lambda: finished(cluster, namespace, "huge"), timeout=60, what="the sweep to end"
    )
    assert status["by_type"]["Failed"]["status"] == "True"
    assert status["trials"]["failed"] == 1
    refused = status["by_type"]["Unschedulable"]
    assert refused["reason"] == "NoPoolFits"
    assert "fits in no pool" in refused["message"]
    assert "tiny: 4 replicas x nvidia.com/gpu=2" in refused["message"]
    events = wait_until(lambda: events_of(cluster, namespace, "Unschedulable"), timeout=10)
    assert "fits in no pool" in events[0]
    assert not pods_of(cluster, namespace)


@pytest.mark.k8s
def test_a_lost_node_restarts_the_gang_from_its_checkpoint_on_other_capacity(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, agents: PoolAgents
) -> None:
    """A 2-replica trial on a pool of three 1-GPU nodes: the node of one replica is deleted
    (and its pod's processes die with it). The gang restarts, is admitted again onto the two
    nodes left, and resumes from its checkpoint. ``restartPolicy: ExitCode`` makes the proof
    sharp: the surviving replica's own failure (exit 1, its peer gone) would fail the trial;
    only the lost node restarts it."""
    ns = namespace.name
    for index in range(3):
        agents.start(f"{ns}-gpu-{index}", f"{ns}-gpu", {GPU: "1"})
    template = gang_template(
        objective_command("gang_steps"), 2, {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)}
    )
    port = free_port(span=2)
    for role in template["replicaSpecs"].values():
        role["restartPolicy"] = "ExitCode"
        role["template"]["spec"]["containers"][0]["ports"] = [
            {"name": "pytorchjob-port", "containerPort": port}
        ]
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "lost"},
        "spec": {
            "space": {
                "lr": {"type": "float", "low": 0.0, "high": 1.0},
                "steps": {"type": "constant", "value": 40},
                "pause": {"type": "constant", "value": 0.2},
            },
            "objective": {"metric": "loss", "mode": "min"},
            "maxTrials": 1,
            "parallelism": 1,
            "trialTemplate": template,
            "pools": [pool("gpu", f"{ns}-gpu")],
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    markers = namespace.markers / "trial-0.log"

    def worker_node() -> tuple[str, int] | None:
        if not markers.exists() or "start-rank0-step0" not in markers.read_text():
            return None
        pods = {p["metadata"]["name"]: p for p in pods_of(cluster, namespace)}
        worker = pods.get("lost-trial-0-worker-0")
        if worker is None or not worker["spec"].get("nodeName"):
            return None
        for status in worker["status"].get("containerStatuses") or []:
            if "running" in (status.get("state") or {}):
                pid = int(str(status["containerID"]).rsplit("/", 1)[-1])
                return worker["spec"]["nodeName"], pid
        return None

    node, pid = wait_until(worker_node, 120, "the worker replica running")
    # A few steps in: a checkpoint past step 2 (checkpoint-NNNNNN counts from 1).
    wait_until(
        lambda: any(
            number.isdigit() and int(number) >= 3
            for number in (
                p.name.rsplit("-", 1)[1] for p in namespace.data_dir.rglob("checkpoint-*")
            )
        ),
        60,
        "a checkpoint a few steps in",
    )
    # The node goes: its Node object, its agent (frozen, as a dead kubelet), its processes.
    lost_agent = next(a for a in agents.started if a.node_name == node)
    os.kill(lost_agent.component.process.pid, signal.SIGSTOP)
    try:
        cluster.kubectl("delete", "node", node, "--wait=false")
        job = wait_until(
            lambda: (
                (j := kubectl_json(cluster, "get", "trainjob", "lost-trial-0", "-n", ns))
                .get("status", {})
                .get("restartCount")
                == 1
                and j
            ),
            60,
            "the gang to restart",
        )
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.kill(lost_agent.component.process.pid, signal.SIGKILL)
    try:
        status = wait_until(
            lambda: finished(cluster, namespace, "lost"), 180, "the sweep to finish"
        )
    except AssertionError:
        job = kubectl_json(cluster, "get", "trainjob", "lost-trial-0", "-n", ns)
        pods = [
            (p["metadata"]["name"], p["spec"].get("nodeName"), p["status"])
            for p in pods_of(cluster, namespace)
        ]
        raise AssertionError(f"{job.get('status')}\n{pods}\n{operator.log_tail(150)}") from None
    assert status["trials"]["succeeded"] == 1, (status, operator.log_tail(150))
    job = kubectl_json(cluster, "get", "trainjob", "lost-trial-0", "-n", ns)
    assert job["status"]["restartCount"] == 1
    events = events_of(cluster, namespace, "Restarting")
    assert any(f"was lost with its node {node}" in e for e in events), events
    # The new gang ran on the two nodes left, and rank 0 resumed past step 0.
    starts = [line.split()[0] for line in markers.read_text().splitlines()]
    resumed = [s for s in starts if s.startswith("start-rank0-") and s != "start-rank0-step0"]
    assert resumed, starts
    assert all(p["spec"].get("nodeName") != node for p in pods_of(cluster, namespace))
