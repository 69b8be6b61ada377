"""The Ray driver under load: 200+ concurrent trials reporting, on a multi-node Ray cluster.

On a ``ray.cluster_utils.Cluster`` (a head node that runs no trials and ``--nodes`` worker
nodes), ``--trials`` simulated trials run at once, ``--trials-per-actor`` of them in each warm
actor (``RayLauncher(trials_per_actor=...)``, a thread per trial). A simulated trial
reports ``--reports`` steps, one every ``--step-ms`` (its training step), and its sweep decides
every ``--interval`` steps (a pruner's interval: ``ThresholdPruner(interval_steps=...)``, which
never prunes, so the load stays constant). All trials first wait at a barrier until every one
of them runs, so that what is measured is the driver keeping up, not actors starting.

Two rounds per repeat, in the same run: ``batched`` (reports between decision steps go in
batches, the default) and ``every report waits`` (a pruner that may decide at every step, so
every report is a round trip to the driver, as before batching). Each gives the reports per
second the driver handled after the barrier, and the latency of the reports that waited for
a decision, measured in the trials.

Per-trial overhead, in the same run: ``--overhead-trials`` trivial trials, ``--concurrency``
at a time, under hypersweep's ``RayLauncher``, Ray Tune's ``Tuner`` with ``reuse_actors=True``
and Ray Tune's default (a fresh actor per trial), on the same cluster.

    python benchmarks/ray_scale.py [--trials 200] [--trials-per-actor 25] [--reports 100]
                                   [--step-ms 40] [--interval 25] [--repeats 2]
                                   [--overhead-trials 100] [--profile driver.txt]

Writes benchmarks/results/ray_scale.json (arguments, every round, load averages, and the
driver's CPU time per report after the barrier). ``--skip-throughput`` or ``--skip-overhead``
run one half, ``--time-limit`` starts no round after that many seconds, and
``--round-timeout`` ends a throughput round that cannot keep up.

With ``--trials-per-actor 1`` each simulated trial is a Ray actor of its own (a Python worker
process with Ray loaded), so the number of concurrent trials is bounded by the machine's memory
and cores, not by the driver. ``--profile`` writes the driver's cProfile (its main thread, the
sweep loop) of the first batched round, by cumulative and by own time.
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

import hypersweep as hs

RESULTS = Path(__file__).resolve().parent / "results"


def simulated_trial(config: dict[str, Any]) -> float:
    """Reports ``reports`` steps, one per ``step_s``; times the reports that wait for a decision."""
    context = hs.get_trial_context()
    assert context is not None
    folder = Path(config["folder"])
    hs.report(0, loss=1.0)  # the first report waits: the trial runs
    barrier = folder / "go"
    while not barrier.exists():
        time.sleep(0.01)
    waited: list[float] = []
    interval = int(config["interval"])
    loss = 1.0
    for step in range(1, int(config["reports"])):
        time.sleep(float(config["step_s"]))
        loss = float(config["x"]) / (step + 1)
        began = time.perf_counter()
        hs.report(step, loss=loss)
        if step % interval == 0:
            waited.append(time.perf_counter() - began)
    (folder / f"latency-{context.trial_number}.json").write_text(json.dumps(waited))
    return loss


class _Counter(hs.Callback):
    """Counts the reports the driver handles; opens the barrier once every trial reported."""

    def __init__(self, folder: Path, trials: int) -> None:
        self.folder, self.trials = folder, trials
        self.first: set[int] = set()
        self.opened: float | None = None
        self.count = 0
        self.last = 0.0
        self.cpu_opened = self.cpu_last = 0.0  # the driver process's CPU time then

    def on_trial_result(self, trial: Any, step: int, metrics: Any) -> None:
        if step == 0:
            self.first.add(trial.number)
            if len(self.first) == self.trials and self.opened is None:
                (self.folder / "go").touch()
                self.opened = time.perf_counter()
                self.cpu_opened = time.process_time()
            return
        self.count += 1
        self.last = time.perf_counter()
        self.cpu_last = time.process_time()


def throughput_round(args: argparse.Namespace, *, batched: bool) -> dict[str, Any]:
    import optuna

    from hypersweep.launchers import RayLauncher

    loadavg_before = os.getloadavg()
    cpu_began = time.process_time()
    with tempfile.TemporaryDirectory() as folder:
        counter = _Counter(Path(folder), args.trials)
        # Both never prune: what differs is where a decision can be due.
        interval = args.interval if batched else 1
        pruner = optuna.pruners.ThresholdPruner(upper=1e18, interval_steps=interval)
        began = time.perf_counter()
        result = hs.tune(
            {
                "x": hs.uniform(0.5, 1.5),
                "folder": folder,
                "reports": args.reports,
                "step_s": args.step_ms / 1000,
                "interval": args.interval,
            },
            simulated_trial,
            metric="loss",
            n_trials=args.trials,
            max_concurrent=args.trials,
            early_stopping=pruner,
            storage=f"{folder}/sweep.journal",
            callbacks=[counter],
            launcher=RayLauncher(
                max_pending_trials=args.trials, trials_per_actor=args.trials_per_actor
            ),
            timeout=args.round_timeout,  # a round that cannot keep up ends, and says so
        )
        wall = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        counts = result.counts()
        reported = sum(len(t.intermediate_values) for t in result.trials)
        if counts == {"completed": args.trials}:
            assert reported == args.trials * args.reports, reported  # nothing lost
        latencies = []
        for path in Path(folder).glob("latency-*.json"):
            latencies.extend(json.loads(path.read_text()))
    elapsed = (counter.last - counter.opened) if counter.opened is not None else float("nan")
    offered = args.trials * 1000 / args.step_ms
    measured = len(latencies)
    latencies = sorted(latencies) or [float("nan")]
    return {
        "mode": "batched" if batched else "every report waits",
        "trials": args.trials,
        "trials_per_actor": args.trials_per_actor,
        "reports_after_barrier": counter.count,
        "seconds_after_barrier": round(elapsed, 3),
        "reports_per_s": round(counter.count / elapsed, 1),
        "offered_reports_per_s": round(offered, 1),
        "ideal_seconds": round((args.reports - 1) * args.step_ms / 1000, 3),
        "decision_latency_ms": {
            "count": measured,
            "p50": round(1000 * statistics.median(latencies), 2),
            "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 2),
            "max": round(1000 * latencies[-1], 2),
        },
        "sweep_wall_s": round(wall, 2),
        "counts": counts,
        "values_stored": reported,
        # The driver process's CPU (all its threads, Ray's included) over the whole sweep:
        # what one report costs the driver, whatever the cluster offers.
        "driver_cpu_s": round(cpu, 2),
        # ... and over the reports after the barrier: the driver's cost per report once every
        # trial runs, so 1000 / this is what one core of driver sustains.
        "driver_cpu_ms_per_report": round(
            1000 * (counter.cpu_last - counter.cpu_opened) / max(1, counter.count), 4
        ),
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }


def _profiled(args: argparse.Namespace, batched: bool, profile: bool) -> dict[str, Any]:
    """A throughput round, under cProfile when asked (the profile written to ``--profile``)."""
    if not profile:
        return throughput_round(args, batched=batched)
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    row = profiler.runcall(throughput_round, args, batched=batched)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(40)
    Path(args.profile).write_text(text.getvalue())
    return {**row, "profiled": True}


def trivial(config: dict[str, Any]) -> float:
    return float(config["x"]) ** 2


def trivial_tune(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"loss": float(config["x"]) ** 2})


def overhead_round(args: argparse.Namespace, runner: str) -> dict[str, Any]:
    from ray import tune

    from hypersweep.launchers import RayLauncher

    n = args.overhead_trials
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        if runner == "hypersweep RayLauncher":
            result = hs.tune(
                {"x": hs.uniform(-1, 1)},
                trivial,
                metric="loss",
                n_trials=n,
                max_concurrent=args.concurrency,
                storage=f"{folder}/sweep.journal",
                launcher=RayLauncher(),
            )
            assert result.counts() == {"completed": n}
        else:
            tune_config = tune.TuneConfig(
                metric="loss",
                mode="min",
                num_samples=n,
                max_concurrent_trials=args.concurrency,
                reuse_actors=runner.endswith("reuse_actors=True"),
            )
            results = tune.Tuner(
                trivial_tune,
                param_space={"x": tune.uniform(-1, 1)},
                tune_config=tune_config,
                run_config=tune.RunConfig(storage_path=folder, verbose=0),
            ).fit()
            assert len(results) == n and not results.errors
        wall = time.perf_counter() - began
    return {
        "runner": runner,
        "trials": n,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 3),
        "ms_per_trial": round(1000 * wall / n, 2),
        "loadavg_after": os.getloadavg(),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_cluster(nodes: int, per_node: int, tries: int = 3) -> Any:
    """A head without CPUs and ``nodes`` nodes; retried, as a node can time out starting on a
    loaded machine (Ray waits 30 s for it)."""
    from ray.cluster_utils import Cluster

    for attempt in range(tries):
        cluster = None
        try:
            # Fixed metrics-agent ports: a raylet then does not wait for its agent to write
            # one (under load that wait timed out and the raylet died).
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0,
                    "include_dashboard": False,
                    "metrics_agent_port": _free_port(),
                },
            )
            for _ in range(nodes):
                cluster.add_node(
                    num_cpus=per_node,
                    object_store_memory=200 * 2**20,
                    metrics_agent_port=_free_port(),
                )
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            if cluster is not None:
                cluster.shutdown()
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--trials-per-actor", type=int, default=25)
    parser.add_argument("--profile", default=None, help="write the driver's profile here")
    parser.add_argument("--reports", type=int, default=100)
    parser.add_argument("--step-ms", type=float, default=40.0)
    parser.add_argument("--interval", type=int, default=25)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--overhead-trials", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--round-timeout", type=float, default=300.0, help="seconds a throughput round may run"
    )
    parser.add_argument(
        "--time-limit", type=float, default=1800.0, help="no new round starts after this"
    )
    parser.add_argument("--output", default=str(RESULTS / "ray_scale.json"))
    args = parser.parse_args()

    import ray

    loadavg_before = os.getloadavg()
    # A CPU (by Ray's accounting) per trial; whole actors per node.
    actors = -(-args.trials // args.trials_per_actor)
    per_node = -(-actors // args.nodes) * args.trials_per_actor
    cluster = _start_cluster(args.nodes, per_node)
    # The workers import this module by name, and the same hypersweep as this driver.
    paths = [str(Path(__file__).parent), str(Path(hs.__file__).resolve().parent.parent)]
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}},
    )
    began = time.monotonic()
    rounds: list[dict[str, Any]] = []
    overhead: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        """Write what was measured so far (a round that never ends leaves the others saved)."""

        def median(rows: list[dict[str, Any]], field: str, value: str, key: Any) -> Any:
            values = [key(r) for r in rows if r[field] == value]
            return statistics.median(values) if values else None

        summary: dict[str, Any] = {
            "reports_per_s_batched": median(
                rounds, "mode", "batched", lambda r: r["reports_per_s"]
            ),
            "reports_per_s_every_report_waits": median(
                rounds, "mode", "every report waits", lambda r: r["reports_per_s"]
            ),
            "driver_cpu_ms_per_report_batched": median(
                rounds, "mode", "batched", lambda r: r["driver_cpu_ms_per_report"]
            ),
            "decision_latency_p50_ms_batched": median(
                rounds, "mode", "batched", lambda r: r["decision_latency_ms"]["p50"]
            ),
            "decision_latency_p95_ms_batched": median(
                rounds, "mode", "batched", lambda r: r["decision_latency_ms"]["p95"]
            ),
        }
        for runner in sorted({r["runner"] for r in overhead}):
            summary[f"ms_per_trial {runner}"] = median(
                overhead, "runner", runner, lambda r: r["ms_per_trial"]
            )
        out = {
            "benchmark": "ray_scale",
            "args": vars(args),
            "cluster": {"head_cpus": 0, "nodes": args.nodes, "cpus_per_node": per_node},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": {"ray": ray.__version__, "hypersweep": hs.__version__},
            "loadavg_before": loadavg_before,
            "loadavg_after": os.getloadavg(),
            "summary": summary,
            "throughput_rounds": rounds,
            "overhead_rounds": overhead,
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
        return summary

    try:
        for repeat in range(0 if args.skip_throughput else args.repeats):
            for batched in (True, False):
                if time.monotonic() - began > args.time_limit:
                    break
                profile = args.profile and batched and repeat == 0
                row = {"repeat": repeat, **_profiled(args, batched, profile)}
                print(json.dumps(row), flush=True)
                rounds.append(row)
                save()
        if not args.skip_overhead:
            for repeat in range(args.repeats):
                for runner in (
                    "hypersweep RayLauncher",
                    "Ray Tune Tuner reuse_actors=True",
                    "Ray Tune Tuner default",
                ):
                    if time.monotonic() - began > args.time_limit:
                        break
                    row = {"repeat": repeat, **overhead_round(args, runner)}
                    print(json.dumps(row), flush=True)
                    overhead.append(row)
                    save()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(save(), indent=2))


if __name__ == "__main__":
    main()
