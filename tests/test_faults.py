"""Faults: killed workers, a killed driver, Ctrl-C. Nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import objectives
import pytest
from conftest import PYTHON, python_env

import hypersweep as hs
from hypersweep.orchestrator._checkpoints import checkpoint_step, latest_checkpoint
from hypersweep.testing import wait_until


def test_a_killed_worker_is_retried_from_its_checkpoint() -> None:
    result = hs.tune(
        {"x": hs.uniform(1, 2)},
        objectives.crash_once,
        metric="loss",
        n_trials=3,
        max_concurrent=2,
        seed=0,
    )
    assert result.counts() == {"completed": 3}
    for trial in result.trials:
        assert trial.attempts == 2
        assert trial.metrics["resumed_from"] == 4.0  # continued after the step-3 checkpoint
        assert trial.metrics["attempt"] == 1.0
        expected = sum(trial.config["x"] * (step + 1) for step in range(6))
        assert trial.value == pytest.approx(expected)  # same as an uninterrupted run
        assert trial.checkpoint and Path(trial.checkpoint).is_dir()


def test_a_trial_fails_after_max_retries() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)}, objectives.always_crash, metric="loss", n_trials=2, max_retries=1
    )
    assert result.counts() == {"failed": 2}
    for trial in result.trials:
        assert trial.attempts == 3  # 2 crashes counted + this record's 1-based count
        assert "killed by SIGKILL" in (trial.error or "")
        assert "gave up after 2 attempts" in (trial.error or "")


DRIVER = textwrap.dedent(
    """
    import sys
    import hypersweep as hs
    import objectives

    hs.tune({{"x": hs.uniform(0, 1)}}, objectives.slow_steps, metric="loss", n_trials={n},
            max_concurrent=2, name="crashy", resume=True, seed=0, storage={storage!r},
            verbose=False)
    """
)


def _pids_alive(markers: Path) -> list[int]:
    alive = []
    for marker in markers.glob("pid-*"):
        pid = int(marker.name.split("-")[1])
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split()[2] != "Z":
                    alive.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            pass
    return alive


def _checkpointed_step(run_dir: Path, number: int) -> int:
    """The step of trial ``number``'s newest complete checkpoint under ``run_dir``, or -1."""
    steps = [
        checkpoint_step(found)
        for folder in run_dir.rglob(f"trial-{number:05d}")
        if (found := latest_checkpoint(folder)) is not None
    ]
    return max((s for s in steps if s is not None), default=-1)


def run_kill_resume(run_dir: Path, storage: str | None, n_trials: int = 8) -> hs.SweepResult:
    """Start a driver, SIGKILL it mid-sweep, resume it, and return the final result."""
    markers = run_dir / "markers"
    env = {**python_env(), "HYPERSWEEP_TEST_MARKERS": str(markers), "HYPERSWEEP_TEST_STEP": "0.15"}
    script = run_dir / "driver.py"
    script.write_text(DRIVER.format(n=n_trials, storage=storage))
    driver = subprocess.Popen([PYTHON, str(script)], env=env)

    def done_and_running() -> bool:
        if not (run_dir / "runs" / "crashy").exists() and storage is None:
            return False
        try:
            counts = hs.load("crashy", storage).counts()
        except hs.ConfigError:
            return False
        running = [t for t in hs.load("crashy", storage).trials if t.state == "running"]
        # Kill once a running trial has a checkpoint to resume from.
        return counts.get("completed", 0) >= 2 and any(t.checkpoint for t in running)

    def running_with_checkpoint() -> bool:
        # A running trial with a checkpoint and steps left, so the kill interrupts one that
        # must resume past step 0 (waiting on the checkpoint itself, not on a guessed sleep).
        if not done_and_running():
            return False
        running = [t.number for t in hs.load("crashy", storage).trials if t.state == "running"]
        return any(0 <= _checkpointed_step(run_dir, n) <= 2 for n in running)

    wait_until(running_with_checkpoint, timeout=60)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = hs.load("crashy", storage)
    interrupted = {t.number for t in before.trials if t.state == "running"}
    assert interrupted
    # Where each interrupted trial must resume: one past its newest complete checkpoint.
    resume_at = {n: _checkpointed_step(run_dir, n) + 1 for n in interrupted}
    assert max(resume_at.values()) >= 1, resume_at
    wait_until(lambda: not _pids_alive(markers), timeout=10)  # workers died with their driver

    resumed = subprocess.run([PYTHON, str(script)], env=env, timeout=120)
    assert resumed.returncode == 0
    result = hs.load("crashy", storage)
    assert result.counts() == {"completed": n_trials}
    assert sorted(t.number for t in result.trials) == list(range(n_trials))
    completed_before = {t.number: t.config for t in before.trials if t.state == "completed"}
    for trial in result.trials:
        if trial.number in completed_before:
            assert trial.config == completed_before[trial.number]  # kept, not rerun
            assert (markers / f"starts-{trial.number}").read_text().split() == ["0"]
        starts = [int(s) for s in (markers / f"starts-{trial.number}").read_text().split()]
        if trial.number in interrupted:
            assert len(starts) == 2 and starts[1] == resume_at[trial.number], (starts, resume_at)
    assert not _pids_alive(markers)
    return result


@pytest.mark.slow
def test_driver_sigkill_then_resume_is_exact(run_dir: Path) -> None:
    run_kill_resume(run_dir, storage=None)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_resume_finishes(run_dir: Path) -> None:
    markers = run_dir / "markers"
    env = {**python_env(), "HYPERSWEEP_TEST_MARKERS": str(markers), "HYPERSWEEP_TEST_STEP": "0.2"}
    script = run_dir / "driver.py"
    script.write_text(DRIVER.format(n=6, storage=None))
    driver = subprocess.Popen([PYTHON, str(script)], env=env, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(list(markers.glob("starts-*"))) >= 2, timeout=60)
    time.sleep(0.5)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=30)
    assert driver.returncode != 0 and "KeyboardInterrupt" in stderr
    stopped = hs.load("crashy")
    assert stopped.counts().get("interrupted", 0) >= 1
    assert "running" not in stopped.counts()  # nothing left half-way
    assert not _pids_alive(markers)
    assert subprocess.run([PYTHON, str(script)], env=env, timeout=120).returncode == 0
    result = hs.load("crashy")
    assert result.counts() == {"completed": 6}
    assert sorted(t.number for t in result.trials) == list(range(6))
