"""Objectives the tests run in real worker processes (importable by reference)."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import hypersweep as hs


def quadratic(config: dict[str, Any]) -> float:
    """Minimum 0 at x=2, y=-1."""
    return (config["x"] - 2.0) ** 2 + (config.get("y", -1.0) + 1.0) ** 2


def categorical(config: dict[str, Any]) -> float:
    """Works with grid and categorical spaces: best at a=3, b='good'."""
    return abs(config["a"] - 3) + (0.0 if config["b"] == "good" else 1.0)


def learning_curve(config: dict[str, Any]) -> float:
    """Loss that decreases with steps; a higher ``quality`` is better at every step."""
    loss = 1.0
    for step in range(10):
        loss = (1.0 - config["quality"]) + 1.0 / (step + 1)
        hs.report(step, loss=loss)
    return loss


def fail_on_odd(config: dict[str, Any]) -> float:
    """Raises for odd ``n``; returns NaN for n == 4."""
    if config["n"] % 2:
        raise ValueError(f"odd n={config['n']} is not supported")
    if config["n"] == 4:
        return math.nan
    return float(config["n"])


def returns_dict(config: dict[str, Any]) -> dict[str, float]:
    return {"loss": config["x"] ** 2, "accuracy": 1.0 - config["x"] ** 2}


def crash_once(config: dict[str, Any]) -> dict[str, float]:
    """Checkpoints every step and SIGKILLs its own worker at step 3 on the first attempt."""
    context = hs.get_trial_context()
    assert context is not None
    state = hs.restore()
    start = 0 if state is None else state["step"] + 1
    total = 0.0 if state is None else state["total"]
    for step in range(start, 6):
        total += config["x"] * (step + 1)
        hs.checkpoint({"step": step, "total": total}, step=step)
        hs.report(step, loss=total)
        if step == 3 and context.attempt == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return {"loss": total, "resumed_from": float(start), "attempt": float(context.attempt)}


def always_crash(config: dict[str, Any]) -> float:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


def slow_steps(config: dict[str, Any]) -> dict[str, float]:
    """Checkpointed steps of ``HYPERSWEEP_TEST_STEP`` seconds; records pids and starts."""
    marker = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    marker.mkdir(parents=True, exist_ok=True)
    context = hs.get_trial_context()
    assert context is not None
    (marker / f"pid-{os.getpid()}").write_text(str(context.trial_number))
    state = hs.restore()
    start = 0 if state is None else state["step"] + 1
    with open(marker / f"starts-{context.trial_number}", "a") as handle:
        handle.write(f"{start}\n")
    delay = float(os.environ.get("HYPERSWEEP_TEST_STEP", "0.1"))
    value = 0.0
    for step in range(start, 5):
        time.sleep(delay)
        value = config["x"] + step
        hs.checkpoint({"step": step}, step=step)
        hs.report(step, loss=value)
    return {"loss": value, "resumed_from": float(start)}


ASHA_QUALITY = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8]


def _record_start(number: int, start: int) -> None:
    markers = os.environ.get("HYPERSWEEP_TEST_MARKERS")
    if markers:
        Path(markers).mkdir(parents=True, exist_ok=True)
        with open(Path(markers) / f"starts-{number}", "a") as handle:
            handle.write(f"{start}\n")


def asha_curve(config: dict[str, Any]) -> float:
    """Known curves: loss = 1 - quality + 1/(step+1), quality by trial number; checkpointed."""
    context = hs.get_trial_context()
    assert context is not None
    quality = ASHA_QUALITY[context.trial_number % len(ASHA_QUALITY)]
    state = hs.restore()
    start = 0 if state is None else state["step"] + 1
    _record_start(context.trial_number, start)
    delay = float(os.environ.get("HYPERSWEEP_TEST_STEP", "0"))
    loss = math.inf
    for step in range(start, 10):
        time.sleep(delay)
        loss = 1.0 - quality + 1.0 / (step + 1)
        hs.checkpoint({"step": step}, step=step)
        hs.report(step, loss=loss)
    return loss


def asha_curve_no_checkpoint(config: dict[str, Any]) -> float:
    loss = math.inf
    for step in range(10):
        loss = 1.0 - config["quality"] + 1.0 / (step + 1)
        hs.report(step, loss=loss)
    return loss


def lr_schedule_toy(config: dict[str, Any]) -> float:
    """A toy where the best learning rate falls during training (Jaderberg et al.'s point).

    theta shrinks by (1 - lr) per step, and the loss pays 0.5 * lr as a noise floor: a large lr
    is best early, a small one late, so no fixed lr does as well as a schedule.
    """
    context = hs.get_trial_context()
    state = hs.restore()
    step0, theta = (0, 1.0) if state is None else (state["step"] + 1, state["theta"])
    if context is not None:
        _record_start(context.trial_number, step0)
    loss = theta**2 + 0.5 * config["lr"]  # a clone may start from a finished checkpoint
    for step in range(step0, 40):
        theta *= 1.0 - config["lr"]
        loss = theta**2 + 0.5 * config["lr"]
        hs.checkpoint({"step": step, "theta": theta}, step=step)
        hs.report(step, loss=loss)
    return loss


def sleepy_quadratic(config: dict[str, Any]) -> float:
    """``quadratic`` after ``HYPERSWEEP_TEST_STEP`` seconds (a driver can be killed meanwhile).

    Trials numbered ``HYPERSWEEP_TEST_HOLD_FROM`` or more never end: their driver is killed.
    """
    time.sleep(float(os.environ.get("HYPERSWEEP_TEST_STEP", "0")))
    hold_from = os.environ.get("HYPERSWEEP_TEST_HOLD_FROM")
    context = hs.get_trial_context()
    if hold_from is not None and context is not None and context.trial_number >= int(hold_from):
        while True:
            time.sleep(1)
    penalty = float(config.get("n", 0)) + len(str(config.get("c", "")))
    return (config.get("x", 2.0) - 2.0) ** 2 + penalty


def ray_tune_habit(config: dict[str, Any]) -> float:
    """Reports a dict, as Ray Tune's ``tune.report({...})``: a mistake in hypersweep."""
    hs.report({"loss": config["x"]})  # type: ignore[arg-type]
    return config["x"]


def optuna_habit(trial: Any) -> float:
    """Takes an Optuna trial, as Optuna's objectives do: a mistake in hypersweep."""
    return float(trial.suggest_float("x", 0.0, 1.0))


def fails_after_the_first(config: dict[str, Any]) -> float:
    """Trial 0 succeeds; trials 1-3 raise; later ones succeed."""
    context = hs.get_trial_context()
    assert context is not None
    if 1 <= context.trial_number <= 3:
        raise RuntimeError(f"trial {context.trial_number} is unlucky")
    return config["x"]


def waits_for_every_driver(config: dict[str, Any]) -> float:
    """Records which driver runs it, then waits until each of the test's drivers ran a trial.

    So no driver can finish the sweep alone: every one of ``HYPERSWEEP_TEST_DRIVERS`` drivers
    must claim a trial before any trial ends. A worker's parent process is its driver.
    """
    marker = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    marker.mkdir(parents=True, exist_ok=True)
    context = hs.get_trial_context()
    assert context is not None
    (marker / f"driver-{os.getppid()}-trial-{context.trial_number}").write_text("")
    with open(marker / f"starts-{context.trial_number}", "a") as handle:
        handle.write("0\n")
    wanted = int(os.environ["HYPERSWEEP_TEST_DRIVERS"])
    deadline = time.monotonic() + 60
    while len({p.name.split("-")[1] for p in marker.glob("driver-*")}) < wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {wanted} drivers started a trial")
        time.sleep(0.01)
    return float(config["x"])


def wait_for_release(config: dict[str, Any]) -> float:
    """Reports step 0, then waits until the file ``HYPERSWEEP_TEST_RELEASE`` exists."""
    hs.report(0, loss=config["x"])
    release = Path(os.environ["HYPERSWEEP_TEST_RELEASE"])
    while not release.exists():
        time.sleep(0.05)
    return float(config["x"])
