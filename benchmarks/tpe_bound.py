"""TPE's cost per trial as a sweep grows, and what a bounded history costs in quality.

Optuna's TPE reads every finished trial for every proposal, so its time per trial grows with
the sweep (optuna#2172, optuna#6230). ``BoundedHistorySampler`` shows it only a window: the
``best`` best trials, a uniform ``sample`` of all of them and the ``recent`` most recent ones.
Two measurements, on Optuna's in-memory storage so that what is timed is the sampler:

* cost (``--part cost``, timed: run it alone): time per trial, per block of trials, for plain
  TPE up to ``--plain-trials`` and for the bounded one (default window) up to
  ``--bounded-trials``, on a trivial objective;
* quality (``--part quality``, not timed): the best value after ``--quality-trials`` trials on
  benchmark functions (Branin, a shifted 6-D sphere, 6-D Rastrigin, 6-D Styblinski-Tang) for
  every seed, plain TPE against bounded TPE with windows small enough to be active (and random
  search for scale); ``--part default``: the same after ``--default-trials`` trials, plain TPE
  against the default window.

    python benchmarks/tpe_bound.py --part quality
    python benchmarks/tpe_bound.py --part default
    python benchmarks/tpe_bound.py --part cost

Each part writes its section of benchmarks/results/tpe_bound.json (its arguments, the load
average, every block and every seed) and keeps the other parts' sections.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
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


def styblinski_tang6(trial: optuna.Trial) -> float:
    xs = [trial.suggest_float(f"x{i}", -5, 5) for i in range(6)]
    # Shifted so that the minimum (at x_i = -2.903534) is 0; many local minima.
    return sum(x**4 - 16 * x**2 + 5 * x for x in xs) / 2 + 39.16616570377142 * len(xs)


FUNCTIONS: dict[str, Callable[[optuna.Trial], float]] = {
    "branin": branin,
    "sphere6": sphere6,
    "rastrigin6": rastrigin6,
    "styblinski_tang6": styblinski_tang6,
}

Window = tuple[int, int, int]  # best, sample, recent


def _default_window() -> Window:
    default = BoundedHistorySampler(optuna.samplers.TPESampler())
    return (default.best, default.sample, default.recent)


def _sampler(seed: int, window: Window | None) -> optuna.samplers.BaseSampler:
    tpe = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if window is None:
        return tpe
    best, sample, recent = window
    return BoundedHistorySampler(tpe, best=best, sample=sample, recent=recent, seed=seed)


def cost(trials: int, block: int, window: Window | None) -> list[float]:
    """Milliseconds per trial in each block of ``block`` trials."""
    study = optuna.create_study(sampler=_sampler(0, window))
    blocks = []
    for _ in range(trials // block):
        started = time.perf_counter()
        study.optimize(
            lambda t: t.suggest_float("x", -5, 5) ** 2 + t.suggest_float("y", -5, 5) ** 2,
            n_trials=block,
        )
        blocks.append((time.perf_counter() - started) / block * 1000)
    return blocks


def quality(name: str, trials: int, seed: int, window: Window | str | None) -> float:
    """The best value of ``trials`` trials on function ``name``; ``"random"``: random search."""
    if window == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        assert not isinstance(window, str)
        sampler = _sampler(seed, window)
    study = optuna.create_study(sampler=sampler)
    study.optimize(FUNCTIONS[name], n_trials=trials)
    return float(study.best_value)


def _label(window: Window | str | None) -> str:
    if window is None or isinstance(window, str):
        return window or "plain"
    return "best {} + sample {} + recent {}".format(*window)


def _compare(
    pool: ProcessPoolExecutor, trials: int, seeds: int, setups: list[Window | str | None]
) -> dict[str, Any]:
    """Every function, every setup, every seed: the best values, their median and range."""
    jobs = {
        (name, _label(setup), seed): pool.submit(quality, name, trials, seed, setup)
        for name in FUNCTIONS
        for setup in setups
        for seed in range(seeds)
    }
    rows: dict[str, Any] = {}
    for name in FUNCTIONS:
        rows[name] = {}
        for setup in setups:
            values = [jobs[name, _label(setup), seed].result() for seed in range(seeds)]
            rows[name][_label(setup)] = {
                "best_values": values,
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
        print(name, {k: round(v["median"], 4) for k, v in rows[name].items()}, flush=True)
    return rows


def _window(text: str) -> Window:
    best, sample, recent = (int(part) for part in text.split(","))
    return best, sample, recent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("cost", "quality", "default"), required=True)
    parser.add_argument("--plain-trials", type=int, default=5000)
    parser.add_argument("--bounded-trials", type=int, default=30000)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--quality-trials", type=int, default=1000)
    parser.add_argument(
        "--windows",
        type=_window,
        nargs="+",
        default=[(25, 150, 25), (100, 0, 100)],
        help="best,sample,recent windows compared at --quality-trials",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--default-trials", type=int, default=3000)
    parser.add_argument("--default-seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="processes (quality only)")
    parser.add_argument("--output", type=Path, default=RESULTS / "tpe_bound.json")
    args = parser.parse_args()
    section: dict[str, Any] = {
        "arguments": vars(args) | {"output": str(args.output)},
        "optuna": optuna.__version__,
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
    }
    if args.part == "cost":
        window = _default_window()
        plain_cost = cost(args.plain_trials, args.block, None)
        print("plain TPE ms/trial by block:", [round(b, 2) for b in plain_cost], flush=True)
        bounded_cost = cost(args.bounded_trials, args.block, window)
        print("bounded TPE ms/trial by block:", [round(b, 2) for b in bounded_cost], flush=True)
        section["window"] = _label(window)
        section["ms_per_trial_by_block"] = {
            "block": args.block,
            "plain": plain_cost,
            "bounded": bounded_cost,
        }
    elif args.part == "quality":
        with ProcessPoolExecutor(args.jobs) as pool:
            section["trials"] = args.quality_trials
            section["seeds"] = args.seeds
            section["functions"] = _compare(
                pool, args.quality_trials, args.seeds, [None, "random", *args.windows]
            )
    else:
        window = _default_window()
        with ProcessPoolExecutor(args.jobs) as pool:
            section["trials"] = args.default_trials
            section["seeds"] = args.default_seeds
            section["functions"] = _compare(
                pool, args.default_trials, args.default_seeds, [None, window]
            )
    section["loadavg_after"] = os.getloadavg()
    # Read now, not at the start: the other part may have written meanwhile.
    report = json.loads(args.output.read_text()) if args.output.exists() else {}
    report = {part: report[part] for part in ("cost", "quality", "default") if part in report}
    report[args.part] = section
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
