"""Per-trial cost of tracking: a 1,000-trial trivial sweep with and without an MLflowCallback.

The same sweep as benchmarks/overhead.py (trivial objective, 2 trials at a time, TPE seed 0,
the default journal storage), once without callbacks and once logging every trial to a real
MLflow tracking server (``mlflow server``, SQLite backend, on loopback, started here). Three
times are taken: until the sweep loop ended, until ``tune()`` returned (the callback does not
wait for the server), and until ``MLflowCallback.flush()`` returned, when the server has every
run; the runs are then read back to check that all of them arrived. Rounds alternate, and the
median is reported.

    python benchmarks/tracking_overhead.py [--trials 1000] [--rounds 2]

Prints a table and writes benchmarks/results/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    measure(args.trials, args.rounds)


def measure(trials: int, rounds: int) -> dict[str, Any]:
    """Run the rounds, print the table, save and return tracking_overhead.json's payload
    (benchmarks/overhead.py --tracking runs it too)."""
    args = argparse.Namespace(trials=trials, rounds=rounds)
    requests: list[float] = []  # the server's requests per trial, from its access log
    walls: dict[str, list[float]] = {"none": [], "mlflow": []}
    loops: dict[str, list[float]] = {"none": [], "mlflow": []}
    logs: dict[str, list[float]] = {"none": [], "mlflow": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
        with mlflow_server(workdir) as url:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=url)
            for index in range(args.rounds):
                for label, tracker in (
                    ("none", None),
                    ("mlflow", MLflowCallback(tracking_uri=url)),
                ):
                    name = f"{label}-{index}"
                    access_log = workdir / "mlflow-server.log"
                    before = len(access_log.read_text().splitlines())
                    loop, wall, logged = run(args.trials, name, tracker)
                    if tracker is not None:
                        lines = access_log.read_text().splitlines()[before:]
                        sent = sum("/api/2.0/mlflow/" in line for line in lines)
                        requests.append(sent / args.trials)
                    loops[label].append(loop)
                    walls[label].append(wall)
                    logs[label].append(logged)
                experiment = client.get_experiment_by_name(name)
                assert experiment is not None
                logged = client.search_runs(
                    [experiment.experiment_id],
                    filter_string="tags.`hypersweep.state` = 'completed'",
                    max_results=5000,
                )
                assert len(logged) == args.trials, len(logged)  # every trial's run arrived
                print(
                    f"round {index}: none {walls['none'][-1]:.2f} s, mlflow: loop "
                    f"{loops['mlflow'][-1]:.2f} s, tune() {walls['mlflow'][-1]:.2f} s, "
                    f"all logged {logs['mlflow'][-1]:.2f} s"
                )
    results = {
        name: {
            "trials": args.trials,
            "wall_s": statistics.median(values),
            "rounds_wall_s": values,
            "loop_s": statistics.median(loops[name]),
            "rounds_loop_s": loops[name],
            "logged_s": statistics.median(logs[name]),
            "rounds_logged_s": logs[name],
            "ms_per_trial": statistics.median(values) * 1000 / args.trials,
        }
        for name, values in walls.items()
    }
    ratio = results["mlflow"]["wall_s"] / results["none"]["wall_s"]
    loop_ratio = results["mlflow"]["loop_s"] / results["none"]["loop_s"]
    logged_ratio = results["mlflow"]["logged_s"] / results["none"]["wall_s"]
    server_rate = args.trials / results["mlflow"]["logged_s"]
    print(f"\n{'callbacks':10} {'trials':>7} {'wall s':>8} {'ms/trial':>9}")
    for name, entry in results.items():
        print(f"{name:10} {entry['trials']:7d} {entry['wall_s']:8.2f} {entry['ms_per_trial']:9.2f}")
    print(
        f"MLflow / none: {loop_ratio:.2f}x until the sweep loop ends, {ratio:.2f}x until tune() "
        f"returns (target: within 2x), {logged_ratio:.2f}x until the server has every run "
        f"({server_rate:.1f} trials/s)"
    )
    import mlflow

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "tracking_overhead",
        "objective": "trivial quadratic, 2 concurrent, TPESampler(seed=0), journal storage",
        "tracker": "MLflowCallback to a local `mlflow server` (SQLite backend, 1 worker)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "hypersweep": hs.__version__,
            "optuna": optuna.__version__,
            "mlflow": mlflow.__version__,
        },
        "results": results,
        "mlflow_vs_none": ratio,
        "mlflow_vs_none_loop": loop_ratio,
        "mlflow_logged_vs_none": logged_ratio,
        "mlflow_server_trials_per_s": server_rate,
        "mlflow_requests_per_trial": statistics.median(requests),
        "rounds_mlflow_requests_per_trial": requests,
        "note": "loop_s: until the sweep loop ended (trials done); wall_s: until tune() "
        "returned, logging may still be in flight; logged_s: until MLflowCallback.flush() "
        "returned, the server has every run (the interpreter's exit waits for this too)",
        "target": "mlflow within 2x of none",
    }
    (RESULTS / "tracking_overhead.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


if __name__ == "__main__":
    main()
