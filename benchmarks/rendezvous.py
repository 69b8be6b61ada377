"""Rendezvous and gang restart: hypersweep's local launcher against a plain torchrun, in one run.

Two measurements on the same script (``benchmarks/rendezvous_train.py``), gloo on CPU:

1. Launch to the first completed all-reduce, for 2 and 4 replicas: from the moment the launch
   command starts to the moment rank 0's first all-reduce returns. Compared: ``torchrun
   --standalone --nproc-per-node N`` as a new process; ``hypersweep`` as a new process running
   ``hs.tune(..., replicas=hs.Replicas(n=N))`` for one trial (the same start-up costs as
   torchrun: interpreter, imports); and ``hs.tune()`` called in an already running driver.
   And a warm launch: ``hs.tune()`` running several trials one after another, timed from the
   launcher's ``launch()`` of each trial after the first (whose replicas come from the warm
   pool) to its first all-reduce.
2. Replica kill to training resumed: SIGKILL rank 1 in the middle of an epoch, and time until
   rank 0 completes its first training step (an all-reduce) after the restart from the latest
   checkpoint. Compared: hypersweep's gang restart (``max_retries``) and torchrun's worker
   group restart (``--max-restarts 1``, its default ``--monitor-interval``, and
   ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, without which its restarted workers hang:
   pytorch/pytorch#135712).

3. A sweep of short trials: ``--sweep-trials`` (50) trials of about one second, 2 replicas each,
   one at a time; the sweep's wall time against the sum of the trials' own running time (rank
   0's objective, from after its imports to its end). Against it, torchrun launched once per trial
   (``--torchrun-sweep-trials`` of them, as a plain loop with no search at all).

The load average of the machine is recorded with each part: other programs share its cores.

    python benchmarks/rendezvous.py [--repeats 5]

Prints a table and writes benchmarks/results/rendezvous.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hypersweep as hs
from hypersweep.launchers import LocalLauncher
from hypersweep.orchestrator._events import TrialAssignment

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCRIPT = HERE / "rendezvous_train.py"
TRAIN = {"epochs": 40, "steps": 10, "step_s": 0.02}


def _env(bench_dir: Path) -> dict[str, str]:
    env = dict(os.environ, BENCH_DIR=str(bench_dir), HYPERSWEEP_RUNS_DIR=str(bench_dir / "runs"))
    env.setdefault("OMP_NUM_THREADS", "1")  # what both launchers use by default
    return env


def _torchrun(replicas: int, *args: str, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(replicas),
        "--max-restarts",
        str(restarts),
        str(SCRIPT),
        *args,
    ]


def _hypersweep(replicas: int, function: str, config: dict[str, Any]) -> list[str]:
    """A new driver process that runs one multi-replica trial (like ``hypersweep run``)."""
    code = (
        "import hypersweep as hs, sys\n"
        "space = {'x': hs.uniform(0, 1), **" + repr(config) + "}\n"
        "r = hs.tune(space, " + repr(f"{SCRIPT}:{function}") + ", metric='loss', n_trials=1,\n"
        "            replicas=hs.Replicas(n=" + str(replicas) + "), max_retries=1, verbose=False)\n"
        "sys.exit(0 if r.counts() == {'completed': 1} else 1)\n"
    )
    return [sys.executable, "-c", code]


def _first_allreduce_done(bench_dir: Path) -> float:
    return float(json.loads((bench_dir / "allreduce.json").read_text())["done"])


def time_to_first_allreduce(launcher: str, replicas: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        bench_dir = Path(tmp)
        env = _env(bench_dir)
        if launcher == "hs.tune() in a running driver":
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                start = time.time()
                result = hs.tune(
                    {"x": hs.uniform(0, 1)},
                    f"{SCRIPT}:first_allreduce",
                    metric="loss",
                    n_trials=1,
                    replicas=hs.Replicas(n=replicas),
                    verbose=False,
                )
            finally:
                os.environ.clear()
                os.environ.update(saved)
            assert result.counts() == {"completed": 1}, result.trials[0].error
        else:
            command = (
                _torchrun(replicas, "first_allreduce")
                if launcher == "torchrun"
                else _hypersweep(replicas, "first_allreduce", {})
            )
            start = time.time()
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
        return _first_allreduce_done(bench_dir) - start


def _progress(bench_dir: Path) -> list[dict[str, Any]]:
    path = bench_dir / "progress.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


class _TimedLauncher(LocalLauncher):
    """The local launcher, noting when each trial is launched."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.launched: dict[int, float] = {}

    def launch(self, assignment: TrialAssignment) -> None:
        self.launched.setdefault(assignment.trial_number, time.time())
        super().launch(assignment)


def warm_launches(replicas: int, trials: int) -> dict[str, Any]:
    """Launch to first all-reduce of trials 1.. of one sweep (trial 0 finds the pool warming)."""
    with tempfile.TemporaryDirectory() as tmp:
        bench_dir = Path(tmp)
        saved = dict(os.environ)
        os.environ.update(_env(bench_dir))
        launcher = _TimedLauncher(max_concurrent=1)
        try:
            result = hs.tune(
                {"x": hs.uniform(0, 1)},
                f"{SCRIPT}:first_allreduce",
                metric="loss",
                n_trials=trials,
                launcher=launcher,
                replicas=hs.Replicas(n=replicas),
                verbose=False,
            )
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert result.counts() == {"completed": trials}
        done = {trial.number: float(trial.metrics["done"]) for trial in result.trials}
        seconds = {n: done[n] - launcher.launched[n] for n in sorted(done)}
        return {"first_trial_s": seconds[0], "warm_s": [seconds[n] for n in sorted(seconds)[1:]]}


def _trial_times(bench_dir: Path) -> list[float]:
    lines = (bench_dir / "trials.jsonl").read_text().splitlines()
    return [r["ended"] - r["began"] for r in map(json.loads, lines)]


def sweep_of_short_trials(launcher: str, trials: int) -> dict[str, Any]:
    """Wall time of ``trials`` one-second 2-replica trials, one at a time, and their own time."""
    with tempfile.TemporaryDirectory() as tmp:
        bench_dir = Path(tmp)
        env = _env(bench_dir)
        if launcher == "hypersweep":
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                start = time.time()
                result = hs.tune(
                    {"x": hs.uniform(0, 1)},
                    f"{SCRIPT}:one_second",
                    metric="loss",
                    n_trials=trials,
                    max_concurrent=1,
                    replicas=hs.Replicas(n=2),
                    verbose=False,
                )
                wall = time.time() - start
            finally:
                os.environ.clear()
                os.environ.update(saved)
            assert result.counts() == {"completed": trials}
        else:
            start = time.time()
            for _ in range(trials):
                subprocess.run(
                    _torchrun(2, "one_second"),
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
            wall = time.time() - start
        own = _trial_times(bench_dir)
        assert len(own) == trials
        return {
            "trials": trials,
            "wall_s": wall,
            "sum_of_trials_s": sum(own),
            "ratio": wall / sum(own),
            "trial_s_median": statistics.median(own),
        }


TORCHRUN_TIMEOUT_S = 90.0  # a restarted torchrun gang that has not finished by then is hung


def kill_to_resume(
    launcher: str, replicas: int, timeout: float = TORCHRUN_TIMEOUT_S
) -> dict[str, Any]:
    """SIGKILL rank 1 during epoch 3; seconds until rank 0's first step after the restart.

    Returns ``{"outcome": "ok", "seconds": ...}``, or the outcome of a run that did not get
    there (``timeout``: still running ``timeout`` seconds after the kill, then killed;
    ``exit N``: ended without resuming, or failed), with ``seconds`` set if training resumed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        bench_dir = Path(tmp)
        command = (
            _torchrun(replicas, "train", json.dumps(TRAIN), restarts=1)
            if launcher == "torchrun"
            else _hypersweep(replicas, "train", TRAIN)
        )
        env = _env(bench_dir)
        if launcher == "torchrun":
            # torchrun's agent-hosted store keeps the keys of the killed round, and the restarted
            # workers hang in init_process_group (pytorch/pytorch#135712); its workaround is a
            # store per round, served by rank 0, as before torch 2.5.
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        # A session of its own, so that a hung launcher is killed with all its workers.
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        outcome = "ok"
        try:
            deadline = time.monotonic() + 300
            while not any(r["epoch"] == 3 and r["step"] == 5 for r in _progress(bench_dir)):
                if process.poll() is not None:
                    return {
                        "outcome": f"exit {process.returncode} before the kill",
                        "seconds": None,
                    }
                if time.monotonic() > deadline:
                    return {"outcome": "timeout before the kill", "seconds": None}
                time.sleep(0.01)
            victim = int((bench_dir / "rank1-attempt0.pid").read_text())
            killed = time.time()
            os.kill(victim, signal.SIGKILL)
            try:
                code = process.wait(timeout=timeout)
                if code != 0:
                    outcome = f"exit {code}"
            except subprocess.TimeoutExpired:
                outcome = "timeout"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        resumed = [r["t"] for r in _progress(bench_dir) if r["attempt"] >= 1]
        return {"outcome": outcome, "seconds": min(resumed) - killed if resumed else None}


def _summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": samples,
    }


def _summary_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics over the runs that resumed and finished; every run is kept, as it went."""
    good = [run["seconds"] for run in runs if run["outcome"] == "ok"]
    summary: dict[str, Any] = _summary(good) if good else {"median_s": None}
    summary["ok"] = f"{len(good)} of {len(runs)}"
    summary["runs"] = runs
    return summary


def _load() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--replicas", type=int, nargs="+", default=[4])
    parser.add_argument("--sweep-trials", type=int, default=50)
    parser.add_argument("--torchrun-sweep-trials", type=int, default=5)
    args = parser.parse_args()

    import torch

    launchers = ["torchrun", "hypersweep (new driver process)", "hs.tune() in a running driver"]
    first: dict[str, dict[str, Any]] = {}
    restart: dict[str, dict[str, Any]] = {}
    load: dict[str, list[float]] = {"start": _load()}
    for replicas in args.replicas:
        samples: dict[str, list[float]] = {name: [] for name in launchers}
        for _ in range(args.repeats):  # interleaved, so that drifts in load hit all alike
            for name in launchers:
                samples[name].append(time_to_first_allreduce(name, replicas))
        for name in launchers:
            first[f"{name}, {replicas} replicas"] = _summary(samples[name])
        warm = warm_launches(replicas, args.repeats + 1)
        first[f"warm replicas (trials 1.. of one hs.tune()), {replicas} replicas"] = {
            **_summary(warm["warm_s"]),
            "first_trial_of_the_sweep_s": warm["first_trial_s"],
        }
        load[f"after launch, {replicas} replicas"] = _load()
        restarts: dict[str, list[dict[str, Any]]] = {"torchrun": [], "hypersweep": []}
        for _ in range(args.repeats):
            for name in restarts:
                restarts[name].append(kill_to_resume(name, replicas))
        for name, runs in restarts.items():
            restart[f"{name}, {replicas} replicas"] = _summary_of_runs(runs)
        load[f"after restarts, {replicas} replicas"] = _load()
    sweep = {"hypersweep": sweep_of_short_trials("hypersweep", args.sweep_trials)}
    load["after the hypersweep sweep"] = _load()
    sweep["torchrun"] = sweep_of_short_trials("torchrun", args.torchrun_sweep_trials)
    load["after the torchrun sweep"] = _load()

    print("\nlaunch to first completed all-reduce (gloo, CPU)")
    print(f"{'launcher':64} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, entry in first.items():
        print(f"{name:64} {entry['median_s']:9.2f} {entry['min_s']:7.2f} {entry['max_s']:7.2f}")
    print("\nreplica SIGKILL to training resumed from the checkpoint")
    print(f"{'launcher':64} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, entry in restart.items():
        if entry["median_s"] is None:
            outcomes = ", ".join(run["outcome"] for run in entry["runs"])
            print(f"{name:64} {'-':>9} (none resumed and finished: {outcomes})")
            continue
        line = f"{entry['median_s']:9.2f} {entry['min_s']:7.2f} {entry['max_s']:7.2f}"
        print(f"{name:64} {line}  ({entry['ok']} ok)")
    print("\nsweep of one-second 2-replica trials, one at a time")
    for name, entry in sweep.items():
        print(
            f"{name:12} {entry['trials']:3d} trials: {entry['wall_s']:7.1f} s wall, "
            f"{entry['sum_of_trials_s']:7.1f} s of trials, ratio {entry['ratio']:.2f}"
        )
    print(f"load average (1, 5, 15 min): {load}")

    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": "rendezvous",
        "script": "benchmarks/rendezvous_train.py (gloo, CPU, OMP_NUM_THREADS=1)",
        "repeats": args.repeats,
        "train": TRAIN,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_1_5_15_min": load,
        "versions": {"hypersweep": hs.__version__, "torch": torch.__version__},
        "launch_to_first_allreduce": first,
        "kill_to_resumed": restart,
        "sweep_of_one_second_trials": sweep,
    }
    (RESULTS / "rendezvous.json").write_text(json.dumps(payload, indent=2))
    print(f"\nsaved {RESULTS / 'rendezvous.json'}")


if __name__ == "__main__":
    main()
