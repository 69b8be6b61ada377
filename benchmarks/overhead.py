"""Per-trial overhead: hypersweep's local launcher against Optuna and Ray Tune, in one run.

A trivial objective, 2 trials at a time, the same TPE sampler and seed everywhere, so that what
differs is the machinery around the objective: hypersweep's worker processes and storage,
Optuna's in-process threads, Ray Tune's actors. Ray Tune is slow here, so it gets as many trials
as fit in a time budget and is compared per trial.

    python benchmarks/overhead.py [--trials 1000] [--ray-budget 120]

Prints a table and writes benchmarks/results/overhead.json.
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

import optuna

import hypersweep as hs

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def trivial(config: dict[str, Any]) -> float:
    return (config["x"] - 2.0) ** 2 + (config["y"] + 1.0) ** 2


def run_hypersweep(trials: int, storage: Any, label: str, workdir: Path) -> dict[str, Any]:
    os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
    space = {"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10)}
    start = time.perf_counter()
    result = hs.tune(
        space,
        trivial,
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        strategy=optuna.samplers.TPESampler(seed=SEED),
        storage=storage,
        verbose=False,
        name=f"overhead-{label}",
    )
    wall = time.perf_counter() - start
    assert result.counts() == {"completed": trials}, result.counts()
    return {"trials": trials, "wall_s": wall, "best": result.best_value}


def run_optuna(trials: int, storage: Any) -> dict[str, Any]:
    def objective(trial: optuna.Trial) -> float:
        return trivial(
            {"x": trial.suggest_float("x", -10, 10), "y": trial.suggest_float("y", -10, 10)}
        )

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=SEED), storage=storage)
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=2)
    wall = time.perf_counter() - start
    return {"trials": trials, "wall_s": wall, "best": study.best_value}


def run_ray_tune(max_trials: int, budget_s: float, workdir: Path) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:

        def trainable(config: dict[str, Any]) -> dict[str, float]:
            return {"loss": trivial(config)}

        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.uniform(-10, 10), "y": tune.uniform(-10, 10)},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(
                    sampler=optuna.samplers.TPESampler(seed=SEED), metric="loss", mode="min"
                ),
                num_samples=max_trials,
                max_concurrent_trials=2,
                time_budget_s=budget_s,
            ),
            run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0),
        )
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
        done = [r for r in grid if r.metrics and "loss" in r.metrics]
        return {
            "trials": len(done),
            "wall_s": wall,
            "best": min(r.metrics["loss"] for r in done) if done else None,
        }
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--ray-budget", type=float, default=120.0)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        journal = lambda name: optuna.storages.JournalStorage(  # noqa: E731
            optuna.storages.journal.JournalFileBackend(str(workdir / f"{name}.log"))
        )
        results["optuna_inmemory_njobs2"] = run_optuna(args.trials, None)
        results["optuna_journal_njobs2"] = run_optuna(args.trials, journal("optuna"))
        results["hypersweep_local_journal"] = run_hypersweep(args.trials, None, "journal", workdir)
        results["hypersweep_local_inmemory"] = run_hypersweep(
            args.trials, optuna.storages.InMemoryStorage(), "memory", workdir
        )
        if not args.skip_ray:
            results["raytune_optunasearch"] = run_ray_tune(args.trials, args.ray_budget, workdir)

    for entry in results.values():
        entry["trials_per_s"] = entry["trials"] / entry["wall_s"]
        entry["ms_per_trial"] = 1000 * entry["wall_s"] / entry["trials"]
    reference = results["optuna_inmemory_njobs2"]["ms_per_trial"]
    for entry in results.values():
        entry["per_trial_vs_optuna_inmemory"] = entry["ms_per_trial"] / reference

    print(f"{'run':30} {'trials':>7} {'wall s':>8} {'trials/s':>9} {'ms/trial':>9} {'x optuna':>9}")
    for name, entry in results.items():
        print(
            f"{name:30} {entry['trials']:7d} {entry['wall_s']:8.2f} {entry['trials_per_s']:9.1f} "
            f"{entry['ms_per_trial']:9.2f} {entry['per_trial_vs_optuna_inmemory']:9.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "overhead",
        "objective": "trivial quadratic, 2 concurrent, TPESampler(seed=0)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {"hypersweep": hs.__version__, "optuna": optuna.__version__},
        "results": results,
        "target": "hypersweep_local_journal within 1.5x of optuna_inmemory_njobs2",
    }
    (RESULTS / "overhead.json").write_text(json.dumps(payload, indent=2))
    print(f"saved {RESULTS / 'overhead.json'}")


if __name__ == "__main__":
    main()
