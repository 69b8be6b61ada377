"""Callbacks: every lifecycle event reaches them in the driver; one that raises stops nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import objectives
import pytest
from conftest import PYTHON, python_env

import hypersweep as hs
from hypersweep.orchestrator import SweepInfo, TrialInfo


class Recorder(hs.Callback):
    """Writes down every event with the process it ran in."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.pids: set[int] = set()
        self.result: hs.SweepResult | None = None

    def _add(self, *event: Any) -> None:
        self.pids.add(os.getpid())
        self.events.append(event)

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        self._add("sweep_start", sweep.name, sweep.resumed)

    def on_trial_start(self, trial: TrialInfo) -> None:
        self._add("start", trial.number, trial.attempt, trial.resumed)

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        self._add("result", trial.number, step, dict(metrics))

    def on_checkpoint(self, trial: TrialInfo, path: str, step: int | None) -> None:
        self._add("checkpoint", trial.number, path, step)

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        self._add("pause", trial.number, step)

    def on_trial_promote(self, trial: TrialInfo) -> None:
        self._add("promote", trial.number)

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        self._add("end", trial.number, state, value, dict(metrics), error)

    def on_sweep_end(self, result: hs.SweepResult) -> None:
        self._add("sweep_end", result.name)
        self.result = result

    def of(self, kind: str, number: int | None = None) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind and (number is None or e[1] == number)]


def test_callbacks_see_pause_promotion_stop_checkpoints_and_completion(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    recorder = Recorder()
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        name="asha-callbacks",
        early_stopping={"name": "asha", "min_resource": 1, "max_resource": 9},
        callbacks=[recorder],
    )
    assert recorder.pids == {os.getpid()}  # the driver, never a trial's process
    assert recorder.events[0] == ("sweep_start", "asha-callbacks", False)
    assert recorder.events[-1] == ("sweep_end", "asha-callbacks")
    assert recorder.result is not None and recorder.result.counts() == result.counts()
    best = result.best_trial
    assert best is not None
    # The best trial is paused twice and promoted twice (see test_schedulers), resuming its run.
    assert [e[2] for e in recorder.of("pause", best.number)] == [1, 3]
    assert len(recorder.of("promote", best.number)) == 2
    assert [e[3] for e in recorder.of("start", best.number)] == [False, True, True]
    assert [e[2] for e in recorder.of("result", best.number)] == list(range(10))
    steps = [e[3] for e in recorder.of("checkpoint", best.number)]
    assert steps == list(range(10))
    assert all(e[2].startswith(str(run_dir)) for e in recorder.of("checkpoint"))
    assert recorder.of("end", best.number) == [
        ("end", best.number, "completed", best.value, {"loss": best.value}, None)
    ]
    for trial in result.trials:
        ends = recorder.of("end", trial.number)
        assert [e[2] for e in ends] == [trial.state]  # exactly one end per trial
        assert len(recorder.of("start", trial.number)) >= 1


def test_failures_and_retries_reach_callbacks() -> None:
    recorder = Recorder()
    hs.tune(
        {"n": hs.grid([1, 2])},
        objectives.fail_on_odd,
        metric="loss",
        strategy="grid",
        callbacks=[recorder],
        verbose=False,
    )
    ends = {e[1]: e for e in recorder.of("end")}
    failed = [e for e in ends.values() if e[2] == "failed"]
    assert len(failed) == 1 and "odd n=1" in failed[0][5]
    retried = Recorder()
    hs.tune(
        {"x": hs.uniform(1, 2)},
        objectives.crash_once,
        metric="loss",
        n_trials=1,
        callbacks=[retried],
        verbose=False,
    )
    assert [(e[2], e[3]) for e in retried.of("start", 0)] == [(0, False), (1, True)]
    assert [e[2] for e in retried.of("end")] == ["completed"]


class Broken(hs.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_trial_start(self, trial: TrialInfo) -> None:
        self.calls += 1
        raise RuntimeError("tracker is down")

    def on_trial_end(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("tracker is still down")


def test_a_raising_callback_is_logged_once_and_the_sweep_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, recorder = Broken(), Recorder()
    with caplog.at_level(logging.ERROR, logger="hypersweep"):
        result = hs.tune(
            {"x": hs.uniform(-1, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=4,
            max_concurrent=2,
            callbacks=[broken, recorder],
            verbose=False,
        )
    assert result.counts() == {"completed": 4}
    assert broken.calls == 8  # still called after failing
    assert len(recorder.of("end")) == 4  # the next callback still sees every event
    errors = [r for r in caplog.records if "Callback Broken failed" in r.getMessage()]
    assert len(errors) == 1 and "tracker is down" in (errors[0].exc_text or "")


@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ([{"neptune": {}}], "callbacks.0: unknown callback 'neptune'"),
        ([{"tensorboard": {"logdir": "x"}}], "callbacks.0.tensorboard: "),
        ([{"mlflow": {}, "wandb": {}}], "callbacks.0: expected a Callback"),
        ({"mlflow": {}}, "callbacks: expected a list"),
        ([{"mlflow": "http://x"}], "callbacks.0.mlflow: expected a mapping"),
    ],
)
def test_bad_callbacks_are_refused_before_anything_starts(
    callbacks: Any, message: str, run_dir: Path
) -> None:
    with pytest.raises(hs.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
            name="bad",
            callbacks=callbacks,
        )
    assert not (run_dir / "runs" / "bad").exists()


def test_sweep_files_declare_callbacks(run_dir: Path) -> None:
    sweep = run_dir / "sweep.yaml"
    sweep.write_text(
        textwrap.dedent(
            f"""
            objective: {Path(objectives.__file__)}:learning_curve
            space: {{quality: {{type: float, low: 0, high: 1}}}}
            metric: loss
            n_trials: 2
            name: filed
            callbacks:
              - tensorboard: {{log_dir: {run_dir / "tb"}}}
            """
        )
    )
    run = [PYTHON, "-m", "hypersweep._cli"]
    done = subprocess.run(
        [*run, "run", str(sweep), "--no-live"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (run_dir / "tb" / "filed").glob("trial-*")) == [
        "trial-0",
        "trial-1",
    ]
    more = subprocess.run(
        [*run, "run", str(sweep), "--no-live", "--resume", "--n-trials", "3"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert more.returncode == 0, more.stderr
    assert (run_dir / "tb" / "filed" / "trial-2").is_dir()
    # `hypersweep resume` rebuilds the callbacks from the stored sweep, without the file.
    experiments = len(list((run_dir / "tb" / "filed").glob("events.out.tfevents.*")))
    sweep.rename(run_dir / "moved.yaml")
    resumed = subprocess.run(
        [*run, "resume", "filed", "--no-live"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    after = len(list((run_dir / "tb" / "filed").glob("events.out.tfevents.*")))
    assert after == experiments + 1
    sweep = run_dir / "moved.yaml"
    bad = sweep.read_text().replace("tensorboard:", "tensorbord:")
    sweep.write_text(bad)
    refused = subprocess.run(
        [*run, "validate", str(sweep)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "callbacks.0: unknown callback 'tensorbord'" in refused.stderr


def test_importing_hypersweep_imports_no_tracker() -> None:
    code = (
        "import sys, hypersweep, hypersweep.integrations; "
        "print(sorted(m for m in ('mlflow', 'wandb', 'tensorboard', 'prometheus_client') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [PYTHON, "-c", code],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "[]"
