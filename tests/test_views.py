"""Results can be looked at: the plot and optuna-dashboard on a stored sweep."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import objectives
import pytest
from conftest import HYPERSWEEP, PYTHON, python_env
from matplotlib.axes import Axes

import hypersweep as hs
from hypersweep._plots import plot_figure
from hypersweep.orchestrator._orchestrator import Orchestrator
from hypersweep.testing import free_port


def _sweep() -> None:
    hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=8,
        max_concurrent=1,
        early_stopping={"name": "median", "n_startup_trials": 2},
        name="viewed",
        seed=0,
    )


def test_plot_writes_a_picture_of_the_sweep(run_dir: Path) -> None:
    _sweep()
    result = subprocess.run(
        [HYPERSWEEP, "plot", "viewed", "-o", "viewed.png"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    image = (run_dir / "viewed.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000
    missing = subprocess.run(
        [HYPERSWEEP, "plot", "viewed", "-o", "no/such/dir/viewed.png"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    text = " ".join(missing.stderr.split())
    assert missing.returncode == 2 and "output: folder 'no/such/dir' does not exist" in text
    assert "Traceback" not in text


def _legend(axes: Axes) -> dict[str, int]:
    """Legend label -> count, for labels like ``stopped at step 1 (6)``."""
    labels = axes.get_legend_handles_labels()[1]
    return {m.group(1): int(m.group(2)) for s in labels if (m := re.match(r"(.+) \((\d+)\)$", s))}


def _asha_sweep(name: str, **kwargs: object) -> None:
    hs.tune(
        {"x": hs.uniform(0, 1), "lr": hs.loguniform(1e-4, 1e-1), "opt": hs.choice(["a", "b"])},
        objectives.asha_curve,
        metric="loss",
        n_trials=12,
        max_concurrent=1,
        early_stopping={
            "name": "asha",
            "min_resource": 1,
            "max_resource": 9,
            "reduction_factor": 3,
        },
        name=name,
        seed=0,
        verbose=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_plot_shows_every_trial_by_outcome_importances_and_slices(run_dir: Path) -> None:
    _asha_sweep("asha-plot")
    result = hs.load("asha-plot")
    figure = plot_figure(result)
    trials, curves, importances, *slices = figure.axes
    stopped: dict[str, int] = {}
    for trial in result.trials:
        if trial.state == "pruned":
            key = f"stopped at step {trial.step}"
            stopped[key] = stopped.get(key, 0) + 1
    assert len(stopped) >= 2  # trials were stopped at two rungs
    expected = {"completed": result.counts()["completed"], **stopped}
    # Every trial is on the trials panel (stopped ones where they stood), with its outcome.
    assert _legend(trials) == expected
    assert sum(len(c.get_offsets()) for c in trials.collections) == len(result.trials)
    # One learning curve per trial, with a marker where it ended (one-report curves show too).
    assert _legend(curves) == expected
    assert len(curves.get_lines()) == len(result.trials)
    assert sum(len(c.get_offsets()) for c in curves.collections) == len(result.trials)
    # Optuna's importances of the three parameters, and a slice of each.
    assert len(importances.patches) == 3
    assert "parameter importances for loss at step 1 (12 trials)" in importances.get_title()
    names = {a.get_xlabel() for a in slices}
    assert names == {"x", "lr", "opt"}
    assert next(a for a in slices if a.get_xlabel() == "lr").get_xscale() == "log"
    for axes in slices:
        assert sum(len(c.get_offsets()) for c in axes.collections) == len(result.trials)


def test_the_plot_marks_paused_trials_of_a_stopped_sweep(run_dir: Path) -> None:
    def stop_once_paused(orchestrator: Orchestrator) -> None:
        if sum(v.state == "paused" for v in orchestrator.views.values()) >= 3:
            raise KeyboardInterrupt  # as Ctrl-C does: the sweep stops, paused trials wait

    with pytest.raises(KeyboardInterrupt):
        _asha_sweep("paused-plot", on_update=stop_once_paused)
    result = hs.load("paused-plot")
    paused = [t for t in result.trials if t.state == "paused"]
    assert len(paused) >= 3
    trials, curves, *_ = plot_figure(result).axes
    assert _legend(trials)["paused"] == len(paused)
    assert _legend(curves)["paused"] == len(paused)


def test_dashboard_serves_the_sweep(run_dir: Path) -> None:
    _sweep()
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "hypersweep._cli", "dashboard", "viewed", "--port", str(port)],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        assert "viewed" in body
    finally:
        server.terminate()
        server.wait(timeout=10)
