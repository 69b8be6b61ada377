"""Checkpoint throughput to a local folder and to a real S3 server, against a plain copy.

A state of ``--size-mib`` MiB (float32 numpy arrays of 64 MiB each, as a model's state dict)
is saved with ``hypersweep.checkpoint`` and restored with ``hypersweep.restore`` (through the
same functions a trial uses), to a local folder and to SeaweedFS's S3 gateway
(``hypersweep.testing.s3_server``, built by ``hack/seaweedfs/build.sh``). In the same run, the
same bytes (the pickled state, as a local file) are copied with plain fsspec
(``fs.put_file`` / ``fs.get_file``) to and from the same place: the throughput a checkpoint
library could at best reach there. Each figure is the best of ``--repeats`` runs (the machine
is shared: the best is the least disturbed).

Then asynchronous checkpoints: a training loop of ``--steps`` steps of ``--step-seconds`` each
(a sleep: the step of a model training on an accelerator, which leaves the host's CPUs free)
checkpoints a ``--hiding-size-mib`` MiB state after each step to S3, synchronously,
asynchronously (``asynchronous=True``), or not at all. ``hidden`` is the share of the synchronous
checkpointing time that the asynchronous loop does not add to training time.

    python benchmarks/checkpoint.py [--size-mib 1024] [--repeats 2]

Writes benchmarks/results/checkpoint.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import hypersweep as hs
from hypersweep.orchestrator import _checkpoints, _reporting
from hypersweep.testing._s3 import SEAWEEDFS_VERSION, s3_server

RESULTS = Path(__file__).resolve().parent / "results"
ARRAY_MIB = 64


def make_state(size_mib: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    count = max(1, size_mib // ARRAY_MIB)
    elements = ARRAY_MIB * 2**20 // 4
    return {f"layer{i}.weight": rng.random(elements, dtype=np.float32) for i in range(count)}


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def enter_trial(location: str, options: dict[str, Any], keep: int = 1) -> _reporting.TrialContext:
    """Run the trial-side API in this process, as a worker does for one trial."""
    context = _reporting.TrialContext(
        trial_number=0,
        config={},
        sweep_name="benchmark",
        checkpoint_dir=location,
        keep_checkpoints=keep,
        checkpoint_options=options,
    )
    _reporting._set_context(context)
    return context


def throughput(
    location: str, options: dict[str, Any], state: dict[str, Any], pickled: Path, repeats: int
) -> dict[str, Any]:
    size = pickled.stat().st_size
    mib = size / 2**20
    fs, root = _checkpoints.filesystem(location, options)
    fs.makedirs(root, exist_ok=True)
    copy_target = f"{root}/plain-copy.bin"
    restored_copy = pickled.with_suffix(".back")
    copy_save = best_of(repeats, lambda: fs.put_file(str(pickled), copy_target))
    copy_restore = best_of(repeats, lambda: fs.get_file(copy_target, str(restored_copy)))
    restored_copy.unlink()
    fs.rm_file(copy_target)

    enter_trial(location, options)
    save = best_of(repeats, lambda: hs.checkpoint(state, step=0))
    loaded: dict[str, Any] = {}
    restore = best_of(repeats, lambda: loaded.update(hs.restore()))
    assert all(np.array_equal(loaded[k], v) for k, v in state.items()), "restored state differs"
    _reporting._set_context(None)
    fs.rm(root, recursive=True)
    return {
        "bytes": size,
        "save_mib_s": round(mib / save, 1),
        "restore_mib_s": round(mib / restore, 1),
        "plain_copy_save_mib_s": round(mib / copy_save, 1),
        "plain_copy_restore_mib_s": round(mib / copy_restore, 1),
        "save_vs_plain_copy": round(copy_save / save, 3),
        "restore_vs_plain_copy": round(copy_restore / restore, 3),
    }


def train(state: dict[str, np.ndarray], steps: int, step_seconds: float, mode: str) -> float:
    """Seconds for ``steps`` steps of numpy work, checkpointing after each as ``mode`` says."""
    started = time.perf_counter()
    for step in range(steps):
        time.sleep(step_seconds)  # an accelerator's step: the host's CPUs stay free
        state["layer0.weight"][:8] += 1.0  # training changes the state in place
        if mode != "none":
            hs.checkpoint(state, step=step, asynchronous=mode == "async")
    context = _reporting.get_trial_context()
    assert context is not None
    _reporting._settle(context, wait=True)  # a trial's end waits for its last upload
    return time.perf_counter() - started


def hiding(
    location: str, options: dict[str, Any], state: dict[str, Any], steps: int, step_seconds: float
) -> dict[str, Any]:
    seconds = {}
    for mode in ("none", "sync", "async"):
        enter_trial(f"{location}/{mode}", options)
        seconds[mode] = train(state, steps, step_seconds, mode)
        _reporting._set_context(None)
    added_sync = seconds["sync"] - seconds["none"]
    added_async = seconds["async"] - seconds["none"]
    return {
        "steps": steps,
        "step_seconds": step_seconds,
        "train_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "checkpoint_seconds_added_sync": round(added_sync, 2),
        "checkpoint_seconds_added_async": round(added_async, 2),
        "hidden": round(1 - added_async / added_sync, 3) if added_sync > 0 else None,
    }


def asynchronous(s3: Any, args: argparse.Namespace) -> dict[str, Any]:
    options = s3.storage_options()
    small = make_state(args.hiding_size_mib)
    step_seconds = args.step_seconds
    if step_seconds <= 0:  # steps longer than a save, so that an upload can hide in one
        enter_trial(f"{s3.url}/probe", options)
        step_seconds = 1.5 * best_of(1, lambda: hs.checkpoint(small, step=0))
        _reporting._set_context(None)
    result = hiding(f"{s3.url}/hiding", options, small, args.steps, round(step_seconds, 2))
    result["state_mib"] = args.hiding_size_mib
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--step-seconds", type=float, default=0.0, help="0: 1.5 times one synchronous save"
    )
    parser.add_argument(
        "--only-async", action="store_true", help="rerun the asynchronous part only, into the JSON"
    )
    parser.add_argument("--hiding-size-mib", type=int, default=128)
    parser.add_argument("--output", type=Path, default=RESULTS / "checkpoint.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hs-checkpoint-bench-"))
    try:
        if args.only_async:
            results = json.loads(args.output.read_text())
            with s3_server(work / "seaweedfs") as s3:
                results["async_s3"] = asynchronous(s3, args)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
            print("async:", results["async_s3"], f"\nwrote {args.output}")
            return
        state = make_state(args.size_mib)
        pickled = work / "state.pkl"
        with open(pickled, "wb") as handle:
            pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        results: dict[str, Any] = {
            "state_mib": round(pickled.stat().st_size / 2**20, 1),
            "arrays": len(state),
            "repeats": args.repeats,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seaweedfs": SEAWEEDFS_VERSION,
        }
        results["local_folder"] = throughput(str(work / "folder"), {}, state, pickled, args.repeats)
        print("local folder:", results["local_folder"], flush=True)
        with s3_server(work / "seaweedfs") as s3:
            options = s3.storage_options()
            results["s3"] = throughput(f"{s3.url}/bench", options, state, pickled, args.repeats)
            print("s3:", results["s3"], flush=True)
            del state
            pickled.unlink()
            results["async_s3"] = asynchronous(s3, args)
            print("async:", results["async_s3"], flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
