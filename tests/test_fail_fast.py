"""A bug that fails every trial stops the sweep at once, with the traceback, once."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import objectives
import pytest
from conftest import PYTHON, python_env

import hypersweep as hs


def _started(name: str) -> int:
    return sum(t.state != "queued" for t in hs.load(name).trials)


def test_a_report_of_a_dict_fails_fast_and_says_what_to_write() -> None:
    with pytest.raises(hs.SweepFailed) as failure:
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.ray_tune_habit,
            metric="loss",
            n_trials=30,
            max_concurrent=2,
            name="habit",
        )
    message = str(failure.value)
    assert "first 3 finished trials" in message
    assert "hs.report(step, loss=...)" in message
    assert message.count("Traceback") == 1  # the first failure's, not one per trial
    assert "ray_tune_habit" in message  # the objective's own frame
    result = hs.load("habit")
    assert result.counts().get("failed") == 3 and "completed" not in result.counts()
    assert _started("habit") <= 4  # not the whole budget: at most one more was running


def test_an_optuna_style_objective_fails_fast_and_says_what_to_write() -> None:
    with pytest.raises(hs.SweepFailed) as failure:
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.optuna_habit,
            metric="loss",
            n_trials=30,
            max_concurrent=4,
            name="optuna-habit",
        )
    message = str(failure.value)
    assert "first 4 finished trials" in message  # max_concurrent, being more than 3
    assert "def objective(config)" in message and "suggest_float" in message
    assert message.count("Traceback") == 1
    assert hs.load("optuna-habit").counts().get("failed") == 4
    assert _started("optuna-habit") <= 4 + 3


def test_one_success_first_means_no_fail_fast() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.fails_after_the_first,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        seed=0,
    )
    assert result.counts() == {"completed": 3, "failed": 3}
    assert result.stopped_reason is None


def test_max_failed_trials_is_an_explicit_limit() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.optuna_habit,
        metric="loss",
        n_trials=12,
        max_concurrent=1,
        max_failed_trials=5,
    )
    assert result.counts() == {"failed": 5, "queued": 7}
    assert result.stopped_reason and "max_failed_trials=5" in result.stopped_reason
    assert "def objective(config)" in (result.trials[0].error or "")


def test_a_failed_trial_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hypersweep")
    hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.fails_after_the_first,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        seed=0,
    )
    for number in (1, 2, 3):
        lines = [r for r in caplog.records if r.getMessage().startswith(f"Trial {number} failed")]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]


SWEEP = """
name: {name}
objective: objectives:{objective}
metric: loss
n_trials: 20
max_concurrent: 2
space:
  x: {{type: float, low: 0, high: 1}}
"""


@pytest.mark.parametrize(
    ("objective", "advice"),
    [("ray_tune_habit", "hs.report(step, loss=...)"), ("optuna_habit", "def objective(config)")],
)
def test_the_cli_exits_1_with_the_traceback_once(
    run_dir: Path, objective: str, advice: str
) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP.format(name=objective, objective=objective))
    run = subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", "run", "sweep.yaml", "--no-live"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    output = run.stdout + run.stderr
    assert output.count("Traceback") == 1, output
    assert advice in output
    assert hs.load(objective).counts().get("failed") == 3
