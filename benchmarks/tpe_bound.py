"""TPE's cost per trial as a sweep grows, and what a bounded history costs in quality.

Optuna's TPE reads every finished trial for every proposal, so its time per trial grows with
the sweep (optuna#2172, optuna#6230). ``BoundedHistorySampler`` shows it only the ``best`` best
plus the ``recent`` most recent trials. Two measurements, on Optuna's in-memory storage so that
what is timed is the sampler:

* cost: time per trial, per block of trials, for plain TPE up to ``--plain-trials`` and for
  the bounded one up to ``--bounded-trials`` (a trivial objective);
* quality: the best value after ``--quality-trials`` trials on benchmark functions (Branin,
  a shifted 6-D sphere, 6-D Rastrigin), plain against bounded (``--quality-best`` and
  ``--quality-recent``, small so that the bound is active), over several seeds.

    python benchmarks/tpe_bound.py [--plain-trials 5000] [--bounded-trials 20000]

Writes benchmarks/results/tpe_bound.json (arguments, every block, every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from hypersweep.strategies import BoundedHistorySampler

RESULTS = Path(__file__).resolve().parent / "results"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def branin(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 10)
    y = trial.suggest_float("y", 0, 15)
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10  # min 0.397887


def sphere6(trial: optuna.Trial) -> float:
    return sum((trial.suggest_float(f"x{i}", -5, 5) - 1.5) ** 2 for i in range(6))  # min 0


def rastrigin6(trial: optuna.Trial) -> float:
    xs = [trial.suggest_float(f"x{i}", -5.12, 5.12) for i in range(6)]
    return 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)  # min 0


FUNCTIONS: dict[str, Callable[[optuna.Trial], float]] = {
    "branin": branin,
    "sphere6": sphere6,
    "rastrigin6": rastrigin6,
}


def _sampler(seed: int, bound: tuple[int, int] | None) -> optuna.samplers.BaseSampler:
    tpe = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if bound is None:
        return tpe
    return BoundedHistorySampler(tpe, best=bound[0], recent=bound[1])


def cost(trials: int, block: int, bound: tuple[int, int] | None) -> list[float]:
    """Milliseconds per trial in each block of ``block`` trials."""
    study = optuna.create_study(sampler=_sampler(0, bound))
    blocks = []
    for _ in range(trials // block):
        started = time.perf_counter()
        study.optimize(
            lambda t: t.suggest_float("x", -5, 5) ** 2 + t.suggest_float("y", -5, 5) ** 2,
            n_trials=block,
        )
        blocks.append((time.perf_counter() - started) / block * 1000)
    return blocks


def quality(name: str, trials: int, seed: int, bound: tuple[int, int] | None) -> float:
    study = optuna.create_study(sampler=_sampler(seed, bound))
    study.optimize(FUNCTIONS[name], n_trials=trials)
    return float(study.best_value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plain-trials", type=int, default=5000)
    parser.add_argument("--bounded-trials", type=int, default=20000)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--best", type=int, default=1000)
    parser.add_argument("--recent", type=int, default=1000)
    parser.add_argument("--quality-trials", type=int, default=600)
    parser.add_argument("--quality-best", type=int, default=50)
    parser.add_argument("--quality-recent", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "tpe_bound.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    bound = (args.best, args.recent)
    plain_cost = cost(args.plain_trials, args.block, None)
    print("plain TPE ms/trial by block:", [round(b, 2) for b in plain_cost], flush=True)
    bounded_cost = cost(args.bounded_trials, args.block, bound)
    print("bounded TPE ms/trial by block:", [round(b, 2) for b in bounded_cost], flush=True)
    small = (args.quality_best, args.quality_recent)
    quality_rows: dict[str, Any] = {}
    for name in FUNCTIONS:
        plain = [quality(name, args.quality_trials, seed, None) for seed in range(args.seeds)]
        bounded = [quality(name, args.quality_trials, seed, small) for seed in range(args.seeds)]
        quality_rows[name] = {
            "plain_best_values": plain,
            "bounded_best_values": bounded,
            "plain_median": statistics.median(plain),
            "bounded_median": statistics.median(bounded),
        }
        print(name, quality_rows[name], flush=True)
    report = {
        "arguments": vars(args) | {"output": str(args.output)},
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cost_ms_per_trial_by_block": {
            "block": args.block,
            "plain": plain_cost,
            "bounded": bounded_cost,
        },
        "quality": quality_rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
