"""How close each multi-objective strategy gets to ZDT1's true Pareto front.

ZDT1 (Zitzler, Deb and Thiele, 2000) with 3 variables in [0, 1]: minimize f1 = x0 and
f2 = g (1 - sqrt(f1 / g)), g = 1 + 9 (x1 + x2) / 2; the true front is f2 = 1 - sqrt(f1). Each
strategy runs the same budget of trials through ``hypersweep.tune`` (2 trials at a time) for
several seeds; the figure is the inverted generational distance (IGD: the mean distance from
1001 points of the true front to the nearest trial of the returned front; lower is better) and
the size of the front.

    python benchmarks/zdt1_front.py [--trials 1000] [--seeds 3]

Writes benchmarks/results/zdt1_front.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import multi_objectives  # noqa: E402

import hypersweep as hs  # noqa: E402

TRUE_FRONT = [(i / 1000, 1 - math.sqrt(i / 1000)) for i in range(1001)]


def igd(points: list[tuple[float, float]]) -> float:
    """Mean distance from the true front to the nearest returned point."""
    return sum(min(math.dist(p, q) for p in points) for q in TRUE_FRONT) / len(TRUE_FRONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", default="nsga2,nsga3,tpe,random")
    args = parser.parse_args()
    space = {f"x{i}": hs.uniform(0, 1) for i in range(3)}
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for strategy in args.strategies.split(","):
            for seed in range(args.seeds):
                started = time.perf_counter()
                result = hs.tune(
                    space,
                    multi_objectives.zdt1,
                    metric=["f1", "f2"],
                    mode="min",
                    strategy=strategy,
                    n_trials=args.trials,
                    max_concurrent=2,
                    seed=seed,
                    storage=f"{folder}/{strategy}-{seed}.log",
                    name=f"zdt1-{strategy}-{seed}",
                    verbose=False,
                )
                points = [(t.values[0], t.values[1]) for t in result.best_trials if t.values]
                runs.append(
                    {
                        "strategy": strategy,
                        "seed": seed,
                        "igd": igd(points),
                        "front_size": len(points),
                        "seconds": time.perf_counter() - started,
                    }
                )
                print(runs[-1], flush=True)
    summary = {
        strategy: {
            "igd_median": statistics.median(r["igd"] for r in runs if r["strategy"] == strategy),
            "igd_max": max(r["igd"] for r in runs if r["strategy"] == strategy),
            "front_size_median": statistics.median(
                r["front_size"] for r in runs if r["strategy"] == strategy
            ),
        }
        for strategy in args.strategies.split(",")
    }
    out = ROOT / "benchmarks" / "results" / "zdt1_front.json"
    out.write_text(
        json.dumps(
            {
                "problem": "ZDT1, 3 variables",
                "trials": args.trials,
                "seeds": args.seeds,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
