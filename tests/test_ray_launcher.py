"""The Ray launcher on a real multi-node Ray cluster started on this machine.

One small cluster serves the whole module: a head node that runs no trials and two worker
nodes of 2 CPUs and one (pretend) GPU each. Ray's accounting gives each replica that asks for a
GPU its own ``CUDA_VISIBLE_DEVICES``, whether or not the GPU exists, which is all the gang
placement needs. Trials run real processes and real gloo collectives across the nodes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module

ray = require_module("ray")

import objectives
import optuna
import ray_objectives
import replica_objectives
from conftest import PYTHON, python_env
from ray.cluster_utils import Cluster

import hypersweep as hs
from hypersweep._errors import ConfigError
from hypersweep.launchers import RayLauncher
from hypersweep.launchers._ray import _placeable

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 100 * 2**20}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node without CPUs for trials, and two worker nodes."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 100 * 2**20,
            "include_dashboard": False,
        },
    )
    for _ in range(2):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def markers(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = run_dir / "markers"
    path.mkdir()
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(path))
    return path


def _launcher(markers: Path, **options: Any) -> RayLauncher:
    return RayLauncher(env={"HYPERSWEEP_TEST_MARKERS": str(markers)}, **options)


def _read(markers: Path, pattern: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(markers.glob(f"{pattern}.json"))]


def _wait_for(condition: Any, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_two_replica_gloo_trial_spans_two_nodes(cluster: Cluster, markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        ray_objectives.gang_allreduce,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=2, gpus_per_replica=1),
        launcher=_launcher(markers, placement_strategy="STRICT_SPREAD"),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].value == 1 + 2
    ranks = _read(markers, "allreduce-t0-r*")
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["node"] for r in ranks}) == 2  # one replica per Ray node
    master = ranks[0]
    for replica in ranks:
        env = replica["env"]
        assert replica["total"] == 3.0
        assert (env["RANK"], env["WORLD_SIZE"]) == (str(replica["rank"]), "2")
        assert env["MASTER_ADDR"] == master["ip"]  # rank 0's node serves the store
        assert env["MASTER_PORT"] == master["env"]["MASTER_PORT"]
        assert env["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert env["CUDA_VISIBLE_DEVICES"] == "0"  # the node's one GPU, given by Ray


def test_removing_a_node_mid_trial_resumes_from_checkpoint(cluster: Cluster, markers: Path) -> None:
    """Rank 1's node leaves the cluster; the gang restarts on a new node from its checkpoint."""
    import threading

    outcome: dict[str, Any] = {}

    def sweep() -> None:
        outcome["result"] = hs.tune(
            {"lr": hs.choice([0.1]), "epochs": 4},
            ray_objectives.node_loss_train,
            metric="loss",
            n_trials=1,
            max_retries=2,
            replicas=hs.Replicas(n=2, gpus_per_replica=1),
            launcher=_launcher(markers, placement_strategy="STRICT_SPREAD"),
        )

    driver = threading.Thread(target=sweep)
    driver.start()
    _wait_for(lambda: len(_read(markers, "waiting-r*")) == 2 or not driver.is_alive())
    assert driver.is_alive(), "the sweep ended before its replicas reached epoch 2"
    rank1 = next(r for r in _read(markers, "waiting-r*") if r["rank"] == 1)
    victim = next(node for node in cluster.worker_nodes if node.node_id == rank1["node"])
    cluster.remove_node(victim, allow_graceful=False)
    cluster.add_node(**NODE)  # what an autoscaler does: the gang needs two nodes again
    driver.join(timeout=300)
    assert not driver.is_alive()

    result = outcome["result"]
    assert result.counts() == {"completed": 1}
    trial = result.trials[0]
    assert trial.attempts == 2
    assert trial.metrics["resumed_from"] == 2.0  # after the epoch-1 checkpoint
    retried = _read(markers, "train-a1-r*")
    assert [r["start"] for r in retried] == [2, 2]  # both ranks restored the checkpoint
    assert rank1["node"] not in {r["node"] for r in retried}
    assert len({r["node"] for r in retried}) == 2
    # Same loss as an uninterrupted run: weight = lr * 3 * (1 + 2 + 3 + 4).
    assert trial.value == pytest.approx(1.0 / (1.0 + 0.1 * 3 * 10))
    # Leave the cluster as Ray sees it settled: the removed node known to be gone.
    _wait_for(lambda: sum(node["Alive"] for node in ray.nodes()) == 3)


def test_a_sweep_of_20_trials_ends_with_the_right_counts(cluster: Cluster, markers: Path) -> None:
    launcher = _launcher(markers)
    result = hs.tune(
        {"n": hs.grid(list(range(20)))},
        ray_objectives.mixed,
        metric="loss",
        strategy="grid",
        early_stopping=optuna.pruners.ThresholdPruner(upper=100.0),
        launcher=launcher,
    )
    unlucky = {n for n in range(20) if n % 7 == 3}
    pruned = {n for n in range(20) if n % 5 == 1}
    assert result.counts() == {"completed": 20 - 3 - 4, "failed": 3, "pruned": 4}
    by_n = {t.config["n"]: t for t in result.trials}
    assert {n for n, t in by_n.items() if t.state == "failed"} == unlucky
    assert {n for n, t in by_n.items() if t.state == "pruned"} == pruned
    assert "ValueError: n=3 is unlucky" in (by_n[3].error or "")
    assert all(t.value == n for n, t in by_n.items() if t.state == "completed")
    assert launcher.max_concurrent == 4  # 4 CPUs on the worker nodes, 1 per trial
    # Warm actors ran trial after trial (errors and pruning do not retire an actor).
    pids = {(markers / f"pids-{n}").read_text() for n in range(20)}
    assert len(pids) <= 4


def test_a_killed_actor_is_retried_from_its_checkpoint(cluster: Cluster, markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(1, 2)},
        objectives.crash_once,
        metric="loss",
        n_trials=2,
        seed=0,
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 2}
    for trial in result.trials:
        assert trial.attempts == 2
        assert trial.metrics["resumed_from"] == 4.0
        assert trial.value == pytest.approx(sum(trial.config["x"] * (s + 1) for s in range(6)))


def test_pruning_on_rank_0_stops_every_rank(cluster: Cluster, markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        replica_objectives.prune_probe,
        metric="loss",
        n_trials=1,
        early_stopping=optuna.pruners.ThresholdPruner(upper=10.0),
        replicas=hs.Replicas(n=2),
        launcher=_launcher(markers),
    )
    assert result.counts() == {"pruned": 1}
    pruned = [json.loads(p.read_text()) for p in sorted(markers.glob("pruned-r*.json"))]
    assert [(r["rank"], r["step"]) for r in pruned] == [(0, 3), (1, 3)]


def test_a_failing_rank_fails_the_trial_with_its_traceback(cluster: Cluster, markers: Path) -> None:
    result = hs.tune(
        {"bad_rank": hs.choice([1])},
        replica_objectives.fail_on_rank,
        metric="loss",
        n_trials=1,
        max_retries=1,
        replicas=hs.Replicas(n=2),
        launcher=_launcher(markers),
    )
    trial = result.trials[0]
    assert trial.state == "failed" and trial.attempts == 3
    error = trial.error or ""
    assert error.startswith("replica worker-0 (rank 1 of 2) raised ValueError: bad shard on rank 1")
    assert "Traceback (most recent call last)" in error and "gave up after 2 attempts" in error


SWEEP_FILE = """
name: ray-file
objective: objectives:crash_once
metric: loss
n_trials: 3
max_concurrent: 2
seed: 0
space:
  x: {{type: float, low: 1, high: 2}}
launcher: {{type: ray, address: "{address}", num_cpus: 1}}
"""


def test_a_sweep_file_names_the_ray_launcher(cluster: Cluster, run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP_FILE.format(address=cluster.address))
    run = subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", "run", "sweep.yaml", "--no-live"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = hs.load("ray-file")
    assert result.counts() == {"completed": 3}
    assert sorted(t.attempts for t in result.trials) == [2, 2, 2]  # crashed once, on Ray
    with pytest.raises(ConfigError, match=r"launcher\.gpus: unknown field"):
        from hypersweep.orchestrator._spec import parse_spec

        parse_spec(
            {
                "objective": "objectives:quadratic",
                "space": {"x": {"type": "float", "low": 0, "high": 1}},
                "metric": "loss",
                "n_trials": 2,
                "launcher": {"type": "ray", "gpus": 1},
            }
        )


# --- without a cluster ----------------------------------------------------------------------


def test_placement_checks() -> None:
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    two = [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert _placeable(two, nodes, "STRICT_SPREAD")
    assert _placeable(two, nodes, "PACK")
    assert not _placeable(two, nodes, "STRICT_PACK")  # 2 GPUs on one node
    assert not _placeable([{"CPU": 1.0, "GPU": 1.0}] * 3, nodes, "STRICT_SPREAD")
    assert not _placeable([{"CPU": 1.0, "TPU": 1.0}], nodes, "PACK")


def test_launcher_from_a_sweep_file() -> None:
    launcher = RayLauncher.from_spec(
        {"type": "ray", "address": "auto", "num_gpus": 1, "placement_strategy": "SPREAD"}
    )
    assert (launcher.address, launcher.num_gpus) == ("auto", 1.0)
    with pytest.raises(ConfigError, match=r"launcher\.gpus: unknown field"):
        RayLauncher.from_spec({"type": "ray", "gpus": 1})
    with pytest.raises(ConfigError, match="placement_strategy"):
        RayLauncher(placement_strategy="DIAGONAL")
