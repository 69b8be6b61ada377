"""Time to target: how many training epochs (and seconds) each early-stopping method needs.

Two tasks, each with up to 30 epochs per config and 5 seeds:

* ``mlp``: an MLP on scikit-learn's bundled digits, trained one epoch at a time;
* ``curves``: synthetic learning curves where fast learners plateau low (a trap for greedy
  early stopping), with no training cost, so it measures the decisions alone.

Methods, all with 2 trials at a time and the same budget of epochs:
(a) hypersweep TPE without early stopping, (b) hypersweep TPE + ASHA with pause and promotion,
(c) hypersweep PBT, (d) Optuna TPE + HyperbandPruner, (e) Ray Tune OptunaSearch + ASHAScheduler.
(a) trains ``--configs`` configs fully; its total epochs are the budget. The early-stopping
methods may sample ``--multiplier`` times as many configs, and their curves are cut at the
budget, so each gets the same number of epochs to spend as it sees fit.

Every trained epoch is logged (time, accuracy) to a file, the same way for every method, so that
"best accuracy so far" can be plotted against epochs consumed and wall time. The target is the
median, over seeds, of (a)'s final best accuracy; epochs-to-target is when a run first reaches it.

    python benchmarks/time_to_target.py [--seeds 5] [--configs 10] [--multiplier 8]

Writes benchmarks/results/time_to_target.json and time_to_target.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

import hypersweep as hs
from hypersweep.strategies import ASHA, PBT

RESULTS = Path(__file__).resolve().parent / "results"
MAX_EPOCHS = 30
#: Every scheduler counts epochs done (1-based: Ray Tune's training_iteration) and has its
#: first rung after FIRST_RUNG epochs, then every REDUCTION times more: 1, 3, 9, 27.
FIRST_RUNG = 1
REDUCTION = 3
CONCURRENT = 2
LOG_ENV = "TIME_TO_TARGET_LOG"

SPACE = {
    "hidden": hs.choice([16, 32, 64, 128]),
    "lr": hs.loguniform(1e-4, 1.0),
    "alpha": hs.loguniform(1e-6, 1e-1),
    "batch_size": hs.choice([32, 64, 128, 256]),
}


# --- the tasks: one epoch at a time, logged ----------------------------------------------------


def log_epoch(accuracy: float, path: str | None = None) -> None:
    with open(path or os.environ[LOG_ENV], "a") as handle:
        handle.write(f"{time.time()} {accuracy}\n")


_DATA: Any = None


def _digits() -> Any:
    global _DATA
    if _DATA is None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        x, y = load_digits(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=0.3, random_state=0, stratify=y
        )
        scaler = StandardScaler().fit(x_train)
        _DATA = (scaler.transform(x_train), scaler.transform(x_val), y_train, y_val)
    return _DATA


class MlpTask:
    """A scikit-learn MLP on digits; its state is the model."""

    def init(self, config: dict[str, Any]) -> Any:
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(
            hidden_layer_sizes=(config["hidden"],),
            learning_rate_init=config["lr"],
            alpha=config["alpha"],
            batch_size=config["batch_size"],
            random_state=0,
        )

    def adopt(self, model: Any, config: dict[str, Any]) -> Any:
        """Continue a (cloned) model under a new config, as PBT's explore step does."""
        model.set_params(
            learning_rate_init=config["lr"], alpha=config["alpha"], batch_size=config["batch_size"]
        )
        optimizer = getattr(model, "_optimizer", None)
        if optimizer is not None:
            optimizer.learning_rate = config["lr"]
        return model

    def epoch(self, model: Any, epoch: int) -> tuple[Any, float]:
        from sklearn.exceptions import ConvergenceWarning

        x_train, x_val, y_train, y_val = _digits()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=list(range(10)))
        return model, float(model.score(x_val, y_val))


class CurveTask:
    """Synthetic curves: accuracy rises towards a plateau; a high lr is fast but plateaus low."""

    def init(self, config: dict[str, Any]) -> Any:
        return {"progress": 0.0}

    @staticmethod
    def accuracy(config: dict[str, Any], progress: float) -> float:
        lr = math.log10(config["lr"])  # -4 .. 0
        plateau = 0.97 - 0.03 * (lr + 2.0) ** 2 - 0.01 * abs(math.log10(config["alpha"]) + 4.0)
        plateau -= 0.01 * abs(math.log2(config["hidden"]) - 6)
        speed = 0.5 * 10 ** (0.5 * (lr + 2.0))  # high lr learns fast (0.05 to 5 per epoch)
        return max(0.1, plateau * (1 - math.exp(-speed * progress)) + 0.1 * math.exp(-progress))

    def step(self, state: Any, config: dict[str, Any]) -> tuple[Any, float]:
        state = {"progress": state["progress"] + 1.0}
        return state, self.accuracy(config, state["progress"])


def train_hypersweep(config: dict[str, Any]) -> float:
    """The hypersweep objective: restore, train epoch by epoch, checkpoint, report."""
    task_name = config["task"]
    state = hs.restore()
    if state is None:
        start, best = 0, 0.0
        model = MlpTask().init(config) if task_name == "mlp" else CurveTask().init(config)
    else:
        start, best, model = state["epoch"] + 1, state["best"], state["model"]
        if task_name == "mlp":
            model = MlpTask().adopt(model, config)
    accuracy = best
    for epoch in range(start, MAX_EPOCHS):
        if task_name == "mlp":
            model, accuracy = MlpTask().epoch(model, epoch)
        else:
            model, accuracy = CurveTask().step(model, config)
        log_epoch(accuracy)
        best = max(best, accuracy)
        hs.checkpoint({"model": model, "epoch": epoch, "best": best}, step=epoch)
        hs.report(epoch + 1, accuracy=accuracy)  # epochs done: the unit of every scheduler
    return accuracy


def _plain_epochs(config: dict[str, Any]) -> Any:
    """Train from scratch, yielding the accuracy of each epoch (Optuna and Ray Tune runs)."""
    if config["task"] == "mlp":
        task = MlpTask()
        model = task.init(config)
        for epoch in range(MAX_EPOCHS):
            model, accuracy = task.epoch(model, epoch)
            log_epoch(accuracy, config.get("log"))
            yield accuracy
    else:
        state = CurveTask().init(config)
        for _ in range(MAX_EPOCHS):
            state, accuracy = CurveTask().step(state, config)
            log_epoch(accuracy, config.get("log"))
            yield accuracy


# --- the methods -------------------------------------------------------------------------------


def run_hypersweep(
    task: str, seed: int, trials: int, workdir: Path, early: Any, label: str
) -> None:
    space = {**SPACE, "task": task}
    hs.tune(
        space,
        train_hypersweep,
        metric="accuracy",
        mode="max",
        n_trials=trials,
        max_concurrent=CONCURRENT,
        early_stopping=early,
        seed=seed,
        verbose=False,
        name=f"{label}-{task}-{seed}",
        storage=str(workdir / f"{label}-{task}-{seed}.log"),
    )


def run_optuna_hyperband(task: str, seed: int, trials: int, workdir: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        config = {
            "task": task,
            "hidden": trial.suggest_categorical("hidden", [16, 32, 64, 128]),
            "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
            "alpha": trial.suggest_float("alpha", 1e-6, 1e-1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
        }
        accuracy = 0.0
        for epoch, accuracy in enumerate(_plain_epochs(config)):
            trial.report(accuracy, epoch + 1)  # epochs done, as for the other methods
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=FIRST_RUNG, max_resource=MAX_EPOCHS, reduction_factor=REDUCTION
        ),
    )
    study.optimize(objective, n_trials=trials, n_jobs=CONCURRENT)


def run_ray_asha(task: str, seed: int, trials: int, workdir: Path) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    def trainable(config: dict[str, Any]) -> None:
        for accuracy in _plain_epochs(config):
            tune.report({"accuracy": accuracy})

    param_space = {
        "task": task,
        "log": os.environ[LOG_ENV],  # Ray's workers started before this run's environment
        "hidden": tune.choice([16, 32, 64, 128]),
        "lr": tune.loguniform(1e-4, 1.0),
        "alpha": tune.loguniform(1e-6, 1e-1),
        "batch_size": tune.choice([32, 64, 128, 256]),
    }
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="accuracy",
            mode="max",
            num_samples=trials,
            max_concurrent_trials=CONCURRENT,
            # The same sampler as hypersweep's and Optuna's runs: TPE with the constant liar
            # (trials run two at a time), and the same first rung.
            search_alg=OptunaSearch(
                sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True)
            ),
            scheduler=ASHAScheduler(
                max_t=MAX_EPOCHS, grace_period=FIRST_RUNG, reduction_factor=REDUCTION
            ),
        ),
        run_config=tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0),
    )
    tuner.fit()


METHODS: dict[str, Callable[[str, int, int, Path], None]] = {
    "hypersweep_tpe_no_stopping": lambda t, s, n, w: run_hypersweep(t, s, n, w, None, "plain"),
    "hypersweep_asha_promotion": lambda t, s, n, w: run_hypersweep(
        t,
        s,
        n,
        w,
        ASHA(min_resource=FIRST_RUNG, max_resource=MAX_EPOCHS, reduction_factor=REDUCTION),
        "asha",
    ),
    "hypersweep_pbt": lambda t, s, n, w: run_hypersweep(
        t, s, n, w, PBT(perturbation_interval=4, seed=s), "pbt"
    ),
    "optuna_hyperband": run_optuna_hyperband,
    "raytune_asha": run_ray_asha,
}


# --- measuring -------------------------------------------------------------------------------


def read_curve(log: Path, start: float) -> list[tuple[float, float]]:
    """(seconds since start, accuracy) of every epoch, in time order."""
    rows = []
    for line in log.read_text().split("\n"):
        if line.strip():
            stamp, accuracy = line.split()
            rows.append((float(stamp) - start, float(accuracy)))
    return sorted(rows)


def to_target(curve: list[tuple[float, float]], target: float) -> tuple[float, float]:
    """(epochs, seconds) until the best accuracy so far first reaches ``target``."""
    best = -1.0
    for index, (seconds, accuracy) in enumerate(curve, start=1):
        best = max(best, accuracy)
        if best >= target - 1e-12:
            return float(index), seconds
    return math.inf, math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--configs", type=int, default=10)
    parser.add_argument("--multiplier", type=int, default=8)
    parser.add_argument("--tasks", nargs="+", default=["mlp", "curves"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import ray

    ray.init(
        num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
            for task in args.tasks:
                runs[task] = {}
                for method in args.methods:
                    runs[task][method] = []
                    for seed in range(args.seeds):
                        log = workdir / f"{task}-{method}-{seed}.epochs"
                        log.touch()
                        os.environ[LOG_ENV] = str(log)
                        start = time.time()
                        trials = args.configs * (
                            1 if method == "hypersweep_tpe_no_stopping" else args.multiplier
                        )
                        METHODS[method](task, seed, trials, workdir)
                        wall = time.time() - start
                        curve = read_curve(log, start)
                        runs[task][method].append({"seed": seed, "wall_s": wall, "curve": curve})
                        best = max(a for _, a in curve)
                        print(
                            f"{task:6} {method:28} seed {seed}: {len(curve):5d} epochs "
                            f"{wall:7.1f} s best {best:.4f}",
                            flush=True,
                        )
    finally:
        ray.shutdown()
    summary = summarize(runs, budget=args.configs * MAX_EPOCHS)
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "time_to_target",
        "arguments": vars(args),
        "settings": {
            "seeds": args.seeds,
            "repeats_per_method_and_task": args.seeds,
            "configs": args.configs,
            "multiplier": args.multiplier,
            "epoch_budget": args.configs * MAX_EPOCHS,
            "max_epochs_per_config": MAX_EPOCHS,
            "concurrent": CONCURRENT,
            "rungs_epochs": [FIRST_RUNG * REDUCTION**k for k in range(4)],
            "sampler": "TPE with constant_liar=True (hypersweep's default, Optuna, Ray Tune)",
        },
        "summary": summary,
        "runs": {
            t: {
                m: [
                    {k: v for k, v in r.items() if k != "curve"}
                    | {"epochs": len(r["curve"]), "best": max(a for _, a in r["curve"])}
                    for r in rs
                ]
                for m, rs in ms.items()
            }
            for t, ms in runs.items()
        },
    }
    (RESULTS / "time_to_target.json").write_text(json.dumps(payload, indent=2))
    plot(runs, summary, RESULTS / "time_to_target.png")
    print(json.dumps(summary, indent=2))


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]], budget: int) -> dict[str, Any]:
    """Medians over seeds; every curve is cut at the epoch budget first."""
    summary: dict[str, Any] = {}
    for task, methods in runs.items():
        for results in methods.values():
            for r in results:
                r["curve"] = r["curve"][:budget]
        baseline = methods.get("hypersweep_tpe_no_stopping")
        assert baseline, "the no-early-stopping baseline is needed for the target"
        target = statistics.median(max(a for _, a in r["curve"]) for r in baseline)
        baseline_epochs = statistics.median(len(r["curve"]) for r in baseline)
        summary[task] = {"target_accuracy": target, "baseline_epochs": baseline_epochs}
        for method, results in methods.items():
            hits = [to_target(r["curve"], target) for r in results]
            epochs = [h[0] for h in hits]
            seconds = [h[1] for h in hits]
            summary[task][method] = {
                "median_epochs_to_target": statistics.median(epochs),
                "median_seconds_to_target": statistics.median(seconds),
                "spread": {
                    "epochs_to_target": spread(epochs),
                    "seconds_to_target": spread(seconds),
                    "best_accuracy": spread([max(a for _, a in r["curve"]) for r in results]),
                    "wall_s": spread([r["wall_s"] for r in results]),
                },
                "reached_target": sum(math.isfinite(e) for e in epochs),
                "median_total_epochs": statistics.median(len(r["curve"]) for r in results),
                "median_best_accuracy": statistics.median(
                    max(a for _, a in r["curve"]) for r in results
                ),
                "median_wall_s": statistics.median(r["wall_s"] for r in results),
                "epochs_to_target_vs_baseline_total": statistics.median(epochs) / baseline_epochs,
            }
    return summary


def spread(values: list[float]) -> dict[str, Any]:
    """Min, quartiles and max over the repeats (inf: a repeat never reached the target)."""
    finite = sorted(v for v in values if math.isfinite(v))
    out: dict[str, Any] = {"n": len(values), "not_reached": len(values) - len(finite)}
    if finite:
        out["min"], out["max"] = finite[0], finite[-1]
    if len(finite) >= 2:
        q1, q2, q3 = statistics.quantiles(finite, n=4, method="inclusive")
        out.update(q1=q1, median=q2, q3=q3)
    return out


def plot(runs: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 8), squeeze=False)
    for column, (task, methods) in enumerate(runs.items()):
        for method, results in methods.items():
            length = max(len(r["curve"]) for r in results)
            by_epoch, by_time = [], []
            for r in results:
                best, bests = -1.0, []
                for _, accuracy in r["curve"]:
                    best = max(best, accuracy)
                    bests.append(best)
                bests += [bests[-1]] * (length - len(bests))
                by_epoch.append(bests)
                by_time.append(r["curve"])
            median = [statistics.median(v[i] for v in by_epoch) for i in range(length)]
            axes[0][column].plot(range(1, length + 1), median, label=method)
            first = by_time[0]
            running = [max(a for _, a in first[: i + 1]) for i in range(len(first))]
            axes[1][column].plot([s for s, _ in first], running, label=method)
        target = summary[task]["target_accuracy"]
        for row, xlabel in ((0, "epochs consumed (median over seeds)"), (1, "seconds (seed 0)")):
            axes[row][column].axhline(target, color="grey", linestyle="--", linewidth=0.8)
            axes[row][column].set_xlabel(xlabel)
            axes[row][column].set_ylabel("best accuracy so far")
            axes[row][column].set_ylim(max(0.0, target - 0.15), min(1.0, target + 0.03))
            axes[row][column].set_title(task)
        axes[0][column].set_xscale("log")
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
