"""``hypersweep dashboard`` looked at as a person would: headless Chromium loads optuna-dashboard
(a JavaScript app), the sweep's trials appear on the page, and a screenshot is kept.

Chromium is Debian's ``chromium`` package (``hack/test.sh`` installs it). Without it these tests
are skipped, or fail when ``HYPERSWEEP_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import objectives
import pytest
from conftest import CHROMIUM, HYPERSWEEP, free_port, python_env

import hypersweep as hs

pytestmark = pytest.mark.usefixtures("need_chromium")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@contextmanager
def _dashboard(name: str) -> Iterator[str]:
    """``hypersweep dashboard NAME`` on a free port; yields the sweep's page in the dashboard."""
    port = free_port()
    server = subprocess.Popen(
        [HYPERSWEEP, "dashboard", name, "--port", str(port)],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, "the dashboard exited"
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        (study,) = [s for s in studies if s["study_name"] == name]
        yield f"{base}/dashboard/studies/{study['study_id']}/trials"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _chromium(*args: str, url: str, budget_ms: int = 20_000) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``; virtual time lets the app fetch and render first."""
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,900",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _page_shows(url: str, expected: list[str], timeout: float = 90) -> str:
    """The rendered page, once it shows every string of ``expected`` (the app loads async)."""
    deadline = time.monotonic() + timeout
    while True:
        page = _chromium("--dump-dom", url=url)
        missing = [text for text in expected if text not in page.stdout]
        if not missing:
            return page.stdout
        assert time.monotonic() < deadline, (
            f"the page never showed {missing}: {page.stderr[-2000:]}"
        )


def _screenshot(url: str, path: Path) -> Path:
    _chromium(f"--screenshot={path}", url=url)
    image = path.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 20_000  # a page, not a blank
    print(f"screenshot: {path}")
    return path


def test_the_dashboard_shows_a_finished_sweeps_trials(run_dir: Path, tmp_path: Path) -> None:
    result = hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=8,
        max_concurrent=1,
        early_stopping={"name": "median", "n_startup_trials": 2},
        name="in-browser",
        seed=0,
        verbose=False,
    )
    counts = result.counts()
    with _dashboard("in-browser") as url:
        expected = ["in-browser", "8 Trials", *(f"Trial {n}" for n in range(8))]
        page = _page_shows(url, expected)
        # The trial list: each trial with its state's badge, as storage has it.
        listed = dict(re.findall(r"ListItemText-primary[^>]*>Trial (\d+)<.*?>(\w+)</span>", page))
        words = {"completed": "Complete", "pruned": "Pruned"}
        assert listed == {str(t.number): words[t.state] for t in result.trials}
        assert sum(state == "Complete" for state in listed.values()) == counts["completed"]
        _screenshot(url, tmp_path / "dashboard-finished.png")


def test_the_dashboard_shows_a_running_sweep(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "sweep.yaml").write_text(
        "name: live-view\nobjective: objectives:slow_steps\nmetric: loss\nn_trials: 6\n"
        "max_concurrent: 2\nspace:\n  x: {type: float, low: 0, high: 1}\n"
    )
    env = {
        **python_env(),
        "HYPERSWEEP_TEST_MARKERS": str(run_dir / "markers"),
        "HYPERSWEEP_TEST_STEP": "1.5",  # 5 steps a trial: the sweep runs well past the checks
    }
    driver = subprocess.Popen(
        [HYPERSWEEP, "run", "sweep.yaml", "--no-live"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # two trials running, with reports
            try:
                running = [t for t in hs.load("live-view").trials if t.state == "running"]
            except hs.ConfigError:
                running = []
            if len(running) == 2 and all(t.intermediate_values for t in running):
                break
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with _dashboard("live-view") as url:
            expected = ["live-view", *(f"Trial {t.number}" for t in running), ">Running<"]
            page = _page_shows(url, expected)
            listed = dict(
                re.findall(r"ListItemText-primary[^>]*>Trial (\d+)<.*?>(\w+)</span>", page)
            )
            # Every trial that had started is listed; running ones (then or since) say so.
            assert {str(t.number) for t in running} <= set(listed)
            assert "Running" in listed.values()
            _screenshot(url, tmp_path / "dashboard-running.png")
        assert driver.poll() is None  # the sweep was still running while it was looked at
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)
        driver.wait(timeout=60)
