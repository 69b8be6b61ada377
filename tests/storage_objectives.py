"""Objectives of the object-storage tests (imported by name in worker processes)."""

from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path
from typing import Any

import numpy as np
from objectives import ASHA_QUALITY

import hypersweep as hs
from hypersweep.orchestrator import _checkpoints, _reporting


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


def _record(name: str, **data: Any) -> None:
    import json

    markers = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{name}.json").write_text(json.dumps(data))


def _kill_once_uploading(prefix: str, options: dict[str, Any]) -> None:
    """SIGKILL this process as soon as one object under ``prefix`` is in the bucket: the rest
    of what it uploads is still on its way."""
    import signal
    import threading

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    bucket_path = prefix.split("://", 1)[1]

    def watch() -> None:
        while True:
            try:
                if fs.find(bucket_path):
                    os.kill(os.getpid(), signal.SIGKILL)
            except FileNotFoundError:
                pass
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def rank_parts_dcp(config: dict[str, Any]) -> float:
    """Each rank of a gloo gang saves its own shard with ``torch.distributed.checkpoint`` into
    its own local folder (as on machines that share nothing) and hands it to
    ``hs.checkpoint(folder, all_ranks=True)``; resumed, every rank loads the merged folder.

    In attempt 0, rank ``kill_rank`` also writes leftover files into its second checkpoint and
    SIGKILLs itself once the first of them is in the bucket. Each rank records what it restored.
    """
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    context = hs.get_trial_context()
    assert context is not None
    rank, attempt = context.rank, context.attempt
    dist.init_process_group("gloo")
    state = {f"rank{rank}.weight": torch.zeros(2**16), "epoch": torch.tensor(-1)}
    restored = hs.restore()
    if restored is not None:
        dcp.load(state, checkpoint_id=restored)
    start = int(state["epoch"]) + 1
    weight = state[f"rank{rank}.weight"]
    expected = float(start * 10 + rank) if start else 0.0
    _record(
        f"dcp-a{attempt}-r{rank}",
        start=start,
        restored=context.restore_path,
        intact=bool(torch.all(weight == expected - 10 if start else weight == 0.0)),
        files=sorted(os.listdir(restored)) if restored is not None else [],
    )
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"dcp-{os.getpid()}-{attempt}-{rank}"
    for epoch in range(start, config["epochs"]):
        state[f"rank{rank}.weight"] = torch.full((2**16,), float(epoch * 10 + rank))
        state["epoch"] = torch.tensor(epoch)
        folder = work / f"epoch-{epoch}"
        dcp.save(state, checkpoint_id=str(folder))
        if attempt == 0 and rank == config["kill_rank"] and epoch == 1:
            leftovers = folder / "leftovers"
            leftovers.mkdir()
            for i in range(20):
                np.save(leftovers / f"a0-{i:02d}.npy", np.full(2**19, i, dtype=np.float64))
            trial_dir = _checkpoints.trial_checkpoint_dir(
                context.checkpoint_dir, context.trial_number
            )
            target = _checkpoints.checkpoint_at(trial_dir, epoch + 1, context.checkpoint_options)
            _kill_once_uploading(f"{target}/leftovers", context.checkpoint_options)
        hs.checkpoint(str(folder), step=epoch, all_ranks=True)
        hs.report(epoch, loss=1.0 / (epoch + 1))
    dist.destroy_process_group()
    return 1.0 / config["epochs"]


def rank_parts_objects(config: dict[str, Any]) -> float:
    """Each rank of a gang checkpoints its own 32 MiB object with ``all_ranks=True``; rank
    ``fail_rank`` raises once after epoch 1's
    checkpoint and report, and the retried gang's ranks each record the object they restored."""
    context = hs.get_trial_context()
    assert context is not None
    rank, attempt = context.rank, context.attempt
    restored = hs.restore()
    _record(
        f"obj-a{attempt}-r{rank}",
        restored_rank=None if restored is None else restored["rank"],
        restored_epoch=None if restored is None else restored["epoch"],
        intact=restored is None or bool(np.all(restored["weights"] == restored["epoch"] + rank)),
    )
    start = 0 if restored is None else restored["epoch"] + 1
    for epoch in range(start, config["epochs"]):
        state = {
            "rank": rank,
            "epoch": epoch,
            "weights": np.full(4 * 2**20, float(epoch + rank)),
        }
        hs.checkpoint(state, step=epoch, all_ranks=True)
        hs.report(epoch, loss=1.0 / (epoch + 1))  # once rank 0 has committed it
        if attempt == 0 and rank == config["fail_rank"] and epoch == 1:
            raise RuntimeError("a rank fails once")
    return 1.0 / config["epochs"]


def reach_other_prefix(config: dict[str, Any]) -> dict[str, float]:
    """Checkpoints and restores with the sweep's key, then tries that key on another sweep's
    prefix (``HYPERSWEEP_TEST_OTHER``, an s3:// URL of an object there): reading the object,
    listing the prefix, writing into it. Each metric is 1.0 where the store allowed it."""
    from fsspec.core import url_to_fs

    context = hs.get_trial_context()
    assert context is not None
    path = hs.checkpoint({"weights": np.arange(1000)}, step=0)
    assert path is not None
    restored = _checkpoints.read_checkpoint(path, context.checkpoint_options)
    other = os.environ["HYPERSWEEP_TEST_OTHER"]
    fs, other_path = url_to_fs(other, skip_instance_cache=True, **context.checkpoint_options)

    def allowed(action: Any) -> float:
        try:
            action()
        except PermissionError:
            return 0.0
        return 1.0

    return {
        "loss": 0.0,
        "own_restored": float(np.array_equal(restored["weights"], np.arange(1000))),
        "read_other": allowed(lambda: fs.cat_file(other_path)),
        "list_other": allowed(lambda: fs.ls(posixpath.dirname(other_path), refresh=True)),
        "write_other": allowed(lambda: fs.pipe_file(f"{other_path}.mine", b"x")),
    }


def keeps_each_snapshot(config: dict[str, Any]) -> float:
    """Three asynchronous checkpoints of one array changed in place between them: each
    restored checkpoint must hold the array as it was at its call."""
    state = {"w": np.zeros(2**20)}
    paths = []
    for step in range(3):
        state["w"][:] = step
        paths.append(hs.checkpoint(state, step=step, asynchronous=True))
        state["w"][:] = -1.0  # changed right after the call, while it uploads
    context = hs.get_trial_context()
    assert context is not None
    _reporting._settle(context, wait=True)
    for step, path in enumerate(paths):
        assert path is not None and np.all(_checkpoints.read_checkpoint(path)["w"] == step), step
    return 0.0
