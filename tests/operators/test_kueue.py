"""Gangs handed to a real Kueue: its manager (built from the Go module proxy by
``hack/kueue/build.sh``) runs against the test API server with the pod integration, and its
webhooks gate every pod of a ``kueue`` Sweep until the pod group is admitted whole.

Two ``kueue`` Sweeps (4-replica gangs) compete for a ClusterQueue whose quota fits one gang, on a
node agent's pool with room for one gang: Kueue admits one gang at a time, the others' pods wait
gated, and both sweeps run every trial to the end. Without a gang admission the same pool ends
with partial gangs holding GPUs (test_pools.py,
``test_without_gang_admission_partial_gangs_deadlock_a_pool``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_or_fail_k8s

from hypersweep.testing import (
    KUEUE_BUILD_COMMAND,
    KueueProcess,
    LocalCluster,
    missing_kueue_binaries,
    start_kueue,
)

from .conftest import Namespace, OperatorProcess, kubectl_json, objective_command, wait_until
from .test_pools import GPU, ObjectWatch, PoolAgents, finished, gang_template, pool

pytestmark = pytest.mark.k8s

#: The scheduling gate Kueue's pod webhook puts on a queued pod until its group is admitted.
ADMISSION_GATE = "kueue.x-k8s.io/admission"


@pytest.fixture(scope="module")
def kueue(cluster: LocalCluster) -> Iterator[KueueProcess]:
    missing = missing_kueue_binaries()
    if missing:
        reason = f"Kueue not built ({', '.join(missing)}): run {KUEUE_BUILD_COMMAND}"
        skip_or_fail_k8s(reason)
    process = start_kueue(cluster)
    yield process
    process.stop()


@pytest.fixture
def agents(cluster: LocalCluster) -> Iterator[PoolAgents]:
    started = PoolAgents(cluster)
    yield started
    started.close()


class GateWatch(ObjectWatch):
    """Every pod change of a namespace, in the API server's order (one watch, ordered by
    resourceVersion): ``changes`` holds (pod, gang, gated by Kueue, node, still running)."""

    def __init__(self, cluster: LocalCluster, namespace: Namespace) -> None:
        super().__init__(cluster, namespace)
        self.changes: list[tuple[str, str, bool, str, bool]] = []

    def _pods(self) -> None:
        for pod in self._stream(self.core.list_namespaced_pod, self.namespace):
            meta, spec = pod["metadata"], pod.get("spec") or {}
            gates = {g["name"] for g in spec.get("scheduling_gates") or []}
            node = spec.get("node_name") or ""
            phase = (pod.get("status") or {}).get("phase")
            live = phase not in ("Succeeded", "Failed") and not meta.get("deletion_timestamp")
            gang = (meta.get("labels") or {}).get("hypersweep.io/job-name", "")
            self.changes.append((meta["name"], gang, ADMISSION_GATE in gates, node, live))
            if node:
                self.nodes[meta["name"]] = node


def apply_kueue_sweep(
    cluster: LocalCluster, namespace: Namespace, name: str, queue: str, pools: list[Any]
) -> None:
    spec = {
        "space": {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"metric": "loss", "mode": "min"},
        "strategy": {"name": "random", "settings": {"seed": 3}},
        "maxTrials": 2,
        "parallelism": 2,
        "trialTemplate": gang_template(
            objective_command("learning_curve"),
            4,
            {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)},
        ),
        "pools": pools,
        "schedulingPolicy": {"gang": "kueue", "queueName": queue},
    }
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": spec,
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def test_kueue_sweeps_competing_for_one_gangs_quota_run_whole_gangs_and_finish(
    cluster: LocalCluster,
    kueue: KueueProcess,  # first: Kueue's webhooks gate pods before the operator creates any
    namespace: Namespace,
    operator: OperatorProcess,
    agents: PoolAgents,
) -> None:
    ns = namespace.name
    agents.start(f"{ns}-kq-0", f"{ns}-kq", {GPU: "4"})  # room for one 4-replica gang
    queue = "one-gang"
    kueue.create_queue(ns, queue, {"cpu": "100", "memory": "100Gi", GPU: 4})
    with GateWatch(cluster, namespace) as seen:
        for name in ("first", "second"):
            apply_kueue_sweep(cluster, namespace, name, queue, [pool("kq", f"{ns}-kq")])
        try:
            for name in ("first", "second"):
                status = wait_until(
                    lambda name=name: finished(cluster, namespace, name),
                    timeout=300,
                    what=f"sweep {name} to finish",
                )
                assert status["trials"]["succeeded"] == 2, (name, status["trials"])
        except AssertionError:
            pods = kubectl_json(cluster, "get", "pods", "-n", ns)["items"]
            workloads = cluster.kubectl("get", "workloads", "-n", ns, check=False).stdout
            raise AssertionError(
                f"{[(p['metadata']['name'], p['spec'].get('schedulingGates')) for p in pods]}\n"
                f"{workloads}\n{kueue.log_tail(40)}\n{operator.log_tail(80)}"
            ) from None
    # Replay the pod changes in the API server's order.
    state: dict[str, tuple[str, bool, str, bool]] = {}
    gated_by_kueue: set[str] = set()
    competing = 0
    for name, gang, gated, node, live in seen.changes:
        state[name] = (gang, gated, node, live)
        if gated:
            gated_by_kueue.add(gang)
        running = {g for g, _, n, alive in state.values() if n and alive}
        # All or nothing: one gang's quota, one gang with pods on a node at a time.
        assert len(running) <= 1, (running, name)
        waiting = {g for g, gate, _, alive in state.values() if gate and alive} - running
        competing += bool(running and waiting)
    gangs = {gang for gang, *_ in state.values()}
    assert len(gangs) == 4, gangs  # 2 sweeps x 2 trials, each one gang
    # Every gang waited at Kueue's admission gate, and gangs waited while another ran.
    assert gated_by_kueue == gangs
    assert competing > 0
    # Never a partial gang: every gang had all of its 4 pods bound.
    bound: dict[str, int] = {}
    for name in seen.nodes:
        gang = state[name][0]
        bound[gang] = bound.get(gang, 0) + 1
    assert bound == dict.fromkeys(gangs, 4), bound


def test_the_build_script_pins_the_version_the_fixture_expects() -> None:
    from hypersweep.testing import KUEUE_VERSION

    script = (Path(__file__).parents[2] / "hack" / "kueue" / "build.sh").read_text()
    assert f'KUEUE_VERSION="{KUEUE_VERSION}"' in script
