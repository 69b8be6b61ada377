"""The operator's /metrics, scraped during and after a real sweep on the test cluster and parsed
with prometheus_client's parser: the trial counts match the Sweep's status."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hypersweep.testing import LocalCluster

from .conftest import Namespace, OperatorProcess, render, wait_until
from .test_sweep import create_sweep, sweep_status, wait_sweep

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
