"""What keeps a long sweep's footprint on the cluster flat, on the test cluster: finished trials'
TrainJobs go after ``runPolicy.ttlSecondsAfterFinished`` and their pods, Services and Secrets with
them, so the live objects stay bounded by the sweep's parallelism, not by its trials; the results
stay in storage; the Sweep object does not grow with the trials; and the operator's client
counts its own API requests by verb and resource on its ``/metrics``."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from hypersweep.kube._client import PODS, SECRETS, SERVICES, SWEEPS, TRAINJOBS, Kube
from hypersweep.kube._jobspec import parse_time
from hypersweep.kube._names import JOB_NAME_LABEL, SWEEP_LABEL
from hypersweep.testing import LocalCluster

from .conftest import (
    Namespace,
    OperatorProcess,
    free_port,
    objective_command,
    trial_template,
    wait_until,
)
from .test_day_one import SPACE, apply_sweep
from .test_sweep import stored_trials, wait_sweep

pytestmark = pytest.mark.k8s

TRIALS = 12
PARALLELISM = 2
TTL = 1
#: How long after its TTL a finished trial's objects may still be listed on a busy machine.
COLLECT_GRACE = 30
#: The operator's API requests per finished trial at most (one replica per trial here).
MAX_REQUESTS_PER_TRIAL = 12


def _live(kube: Kube, namespace: str, sweep: str) -> dict[str, list[dict[str, Any]]]:
    """The sweep's objects the API server holds now, by kind."""
    by_sweep = f"{SWEEP_LABEL}={sweep}"
    return {
        "trainjobs": kube.list(TRAINJOBS, namespace, label_selector=by_sweep)["items"],
        "pods": kube.list(PODS, namespace, label_selector=by_sweep)["items"],
        "secrets": kube.list(SECRETS, namespace, label_selector=by_sweep)["items"],
        "services": kube.list(SERVICES, namespace, label_selector=JOB_NAME_LABEL)["items"],
    }


def _counts(live: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return {kind: len(items) for kind, items in live.items()}


def _job_of(kind: str, obj: dict[str, Any]) -> str | None:
    """The TrainJob an object belongs to: itself, its owner, or the one its label names."""
    meta = obj["metadata"]
    if kind == "trainjobs":
        return str(meta["name"])
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "TrainJob":
            return str(owner["name"])
    return (meta.get("labels") or {}).get(JOB_NAME_LABEL)


def _most_at_once(trials: list[optuna.trial.FrozenTrial]) -> int:
    """The most trials that were running at the same moment, by their start and end times."""
    edges = sorted(
        edge
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
        for edge in ((t.datetime_complete, -1), (t.datetime_start, 1))
    )
    running = most = 0
    for _, change in edges:
        running += change
        most = max(most, running)
    return most


def test_finished_trials_are_collected_and_live_objects_stay_bounded(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    template = trial_template(objective_command("learning_curve"))
    template["runPolicy"] = {"ttlSecondsAfterFinished": TTL}
    kube = Kube(cluster.api_client())
    samples: list[dict[str, int]] = []
    finished_at: dict[str, float] = {}  # TrainJob -> its completionTime
    last_seen: dict[tuple[str, str], float] = {}  # (kind, TrainJob) -> when last listed
    sizes: list[int] = []
    last: dict[str, Any] = {}
    suspended: set[str] = set()  # TrainJobs seen suspended
    early_stopped: set[str] = set()  # TrainJobs seen ended as pruned
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            live = _live(kube, namespace.name, "gc")
            now = time.time()
            samples.append(_counts(live))
            for job in live["trainjobs"]:
                name = job["metadata"]["name"]
                status = job.get("status") or {}
                completed = parse_time(status.get("completionTime"))
                if completed is not None:
                    finished_at[name] = completed.timestamp()
                if job["spec"].get("runPolicy", {}).get("suspend"):
                    suspended.add(name)
                if any(c.get("reason") == "EarlyStopped" for c in status.get("conditions") or []):
                    early_stopped.add(name)
            for kind, items in live.items():
                for obj in items:
                    if (job_name := _job_of(kind, obj)) is not None:
                        last_seen[kind, job_name] = now
            sweep = kube.get(SWEEPS, namespace.name, "gc") or {}
            trials = (sweep.get("status") or {}).get("trials") or {}
            # From the first trial's result on (which adds the best trial to the status).
            if trials.get("running") and trials.get("succeeded"):
                sizes.append(len(json.dumps(sweep)))
                last.clear()
                last.update(sweep)
            done.wait(0.5)

    apply_sweep(
        cluster,
        namespace,
        "gc",
        template=template,
        maxTrials=TRIALS,
        parallelism=PARALLELISM,
        # Trials of a few seconds: the Sweep's status (written at most every 2 s while its
        # counts change) is seen several times between the first result and the last.
        space={**SPACE, "pause": {"type": "constant", "value": 0.3}},
    )
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status = wait_sweep(cluster, namespace, "gc", operator, timeout=400)
    finally:
        done.set()
        sampler.join(30)
    assert status["trials"]["succeeded"] + status["trials"]["pruned"] == TRIALS, status
    # A pruned trial's rank, told to stop, exits by itself: its TrainJob ends as pruned
    # without being suspended (nothing deletes its pod; its log stays).
    assert not suspended, suspended
    if status["trials"]["pruned"]:
        assert early_stopped, "no TrainJob was seen ended as pruned"

    # What is live at any moment is the running trials' objects (at most the parallelism's)
    # plus the finished ones' within their TTL: each finished trial's TrainJob, pods, Secret
    # and Service go within the TTL and a grace for a busy operator and garbage collector,
    # however many trials came before. (How many trials finish within a TTL, and how long a
    # finished trial's pod takes to exit, depend on the machine's speed, so the count of live
    # objects has no fixed bound here; how long a finished trial's objects stay has.)
    assert finished_at, "no finished TrainJob was seen before it was collected"
    lingering = {
        f"{kind} of {job}": round(seen - finished_at[job], 1)
        for (kind, job), seen in last_seen.items()
        if job in finished_at
    }
    assert lingering and max(lingering.values()) <= TTL + COLLECT_GRACE, (lingering, samples)
    # Every finished trial's objects go; nothing of the sweep's trials is left.
    wait_until(
        lambda: _counts(_live(kube, namespace.name, "gc")) == dict.fromkeys(samples[0], 0),
        timeout=120,
        what="the finished trials' objects to be collected",
    )
    # ...and every result is still in storage, where no more trials ran at once than the
    # parallelism allows.
    stored = stored_trials(namespace, status)
    assert len(stored) == TRIALS
    assert _most_at_once(stored) <= PARALLELISM, stored
    assert all(
        t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in stored
    ), stored
    # The Sweep's status counts trials, it does not list them: same size from first to last
    # (give or take the digits of its counts and timestamps).
    assert len(sizes) >= 2 and max(sizes) - min(sizes) < 200, (sizes, last.get("status"))

    # The operator's client counted what it sent, by verb and resource.
    counted = _requests(operator)
    assert counted.get("create trainjobs", 0) >= TRIALS, counted
    # Per finished trial (lists, watches and leader election are per operator, not per trial):
    # its pod, Secret, Service and TrainJob are created; its status is written when it starts
    # (created and running together, held for a second) and when it ends; no Normal Event
    # (its TrainJob goes within a minute, an Event would stay an hour); its outcome shown; its
    # running pods deleted in one request; its TrainJob deleted (its Service and Secret go
    # with the TrainJob): about 8. Repeated writes, or one per pod or phase, exceed 12.
    per_trial = {
        kind: count
        for kind, count in counted.items()
        if kind.split(" ")[0] not in ("list", "watch") and not kind.endswith(" leases")
    }
    # The Sweep's own status writes are per sweep (a few, however many trials), not per
    # trial: bounded on their own, so that the per-trial bound does not hang on how often a
    # busy machine made the Sweep's loop write its counts.
    per_sweep = {kind: per_trial.pop(kind) for kind in list(per_trial) if " sweeps" in kind}
    assert sum(per_sweep.values()) <= TRIALS, per_sweep
    total = sum(per_trial.values()) / TRIALS
    assert total <= MAX_REQUESTS_PER_TRIAL, (total, json.dumps(per_trial, sort_keys=True))
    assert per_trial.get("delete pods", 0) <= TRIALS, per_trial  # not one per pod
    # Warnings only (now and then), and the Sweep's own few Events.
    assert per_trial.get("create events", 0) <= 0.5 * TRIALS, per_trial
    normal = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace.name,
        "--field-selector",
        "involvedObject.kind=TrainJob,type=Normal",
        "-o",
        "jsonpath={.items[*].reason}",
    ).stdout.split()
    assert not normal, normal
    assert per_trial.get("delete trainjobs", 0) <= TRIALS, per_trial  # once each
    # Its Service goes with it (the garbage collector), not by a delete of ours.
    assert per_trial.get("delete services", 0) == 0, per_trial
    # Its Service created once: not again by a reconcile whose watch does not show it yet.
    assert per_trial.get("create services", 0) == TRIALS, per_trial
    # ...and its Secret, which it owns: created after it, deleted by no request of ours.
    assert per_trial.get("delete secrets", 0) == 0, per_trial


def test_a_trial_whose_job_failed_and_was_collected_before_a_check_fails_with_its_reason(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """ttlSecondsAfterFinished: 0 deletes a failed trial's TrainJob as it fails, long before
    the launcher's next check of the jobs' states (5 s here: a busy driver checks late). The
    trial fails with why its job failed, and is not retried as if someone deleted it."""
    import hypersweep as hs
    from hypersweep.launchers import KubernetesLauncher

    port = free_port()
    template = trial_template([sys.executable, "-m", "hypersweep.operators.trial_entrypoint"])
    template["runPolicy"] = {"ttlSecondsAfterFinished": 0}
    launcher = KubernetesLauncher(
        namespace.name,
        trial_template=template,
        max_concurrent=1,
        kube=Kube(cluster.api_client()),
        report_url=f"http://127.0.0.1:{port}",
        report_port=port,
        sync_interval=5.0,
    )

    def objective(config: dict[str, Any]) -> float:  # shipped to the pod by value
        import os

        os._exit(3)  # dies without a word: only the TrainJob says how it ended

    result = hs.tune(
        {"x": hs.uniform(-1, 1)},
        objective,
        metric="loss",
        n_trials=1,
        name="gone-fast",
        seed=0,
        launcher=launcher,
        storage=str(tmp_path / "journal.log"),
        max_retries=2,
    )
    [trial] = result.trials
    assert trial.state == "failed", trial
    assert "was deleted" not in str(trial.error), trial.error
    assert "failed" in str(trial.error) and "exited with code 3" in str(trial.error), trial.error
    assert trial.attempts == 1, trial  # not relaunched as a crash


def test_a_pod_on_a_node_the_watch_has_not_shown_yet_is_not_lost(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster adding many nodes binds pods to them before the nodes' ADDED events reach
    the operator: such a pod's replica is not lost with a node that "does not exist". A node
    the watch showed deleted is gone at once; one never shown, after a grace period."""
    from hypersweep.kube._pools import NODES
    from hypersweep.kube._recorder import EventRecorder
    from hypersweep.operators import _trainjob

    kube = Kube(cluster.api_client())
    controller = _trainjob.TrainJobController(kube, EventRecorder(kube))
    assert controller.nodes is not None
    controller.nodes.start()  # the real watch of the cluster's nodes, nothing else
    assert controller.nodes.wait_synced()
    node = f"joining-{threading.get_ident() % 100000}"

    def pod_on(name: str) -> dict[str, Any]:
        return {"metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": name}}

    try:
        # Bound there before the watch showed the node: it exists; look again later.
        nodes, recheck = controller._nodes([pod_on(node)])
        assert nodes is not None and node in nodes
        assert recheck is not None and 0 < recheck <= _trainjob.UNSEEN_NODE_GRACE
        # The node appears (unschedulable: nothing else lands on it).
        kube.create(
            NODES,
            None,
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node},
                "spec": {
                    "unschedulable": True,
                    "taints": [{"key": "hypersweep.io/test", "effect": "NoSchedule"}],
                },
            },
        )
        wait_until(
            lambda: controller.nodes is not None and controller.nodes.get("", node) is not None,
            timeout=30,
            what="the node's ADDED event",
        )
        nodes, recheck = controller._nodes([pod_on(node)])
        assert nodes is not None and node in nodes and recheck is None
        # Deleted: gone at once, with no grace.
        kube.delete(NODES, None, node)
        wait_until(
            lambda: node not in (controller._nodes([pod_on(node)])[0] or ()),
            timeout=30,
            what="the node's DELETED event",
        )
        assert controller._nodes([pod_on(node)])[1] is None
        # A node never shown (deleted before the operator started): gone after the grace.
        monkeypatch.setattr(_trainjob, "UNSEEN_NODE_GRACE", 0.3)
        never = f"{node}-never"
        assert never in (controller._nodes([pod_on(never)])[0] or ())
        wait_until(
            lambda: never not in (controller._nodes([pod_on(never)])[0] or ()),
            timeout=10,
            what="the grace of a node never shown to end",
        )
    finally:
        controller.nodes.stop()
        if kube.get(NODES, None, node) is not None:
            kube.delete(NODES, None, node)


def _requests(operator: OperatorProcess) -> dict[str, float]:
    """The operator's own request counts, as ``"verb resource"`` -> count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics") as response:
        metrics = response.read().decode()
    counted: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("hypersweep_operator_api_requests_total{"):
            inside = line[line.index("{") + 1 : line.index("}")]
            labels = {k: v.strip('"') for k, v in (p.split("=", 1) for p in inside.split(","))}
            kind = f"{labels['verb']} {labels['resource']}"
            counted[kind] = counted.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return counted
