"""Per-trial overhead: hypersweep's launchers against Optuna and Ray Tune, in one run.

A trivial objective, 2 trials at a time, the same TPE sampler and seed everywhere, so that what
differs is the machinery around the objective: hypersweep's worker processes and storage,
Optuna's in-process threads, Ray Tune's actors. Ray Tune is slow here, so it gets as many trials
as fit in a time budget and is compared per trial.

The Ray rows share one local Ray instance (2 CPUs): hypersweep's ``RayLauncher`` (trials as
placement groups of warm actors, the same journal storage as the local rows) against Ray Tune's
own ``Tuner``, on the trivial objective and on a small training objective (an sklearn MLP on
the digits data set, reporting its validation loss after each of 10 epochs, which both
frameworks see as intermediate results).

    python benchmarks/overhead.py [--trials 1000] [--ray-budget 120] [--ray-trials 200]
                                  [--mlp-trials 20]

Prints a table and writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

import hypersweep as hs

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def sampler() -> optuna.samplers.TPESampler:
    """The one sampler of every row: TPE, seeded, with the constant liar since two trials run
    at a time (what hypersweep's default "tpe" strategy uses for concurrent trials)."""
    return optuna.samplers.TPESampler(seed=SEED, constant_liar=True)


def repeat(times: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run`` ``times`` times: the median run's figures, and every run's wall time."""
    runs = [run() for _ in range(times)]
    walls = sorted(r["wall_s"] for r in runs)
    median = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    return {
        **median,
        "repeats": times,
        "wall_s_runs": [r["wall_s"] for r in runs],
        "wall_s_min": walls[0],
        "wall_s_max": walls[-1],
        "spread_max_over_min": walls[-1] / walls[0],
    }


def trivial(config: dict[str, Any]) -> float:
    return (config["x"] - 2.0) ** 2 + (config["y"] + 1.0) ** 2


MLP_EPOCHS = 10


def _train_mlp(config: dict[str, Any], report: Callable[[int, float], None]) -> float:
    """An sklearn MLP on the digits data set, one ``partial_fit`` pass per epoch."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    train_x, valid_x, train_y, valid_y = train_test_split(
        features / 16.0, labels, test_size=0.25, random_state=0
    )
    model = MLPClassifier(
        hidden_layer_sizes=(config["hidden"],),
        learning_rate_init=config["lr"],
        alpha=config["alpha"],
        batch_size=64,
        random_state=0,
    )
    loss = 1.0
    for epoch in range(MLP_EPOCHS):
        model.partial_fit(train_x, train_y, classes=np.arange(10))
        loss = 1.0 - float(model.score(valid_x, valid_y))
        report(epoch, loss)
    return loss


def mlp(config: dict[str, Any]) -> float:
    return _train_mlp(config, lambda epoch, loss: hs.report(epoch, loss=loss))


def mlp_space() -> dict[str, Any]:
    return {
        "hidden": hs.choice([16, 32, 64, 128]),
        "lr": hs.loguniform(1e-4, 1e-1),
        "alpha": hs.loguniform(1e-6, 1e-2),
    }


def run_hypersweep(
    trials: int,
    storage: Any,
    label: str,
    workdir: Path,
    *,
    launcher: Any = None,
    objective: Callable[[dict[str, Any]], float] = trivial,
    space: dict[str, Any] | None = None,
) -> dict[str, Any]:
    os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
    space = space or {"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10)}
    start = time.perf_counter()
    result = hs.tune(
        space,
        objective,
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        strategy=sampler(),
        storage=storage,
        verbose=False,
        name=f"overhead-{label}",
        launcher=launcher,
    )
    wall = time.perf_counter() - start
    assert result.counts() == {"completed": trials}, result.counts()
    return {"trials": trials, "wall_s": wall, "best": result.best_value}


def run_optuna(trials: int, storage: Any) -> dict[str, Any]:
    def objective(trial: optuna.Trial) -> float:
        return trivial(
            {"x": trial.suggest_float("x", -10, 10), "y": trial.suggest_float("y", -10, 10)}
        )

    study = optuna.create_study(sampler=sampler(), storage=storage)
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=2)
    wall = time.perf_counter() - start
    return {"trials": trials, "wall_s": wall, "best": study.best_value}


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for every Ray row."""
    import ray

    ray.init(
        address="local",  # a fresh instance, even if a Ray cluster runs on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:
        yield
    finally:
        ray.shutdown()


def run_ray_tune(
    max_trials: int,
    budget_s: float | None,
    workdir: Path,
    *,
    training: bool = False,
) -> dict[str, Any]:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict[str, Any]) -> dict[str, float]:
        return {"loss": trivial(config)}

    def mlp_trainable(config: dict[str, Any]) -> None:
        _train_mlp(config, lambda epoch, loss: tune.report({"loss": loss}))

    if training:
        space: dict[str, Any] = {
            "hidden": tune.choice([16, 32, 64, 128]),
            "lr": tune.loguniform(1e-4, 1e-1),
            "alpha": tune.loguniform(1e-6, 1e-2),
        }
    else:
        space = {"x": tune.uniform(-10, 10), "y": tune.uniform(-10, 10)}
    tuner = tune.Tuner(
        mlp_trainable if training else trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=sampler(), metric="loss", mode="min"),
            num_samples=max_trials,
            max_concurrent_trials=2,
            time_budget_s=budget_s,
        ),
        run_config=tune.RunConfig(
            name=f"{'mlp' if training else 'trivial'}-{time.time_ns()}",  # one per repeat
            storage_path=str(workdir / "ray"),
            verbose=0,
        ),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--ray-budget", type=float, default=120.0)
    parser.add_argument("--ray-trials", type=int, default=200)
    parser.add_argument("--mlp-trials", type=int, default=20)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument(
        "--tracking",
        action="store_true",
        help="only the MLflow row: run benchmarks/tracking_overhead.py's measurement (the "
        "same trivial sweep with and without an MLflowCallback) and save its JSON",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each row; the median one is reported"
    )
    args = parser.parse_args()
    if args.tracking:
        from tracking_overhead import measure  # this folder is on sys.path for a script

        measure(args.trials, max(args.repeats, 2))
        return
    n = args.repeats
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        journal = lambda name: optuna.storages.JournalStorage(  # noqa: E731
            optuna.storages.journal.JournalFileBackend(str(workdir / f"{name}.log"))
        )
        count = iter(range(10**6))  # a fresh sweep name (and journal) for every repeat
        results["optuna_inmemory_njobs2"] = repeat(n, lambda: run_optuna(args.trials, None))
        results["optuna_journal_njobs2"] = repeat(
            n, lambda: run_optuna(args.trials, journal(f"optuna-{next(count)}"))
        )
        results["hypersweep_local_journal"] = repeat(
            n, lambda: run_hypersweep(args.trials, None, f"journal-{next(count)}", workdir)
        )
        results["hypersweep_local_inmemory"] = repeat(
            n,
            lambda: run_hypersweep(
                args.trials, optuna.storages.InMemoryStorage(), f"memory-{next(count)}", workdir
            ),
        )
        training: dict[str, dict[str, Any]] = {}
        # One BLAS thread per trial in every row, as Ray gives a 1-CPU actor: 2 trials on 2
        # cores, not 2 trials of 2 threads each.
        os.environ["OMP_NUM_THREADS"] = "1"
        training["hypersweep_local_mlp"] = repeat(
            n,
            lambda: run_hypersweep(
                args.mlp_trials,
                None,
                f"mlp-local-{next(count)}",
                workdir,
                objective=mlp,
                space=mlp_space(),
            ),
        )
        if not args.skip_ray:
            from hypersweep.launchers import RayLauncher

            with ray_session():
                results["hypersweep_ray_journal"] = repeat(
                    n,
                    lambda: run_hypersweep(
                        args.ray_trials,
                        None,
                        f"ray-{next(count)}",
                        workdir,
                        launcher=RayLauncher(max_concurrent=2),
                    ),
                )
                results["raytune_optunasearch"] = repeat(
                    n, lambda: run_ray_tune(args.trials, args.ray_budget, workdir)
                )
                training["hypersweep_ray_mlp"] = repeat(
                    n,
                    lambda: run_hypersweep(
                        args.mlp_trials,
                        None,
                        f"mlp-ray-{next(count)}",
                        workdir,
                        launcher=RayLauncher(max_concurrent=2),
                        objective=mlp,
                        space=mlp_space(),
                    ),
                )
                training["raytune_mlp"] = repeat(
                    n, lambda: run_ray_tune(args.mlp_trials, None, workdir, training=True)
                )

    for entry in (*results.values(), *training.values()):
        entry["trials_per_s"] = entry["trials"] / entry["wall_s"]
        entry["ms_per_trial"] = 1000 * entry["wall_s"] / entry["trials"]
    reference = results["optuna_inmemory_njobs2"]["ms_per_trial"]
    for entry in results.values():
        entry["per_trial_vs_optuna_inmemory"] = entry["ms_per_trial"] / reference
    if "raytune_mlp" in training:
        reference = training["raytune_mlp"]["ms_per_trial"]
        for entry in training.values():
            entry["per_trial_vs_raytune"] = entry["ms_per_trial"] / reference

    print(f"{'run':30} {'trials':>7} {'wall s':>8} {'trials/s':>9} {'ms/trial':>9} {'x optuna':>9}")
    for name, entry in results.items():
        print(
            f"{name:30} {entry['trials']:7d} {entry['wall_s']:8.2f} {entry['trials_per_s']:9.1f} "
            f"{entry['ms_per_trial']:9.2f} {entry['per_trial_vs_optuna_inmemory']:9.2f}"
        )
    header = f"{'training (MLP, 10 epochs)':30} {'trials':>7} {'wall s':>8} {'ms/trial':>9}"
    print(f"\n{header} {'best':>8}")
    for name, entry in training.items():
        print(
            f"{name:30} {entry['trials']:7d} {entry['wall_s']:8.2f} "
            f"{entry['ms_per_trial']:9.2f} {entry['best']:8.4f}"
        )
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "overhead",
        "objective": "trivial quadratic, 2 concurrent, TPESampler(seed=0, constant_liar=True)",
        "arguments": vars(args),
        "repeats": args.repeats,
        "reported": "per row, the median of `repeats` runs by wall time; wall_s_runs has all",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {"hypersweep": hs.__version__, "optuna": optuna.__version__},
        "results": results,
        "target": "hypersweep_local_journal within 1.5x of optuna_inmemory_njobs2",
        "training": {
            "objective": f"sklearn MLP on digits, {MLP_EPOCHS} epochs reported, 1 - accuracy, "
            "2 concurrent, TPESampler(seed=0, constant_liar=True)",
            "results": training,
        },
    }
    (RESULTS / "overhead.json").write_text(json.dumps(payload, indent=2))
    print(f"saved {RESULTS / 'overhead.json'}")


if __name__ == "__main__":
    main()
