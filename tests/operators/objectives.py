"""Objectives that trial pods of the operator tests run, loaded by file path by the entry point.

``HYPERSWEEP_TEST_MARKERS`` (set in the trial template) is a folder where each start of a trial
appends a line, so that tests can count how often each trial's objective started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import hypersweep as hs


def _mark(event: str) -> None:
    folder = os.environ.get("HYPERSWEEP_TEST_MARKERS")
    context = hs.get_trial_context()
    if folder and context is not None:
        path = Path(folder) / f"trial-{context.trial_number}.log"
        with open(path, "a") as handle:
            handle.write(f"{event} {os.getpid()} {context.restore_path}\n")


def learning_curve(config: dict[str, Any]) -> dict[str, float]:
    """A loss that falls with the steps and is lowest at lr = 0.3; checkpoints every step."""
    _mark("start")
    steps = int(config.get("steps", 9))
    pause = float(config.get("pause", 0.05))
    state = hs.restore()
    start = state["step"] + 1 if state else 0
    loss = float("nan")
    for step in range(start, steps):
        loss = (config["lr"] - 0.3) ** 2 + 1.0 / (step + 1)
        hs.checkpoint({"step": step})
        hs.report(step, loss=loss)
        time.sleep(pause)
    return {"loss": loss, "steps": float(steps)}


def wait_for_release(config: dict[str, Any]) -> float:
    """Reports once, then runs until the file ``$HYPERSWEEP_TEST_RELEASE`` exists."""
    _mark("start")
    hs.report(0, loss=config["lr"])
    release = Path(os.environ["HYPERSWEEP_TEST_RELEASE"])
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return float(config["lr"])
