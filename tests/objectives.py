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


def wait_for_release(config: dict[str, Any]) -> float:
    """Reports step 0, then waits until the file ``HYPERSWEEP_TEST_RELEASE`` exists."""
    hs.report(0, loss=config["x"])
    release = Path(os.environ["HYPERSWEEP_TEST_RELEASE"])
    while not release.exists():
        time.sleep(0.05)
    return float(config["x"])
