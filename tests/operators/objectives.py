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


def gang_steps(config: dict[str, Any]) -> dict[str, float]:
    """Two replicas that step together over ``MASTER_ADDR``/``MASTER_PORT`` (plain sockets, one
    byte per step each way), so that losing either breaks the other; rank 0 checkpoints and
    reports each step, and every start resumes from the latest checkpoint."""
    import socket

    context = hs.get_trial_context()
    assert context is not None
    state = hs.restore()
    start = state["step"] + 1 if state else 0
    _mark(f"start-rank{context.rank}-step{start}")
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if context.rank == 0:
        server = socket.create_server(("0.0.0.0", port), reuse_port=False)
        server.settimeout(120)
        peer, _ = server.accept()
    else:
        deadline = time.monotonic() + 120
        while True:
            try:
                peer = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    peer.settimeout(60)
    steps = int(config.get("steps", 30))
    loss = float("nan")
    for step in range(start, steps):
        peer.sendall(b"s")
        if peer.recv(1) != b"s":
            raise ConnectionError(f"rank {context.rank}: the peer went away at step {step}")
        time.sleep(float(config.get("pause", 0.2)))
        loss = (config["lr"] - 0.3) ** 2 + 1.0 / (step + 1)
        if context.rank == 0:
            hs.checkpoint({"step": step})
        hs.report(step, loss=loss)
    peer.close()
    return {"loss": loss}


def optuna_habit(trial: Any) -> float:
    """Written for Optuna (takes a trial): fails on every trial, as a systematic bug does."""
    _mark("start")
    return float(trial.suggest_float("lr", 0.0, 1.0))
