"""A large objective on fresh Ray actors: put in the object store once, or sent to each actor.

An objective that closes over a large object (a 64 MB array standing in for a dataset or a
model) runs as 8 trials, 2 at a time, on fresh actors (``reuse_actors=False``), against the
same sweep with a small objective. The difference is what shipping the objective costs.

    python benchmarks/ray_large_objective.py [--mb 64] [--trials 8] [--output PATH]

Prints the two times and writes benchmarks/results/ray_large_objective.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any


def _sweep(objective: Any, trials: int, workdir: str) -> float:
    import hypersweep as hs
    from hypersweep.launchers import RayLauncher

    began = time.perf_counter()
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objective,
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        storage=f"{workdir}/{time.time_ns()}.journal",
        launcher=RayLauncher(reuse_actors=False),
    )
    assert result.counts() == {"completed": trials}, result.counts()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--output", default=str(Path(__file__).parent / "results" / "ray_large_objective.json")
    )
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    blob = os.urandom(args.mb * 2**20)

    def small(config: dict[str, Any]) -> float:
        return float(config["x"])

    def large(config: dict[str, Any]) -> float:
        return float(config["x"]) + 0.0 * len(blob)

    with tempfile.TemporaryDirectory() as workdir:
        _sweep(small, 2, workdir)  # warm up Ray's worker pool
        small_s = _sweep(small, args.trials, workdir)
        large_s = _sweep(large, args.trials, workdir)
    ray.shutdown()
    row = {
        "objective_mb": args.mb,
        "trials": args.trials,
        "fresh_actors": args.trials,
        "small_objective_s": round(small_s, 3),
        "large_objective_s": round(large_s, 3),
        "added_by_large_objective_s": round(large_s - small_s, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(row, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
