"""Gangs handed to a real gang scheduler: the coscheduling plugin of scheduler-plugins, built
from the Go module proxy by ``hack/gang/build.sh`` and run as the cluster's second scheduler,
and kube-scheduler's own gang scheduling of the upstream Workload API (``gang: workload``).

Two ``podGroup`` Sweeps compete for a pool with room for one 4-replica gang (three kwok nodes
of 2 GPUs): the operator creates one PodGroup (``minMember: 4``) per trial and hands the pods to
``scheduler-plugins-scheduler``, which binds a gang whole or not at all. Without a gang
scheduler the same pool ends with partial gangs holding GPUs (test_pools.py,
``test_without_gang_admission_partial_gangs_deadlock_a_pool``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import skip_or_fail_k8s

from hypersweep._errors import ConfigError
from hypersweep.kube._client import Kube
from hypersweep.kube._pools import check_served, parse_policy
from hypersweep.testing import (
    COSCHEDULER_NAME,
    GANG_BUILD_COMMAND,
    Coscheduler,
    LocalCluster,
    create_node_pool,
    missing_gang_binaries,
    start_coscheduler,
)

from .conftest import Namespace, OperatorProcess, kubectl_json, wait_until
from .test_pools import GPU, POOL_LABEL, ObjectWatch, apply_sweep, gangs, pods_of, pool

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def coscheduler(cluster: LocalCluster) -> Iterator[Coscheduler]:
    missing = missing_gang_binaries()
    if missing:
        reason = f"gang schedulers not built ({', '.join(missing)}): run {GANG_BUILD_COMMAND}"
        skip_or_fail_k8s(reason)
    yield start_coscheduler(cluster)


def by_sweep(pods: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Sweep -> TrainJob -> (pods bound, pods waiting)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for job, counts in gangs(pods).items():
        sweep = next(
            p["metadata"]["labels"]["hypersweep.io/sweep"]
            for p in pods
            if p["metadata"]["labels"].get("hypersweep.io/job-name") == job
        )
        out.setdefault(sweep, {})[job] = counts
    return out


def compete_for_one_gangs_room(
    cluster: LocalCluster,
    namespace: Namespace,
    gang: str,
    logs: Callable[[], str],
    check_gang: Callable[[str], None],
) -> tuple[str, str]:
    """Two ``gang`` Sweeps (2 trials of 4 replicas each, at once) compete for a pool of three
    2-GPU kwok nodes, room for one gang: exactly one gang is bound, whole, and the three others
    wait with no pod bound (``check_gang`` then checks the bound gang's TrainJob by name); once
    the sweep holding the pool is deleted, a gang of the other one gets it, whole. Returns
    (the sweep that was deleted, the other one)."""
    ns = namespace.name
    create_node_pool(
        cluster.api_client(),
        f"{ns}-pg",
        3,
        labels={POOL_LABEL: f"{ns}-pg"},
        capacity={GPU: 2},
        taints=[f"{POOL_LABEL}={ns}-pg:NoSchedule"],
    )
    with ObjectWatch(cluster, namespace) as seen:
        for name in ("first", "second"):
            apply_sweep(
                cluster,
                namespace,
                name,
                [pool("kwok", f"{ns}-pg")],
                max_trials=2,
                parallelism=2,
                command=["sleep", "3600"],
                gang=gang,
            )

        def one_whole_gang(sweeps: tuple[str, ...]) -> dict[str, Any] | None:
            pods = [
                p for p in pods_of(cluster, namespace) if not p["metadata"].get("deletionTimestamp")
            ]
            jobs = {
                job: counts
                for sweep, found in by_sweep(pods).items()
                if sweep in sweeps
                for job, counts in found.items()
            }
            whole = [job for job, counts in jobs.items() if counts == (4, 0)]
            rest = [counts for job, counts in jobs.items() if job not in whole]
            if len(jobs) == 2 * len(sweeps) and len(whole) == 1 and all(c == (0, 4) for c in rest):
                return {"whole": whole[0], "jobs": jobs}
            return None

        try:
            state = wait_until(
                lambda: one_whole_gang(("first", "second")), 120, "one whole gang, three waiting"
            )
        except AssertionError:
            raise AssertionError(f"{by_sweep(pods_of(cluster, namespace))}\n{logs()}") from None
        running = state["whole"]
        check_gang(running)
        # The sweep holding the pool lets go: the other sweep's gang gets it, whole.
        winner = next(
            s for s, jobs in by_sweep(pods_of(cluster, namespace)).items() if running in jobs
        )
        other = "second" if winner == "first" else "first"
        cluster.kubectl("delete", "sweep", winner, "-n", ns, "--wait=false")
        wait_until(lambda: one_whole_gang((other,)), 120, f"a whole gang of {other}")
    # Never a partial gang: every pod bound belongs to a gang all of whose pods were bound.
    bound_by_job: dict[str, int] = {}
    for name in seen.nodes:
        job = name.rsplit("-", 2)[0]
        bound_by_job[job] = bound_by_job.get(job, 0) + 1
    assert bound_by_job and set(bound_by_job.values()) == {4}, bound_by_job
    return winner, other


def test_podgroup_sweeps_competing_for_one_gangs_room_bind_whole_gangs_only(
    cluster: LocalCluster,
    coscheduler: Coscheduler,  # first: the PodGroup CRD is served before the operator starts
    namespace: Namespace,
    operator: OperatorProcess,
) -> None:
    ns = namespace.name

    def check_gang(running: str) -> None:
        # The pods went to the coscheduling scheduler, each trial with its PodGroup of 4.
        pod = next(
            p
            for p in pods_of(cluster, namespace)
            if p["metadata"]["labels"].get("hypersweep.io/job-name") == running
        )
        assert pod["spec"]["schedulerName"] == COSCHEDULER_NAME
        groups = kubectl_json(cluster, "get", "podgroups.scheduling.x-k8s.io", "-n", ns)["items"]
        assert len(groups) == 4 and {g["spec"]["minMember"] for g in groups} == {4}

    _, other = compete_for_one_gangs_room(
        cluster,
        namespace,
        "podGroup",
        lambda: f"{coscheduler.log_tail(60)}\n{operator.log_tail(60)}",
        check_gang,
    )
    cluster.kubectl("delete", "sweep", other, "-n", ns, "--wait=false")


def test_workload_sweeps_competing_for_one_gangs_room_bind_whole_gangs_only(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    """``gang: workload``: the same competition, gangs handed to kube-scheduler's own gang
    scheduling (the upstream ``scheduling.k8s.io/v1alpha2`` Workload API the test cluster
    serves behind its alpha feature gates), with no second scheduler."""
    ns = namespace.name

    def check_gang(running: str) -> None:
        pod = next(
            p
            for p in pods_of(cluster, namespace)
            if p["metadata"]["labels"].get("hypersweep.io/job-name") == running
        )
        # The default scheduler, told the pod's gang by the PodGroup the pod names.
        assert pod["spec"]["schedulerName"] == "default-scheduler"
        assert pod["spec"]["schedulingGroup"] == {"podGroupName": running}
        workloads = {
            w["metadata"]["name"]: w
            for w in kubectl_json(cluster, "get", "workloads.scheduling.k8s.io", "-n", ns)["items"]
        }
        groups = {
            g["metadata"]["name"]: g
            for g in kubectl_json(cluster, "get", "podgroups.scheduling.k8s.io", "-n", ns)["items"]
        }
        assert running in workloads and running in groups
        (template,) = workloads[running]["spec"]["podGroupTemplates"]
        assert template["schedulingPolicy"] == {"gang": {"minCount": 4}}
        assert workloads[running]["spec"]["controllerRef"] == {
            "apiGroup": "hypersweep.io",
            "kind": "TrainJob",
            "name": running,
        }
        group = groups[running]
        assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 4}}
        assert group["spec"]["podGroupTemplateRef"] == {
            "workload": {"workloadName": running, "podGroupTemplateName": template["name"]}
        }

        def scheduled() -> bool:
            group = kubectl_json(cluster, "get", "podgroups.scheduling.k8s.io", running, "-n", ns)
            conditions = (group.get("status") or {}).get("conditions") or []
            return any(
                c["type"] == "PodGroupScheduled" and c["status"] == "True" for c in conditions
            )

        # kube-scheduler reports the gang it placed on the PodGroup.
        wait_until(scheduled, 30, f"PodGroup {running} PodGroupScheduled")

    winner, other = compete_for_one_gangs_room(
        cluster,
        namespace,
        "workload",
        lambda: (
            f"{cluster.log_path('kube-scheduler').read_text()[-6000:]}\n{operator.log_tail(60)}"
        ),
        check_gang,
    )

    # The deleted sweep's Workloads and PodGroups go with it (owner references), none orphaned.
    def left_of(sweep: str) -> list[str]:
        return [
            f"{kind}/{o['metadata']['name']}"
            for kind in ("workloads.scheduling.k8s.io", "podgroups.scheduling.k8s.io")
            for o in kubectl_json(cluster, "get", kind, "-n", ns)["items"]
            if o["metadata"]["labels"].get("hypersweep.io/sweep") == sweep
        ]

    wait_until(lambda: not left_of(winner), 120, f"{winner}'s Workloads and PodGroups gone")
    cluster.kubectl("delete", "sweep", other, "-n", ns, "--wait=false")


def test_a_workload_gang_on_a_cluster_without_the_workload_api_is_refused_up_front(
    cluster: LocalCluster,
) -> None:
    """Where the API server does not serve ``scheduling.k8s.io/v1alpha2`` (the alpha API off,
    as on a cluster that did not turn it on), the launcher refuses ``gang: workload`` before
    any trial, naming the field and the fix; where it is served, it starts. The same for
    ``podGroup`` without its scheduler's CRD."""
    policy = parse_policy({"gang": "workload"})
    check_served(Kube(cluster.api_client()), policy)  # the test cluster serves it
    with LocalCluster(alpha_gang_scheduling=False) as bare:
        with pytest.raises(ConfigError) as refused:
            check_served(Kube(bare.api_client()), policy)
        # Likewise a podGroup sweep where scheduler-plugins' PodGroup CRD is not installed.
        with pytest.raises(ConfigError, match="scheduling.x-k8s.io/v1alpha1 PodGroup") as plugins:
            check_served(Kube(bare.api_client()), parse_policy({"gang": "podGroup"}))
        assert "install the schedulerPlugins scheduler and its PodGroup CRD" in str(plugins.value)
    message = str(refused.value)
    assert message.startswith("schedulingPolicy.gang: workload needs scheduling.k8s.io/v1alpha2")
    assert "GenericWorkload" in message and "scheduling.k8s.io/v1alpha2=true" in message
