"""What keeps a long sweep's footprint on the cluster flat, on the test cluster: finished trials'
TrainJobs go after ``runPolicy.ttlSecondsAfterFinished`` and their pods, Services and Secrets with
them, so the live objects stay bounded by the sweep's parallelism, not by its trials; the results
stay in storage; the Sweep object does not grow with the trials; and the operator's client
counts its own API requests by verb and resource on its ``/metrics``."""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import optuna
import pytest

from hypersweep.kube._client import PODS, SECRETS, SERVICES, SWEEPS, TRAINJOBS, Kube
from hypersweep.kube._names import JOB_NAME_LABEL, SWEEP_LABEL
from hypersweep.testing import LocalCluster

from .conftest import Namespace, OperatorProcess, objective_command, trial_template, wait_until
from .test_day_one import apply_sweep
from .test_sweep import stored_trials, wait_sweep

pytestmark = pytest.mark.k8s

TRIALS = 12
PARALLELISM = 2


def _live(kube: Kube, namespace: str, sweep: str) -> dict[str, int]:
    """The sweep's objects the API server holds now, by kind."""
    by_sweep = f"{SWEEP_LABEL}={sweep}"
    return {
        "trainjobs": len(kube.list(TRAINJOBS, namespace, label_selector=by_sweep)["items"]),
        "pods": len(kube.list(PODS, namespace, label_selector=by_sweep)["items"]),
        "secrets": len(kube.list(SECRETS, namespace, label_selector=by_sweep)["items"]),
        "services": len(kube.list(SERVICES, namespace, label_selector=JOB_NAME_LABEL)["items"]),
    }


def test_finished_trials_are_collected_and_live_objects_stay_bounded(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    template = trial_template(objective_command("learning_curve"))
    template["runPolicy"] = {"ttlSecondsAfterFinished": 1}
    kube = Kube(cluster.api_client())
    samples: list[dict[str, int]] = []
    sizes: list[int] = []
    last: dict[str, Any] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_live(kube, namespace.name, "gc"))
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
    )
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status = wait_sweep(cluster, namespace, "gc", operator, timeout=400)
    finally:
        done.set()
        sampler.join(30)
    assert status["trials"]["succeeded"] + status["trials"]["pruned"] == TRIALS, status

    # Running trials plus those finishing or within their TTL (a loaded operator deletes them
    # a little late): bounded by parallelism, half the trials here.
    bound = 3 * PARALLELISM
    peak: dict[str, Any] = {kind: max(s[kind] for s in samples) for kind in samples[0]}
    assert peak["trainjobs"] <= bound < TRIALS, (peak, samples)
    assert peak["secrets"] <= bound, (peak, samples)
    assert peak["services"] <= bound, (peak, samples)
    # Every finished trial's objects go; nothing of the sweep's trials is left.
    wait_until(
        lambda: _live(kube, namespace.name, "gc") == dict.fromkeys(peak, 0),
        timeout=120,
        what="the finished trials' objects to be collected",
    )
    # ...and every result is still in storage.
    stored = stored_trials(namespace, status)
    assert len(stored) == TRIALS
    assert all(
        t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in stored
    ), stored
    # The Sweep's status counts trials, it does not list them: same size from first to last
    # (give or take the digits of its counts and timestamps).
    assert sizes and max(sizes) - min(sizes) < 200, (sizes, last.get("status"))

    # The operator's client counted what it sent, by verb and resource.
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics") as response:
        metrics = response.read().decode()
    created = [
        line
        for line in metrics.splitlines()
        if line.startswith("hypersweep_operator_api_requests_total{")
        and 'verb="create"' in line
        and 'resource="trainjobs"' in line
    ]
    assert created and float(created[0].rsplit(" ", 1)[1]) >= TRIALS, created
