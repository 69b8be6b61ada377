"""Objectives of the object-storage tests (imported by name in worker processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from objectives import ASHA_QUALITY

import hypersweep as hs
from hypersweep.orchestrator import _checkpoints


def asynchronous_probe(config: dict[str, Any]) -> dict[str, float]:
    """Checkpoints 128 MiB asynchronously and reports what the store held at each point.

    ``visible_at_return``: whether the checkpoint was complete when ``checkpoint`` returned
    (it must not be: the upload goes on); ``snapshot_kept``: whether what was uploaded is the
    state as it was at the call, although the trial changed it right after; ``waited``: whether
    the next checkpoint call returned only once the first was complete.
    """
    context = hs.get_trial_context()
    assert context is not None
    trial_dir = _checkpoints.trial_checkpoint_dir(context.checkpoint_dir, context.trial_number)
    state = {"weights": np.full(16 * 2**20, 1.0)}
    started = time.perf_counter()
    path = hs.checkpoint(state, step=0, asynchronous=True)
    returned_after = time.perf_counter() - started
    visible = _checkpoints.latest_checkpoint(trial_dir, context.checkpoint_options) == path
    state["weights"][:] = 2.0  # training goes on, in place
    hs.checkpoint({"small": True}, step=1)
    assert path is not None
    first = _checkpoints.read_checkpoint(path, context.checkpoint_options)
    return {
        "loss": 0.0,
        "visible_at_return": float(visible),
        "snapshot_kept": float(bool(np.all(first["weights"] == 1.0))),
        "waited": 1.0,  # read_checkpoint above would have raised on a missing marker
        "returned_after": returned_after,
    }


def folder_checkpoint(config: dict[str, Any]) -> float:
    """Writes a framework-style checkpoint folder (two shard files and an index) each step and
    checks, when resumed, that the restored folder holds the files of its last step."""
    context = hs.get_trial_context()
    assert context is not None
    restored = hs.restore()
    start = 0
    if restored is not None:
        folder = Path(restored)
        start = int((folder / "index.txt").read_text()) + 1
        for rank in range(2):
            shard = np.load(folder / "shards" / f"rank-{rank}.npy")
            assert np.all(shard == start - 1), "a shard of another step was restored"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"folder-ckpt-{os.getpid()}"
    for step in range(start, 4):
        (work / "shards").mkdir(parents=True, exist_ok=True)
        for rank in range(2):
            np.save(work / "shards" / f"rank-{rank}.npy", np.full(1000, step))
        (work / "index.txt").write_text(str(step))
        hs.checkpoint(str(work), step=step)
        hs.report(step, loss=1.0 / (step + 1), start=float(start))
    return 1.0 / 4


def ray_asha_curve(config: dict[str, Any]) -> float:
    """``objectives.asha_curve``, recording at each start the Ray node it runs on and the
    checkpoint it restores from (``HYPERSWEEP_TEST_MARKERS``/starts-N.jsonl)."""
    import json

    import ray

    context = hs.get_trial_context()
    assert context is not None
    markers = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    markers.mkdir(parents=True, exist_ok=True)
    state = hs.restore()
    start = 0 if state is None else state["step"] + 1
    with open(markers / f"starts-{context.trial_number}.jsonl", "a") as handle:
        record = {
            "step": start,
            "node": ray.get_runtime_context().get_node_id(),
            "restore": context.restore_path,
        }
        handle.write(json.dumps(record) + "\n")
    quality = ASHA_QUALITY[context.trial_number % len(ASHA_QUALITY)]
    loss = float("inf")
    for step in range(start, 10):
        time.sleep(0.05)
        loss = 1.0 - quality + 1.0 / (step + 1)
        hs.checkpoint({"step": step}, step=step)
        hs.report(step, loss=loss)
    return loss
