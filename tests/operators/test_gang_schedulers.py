"""Gangs handed to a real gang scheduler: the coscheduling plugin of scheduler-plugins, built
from the Go module proxy by ``hack/gang/build.sh`` and run as the cluster's second scheduler.

Two ``podGroup`` Sweeps compete for a pool with room for one 4-replica gang (three kwok nodes
of 2 GPUs): the operator creates one PodGroup (``minMember: 4``) per trial and hands the pods to
``scheduler-plugins-scheduler``, which binds a gang whole or not at all. Without a gang
scheduler the same pool ends with partial gangs holding GPUs (test_pools.py,
``test_without_gang_admission_partial_gangs_deadlock_a_pool``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

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
        if os.environ.get("HYPERSWEEP_REQUIRE_K8S") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
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


def test_podgroup_sweeps_competing_for_one_gangs_room_bind_whole_gangs_only(
    cluster: LocalCluster,
    coscheduler: Coscheduler,  # first: the PodGroup CRD is served before the operator starts
    namespace: Namespace,
    operator: OperatorProcess,
) -> None:
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
                gang="podGroup",
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
            raise AssertionError(
                f"{by_sweep(pods_of(cluster, namespace))}\n{coscheduler.log_tail(60)}\n"
                f"{operator.log_tail(60)}"
            ) from None
        running = state["whole"]
        # The pods went to the coscheduling scheduler, each trial with its PodGroup of 4.
        pod = next(
            p
            for p in pods_of(cluster, namespace)
            if p["metadata"]["labels"].get("hypersweep.io/job-name") == running
        )
        assert pod["spec"]["schedulerName"] == COSCHEDULER_NAME
        groups = kubectl_json(cluster, "get", "podgroups.scheduling.x-k8s.io", "-n", ns)["items"]
        assert len(groups) == 4 and {g["spec"]["minMember"] for g in groups} == {4}
        # The sweep holding the pool lets go: the other sweep's gang gets it, whole.
        winner = next(
            s for s, jobs in by_sweep(pods_of(cluster, namespace)).items() if running in jobs
        )
        other = "second" if winner == "first" else "first"
        cluster.kubectl("delete", "sweep", winner, "-n", ns, "--wait=false")
        state = wait_until(lambda: one_whole_gang((other,)), 120, f"a whole gang of {other}")
    # Never a partial gang: every pod bound belongs to a gang all of whose pods were bound.
    bound_by_job: dict[str, int] = {}
    for name in seen.nodes:
        job = name.rsplit("-", 2)[0]
        bound_by_job[job] = bound_by_job.get(job, 0) + 1
    assert bound_by_job and set(bound_by_job.values()) == {4}, bound_by_job
    cluster.kubectl("delete", "sweep", other, "-n", ns, "--wait=false")
