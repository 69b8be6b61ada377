"""Multi-replica trials with real processes and real collectives (gloo, TF's gRPC ring)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import replica_objectives
from conftest import PYTHON, alive_pids, python_env, read_markers

import hypersweep as hs
from hypersweep.launchers import LocalLauncher
from hypersweep.testing import wait_until


def test_gloo_all_reduce_across_four_replicas(markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        replica_objectives.allreduce_sum,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=4),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].value == 1 + 2 + 3 + 4
    ranks = read_markers(markers, "allreduce-t0-r*")
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    port = ranks[0]["env"]["MASTER_PORT"]
    for replica in ranks:
        env = replica["env"]
        assert replica["total"] == 10.0
        assert env["RANK"] == str(replica["rank"]) and env["WORLD_SIZE"] == "4"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", port)
        assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("0", "1")
        assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPUs asked for: none visible
        assert env["OMP_NUM_THREADS"] == "1"
    assert not alive_pids([r["pid"] for r in ranks])  # nothing left after the sweep


def test_concurrent_trials_never_share_ports(markers: Path) -> None:
    # Three 2-replica trials, each holding its gang until all three are up.
    result = hs.tune(
        {"x": hs.uniform(0, 1), "together": 3},
        replica_objectives.allreduce_sum,
        metric="loss",
        n_trials=3,
        max_concurrent=3,
        replicas=hs.Replicas(n=2),
    )
    assert result.counts() == {"completed": 3}
    assert all(t.value == 3.0 for t in result.trials)
    ports = {r["trial"]: r["env"]["MASTER_PORT"] for r in read_markers(markers, "allreduce-t*-r0")}
    assert len(ports) == 3 and len(set(ports.values())) == 3
    for replica in read_markers(markers, "allreduce-t*-r1"):
        assert replica["env"]["MASTER_PORT"] == ports[replica["trial"]]


def test_a_killed_replica_restarts_the_gang_from_the_checkpoint(markers: Path) -> None:
    import torch

    # Trial kill_rank=1 loses rank 1 to SIGKILL mid-epoch 2; kill_rank=-1 runs uninterrupted.
    result = hs.tune(
        {"kill_rank": hs.grid([-1, 1]), "lr": 0.05, "epochs": 4},
        replica_objectives.ddp_train,
        metric="loss",
        strategy="grid",
        max_concurrent=2,
        replicas=hs.Replicas(n=2),
    )
    assert result.counts() == {"completed": 2}
    killed = next(t for t in result.trials if t.config["kill_rank"] == 1)
    clean = next(t for t in result.trials if t.config["kill_rank"] == -1)
    assert killed.attempts == 2 and clean.attempts == 1
    assert killed.metrics["resumed_from"] == 2.0  # after the epoch-1 checkpoint
    # Both ranks were restarted, and both restored the checkpoint.
    assert [r["start"] for r in read_markers(markers, "ddp-1-a1-r*")] == [2, 2]
    first = read_markers(markers, "ddp-1-a0-r*")
    assert not alive_pids([r["pid"] for r in first])
    final_killed = torch.load(markers / "final-1.pt")
    final_clean = torch.load(markers / "final--1.pt")
    for name, tensor in final_clean.items():
        assert torch.equal(final_killed[name], tensor), name
    assert killed.value == clean.value


def test_a_failing_rank_fails_the_trial_with_its_traceback(markers: Path) -> None:
    result = hs.tune(
        {"bad_rank": hs.choice([1])},
        replica_objectives.fail_on_rank,
        metric="loss",
        n_trials=1,
        max_retries=1,
        replicas=hs.Replicas(n=3),
    )
    assert result.counts() == {"failed": 1}
    trial = result.trials[0]
    assert trial.attempts == 3  # the first run and one gang restart
    error = trial.error or ""
    assert error.startswith("replica worker-0 (rank 1 of 3) raised ValueError: bad shard on rank 1")
    assert "Traceback (most recent call last)" in error and "in fail_on_rank" in error
    assert "gave up after 2 attempts" in error
    assert len(read_markers(markers, "fail-a1-r*")) == 3  # the whole gang ran again
    assert not alive_pids([r["pid"] for r in read_markers(markers, "fail-a*-r*")])


def test_restart_policy_never_fails_at_once(markers: Path) -> None:
    result = hs.tune(
        {"bad_rank": hs.choice([0])},
        replica_objectives.fail_on_rank,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=2, restart_policy="Never"),
    )
    assert result.trials[0].state == "failed" and result.trials[0].attempts == 1
    assert "replica master-0 (rank 0 of 2) raised ValueError" in (result.trials[0].error or "")


def test_pruning_on_rank_0_stops_every_rank_at_the_same_step(markers: Path) -> None:
    started = time.monotonic()
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        replica_objectives.prune_probe,
        metric="loss",
        n_trials=1,
        early_stopping=optuna.pruners.ThresholdPruner(upper=10.0),
        replicas=hs.Replicas(n=3),
    )
    elapsed = time.monotonic() - started
    assert result.counts() == {"pruned": 1}
    pruned = read_markers(markers, "pruned-r*")
    assert [(r["rank"], r["step"]) for r in pruned] == [(0, 3), (1, 3), (2, 3)]
    assert not alive_pids([r["pid"] for r in read_markers(markers, "probe-r*")])
    assert elapsed < 60  # no rank waited for a collective's timeout


def test_gpus_are_lent_per_replica_and_never_oversubscribed(markers: Path) -> None:
    # Fake ids on a machine without GPUs: the pool logic is the same, the code runs on CPU.
    launcher = LocalLauncher(3, gpus=["0", "1", "2"])
    result = hs.tune(
        {"seconds": hs.choice([0.3])},
        replica_objectives.gpu_probe,
        metric="loss",
        n_trials=3,
        launcher=launcher,
        replicas=hs.Replicas(n=2, gpus_per_replica=1),
    )
    assert result.counts() == {"completed": 3}
    records = read_markers(markers, "gpu-t*-r*")
    assert len(records) == 6
    for trial in {r["trial"] for r in records}:
        gpus = [r["env"]["CUDA_VISIBLE_DEVICES"] for r in records if r["trial"] == trial]
        assert len(set(gpus)) == 2 and all(g in {"0", "1", "2"} for g in gpus)
    # Each trial needs 2 of the 3 GPUs, so trials never overlapped.
    spans = sorted(
        (
            min(r["began"] for r in records if r["trial"] == t),
            max(r["ended"] for r in records if r["trial"] == t),
        )
        for t in {r["trial"] for r in records}
    )
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end


DRIVER = textwrap.dedent(
    """
    import hypersweep as hs
    import replica_objectives

    hs.tune({"x": hs.uniform(0, 1)}, replica_objectives.hold, metric="loss", n_trials=2,
            max_concurrent=2, name="gang", replicas=hs.Replicas(n=2), verbose=False)
    """
)


@pytest.mark.slow
def test_replicas_die_with_a_killed_driver(run_dir: Path, markers: Path) -> None:
    script = run_dir / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([PYTHON, str(script)], env=python_env())
    try:
        wait_until(lambda: len(list(markers.glob("hold-*.json"))) == 4, timeout=60)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    pids = [r["pid"] for r in read_markers(markers, "hold-*")]
    wait_until(lambda: not alive_pids(pids), timeout=10)


@pytest.mark.slow
def test_tensorflow_multi_worker_training(markers: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    result = hs.tune(
        {"lr": hs.choice([0.05]), "epochs": 3},
        replica_objectives.tf_train,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=2, framework="tensorflow"),
    )
    assert result.counts() == {"completed": 1}, [t.error for t in result.trials]
    workers = read_markers(markers, "tf-r*")
    assert [w["rank"] for w in workers] == [0, 1]
    configs = [json.loads(w["env"]["TF_CONFIG"]) for w in workers]
    addresses = configs[0]["cluster"]["worker"]
    assert len(addresses) == 2 and len(set(addresses)) == 2
    for index, config in enumerate(configs):
        assert config == {
            "cluster": {"worker": addresses},
            "task": {"type": "worker", "index": index},
            "environment": "cloud",
        }
    assert all(w["replicas"] == 2 for w in workers)  # one strategy spanning both workers
    assert workers[0]["checksum"] == workers[1]["checksum"]  # gradients were all-reduced
    assert result.trials[0].value == pytest.approx(workers[0]["loss"])
    assert not alive_pids([w["pid"] for w in workers])
    assert os.environ.get("TF_CONFIG") is None  # the driver's own environment is untouched


@pytest.mark.slow
def test_ctrl_c_stops_every_replica(run_dir: Path, markers: Path) -> None:
    script = run_dir / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([PYTHON, str(script)], env=python_env(), stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(list(markers.glob("hold-*.json"))) == 4, timeout=60)
        driver.send_signal(signal.SIGINT)
        driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode != 0
    assert not alive_pids(
        [r["pid"] for r in read_markers(markers, "hold-*")]
    )  # gone before it exited
    assert hs.load("gang").counts() == {"interrupted": 2}


def test_every_rank_gets_rank_zeros_decision_for_its_step() -> None:
    from hypersweep.launchers._decisions import SharedDecisions

    shared = SharedDecisions()
    assert shared.answer(0, rank0_ended=False) is None  # rank 1 waits for rank 0's step 0
    shared.pending = 0
    assert shared.decide("continue") == 0 and shared.decide("stop") is None  # nothing pends
    assert shared.answer(0, rank0_ended=False) == "continue"
    shared.pending = 2
    assert shared.decide("stop") == 2
    assert shared.answer(2, rank0_ended=False) == "stop"
    assert shared.answer(1, rank0_ended=False) == "continue"  # rank 0 went past step 1
    assert shared.answer(3, rank0_ended=False) is None
    assert shared.answer(3, rank0_ended=True) == "continue"
    assert shared.settled(2) == "stop" and shared.settled(5) == "continue"
