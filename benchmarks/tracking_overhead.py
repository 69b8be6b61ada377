"""Per-trial cost of tracking: a 1,000-trial trivial sweep with and without an MLflowCallback.

The same sweep as benchmarks/overhead.py (trivial objective, 2 trials at a time, TPE seed 0,
the default journal storage), once without callbacks and once logging every trial to a real
MLflow tracking server (``mlflow server``, SQLite backend, on loopback, started here). Three
times are taken: until the sweep loop ended, until ``tune()`` returned (the callback does not
wait for the server), and until ``MLflowCallback.flush()`` returned, when the server has every
run; the runs are then read back to check that all of them arrived.

Against the same server, in the same rounds:

- the floor: a plain ``MlflowClient`` logging the same runs with the same data in the fewest
  requests MLflow's REST API allows (create the run; one ``log_batch``; set its status), once
  sequentially and once from ``--threads`` threads; no sweep runs meanwhile, so this is what
  the server can ingest at best;
- Optuna's own ``optuna.integration.MLflowCallback`` (the optuna-integration package) on the
  same objective with ``study.optimize(n_jobs=2)`` and the journal storage, with and without it
  (it logs synchronously, so its sweep's end is when the server has every run).

Rounds alternate the rows, and the medians are reported with every round's time and the
machine's load average at each row's start.

    python benchmarks/tracking_overhead.py [--trials 1000] [--rounds 2] [--workers 1] [--threads 4]

Prints a table and writes benchmarks/results/tracking_overhead.json (``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

import hypersweep as hs
from hypersweep.integrations import MLflowCallback
from hypersweep.testing import mlflow_server

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def trivial(config: dict[str, Any]) -> float:
    return (config["x"] - 2.0) ** 2 + (config["y"] + 1.0) ** 2


class LoopEnd(hs.Callback):
    """Notes when the sweep loop ended, before later callbacks flush their logging."""

    def __init__(self) -> None:
        self.at = 0.0

    def on_sweep_end(self, result: hs.SweepResult) -> None:
        self.at = time.perf_counter()


def run(trials: int, label: str, tracker: MLflowCallback | None) -> tuple[float, float, float]:
    """Seconds until the sweep loop ended, until tune() returned, and until all was logged."""
    callbacks = [] if tracker is None else [tracker]
    loop_end = LoopEnd()
    start = time.perf_counter()
    result = hs.tune(
        {"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10)},
        trivial,
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        strategy=optuna.samplers.TPESampler(seed=SEED),
        verbose=False,
        name=label,
        callbacks=[loop_end, *callbacks],
    )
    wall = time.perf_counter() - start
    assert tracker is None or tracker.flush()
    logged = time.perf_counter() - start
    assert result.counts() == {"completed": trials}, result.counts()
    return loop_end.at - start, wall, logged


def run_floor(client: Any, experiment: str, trials: int, threads: int) -> float:
    """Seconds for a plain MlflowClient to log ``trials`` runs as MLflowCallback logs a trial
    of this sweep (nested run, 2 params, the reported and final metric, the state tag,
    FINISHED) in the fewest requests: create, one log_batch, one status update."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    experiment_id = client.create_experiment(experiment)
    parent = client.create_run(experiment_id, run_name=experiment).info.run_id
    store = client._tracking_client.store

    def log(number: int) -> None:
        run = client.create_run(
            experiment_id,
            tags={
                "hypersweep.sweep": experiment,
                "hypersweep.trial": str(number),
                "mlflow.parentRunId": parent,
            },
            run_name=f"{experiment}-trial-{number}",
        )
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("loss", 1.0, now, 0), Metric("loss", 1.0, now, 0)],
            params=[Param("x", "1.0"), Param("y", "-1.0")],
            tags=[RunTag("hypersweep.state", "completed")],
            synchronous=True,
        )
        store.update_run_info(
            run.info.run_id,
            run_status=RunStatus.FINISHED,
            end_time=int(time.time() * 1000),
            run_name=None,
        )

    start = time.perf_counter()
    if threads == 1:
        for number in range(trials):
            log(number)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(log, range(trials)))
    return time.perf_counter() - start


def run_optuna(trials: int, name: str, workdir: Path, url: str | None) -> float:
    """Seconds for Optuna's own study.optimize over the same objective (journal storage,
    n_jobs=2), with optuna.integration.MLflowCallback logging to ``url`` unless None."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(workdir / f"{name}.journal")))
    callbacks = []
    if url is not None:
        from optuna.integration import MLflowCallback as OptunaMLflowCallback

        callbacks.append(OptunaMLflowCallback(tracking_uri=url, metric_name="loss"))

    def objective(trial: optuna.Trial) -> float:
        return trivial(
            {"x": trial.suggest_float("x", -10, 10), "y": trial.suggest_float("y", -10, 10)}
        )

    study = optuna.create_study(
        study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=SEED)
    )
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=2, callbacks=callbacks)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="the MLflow server's workers")
    parser.add_argument(
        "--threads", type=int, default=4, help="MLflowCallback's and the floor's sender threads"
    )
    parser.add_argument("--floor-trials", type=int, help="runs per floor row (default: --trials)")
    parser.add_argument(
        "--optuna-trials", type=int, help="trials per Optuna row (default: --trials)"
    )
    parser.add_argument(
        "--floor-workers",
        default="",
        help="comma-separated server worker counts to measure the threaded floor on too, "
        "one round each on a server of its own (e.g. 2,4)",
    )
    parser.add_argument(
        "--output", default="tracking_overhead.json", help="file name under benchmarks/results/"
    )
    args = parser.parse_args()
    measure(
        args.trials,
        args.rounds,
        workers=args.workers,
        threads=args.threads,
        floor_trials=args.floor_trials,
        optuna_trials=args.optuna_trials,
        floor_workers=[int(w) for w in args.floor_workers.split(",") if w],
        output=args.output,
    )


def _count_runs(client: Any, name: str, state_tag: bool) -> int:
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, name
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`hypersweep.state` = 'completed'" if state_tag else "",
        max_results=5000,
    )
    return len([r for r in runs if r.info.status == "FINISHED"])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def measure(
    trials: int,
    rounds: int,
    *,
    workers: int = 1,
    threads: int = 4,
    floor_trials: int | None = None,
    optuna_trials: int | None = None,
    floor_workers: list[int] | None = None,
    output: str = "tracking_overhead.json",
) -> dict[str, Any]:
    """Run the rounds, print the table, save and return tracking_overhead.json's payload
    (benchmarks/overhead.py --tracking runs it too)."""
    floor_trials = floor_trials or trials
    optuna_trials = optuna_trials or trials
    counts = {key: trials for key in ("none", "mlflow")}
    counts.update(floor=floor_trials, optuna=optuna_trials)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # a line per Optuna run otherwise
    requests: list[float] = []  # the server's requests per trial, from its access log
    times: dict[str, list[float]] = {
        key: []
        for key in (
            "none_loop", "none_wall", "mlflow_loop", "mlflow_wall", "mlflow_logged",
            "floor_sequential", "floor_threads", "optuna_none", "optuna_mlflow",
        )
    }  # fmt: skip
    loads: dict[str, list[float]] = {key: [] for key in times}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
        with mlflow_server(workdir, workers=workers) as url:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=url)
            access_log = workdir / "mlflow-server.log"
            # The server's first requests import and connect lazily: not any row's cost.
            run_floor(client, "warm-up", 20, threads)

            def row(keys: tuple[str, ...], call: Callable[..., Any], *args: Any) -> None:
                load = os.getloadavg()[0]
                seconds = call(*args)
                values = seconds if isinstance(seconds, tuple) else (seconds,)
                # "none" keeps run()'s first two times (its third equals its second).
                for key, value in zip(keys, values, strict=False):
                    times[key].append(value)
                    loads[key].append(load)

            for index in range(rounds):
                row(("none_loop", "none_wall"), run, trials, f"none-{index}", None)
                before = len(access_log.read_text().splitlines())
                tracker = MLflowCallback(tracking_uri=url, threads=threads)
                row(
                    ("mlflow_loop", "mlflow_wall", "mlflow_logged"),
                    run,
                    trials,
                    f"mlflow-{index}",
                    tracker,
                )
                lines = access_log.read_text().splitlines()[before:]
                requests.append(sum("/api/2.0/mlflow/" in line for line in lines) / trials)
                assert _count_runs(client, f"mlflow-{index}", True) == trials
                for key, count in (("floor_sequential", 1), ("floor_threads", threads)):
                    name = f"floor-{count}-{index}"
                    row((key,), run_floor, client, name, floor_trials, count)
                    assert _count_runs(client, name, True) == floor_trials
                name = f"optuna-none-{index}"
                row(("optuna_none",), run_optuna, optuna_trials, name, workdir, None)
                name = f"optuna-mlflow-{index}"
                row(("optuna_mlflow",), run_optuna, optuna_trials, name, workdir, url)
                assert _count_runs(client, name, False) == optuna_trials
                print(
                    f"round {index}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                    flush=True,
                )
        # The floor on servers with more workers (one round each: each needs its own server).
        for count in floor_workers or []:
            (workdir / f"workers-{count}").mkdir()
            with mlflow_server(workdir / f"workers-{count}", workers=count) as url:
                client = MlflowClient(tracking_uri=url)
                run_floor(client, "warm-up", 20, threads)
                key = f"floor_threads_workers_{count}"
                times[key], loads[key] = [], []
                row((key,), run_floor, client, key, floor_trials, threads)
                assert _count_runs(client, key, True) == floor_trials
    size = {key: counts[key.split("_")[0]] for key in times}  # trials (runs) per row
    med = {key: _median(values) for key, values in times.items()}
    # Runs the server took per second, where a row's end is when the server has every run
    # (Optuna's callback logs synchronously).
    rate = {
        key: size[key] / med[key]
        for key in times
        if key.startswith("floor") or key in ("mlflow_logged", "optuna_mlflow")
    }
    ratios = {
        "mlflow_loop_vs_none": med["mlflow_loop"] / med["none_loop"],
        "mlflow_tune_return_vs_none": med["mlflow_wall"] / med["none_wall"],
        "mlflow_logged_vs_none": med["mlflow_logged"] / med["none_wall"],
        "mlflow_logged_per_trial_vs_floor_threads_per_run": (med["mlflow_logged"] / trials)
        / (med["floor_threads"] / floor_trials),
        "optuna_mlflow_vs_optuna_none": med["optuna_mlflow"] / med["optuna_none"],
        "optuna_mlflow_per_trial_vs_hypersweep_mlflow_logged_per_trial": (
            med["optuna_mlflow"] / optuna_trials
        )
        / (med["mlflow_logged"] / trials),
    }
    print(f"\n{'row':28} {'median s':>9} {'ms/trial':>9}  rounds (s)")
    for key, values in times.items():
        rounds_text = " ".join(f"{v:.1f}" for v in values)
        print(f"{key:28} {med[key]:9.2f} {med[key] * 1000 / size[key]:9.2f}  {rounds_text}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    print("runs the server took per s: " + ", ".join(f"{k} {v:.1f}" for k, v in rate.items()))
    import mlflow

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "tracking_overhead",
        "arguments": {
            "trials": trials,
            "rounds": rounds,
            "workers": workers,
            "threads": threads,
            "floor_trials": floor_trials,
            "optuna_trials": optuna_trials,
            "floor_workers": floor_workers or [],
        },
        "objective": "trivial quadratic, 2 concurrent, TPESampler(seed=0), journal storage",
        "server": f"`mlflow server`, SQLite backend, {workers} worker(s), loopback, same "
        "machine, job execution off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false)",
        "rows": {
            "none": "tune() without callbacks",
            "mlflow": f"tune() with MLflowCallback(threads={threads})",
            "floor_sequential": "plain MlflowClient, same runs and data, 3 requests per run, "
            "one thread, no sweep running",
            "floor_threads": f"the same from {threads} threads",
            "floor_threads_workers_N": f"the same from {threads} threads, a server with N "
            "workers (one round)",
            "optuna_none": "optuna study.optimize(n_jobs=2), journal storage, no callback",
            "optuna_mlflow": "the same with optuna.integration.MLflowCallback (synchronous)",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "hypersweep": hs.__version__,
            "optuna": optuna.__version__,
            "mlflow": mlflow.__version__,
            "optuna_integration": _version("optuna-integration"),
        },
        "trials_per_row": size,
        "median_s": med,
        "ms_per_trial": {key: med[key] * 1000 / size[key] for key in med},
        "rounds_s": times,
        "load_avg_1m_at_start": loads,
        "ratios": ratios,
        "runs_logged_per_s": rate,
        "mlflow_requests_per_trial": _median(requests),
        "rounds_mlflow_requests_per_trial": requests,
        "note": "*_loop: until the sweep loop ended (trials done); *_wall: until tune() "
        "returned, logging may still be in flight; mlflow_logged: until MLflowCallback.flush() "
        "returned, the server has every run (the interpreter's exit waits for this too); "
        "floor_*: the server's own ingest rate for these runs; optuna_mlflow logs "
        "synchronously, so its end is when the server has every run",
        "target": "mlflow within 2x of none",
    }
    (RESULTS / output).write_text(json.dumps(payload, indent=2) + "\n")
    print(readme_table(payload))
    return payload


def readme_table(payload: dict[str, Any]) -> str:
    """The README's overhead table for a saved payload (a test checks that the README's table
    reads so for the saved JSON)."""
    med, per, rate, ratios = (
        payload["median_s"],
        payload["ms_per_trial"],
        payload["runs_logged_per_s"],
        payload["ratios"],
    )

    def times(key: str, base: str = "none_wall") -> str:
        return f"{med[key] / med[base]:.2f}x"

    threads = payload["arguments"]["threads"]
    rows = [
        ("no callbacks, `tune()` returned", "none_wall", ""),
        ("`MLflowCallback`, sweep loop ended", "mlflow_loop", times("mlflow_loop", "none_loop")),
        ("`MLflowCallback`, `tune()` returned", "mlflow_wall", times("mlflow_wall")),
        ("`MLflowCallback`, the server has every run", "mlflow_logged", times("mlflow_logged")),
        ("floor: plain client, sequential", "floor_sequential", ""),
        (f"floor: plain client, {threads} threads", "floor_threads", ""),
    ]
    for count in payload["arguments"]["floor_workers"]:
        label = f"floor: {threads} threads, server with {count} workers"
        rows.append((f"{label} (one round)", f"floor_threads_workers_{count}", ""))
    rows += [
        ("Optuna, no callback", "optuna_none", ""),
        (
            "Optuna, its `MLflowCallback` (synchronous)",
            "optuna_mlflow",
            f"{ratios['optuna_mlflow_vs_optuna_none']:.2f}x",
        ),
    ]
    lines = ["| row | median | per trial or run |", "|---|---|---|"]
    for label, key, ratio in rows:
        notes = [note for note in (ratio, key in rate and f"{rate[key]:.1f} runs/s") if note]
        extra = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"| {label} | {med[key]:.1f} s | {per[key]:.1f} ms{extra} |")
    return "\n".join(lines)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
