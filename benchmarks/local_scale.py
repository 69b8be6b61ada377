"""Local sweeps of many trials: per-trial time, driver memory, load/status/resume time, journal.

A trivial objective, the random strategy, 2 trials at a time, the default journal storage.
Each measurement runs in a fresh process, so that its peak memory (``ru_maxrss``) and its
start-up are its own:

* run: ``tune(n_trials=N)``; wall time, time per trial, the driver's peak memory, and the
  time at which each tenth of the trials had finished (per-trial time flat or not);
* load: ``hypersweep.load(name)`` from the results snapshot the sweep left beside its
  journal; after one more line was written to the journal (the results snapshot no longer
  matches: the replay snapshot and the lines after it are read); and from the journal alone
  (both snapshots removed; this load writes them again);
* status: ``hypersweep status NAME`` as a command (its Python start-up included), with the
  results snapshot and after the journal changed;
* resume: ``tune(..., resume=True)`` of the finished sweep (nothing left to run), from the
  replay snapshot;
* journal replay: the memory a storage holds (RSS growth) and the time it takes after reading
  the whole journal, Optuna's ``JournalStorage`` against hypersweep's.

The machine's load average is recorded before and after every round: the figures of a
loaded machine are slower, not wrong.

    python benchmarks/local_scale.py [--trials 20000 100000] [--repeats 1] [--keep]

Writes benchmarks/results/local_scale.json (arguments, every round, the median round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "scale"


def trivial(config: dict[str, Any]) -> float:
    return (config["x"] - 2.0) ** 2 + (config["y"] + 1.0) ** 2


def _space() -> dict[str, Any]:
    import hypersweep as hs

    return {"x": hs.uniform(-5, 5), "y": hs.uniform(-5, 5)}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_run(trials: int, concurrent: int, resume: bool) -> dict[str, Any]:
    """One sweep (or its resume) in this process."""
    import hypersweep as hs

    marks: list[float] = []
    started = time.perf_counter()
    step = max(1, trials // 10)

    def on_update(orchestrator: Any) -> None:
        finished = len(orchestrator.views) - len(orchestrator.running)
        while finished >= (len(marks) + 1) * step and len(marks) < 10:
            marks.append(time.perf_counter() - started)

    result = hs.tune(
        _space(),
        trivial,
        metric="value",
        n_trials=trials,
        max_concurrent=concurrent,
        strategy="random",
        seed=0,
        name=NAME,
        resume=resume,
        verbose=False,
        on_update=on_update,
    )
    wall = time.perf_counter() - started
    assert result.counts().get("completed") == trials, result.counts()
    tenths = [b - a for a, b in zip([0.0, *marks], marks, strict=False)]
    return {
        "wall_s": wall,
        "ms_per_trial": wall / trials * 1000,
        "ms_per_trial_by_tenth": [t / step * 1000 for t in tenths],
        "peak_rss_mib": _peak_mib(),
    }


def child_load() -> dict[str, Any]:
    import hypersweep as hs

    started = time.perf_counter()
    result = hs.load(NAME)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "trials": len(result.trials), "peak_rss_mib": _peak_mib()}


def child_touch() -> dict[str, Any]:
    """Write one line to the journal, as any later write would (a study attribute)."""
    import optuna

    from hypersweep.orchestrator._storage import default_run_dir, open_storage

    storage = open_storage(str(default_run_dir(NAME) / "journal.log"), NAME)
    study = optuna.load_study(study_name=NAME, storage=storage)
    study.set_user_attr("touched", time.time())
    return {}


def child_replay(kind: str) -> dict[str, Any]:
    """Memory and time of reading the whole journal into a storage: Optuna's JournalStorage
    against hypersweep's (no replay snapshot), each in a fresh process."""
    import optuna

    from hypersweep.orchestrator._journal import FlockJournalFileBackend, SweepJournalStorage
    from hypersweep.orchestrator._storage import default_run_dir

    backend = FlockJournalFileBackend(str(default_run_dir(NAME) / "journal.log"))
    before = _rss_mib()
    started = time.perf_counter()
    if kind == "optuna":
        storage: Any = optuna.storages.JournalStorage(backend)
    else:
        storage = SweepJournalStorage(backend)
    wall = time.perf_counter() - started
    trials = len(storage.get_all_trials(0, deepcopy=False))
    return {"wall_s": wall, "trials": trials, "held_mib": _rss_mib() - before}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _status(runs_dir: Path) -> float:
    """Seconds the ``hypersweep status NAME`` command takes, start-up included."""
    env = {**os.environ, "HYPERSWEEP_RUNS_DIR": str(runs_dir)}
    started = time.perf_counter()
    subprocess.run(
        [shutil.which("hypersweep") or "hypersweep", "status", NAME],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _in_child(runs_dir: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "HYPERSWEEP_RUNS_DIR": str(runs_dir)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def one_round(trials: int, concurrent: int) -> dict[str, Any]:
    runs_dir = Path(tempfile.mkdtemp(prefix="local-scale-"))
    try:
        load_before = os.getloadavg()
        run = _in_child(runs_dir, "run", str(trials), str(concurrent))
        journal = runs_dir / NAME / "journal.log"
        snapshot = journal.with_name(journal.name + ".snapshot")
        replay = journal.with_name(journal.name + ".replay")
        snapshot_bytes = snapshot.stat().st_size if snapshot.exists() else None
        replay_bytes = replay.stat().st_size if replay.exists() else None
        load_snapshot = _in_child(runs_dir, "load")
        status = _status(runs_dir)
        _in_child(runs_dir, "touch")  # the results snapshot no longer matches the journal
        load_changed = _in_child(runs_dir, "load")  # replay snapshot + later lines
        _in_child(runs_dir, "touch")
        status_changed = _status(runs_dir)
        snapshot.unlink(missing_ok=True)
        replay.unlink(missing_ok=True)
        replay_optuna = _in_child(runs_dir, "replay", "optuna")
        replay_hypersweep = _in_child(runs_dir, "replay", "hypersweep")
        load_journal = _in_child(runs_dir, "load")  # and writes both snapshots again
        resume = _in_child(runs_dir, "resume", str(trials), str(concurrent))
        return {
            "trials": trials,
            "run": run,
            "load_from_snapshot": load_snapshot,
            "load_after_journal_changed": load_changed,
            "load_from_journal": load_journal,
            "status_command_s": status,
            "status_command_after_journal_changed_s": status_changed,
            "resume": resume,
            "journal_replay": {"optuna": replay_optuna, "hypersweep": replay_hypersweep},
            "journal_bytes": journal.stat().st_size,
            "snapshot_bytes": snapshot_bytes,
            "replay_snapshot_bytes": replay_bytes,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "local_scale.json")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the sizes of the existing output this run does not measure (with the"
        " arguments and machine of the run that measured them)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "load":
            figures = child_load()
        elif kind == "touch":
            figures = child_touch()
        elif kind == "replay":
            figures = child_replay(rest[0])
        else:
            figures = child_run(int(rest[0]), int(rest[1]), resume=kind == "resume")
        print(json.dumps(figures))
        return
    sizes = []
    for trials in args.trials:
        rounds = []
        for repeat in range(args.repeats):
            rounds.append(one_round(trials, args.concurrent))
            figures = rounds[-1]
            print(
                f"{trials} trials, round {repeat + 1}:"
                f" {figures['run']['ms_per_trial']:.2f} ms/trial,"
                f" peak {figures['run']['peak_rss_mib']:.0f} MiB,"
                f" load {figures['load_from_snapshot']['wall_s']:.2f} s (snapshot)"
                f" / {figures['load_after_journal_changed']['wall_s']:.2f} s (changed)"
                f" / {figures['load_from_journal']['wall_s']:.2f} s (journal),"
                f" status {figures['status_command_s']:.2f} s"
                f" / {figures['status_command_after_journal_changed_s']:.2f} s (changed),"
                f" resume {figures['resume']['wall_s']:.2f} s,"
                f" journal {figures['journal_bytes'] / 1e6:.0f} MB,"
                f" load average {figures['loadavg_before'][0]:.1f}",
                flush=True,
            )
        median = sorted(rounds, key=lambda r: r["run"]["wall_s"])[(len(rounds) - 1) // 2]
        sizes.append({"trials": trials, "median_round": median, "rounds": rounds})
        _save(args, sizes, complete=trials == args.trials[-1])


def _kept_sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """With ``--keep``: the sizes of the existing output that this run does not measure, each
    with the arguments and machine of the run that measured it."""
    if not args.keep or not args.output.is_file():
        return []
    earlier = json.loads(args.output.read_text())
    return [
        {
            "arguments": earlier.get("arguments"),
            "machine": earlier.get("machine"),
            **size,
        }
        for size in earlier.get("sizes", [])
        if size["trials"] not in args.trials
    ]


def _save(args: argparse.Namespace, sizes: list[dict[str, Any]], *, complete: bool) -> None:
    """Write the JSON after every size, so that a long run stopped early keeps what it did."""
    if not hasattr(args, "kept"):
        args.kept = _kept_sizes(args)  # read once, before this run first overwrites the file
    report = {
        "arguments": {
            "trials": args.trials,
            "repeats": args.repeats,
            "concurrent": args.concurrent,
            "strategy": "random",
            "objective": "trivial",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        # Sizes kept from earlier runs (``--keep``) carry their own arguments and machine.
        "sizes": sorted([*args.kept, *sizes], key=lambda size: size["trials"]),
        "complete": complete,  # False: stopped before the last size of ``trials``
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
