"""Prometheus metrics: scraped from the real endpoints during real sweeps, parsed by
prometheus_client's own parser; the Grafana dashboard queries only metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import objectives
import pytest
from conftest import PYTHON, python_env
from prometheus_client.parser import text_string_to_metric_families

import hypersweep as hs
from hypersweep._metrics import serve_sweep_metrics
from hypersweep.testing import free_port

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "overlays" / "monitoring" / "grafana-dashboard.json"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, keyed by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def trials_by_state(samples: dict, sweep: str) -> dict[str, int]:
    return {
        dict(labels)["state"]: int(value)
        for (name, labels), value in samples.items()
        if name == "hypersweep_trials" and dict(labels)["sweep"] == sweep and value
    }


def test_run_metrics_port_serves_trial_counts_during_the_sweep(run_dir: Path) -> None:
    release = run_dir / "release"
    sweep = run_dir / "sweep.yaml"
    sweep.write_text(
        textwrap.dedent(
            f"""
            objective: {Path(objectives.__file__)}:wait_for_release
            space: {{x: {{type: float, low: 0, high: 1}}}}
            metric: loss
            n_trials: 4
            max_concurrent: 2
            name: watched
            """
        )
    )
    port = free_port()
    env = {**python_env(), "HYPERSWEEP_TEST_RELEASE": str(release)}
    driver = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "hypersweep._cli",
            "run",
            str(sweep),
            "--no-live",
            "--metrics-port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # both running trials have reported step 0
            assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
            try:
                samples = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                samples = {}
            reports = samples.get(("hypersweep_trial_reports_total", (("sweep", "watched"),)))
            if reports == 2:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.1)
        assert trials_by_state(samples, "watched") == {"running": 2}
        assert hs.load("watched").counts()["running"] == 2  # the stored status agrees
        assert samples[("hypersweep_trials_started_total", (("sweep", "watched"),))] == 2
        queued = samples[("hypersweep_trials_queued", (("sweep", "watched"),))]
        assert queued == hs.load("watched").counts()["queued"] == 2
        release.touch()
        assert driver.wait(timeout=120) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert hs.load("watched").counts() == {"completed": 4}


def test_metrics_match_the_sweep_status_with_pauses_and_early_stops(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    port = free_port()
    metrics, server = serve_sweep_metrics(port, "127.0.0.1")
    try:
        result = hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.asha_curve,
            metric="loss",
            n_trials=6,
            max_concurrent=1,
            name="scraped",
            early_stopping={"name": "asha", "min_resource": 1, "max_resource": 9},
            callbacks=[metrics],
            verbose=False,
        )
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert trials_by_state(samples, "scraped") == result.counts() == {"completed": 1, "pruned": 5}
    reports = sum(len(t.intermediate_values) for t in result.trials)
    assert samples[("hypersweep_trial_reports_total", (("sweep", "scraped"),))] == reports
    # Resumed with a larger budget, in a new process's metrics: earlier trials count too.
    port = free_port()
    metrics, server = serve_sweep_metrics(port, "127.0.0.1")
    try:
        more = hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=8,
            name="scraped",
            resume=True,
            callbacks=[metrics],
            verbose=False,
        )
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert trials_by_state(samples, "scraped") == more.counts() == {"completed": 3, "pruned": 5}
    assert samples[("hypersweep_trials_queued", (("sweep", "scraped"),))] == 0


def test_the_operator_serves_its_metrics_on_the_report_port() -> None:
    from hypersweep.kube._server import ReportServer

    server = ReportServer("127.0.0.1", 0).start()
    try:
        # A report for a sweep this operator does not run: answered 503, and counted.
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/v1/namespaces/ns/sweeps/s/trials/0",
            data=b"{}",
            headers={"Authorization": "Bearer t"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 503
        key = ("hypersweep_operator_report_requests_total", (("code", "503"),))
        deadline = time.monotonic() + 30
        while True:  # counted once the handler returns, just after the answer went out
            samples = scrape(f"http://127.0.0.1:{server.port}/metrics")
            if samples.get(key, 0) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        server.stop()
    assert samples[("hypersweep_operator_report_requests_total", (("code", "503"),))] >= 1
    assert samples[("hypersweep_operator_report_latency_seconds_count", ())] >= 1


def exposed_names() -> set[str]:
    """Every sample name the operator's /metrics can carry, from its own exposition."""
    from hypersweep._metrics import operator_metrics

    text = operator_metrics().exposition()[0].decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_every_dashboard_query_names_an_exposed_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_names()
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(queries) >= 10
    for query in queries:
        names = set(re.findall(r"\bhypersweep_[a-z_]+", query))
        assert names, f"no hypersweep metric in {query!r}"
        assert names <= exposed, f"{query!r} names {sorted(names - exposed)}, not exposed"
    # Every metric the operator exposes is on the dashboard.
    used = {n for q in queries for n in re.findall(r"\bhypersweep_[a-z_]+", q)}
    families = {
        re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exposed if not n.endswith("_created")
    }
    assert families <= {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in used}


def dashboard_panel_table(dashboard: dict) -> str:
    """The README's list of the dashboard's panels, as it must read for this JSON."""
    lines = ["| Panel | Query |", "|---|---|"]
    for panel in dashboard["panels"]:
        queries = "<br>".join(
            "`{}`".format(t["expr"].replace("|", "\\|")) for t in panel["targets"]
        )
        lines.append(f"| {panel['title']} | {queries} |")
    return "\n".join(lines)


def test_the_readme_lists_the_dashboards_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    readme = (REPO / "README.md").read_text()
    listed = re.search(r"<!-- grafana-panels -->\n(.*?)\n<!-- /grafana-panels -->", readme, re.S)
    assert listed is not None, "README.md: no <!-- grafana-panels --> block"
    expected = dashboard_panel_table(dashboard)
    assert listed.group(1) == expected, f"README.md's panel list should read:\n{expected}"
