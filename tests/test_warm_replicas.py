"""Warm replica workers: PyTorch gangs borrow processes that imported torch already.

Real processes and real gloo collectives. What must hold: a worker serves trial after trial,
each with a fresh rendezvous (port, process group, environment); a pruned or failed trial
leaves nothing behind for the next; a gang restart reuses the survivors; no process outlives
the sweep or its driver; concurrent gangs on reused workers never share a port.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import replica_objectives
from conftest import PYTHON, alive_pids, python_env, read_markers

import hypersweep as hs
from hypersweep.launchers import LocalLauncher


def _children(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def _wait_for(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_pruned_and_failed_trials_leave_warm_workers_clean(markers: Path) -> None:
    plan = "keep,prune,raise,return,return"
    result = hs.tune(
        {"x": hs.uniform(0, 1), "plan": plan},
        replica_objectives.warm_probe,
        metric="loss",
        n_trials=5,
        max_concurrent=1,
        early_stopping=optuna.pruners.ThresholdPruner(upper=10.0),
        replicas=hs.Replicas(n=2, restart_policy="Never"),
    )
    states = [trial.state for trial in sorted(result.trials, key=lambda t: t.number)]
    assert states == ["completed", "pruned", "failed", "completed", "completed"]
    records = read_markers(markers, "warm-t*-r*")
    assert len(records) == 10
    # The same two processes served every trial: they were reused, never restarted ...
    assert len({r["pid"] for r in records}) == 2
    ports = {r["trial"]: r["env"]["MASTER_PORT"] for r in records if r["rank"] == 0}
    for r in records:
        assert r["env"]["MASTER_PORT"] == ports[r["trial"]]
        assert r["env"]["RANK"] == str(r["rank"])
        if r["trial"] > 0:
            # ... and each trial found them as a fresh process would be: torch imported, but
            # no process group, none of the previous trial's variables, no GPUs it set.
            assert r["torch_imported"], r
            assert not r["initialized"], r
            assert r["leak"] is None, r
            assert r["env"]["CUDA_VISIBLE_DEVICES"] == "", r
            assert r["cwd"] == str(markers.parent), r
    assert not alive_pids([r["pid"] for r in records])


def test_a_gang_restart_reuses_the_survivors_and_starts_only_the_replacement(
    markers: Path,
) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1), "kill_rank": 1, "lr": 0.05, "epochs": 4},
        replica_objectives.ddp_train,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=3),
    )
    assert result.counts() == {"completed": 1}
    trial = result.trials[0]
    assert trial.attempts == 2 and trial.metrics["resumed_from"] == 2.0
    first = {r["rank"]: r["pid"] for r in read_markers(markers, "ddp-1-a0-r*")}
    second = {r["rank"]: r["pid"] for r in read_markers(markers, "ddp-1-a1-r*")}
    assert len(first) == len(second) == 3
    survivors = {first[0], first[2]}
    assert survivors <= set(second.values())  # same processes, a new process group
    assert first[1] not in second.values()
    assert not alive_pids([*first.values(), *second.values()])


class _WaitForSpare(hs.Callback):
    """Holds the gang at its first report until the pool has a ready spare; notes its pid."""

    def __init__(self, launcher: LocalLauncher) -> None:
        self.launcher = launcher
        self.spares: list[int] = []

    def on_trial_result(self, trial: Any, step: int, metrics: Any) -> None:
        if self.spares:
            return
        pool = self.launcher._pool
        assert pool is not None
        _wait_for(lambda: bool(pool.ready_idle_pids()), timeout=120)
        self.spares = pool.ready_idle_pids()


def test_a_lost_replica_is_replaced_by_a_ready_spare_not_a_cold_start(markers: Path) -> None:
    launcher = LocalLauncher(1)
    spare = _WaitForSpare(launcher)
    result = hs.tune(
        {"x": hs.uniform(0, 1), "kill_rank": 1, "lr": 0.05, "epochs": 4},
        replica_objectives.ddp_train,
        metric="loss",
        n_trials=1,
        launcher=launcher,
        callbacks=[spare],
        replicas=hs.Replicas(n=4),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].attempts == 2
    # The ready spare the gang had before rank 1 was killed (held at the first report until
    # there was one) ...
    assert len(spare.spares) == 1
    killed = read_markers(markers, "ddp-1-killed")[0]
    first = {r["rank"]: r["pid"] for r in read_markers(markers, "ddp-1-a0-r*")}
    second = {r["rank"]: r["pid"] for r in read_markers(markers, "ddp-1-a1-r*")}
    assert killed["pid"] == first[1]
    # ... took the lost replica's place in the restarted gang, beside all three survivors
    # (rank 3, whose ring neighbours both survived, was blocked in an all-reduce and came
    # back when they left the process group): no process started after the kill was on the
    # restart's path.
    assert set(second.values()) == {first[0], first[2], first[3], spare.spares[0]}
    # The pool started the four replicas, the spare, and the spare's successor (started when
    # the replica was lost, ready for the next loss); none of them outlives the sweep.
    pool = launcher._pool
    assert pool is not None and pool.started == 6
    assert not alive_pids([*first.values(), *second.values()])
    assert not [pid for pid in _children(os.getpid()) if _is_warm_worker(pid)]


def _is_warm_worker(pid: int) -> bool:
    try:
        return b"_warm_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_concurrent_gangs_on_reused_workers_never_share_a_port(markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1), "plan": ",".join(["return"] * 8), "seconds": 0.3},
        replica_objectives.warm_probe,
        metric="loss",
        n_trials=8,
        max_concurrent=2,
        replicas=hs.Replicas(n=2),
    )
    assert result.counts() == {"completed": 8}
    assert all(trial.value == 2.0 for trial in result.trials)
    records = read_markers(markers, "warm-t*-r*")
    assert len({r["pid"] for r in records}) <= 4  # workers served several trials each
    ports = {r["trial"]: r["env"]["MASTER_PORT"] for r in records if r["rank"] == 0}
    assert len(ports) == 8
    for r in records:
        assert r["env"]["MASTER_PORT"] == ports[r["trial"]]
    # Trials that ran at the same time had different ports; some did run at the same time.
    ends = read_markers(markers, "warm-end-t*-r*")
    spans = {
        trial: (
            min(r["time"] for r in records if r["trial"] == trial),
            max(r["time"] for r in ends if r["trial"] == trial),
        )
        for trial in ports
    }
    overlapping = [
        (a, b)
        for a, b in itertools.combinations(spans, 2)
        if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
    ]
    assert overlapping
    for a, b in overlapping:
        assert ports[a] != ports[b]
    assert not alive_pids([r["pid"] for r in records])


def test_without_reuse_every_replica_is_a_new_process(markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1), "plan": "return,return"},
        replica_objectives.warm_probe,
        metric="loss",
        n_trials=2,
        launcher=LocalLauncher(1, reuse_workers=False),
        replicas=hs.Replicas(n=2),
    )
    assert result.counts() == {"completed": 2}
    records = read_markers(markers, "warm-t*-r*")
    assert len({r["pid"] for r in records}) == 4


DRIVER = textwrap.dedent(
    """
    import hypersweep as hs
    import replica_objectives

    # One 2-replica trial at a time of two: two warm workers hold the gang, two wait idle.
    hs.tune({"x": hs.uniform(0, 1)}, replica_objectives.hold, metric="loss", n_trials=1,
            max_concurrent=2, name="gang", replicas=hs.Replicas(n=2), verbose=False)
    """
)


@pytest.mark.slow
def test_idle_and_lent_warm_workers_die_with_a_killed_driver(run_dir: Path, markers: Path) -> None:
    script = run_dir / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([PYTHON, str(script)], env=python_env())
    try:
        _wait_for(lambda: len(list(markers.glob("hold-*.json"))) == 2)
        workers = _children(driver.pid)
        assert len(workers) == 4  # the pool holds max_concurrent x replicas processes
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    _wait_for(lambda: not alive_pids(workers), timeout=10)
