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
(a sleep: the step of a model training on an accelerator, which leaves the host's CPUs free; or
numpy work on one core: training on this machine's CPUs) checkpoints a ``--hiding-size-mib`` MiB
state after each step to S3, synchronously, asynchronously (``asynchronous=True``), or not at
all. Recorded: how long each ``hs.checkpoint`` call blocked the loop, the loop's time, and the
wait for the last upload at the trial's end (apart). ``hidden`` is the share of the synchronous
checkpointing time that the asynchronous loop does not add to the loop's time.

Then a gang's checkpoint of ``--ranks-size-mib`` MiB: written by one process (rank 0 holding
every rank's state) against ``--ranks`` processes each writing its share at once, as
``hs.checkpoint(..., all_ranks=True)`` does, rank 0 committing once all parts are there.

    python benchmarks/checkpoint.py [--size-mib 1024] [--repeats 2] [--only async --only ranks]

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


def train(
    state: dict[str, np.ndarray], steps: int, step_seconds: float, mode: str, cpu_bound: bool
) -> tuple[float, list[float], float]:
    """Run ``steps`` steps, checkpointing after each as ``mode`` says: the loop's seconds, the
    seconds each ``hs.checkpoint`` call blocked it, and the wait for the last upload at the end.

    A step sleeps (an accelerator's step: the host's CPUs stay free) or, ``cpu_bound``, does
    numpy work for as long on one core (training on this machine's CPUs)."""
    work = np.random.default_rng(0).random((256, 256))
    blocked = []
    started = time.perf_counter()
    for step in range(steps):
        if cpu_bound:
            until = time.perf_counter() + step_seconds
            while time.perf_counter() < until:
                work = np.tanh(work @ work.T / 256.0)
        else:
            time.sleep(step_seconds)
        state["layer0.weight"][:8] += 1.0  # training changes the state in place
        if mode != "none":
            call = time.perf_counter()
            hs.checkpoint(state, step=step, asynchronous=mode == "async")
            blocked.append(time.perf_counter() - call)
    loop = time.perf_counter() - started
    context = _reporting.get_trial_context()
    assert context is not None
    ending = time.perf_counter()
    _reporting._settle(context, wait=True)  # a trial's end waits for its last upload
    return loop, blocked, time.perf_counter() - ending


def hiding(
    location: str,
    options: dict[str, Any],
    state: dict[str, Any],
    steps: int,
    step_seconds: float,
    cpu_bound: bool = False,
) -> dict[str, Any]:
    loops, blocked, final = {}, {}, {}
    for mode in ("none", "sync", "async"):
        enter_trial(f"{location}/{mode}-{int(cpu_bound)}", options)
        loops[mode], blocked[mode], final[mode] = train(state, steps, step_seconds, mode, cpu_bound)
        _reporting._set_context(None)
    added_sync = loops["sync"] - loops["none"]
    added_async = loops["async"] - loops["none"]
    return {
        "steps": steps,
        "step_seconds": step_seconds,
        "step": "numpy on one core" if cpu_bound else "sleep (an accelerator's step)",
        "loop_seconds": {k: round(v, 2) for k, v in loops.items()},
        "blocked_per_checkpoint_seconds": {
            mode: {
                "median": round(float(np.median(blocked[mode])), 3),
                "max": round(max(blocked[mode]), 3),
            }
            for mode in ("sync", "async")
        },
        "wait_for_last_upload_seconds": round(final["async"], 2),
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
    result = {"state_mib": args.hiding_size_mib}
    for cpu_bound in (False, True):
        name = "cpu_bound_steps" if cpu_bound else "idle_cpu_steps"
        result[name] = hiding(
            f"{s3.url}/hiding", options, small, args.steps, round(step_seconds, 2), cpu_bound
        )
        print(name, result[name], flush=True)
    return result


def _rank_writer(
    location: str, options: dict[str, Any], rank: int, world: int, mib: int, go: Any, done: Any
) -> None:
    """One rank of a gang (its own process): builds its part, waits for the start, writes it;
    rank 0 then commits the checkpoint."""
    from hypersweep.orchestrator import _rank_checkpoints

    state = make_state(mib)
    go.wait()
    _rank_checkpoints.write_part(
        location, state, rank=rank, world_size=world, token="bench", options=options
    )
    if rank == 0:
        _rank_checkpoints.commit(location, world_size=world, token="bench", step=0, options=options)
    done.put(time.perf_counter())


def ranks(s3: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A ``--ranks-size-mib`` MiB checkpoint of a gang: written by rank 0 alone (every
    rank's state gathered on it, as ``hs.checkpoint`` without ``all_ranks``), or by every rank
    its own share at once (``all_ranks=True``); each rank is a process."""
    import multiprocessing

    options = s3.storage_options()
    spawn = multiprocessing.get_context("spawn")
    result: dict[str, Any] = {"state_mib": args.ranks_size_mib}
    for world in (1, *args.ranks):
        times = []
        for repeat in range(args.repeats):
            go, done = spawn.Event(), spawn.Queue()
            where = f"{s3.url}/ranks/w{world}-{repeat}/trial-00000/checkpoint-000001"
            procs = [
                spawn.Process(
                    target=_rank_writer,
                    args=(where, options, rank, world, args.ranks_size_mib // world, go, done),
                )
                for rank in range(world)
            ]
            for proc in procs:
                proc.start()
            time.sleep(5)  # let every process import and build its part
            started = time.perf_counter()
            go.set()
            ended = max(done.get(timeout=600) for _ in procs)
            for proc in procs:
                proc.join()
            assert _checkpoints.latest_checkpoint(where.rsplit("/", 1)[0], options) == where
            times.append(ended - started)
        key = "rank0_writes_all" if world == 1 else f"{world}_ranks_in_parallel"
        result[key] = {
            "seconds": round(min(times), 2),
            "mib_s": round(args.ranks_size_mib / min(times), 1),
        }
        print(key, result[key], flush=True)
    single = result["rank0_writes_all"]["seconds"]
    for world in args.ranks:
        entry = result[f"{world}_ranks_in_parallel"]
        entry["speedup_vs_rank0"] = round(single / entry["seconds"], 2)
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
    parser.add_argument("--ranks-size-mib", type=int, default=256)
    parser.add_argument("--ranks", type=int, nargs="*", default=[2, 4])
    parser.add_argument(
        "--only",
        choices=["async", "ranks"],
        action="append",
        help="rerun these parts only, into the JSON",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "checkpoint.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hs-checkpoint-bench-"))
    try:
        only = set(args.only or []) | ({"async"} if args.only_async else set())
        if only:
            results = json.loads(args.output.read_text())
            with s3_server(work / "seaweedfs") as s3:
                if "async" in only:
                    results["async_s3"] = asynchronous(s3, args)
                if "ranks" in only:
                    results["ranks_s3"] = ranks(s3, args)
            args.output.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.output}")
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
            results["ranks_s3"] = ranks(s3, args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
