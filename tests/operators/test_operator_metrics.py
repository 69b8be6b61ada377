"""The operator's /metrics, scraped during and after a real sweep on the test cluster and parsed
with prometheus_client's parser: the trial counts match the Sweep's status. Sweep.spec.callbacks
run in the operator."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hypersweep.testing import LocalCluster

from .conftest import (
    Namespace,
    OperatorProcess,
    objective_command,
    render,
    trial_template,
    wait_until,
)
from .test_sweep import create_sweep, stored_trials, sweep_status, wait_sweep

pytestmark = pytest.mark.k8s


def scrape(operator: OperatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{operator.url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def trials(samples: dict, sweep: str) -> dict[str, int]:
    return {
        dict(labels)["state"]: int(value)
        for (name, labels), value in samples.items()
        if name == "hypersweep_trials" and dict(labels).get("sweep") == sweep and value
    }


def test_operator_metrics_match_the_sweep_status(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    create_sweep(cluster, namespace, "watched", "learning_curve", max_trials=4, parallelism=2)
    study = wait_until(
        lambda: sweep_status(cluster, namespace, "watched").get("studyName"), 60, "a study name"
    )
    # During the sweep: trials show up as running while they run.
    wait_until(lambda: trials(scrape(operator), study).get("running", 0) >= 1, 120, "running")
    status = wait_sweep(cluster, namespace, "watched", operator)
    assert "Succeeded" in status["true"], status

    def settled() -> dict | None:
        samples = scrape(operator)
        return samples if "running" not in trials(samples, study) else None

    samples = wait_until(settled, 30, "no trial running in the metrics")
    counts = trials(samples, study)
    assert counts.get("completed", 0) == status["trials"]["succeeded"] == 4
    assert counts.get("failed", 0) == status["trials"]["failed"] == 0
    assert samples[("hypersweep_operator_leader", ())] == 1
    assert samples[("hypersweep_operator_pods_created_total", ())] >= 4
    assert (
        samples[("hypersweep_operator_report_requests_total", (("code", "200"),))] >= 4 * 9
    )  # 9 reports each
    for controller in ("sweep", "trainjob"):
        key = (
            "hypersweep_operator_reconcile_duration_seconds_count",
            (("controller", controller),),
        )
        assert samples[key] >= 1


def test_the_monitoring_overlay_scrapes_the_operator_service() -> None:
    objects = render("deploy/overlays/monitoring")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    service = next(o for o in objects if o["kind"] == "Service")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert any(o["kind"] == "Deployment" for o in objects)


def apply_sweep(
    cluster: LocalCluster, namespace: Namespace, name: str, callbacks: list[dict[str, Any]]
) -> None:
    body = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "space": {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "mode": "min"},
            "strategy": {"name": "random", "settings": {"seed": 7}},
            "maxTrials": 2,
            "parallelism": 2,
            "callbacks": callbacks,
            "trialTemplate": trial_template(
                objective_command("learning_curve"),
                {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)},
            ),
        },
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))


def test_sweep_spec_callbacks_run_in_the_operator(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    board = tmp_path / "tb"
    apply_sweep(cluster, namespace, "boarded", [{"tensorboard": {"log_dir": str(board)}}])
    status = wait_sweep(cluster, namespace, "boarded", operator)
    assert "Succeeded" in status["true"], status
    root = board / status["studyName"]
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    for trial in stored_trials(namespace, status):
        scalars = multiplexer.Scalars(f"trial-{trial.number}", "loss")
        by_step = {e.step: e.value for e in scalars}
        for step, value in trial.intermediate_values.items():
            assert by_step[step] == pytest.approx(value)

    apply_sweep(cluster, namespace, "misspelt", [{"tensorbord": {}}])

    def refused() -> dict[str, Any] | None:
        status = sweep_status(cluster, namespace, "misspelt")
        return status if status["true"] & {"Failed"} else None

    failed = wait_until(refused, 60, "the sweep to be refused")
    messages = " ".join(c.get("message", "") for c in failed["conditions"])
    assert "spec.callbacks.0: unknown callback 'tensorbord'" in messages
