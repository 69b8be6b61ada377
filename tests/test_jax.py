"""JAX multi-process trials: real processes, ``jax.distributed`` and gloo collectives on CPU."""

from __future__ import annotations

from pathlib import Path

import jax_objectives
import numpy as np
import optuna
from conftest import alive_pids, read_markers

import hypersweep as hs


def test_psum_across_three_jax_processes_initialized_without_arguments(markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        jax_objectives.jax_psum,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=3, framework="jax"),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].value == 1 + 2 + 3
    seen = read_markers(markers, "jax-t0-r*")
    assert [r["rank"] for r in seen] == [0, 1, 2]
    address = seen[0]["jax_env"]["JAX_COORDINATOR_ADDRESS"]
    host, port = address.rsplit(":", 1)
    for replica in seen:
        env = replica["jax_env"]
        assert replica["total"] == 6.0
        assert (replica["process_index"], replica["process_count"]) == (replica["rank"], 3)
        assert replica["devices"] == 3  # one CPU device per process, all in one mesh
        assert replica["collectives"] == "gloo"
        assert env["JAX_COORDINATOR_ADDRESS"] == address and host == "127.0.0.1"
        assert env["JAX_COORDINATOR_PORT"] == port
        assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", str(replica["rank"]))
        # JAXJob's names, for code written against Kubeflow's training operator
        assert (env["COORDINATOR_ADDRESS"], env["COORDINATOR_PORT"]) == (host, port)
        assert (env["NUM_PROCESSES"], env["PROCESS_ID"]) == ("3", str(replica["rank"]))
    assert not alive_pids([r["pid"] for r in seen])


def test_jax_cpu_collectives_implementation_chooses_other_collectives(markers: Path) -> None:
    # gloo is only the default: a replica whose environment names another implementation keeps
    # it (MPI here; the probe stops before JAX would load it).
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        jax_objectives.jax_collectives_probe,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(
            n=2, framework="jax", env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "mpi"}
        ),
    )
    assert result.counts() == {"completed": 1}
    seen = read_markers(markers, "jaxcollectives-r*")
    assert [(r["rank"], r["collectives"]) for r in seen] == [(0, "mpi"), (1, "mpi")]


def test_pruning_stops_every_jax_process_at_the_same_step(markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        jax_objectives.jax_prune_probe,
        metric="loss",
        n_trials=1,
        early_stopping=optuna.pruners.ThresholdPruner(upper=10.0),
        replicas=hs.Replicas(n=2, framework="jax"),
    )
    assert result.counts() == {"pruned": 1}
    pruned = read_markers(markers, "jaxpruned-r*")
    assert [(r["rank"], r["step"]) for r in pruned] == [(0, 3), (1, 3)]
    assert not alive_pids([r["pid"] for r in read_markers(markers, "jaxprobe-r*")])


def test_a_killed_jax_process_restarts_the_gang_from_a_numpy_checkpoint(markers: Path) -> None:
    # Trial kill_rank=1 loses process 1 to SIGKILL in epoch 2; kill_rank=-1 runs uninterrupted.
    result = hs.tune(
        {"kill_rank": hs.grid([-1, 1]), "lr": 0.05, "epochs": 4},
        jax_objectives.jax_train,
        metric="loss",
        strategy="grid",
        max_concurrent=1,
        replicas=hs.Replicas(n=2, framework="jax"),
    )
    assert result.counts() == {"completed": 2}
    killed = next(t for t in result.trials if t.config["kill_rank"] == 1)
    clean = next(t for t in result.trials if t.config["kill_rank"] == -1)
    assert killed.attempts == 2 and clean.attempts == 1
    assert killed.metrics["resumed_from"] == 2.0  # after the epoch-1 checkpoint
    assert [r["start"] for r in read_markers(markers, "jaxtrain-1-a1-r*")] == [2, 2]
    assert not alive_pids([r["pid"] for r in read_markers(markers, "jaxtrain-1-a0-r*")])
    np.testing.assert_array_equal(
        np.load(markers / "jaxfinal-1.npy"), np.load(markers / "jaxfinal--1.npy")
    )
    assert killed.value == clean.value


def test_the_jax_multiprocess_example_sweeps() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "jax_multiprocess.py"
    spec = importlib.util.spec_from_file_location("jax_multiprocess_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(trials=2, epochs=3, name="example")
    assert result.counts() == {"completed": 2}
    for trial in result.trials:
        assert trial.attempts == 1
        assert 0.5 < trial.metrics["accuracy"] <= 1.0  # it learned: chance is 0.1


def test_a_jax_set_up_error_fails_the_trial_with_its_traceback_not_as_a_crash() -> None:
    # The replica's JAX set-up runs in the worker before the objective: an error there (here
    # JAX refusing an unknown collectives implementation) is the trial's error, with its
    # traceback, not a worker lost to a signal.
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        jax_objectives.jax_collectives_probe,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(
            n=2, framework="jax", env={"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "no-such-one"}
        ),
    )
    trial = result.trials[0]
    error = trial.error or ""
    assert trial.state == "failed", error
    assert "no-such-one" in error and "Traceback" in error, error
    assert "SIGKILL" not in error and "killed" not in error, error
