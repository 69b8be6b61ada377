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


def two_objectives(config: dict[str, Any]) -> dict[str, float]:
    """Two objectives on one trade-off line (every feasible trial is on the Pareto front) and a
    memory metric; fails if the config holds keys of the branch it did not choose."""
    _mark("start")
    optimizer = config["optimizer"]
    key = "lr" if optimizer["name"] == "sgd" else "beta"
    if set(optimizer) != {"name", key}:
        raise ValueError(f"keys of another branch in {optimizer}")
    x = float(optimizer[key])
    return {"loss": x, "size": 1.0 - x, "memory_gb": 10.0 * x}


#: Trial n's quality (as in tests/objectives.py): with one trial at a time, ASHA's decisions
#: are known in advance, the same on Kubernetes as locally.
ASHA_QUALITY = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8]


def asha_curve(config: dict[str, Any]) -> float:
    """loss = 1 - quality + 1/(step+1) over steps 0..9, checkpointed each step; each start
    marks and prints the step it starts from, so a resume is visible in the pod's log."""
    context = hs.get_trial_context()
    assert context is not None
    quality = ASHA_QUALITY[context.trial_number % len(ASHA_QUALITY)]
    state = hs.restore()
    start = state["step"] + 1 if state else 0
    _mark(f"start-step{start}")
    print(f"trial {context.trial_number} starts at step {start}", flush=True)
    loss = float("inf")
    for step in range(start, 10):
        time.sleep(float(config.get("pause", 0.0)))
        loss = 1.0 - quality + 1.0 / (step + 1)
        hs.checkpoint({"step": step}, step=step)
        hs.report(step, loss=loss)
    return loss


def lr_schedule_toy(config: dict[str, Any]) -> float:
    """PBT's point (as in tests/objectives.py): theta shrinks by (1 - lr) per step and the loss
    pays 0.5 * lr, so a large lr is best early and a small one late. Each start marks the step
    and theta it resumed from, so a clone's start from its parent's checkpoint is visible."""
    state = hs.restore()
    step0, theta = (0, 1.0) if state is None else (state["step"] + 1, state["theta"])
    _mark(f"start-step{step0}-theta{theta!r}")
    loss = theta**2 + 0.5 * config["lr"]
    for step in range(step0, int(config.get("steps", 16))):
        theta *= 1.0 - config["lr"]
        loss = theta**2 + 0.5 * config["lr"]
        hs.checkpoint({"step": step, "theta": theta}, step=step)
        hs.report(step, loss=loss)
        time.sleep(float(config.get("pause", 0.05)))
    return loss


def optuna_habit(trial: Any) -> float:
    """Written for Optuna (takes a trial): fails on every trial, as a systematic bug does."""
    _mark("start")
    return float(trial.suggest_float("lr", 0.0, 1.0))
