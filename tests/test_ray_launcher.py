"""The Ray launcher on a real multi-node Ray cluster started on this machine.

One small cluster serves the whole module: a head node that runs no trials and two worker
nodes of 2 CPUs and one (pretend) GPU each. Ray's accounting gives each replica that asks for a
GPU its own ``CUDA_VISIBLE_DEVICES``, whether or not the GPU exists, which is all the gang
placement needs. Trials run real processes and real gloo collectives across the nodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import ray_test_cluster, require_module

ray = require_module("ray")

import objectives
import optuna
import ray_objectives
import replica_objectives
from conftest import PYTHON, python_env, read_markers
from optuna.storages.journal import JournalStorage
from optuna.storages.journal._storage import JournalOperation
from ray.cluster_utils import Cluster

import hypersweep as hs
from hypersweep._errors import ConfigError
from hypersweep.launchers import RayLauncher
from hypersweep.launchers._ray import _placeable
from hypersweep.orchestrator._journal import FlockJournalFileBackend
from hypersweep.orchestrator._objective import resolve_objective
from hypersweep.orchestrator._ray_parameters import put_in_object_store
from hypersweep.testing import wait_until

pytestmark = pytest.mark.slow

INTERMEDIATE_OP = JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE

NODE = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node without CPUs for trials, and two worker nodes."""
    with ray_test_cluster(NODE) as cluster:
        yield cluster


def _launcher(markers: Path, **options: Any) -> RayLauncher:
    return RayLauncher(env={"HYPERSWEEP_TEST_MARKERS": str(markers)}, **options)


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
    ranks = read_markers(markers, "allreduce-t0-r*")
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
    wait_until(
        lambda: len(read_markers(markers, "waiting-r*")) == 2 or not driver.is_alive(), timeout=180
    )
    assert driver.is_alive(), "the sweep ended before its replicas reached epoch 2"
    rank1 = next(r for r in read_markers(markers, "waiting-r*") if r["rank"] == 1)
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
    retried = read_markers(markers, "train-a1-r*")
    assert [r["start"] for r in retried] == [2, 2]  # both ranks restored the checkpoint
    assert rank1["node"] not in {r["node"] for r in retried}
    assert len({r["node"] for r in retried}) == 2
    # Same loss as an uninterrupted run: weight = lr * 3 * (1 + 2 + 3 + 4).
    assert trial.value == pytest.approx(1.0 / (1.0 + 0.1 * 3 * 10))
    # Leave the cluster as Ray sees it settled: the removed node known to be gone.
    wait_until(lambda: sum(node["Alive"] for node in ray.nodes()) == 3, timeout=180)


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
    assert launcher.capacity == 4  # 4 CPUs on the worker nodes, 1 per trial
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


# --- limits, GPUs, placement ----------------------------------------------------------------


def _spans(markers: Path) -> list[tuple[float, float]]:
    spans = [json.loads(p.read_text()) for p in markers.glob("span-*.json")]
    return [(s["began"], s["ended"]) for s in spans]


def _peak(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    peak = level = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def test_the_sweeps_max_concurrent_binds_the_ray_launcher(cluster: Cluster, markers: Path) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1), "y": hs.uniform(0, 1), "seconds": 0.4},
        ray_objectives.timed,
        metric="loss",
        n_trials=4,
        max_concurrent=1,
        name="one-at-a-time",
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 4}
    assert _peak(_spans(markers)) == 1
    # One warm actor ran the four trials; its output lines name the trial it ran then.
    from ray._private.worker import global_worker

    logs = Path(global_worker.node.get_session_dir_path()) / "logs"
    tags = {
        line.strip()
        for path in logs.glob("worker-*.out")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith(":actor_name:hs-one-at-a-time-")
    }
    assert {f":actor_name:hs-one-at-a-time-t{n}" for n in range(1, 4)} <= tags


def test_trials_without_gpus_see_none_and_gpus_per_replica_0_wins(
    cluster: Cluster, markers: Path
) -> None:
    hs.tune(
        {"x": hs.choice([1])},
        ray_objectives.held,
        metric="loss",
        n_trials=1,
        name="gpu-probe",
        launcher=_launcher(markers),
    )
    single = read_markers(markers, "held-t0-a0")[0]
    assert single["env"]["CUDA_VISIBLE_DEVICES"] == ""  # the nodes have a GPU each
    assert single["actor"] == "hs-gpu-probe-t0"  # `ray list actors` names the trial
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        ray_objectives.gang_allreduce,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=2, gpus_per_replica=0),
        launcher=_launcher(markers, num_gpus=1),
    )
    assert result.counts() == {"completed": 1}
    ranks = read_markers(markers, "allreduce-t0-r*")
    assert [r["env"]["CUDA_VISIBLE_DEVICES"] for r in ranks] == ["", ""]


def test_a_trial_the_cluster_cannot_place_is_warned_about_and_fails_after_its_timeout(
    cluster: Cluster, markers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="hypersweep")
    result = hs.tune(
        {"x": hs.uniform(0, 1), "y": hs.uniform(0, 1)},
        ray_objectives.timed,
        metric="loss",
        n_trials=1,
        max_retries=0,
        launcher=_launcher(markers, resources={"TPU": 1}, pending_warning=0.5, pending_timeout=3.0),
    )
    assert result.counts() == {"failed": 1}
    assert "could not be placed on the Ray cluster within 3 s" in (result.trials[0].error or "")
    warnings = [r.getMessage() for r in caplog.records if "Insufficient resources" in r.message]
    assert len(warnings) >= 2  # at start, and again while the trial waits
    assert "TPU: 1" in warnings[0]


def test_the_sweep_grows_as_nodes_join_and_retries_as_they_leave(
    cluster: Cluster, markers: Path
) -> None:
    """No max_concurrent: waiting placement groups start as a node joins; its loss is retried."""
    import threading

    (markers / "hold").touch()
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        outcome["result"] = hs.tune(
            {"n": hs.grid(list(range(8)))},
            ray_objectives.held,
            metric="loss",
            strategy="grid",
            launcher=_launcher(markers),
        )

    driver = threading.Thread(target=sweep, daemon=True)
    driver.start()
    extra = None
    try:
        wait_until(
            lambda: len(read_markers(markers, "held-t*")) == 4 or not driver.is_alive(), timeout=180
        )
        extra = cluster.add_node(**NODE)
        wait_until(lambda: len(read_markers(markers, "held-t*")) == 6 or not driver.is_alive(), 120)
        on_extra = {
            r["trial"] for r in read_markers(markers, "held-t*") if r["node"] == extra.node_id
        }
        assert len(on_extra) == 2
        cluster.remove_node(extra, allow_graceful=False)
        wait_until(lambda: sum(node["Alive"] for node in ray.nodes()) == 3, timeout=180)
    finally:
        (markers / "hold").unlink()
        driver.join(timeout=300)
        if extra is not None and extra in cluster.worker_nodes:
            cluster.remove_node(extra)
    assert not driver.is_alive()
    result = outcome["result"]
    assert result.counts() == {"completed": 8}
    assert {t.number for t in result.trials if t.attempts == 2} == on_extra


def test_retries_after_a_node_loss_go_before_new_trials(
    cluster: Cluster, markers: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import re
    import threading

    caplog.set_level("DEBUG", logger="hypersweep")
    (markers / "hold").touch()
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        outcome["result"] = hs.tune(
            {"n": hs.grid(list(range(8)))},
            ray_objectives.held,
            metric="loss",
            strategy="grid",
            name="retries-first",
            launcher=_launcher(markers),
        )

    driver = threading.Thread(target=sweep, daemon=True)
    driver.start()
    try:
        wait_until(
            lambda: len(read_markers(markers, "held-t*")) == 4 or not driver.is_alive(), timeout=180
        )
        first = read_markers(markers, "held-t*")
        victim_id = first[0]["node"]
        lost = {r["trial"] for r in first if r["node"] == victim_id}
        victim = next(node for node in cluster.worker_nodes if node.node_id == victim_id)
        cluster.remove_node(victim, allow_graceful=False)
        wait_until(lambda: sum(node["Alive"] for node in ray.nodes()) == 2, timeout=180)
        # The driver has seen both losses (their retries wait) before any trial ends.
        wait_until(
            lambda: sum(t.attempts > 1 for t in hs.load("retries-first").trials) == 2, timeout=180
        )
    finally:
        (markers / "hold").unlink()
        driver.join(timeout=300)
        if sum(node["Alive"] for node in ray.nodes()) < 3:
            cluster.add_node(**NODE)  # leave the cluster as the other tests expect it
            wait_until(lambda: sum(node["Alive"] for node in ray.nodes()) == 3, timeout=180)
    assert not driver.is_alive()

    assert outcome["result"].counts() == {"completed": 8}
    # The guarantee is the driver's dispatch order: freed slots go to retries first. (When a
    # retry and a new trial are dispatched in the same driver step, their objectives start in
    # two processes at nearly the same instant, in either order: not what is promised.)
    started = {r["trial"] for r in first}
    dispatched = [
        (int(match[1]), int(match[2]))
        for record in caplog.records
        if (match := re.fullmatch(r"Dispatching trial (\d+) attempt (\d+) .*", record.getMessage()))
    ]
    order = [pair for pair in dispatched if not (pair[1] == 0 and pair[0] in started)]
    retries = [i for i, (trial, attempt) in enumerate(order) if attempt == 1]
    fresh = [i for i, (trial, attempt) in enumerate(order) if attempt == 0]
    assert sorted(order[i][0] for i in retries) == sorted(lost)
    assert len(fresh) == 8 - len(started)
    assert max(retries) < min(fresh), order  # the two slots left went to the retries first


def test_a_local_working_dir_is_refused_while_ray_is_connected(
    cluster: Cluster, markers: Path
) -> None:
    with pytest.raises(ConfigError, match=r"launcher\.runtime_env\.working_dir: .*ray\.init"):
        hs.tune(
            {"x": hs.uniform(0, 1), "y": hs.uniform(0, 1)},
            ray_objectives.timed,
            metric="loss",
            n_trials=1,
            name="wd-refused",
            launcher=_launcher(markers, runtime_env={"working_dir": "."}),
        )
    assert not list(markers.glob("span-*"))  # refused before any trial
    with pytest.raises(ConfigError, match=r"launcher\.runtime_env: .*"):
        hs.tune(
            {"x": hs.uniform(0, 1), "y": hs.uniform(0, 1)},
            ray_objectives.timed,
            metric="loss",
            n_trials=1,
            launcher=_launcher(markers, runtime_env={"pip": 3}),
        )


SHIPPED_SWEEP = """
name: shipped
objective: shipmod:objective
metric: loss
n_trials: 2
space:
  x: {{type: float, low: 0, high: 1}}
launcher: {{type: ray, address: "{address}", runtime_env: {{working_dir: code}}}}
"""


def test_a_shipped_working_dir_runs_its_code_not_a_stale_copy(
    cluster: Cluster, run_dir: Path
) -> None:
    """The doc's runtime_env={"working_dir": ...}: shipped with the job; the shipped copy wins."""
    (run_dir / "code").mkdir()
    (run_dir / "code" / "shipmod.py").write_text("def objective(config):\n    return 2.0\n")
    (run_dir / "stale").mkdir()
    (run_dir / "stale" / "shipmod.py").write_text("def objective(config):\n    return 1.0\n")
    (run_dir / "sweep.yaml").write_text(SHIPPED_SWEEP.format(address=cluster.address))
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(run_dir / "stale"), env["PYTHONPATH"]])
    run = subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", "run", "sweep.yaml", "--no-live"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = hs.load("shipped")
    assert result.counts() == {"completed": 2}
    assert [t.value for t in result.trials] == [2.0, 2.0]


def test_the_sweeps_max_concurrent_binds_every_launcher(markers: Path) -> None:
    from hypersweep.launchers import LocalLauncher

    result = hs.tune(
        {"x": hs.uniform(0, 1), "y": hs.uniform(0, 1), "seconds": 0.3},
        ray_objectives.timed,
        metric="loss",
        n_trials=4,
        max_concurrent=1,
        launcher=LocalLauncher(4),
    )
    assert result.counts() == {"completed": 4}
    assert _peak(_spans(markers)) == 1


def test_a_checkpoint_url_of_unknown_scheme_is_refused(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint_dir: 'nosuch://bucket/x' has an unknown"):
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
            checkpoint_dir="nosuch://bucket/x",
        )
    assert not Path("nosuch:").exists()


def test_bad_launcher_limits_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"launcher\.max_pending_trials"):
        RayLauncher(max_pending_trials=0)
    with pytest.raises(ConfigError, match=r"launcher\.pending_timeout"):
        RayLauncher(pending_timeout=-1)


DRIVER = """
import sys
import time

import hypersweep as hs
from hypersweep.launchers import RayLauncher

import sweepmod

hs.tune(
    {"n": hs.grid([0, 1, 2])},
    sweepmod.objective,
    metric="loss",
    strategy="grid",
    name="ray-resume",
    max_concurrent=1,
    launcher=RayLauncher(address=sys.argv[1], env={"HYPERSWEEP_TEST_MARKERS": sys.argv[2]}),
)
"""


def test_resume_runs_a_ray_sweep_on_ray_again(
    cluster: Cluster, markers: Path, run_dir: Path
) -> None:
    """Started from Python with a RayLauncher and interrupted; `hypersweep resume` goes on on
    Ray, importing the objective from the current folder."""
    import signal

    (run_dir / "sweepmod.py").write_text(
        "import ray_objectives\n\n\n"
        "def objective(config):\n    return ray_objectives.held(config)\n"
    )
    (run_dir / "drive.py").write_text(DRIVER)
    (markers / "hold").touch()
    env = python_env()
    env["PYTHONPATH"] = os.pathsep.join([str(run_dir), env["PYTHONPATH"]])
    driver = subprocess.Popen(
        [PYTHON, "drive.py", cluster.address, str(markers)], env=env, stderr=subprocess.PIPE
    )
    try:
        wait_until(
            lambda: read_markers(markers, "held-t0-a0") or driver.poll() is not None, timeout=180
        )
        assert driver.poll() is None, (driver.stderr.read() if driver.stderr else b"")[-2000:]
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        driver.kill()
    (markers / "hold").unlink()
    run = subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", "resume", "ray-resume", "--no-live"],
        capture_output=True,
        text=True,
        env=python_env(),  # the current folder is not on its path: the CLI adds it
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert hs.load("ray-resume").counts() == {"completed": 3}
    ran = read_markers(markers, "held-t*")
    assert {r["trial"] for r in ran} == {0, 1, 2}
    assert all(r["actor"].startswith("hs-ray-resume-t") for r in ran)  # Ray actors, not local


TUNER_DRIVER = """
import json, os, sys

import ray
from ray import tune

import ray_objectives

ray.init(
    address=sys.argv[1],
    runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
    log_to_driver=False,
)
tuner = tune.Tuner(
    ray_objectives.tune_trainable,
    param_space={"x": tune.grid_search([1.0, 2.0, 3.0])},
    tune_config=tune.TuneConfig(metric="loss", mode="min"),
    run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0),
)
print(json.dumps([[r.config["x"], r.metrics["loss"]] for r in tuner.fit()]))
"""


def test_a_ray_tune_trainable_runs_unchanged(cluster: Cluster, markers: Path) -> None:
    """The same function trainable under Ray Tune's Tuner and under hs.tune, same results;
    tune.get_checkpoint() resumes a crashed trial from its tune.report checkpoint."""
    from ray import tune

    xs = [1.0, 2.0, 3.0]
    # Ray Tune's own run, from a driver whose job gives its workers the tests' folder.
    run = subprocess.run(
        [PYTHON, "-c", TUNER_DRIVER, cluster.address, str(markers.parent / "ray_results")],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ray_results = {float(x): loss for x, loss in json.loads(run.stdout.splitlines()[-1])}
    result = hs.tune(
        {"x": tune.grid_search(xs), "crash_at": 2},
        ray_objectives.tune_trainable,
        metric="loss",
        strategy="grid",
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 3}
    assert {t.config["x"]: t.value for t in result.trials} == pytest.approx(ray_results)
    for trial in result.trials:
        assert trial.attempts == 2  # crashed once at step 2...
        assert trial.metrics["started_at"] == 2.0  # ...and resumed after step 1's checkpoint
        assert trial.metrics["step"] == 4.0
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3, 4]  # steps go on after a retry


def test_a_jax_trial_spans_two_nodes_with_the_coordinator_on_process_0(
    cluster: Cluster, markers: Path
) -> None:
    import jax_objectives

    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        jax_objectives.jax_psum,
        metric="loss",
        n_trials=1,
        replicas=hs.Replicas(n=2, framework="jax"),
        launcher=_launcher(markers, placement_strategy="STRICT_SPREAD"),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].value == 1 + 2
    seen = read_markers(markers, "jax-t0-r*")
    assert [r["rank"] for r in seen] == [0, 1]
    assert len({r["node"] for r in seen}) == 2  # one JAX process per Ray node
    address = seen[0]["jax_env"]["JAX_COORDINATOR_ADDRESS"]
    for replica in seen:
        assert replica["total"] == 3.0 and replica["process_count"] == 2
        assert replica["jax_env"]["JAX_COORDINATOR_ADDRESS"] == address
        assert replica["jax_env"]["JAX_PROCESS_ID"] == str(replica["rank"])


class _HoldsTheDriver(hs.Callback):
    """Holds the driver's loop in trial 0's report of ``step`` until the trial has gone on to
    ``until`` (its marker exists) or ``timeout`` seconds passed; records whether it had."""

    def __init__(self, markers: Path, step: int, until: int, timeout: float = 60.0) -> None:
        self.markers, self.step, self.until, self.timeout = markers, step, until, timeout
        self.went_on: bool | None = None

    def on_trial_result(self, trial: Any, step: int, metrics: Any) -> None:
        if trial.number != 0 or step != self.step:
            return
        marker = self.markers / f"reached-t0-s{self.until}"
        deadline = time.monotonic() + self.timeout
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.went_on = marker.exists()


def test_reports_between_decision_steps_do_not_wait_for_the_driver(
    cluster: Cluster, markers: Path
) -> None:
    """ASHA decides at rungs 10 and 30 only: while the driver is held in the report of step 2,
    the trial goes on to step 8 (today every report waits for the driver); at rung 10 it waits,
    so a trial ASHA stops ends exactly at its rung; every report reaches the driver."""
    holder = _HoldsTheDriver(markers, step=2, until=8)
    result = hs.tune(
        {"x": hs.grid([1.0, 2.0, 3.0, 4.0]), "steps": 40, "mark": 8},
        ray_objectives.steady,
        metric="loss",
        strategy="grid",
        early_stopping={"name": "asha", "min_resource": 10, "reduction_factor": 2},
        max_concurrent=1,
        callbacks=[holder],
        launcher=_launcher(markers),
    )
    assert holder.went_on is True
    by_x = {t.config["x"]: t for t in result.trials}
    assert by_x[1.0].state == "completed"
    assert sorted(by_x[1.0].intermediate_values) == list(range(40))
    stopped = [t for t in result.trials if t.state == "pruned"]
    assert stopped  # the worse trials are stopped at a rung, where their report waited
    for trial in stopped:
        last = max(trial.intermediate_values)
        assert last in (10, 20), trial.intermediate_values
        assert sorted(trial.intermediate_values) == list(range(last + 1))


def test_no_report_is_lost_when_a_trial_ends_pauses_or_its_actor_is_killed(
    cluster: Cluster, markers: Path
) -> None:
    """Batched reports are flushed before the trial's end, its checkpoints and its pause; an
    actor killed between checkpoints loses only steps that its retry reports again."""
    result = hs.tune(
        {"x": hs.grid([1.0, 2.0]), "steps": 60, "every": 10, "kill_at": 37},
        ray_objectives.steady,
        metric="loss",
        strategy="grid",
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 2}
    for trial in result.trials:
        assert trial.attempts == 2  # killed once, after step 37 and its checkpoint at 30
        assert sorted(trial.intermediate_values) == list(range(60))
    paused = hs.tune(
        {"x": hs.grid([4.0, 3.0, 2.0, 1.0]), "steps": 24, "every": 1},
        ray_objectives.steady,
        metric="loss",
        strategy="grid",
        early_stopping={"name": "asha", "min_resource": 3, "max_resource": 24},
        max_concurrent=2,
        launcher=_launcher(markers),
    )
    assert "paused" not in paused.counts()
    promoted = [t for t in paused.trials if t.promoted_at]
    assert promoted  # paused at a rung, then resumed from its checkpoint
    for trial in paused.trials:
        assert sorted(trial.intermediate_values) == list(range(max(trial.intermediate_values) + 1))


class _CountingJournal(FlockJournalFileBackend):
    """The default journal file, recording how many intermediate values each append carries."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.appends: list[int] = []

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        values = [log for log in logs if log["op_code"] == INTERMEDIATE_OP]
        if values:
            self.appends.append(len(values))
        super().append_logs(logs)


def test_values_of_batched_reports_are_stored_in_one_write_per_batch(
    cluster: Cluster, markers: Path, run_dir: Path
) -> None:
    """The driver stores the values of a batch of reports together: one journal append (one
    transaction in an RDB) for many reports, where each report was a write of its own; every
    value is stored, in order, in both storages."""
    space = {"x": hs.grid([1.0, 2.0]), "steps": 60, "mark": 0}
    backend = _CountingJournal(str(run_dir / "sweep.journal"))
    result = hs.tune(
        space,
        ray_objectives.steady,
        metric="loss",
        strategy="grid",
        storage=JournalStorage(backend),
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 2}
    for trial in result.trials:
        assert trial.intermediate_values == {step: trial.config["x"] for step in range(60)}
    assert sum(backend.appends) == 120
    assert len(backend.appends) <= 12, backend.appends  # one per report would be 120
    on_sqlite = hs.tune(
        {"x": hs.uniform(1.0, 2.0), "steps": 60, "mark": 0},
        ray_objectives.steady,
        metric="loss",
        n_trials=2,
        strategy="random",  # the grid strategy fails on SQLite today, before any report
        storage=f"sqlite:///{run_dir / 'sweep.db'}",
        launcher=_launcher(markers),
    )
    assert on_sqlite.counts() == {"completed": 2}
    for trial in on_sqlite.trials:
        assert trial.intermediate_values == {step: trial.config["x"] for step in range(60)}


UNSHARED_DRIVER = """
import sys
import ray
import ray_objectives
import hypersweep as hs
from hypersweep.launchers import RayLauncher

ray.init(address=sys.argv[1], log_to_driver=False)
hs.tune(
    {"x": hs.uniform(0, 1), "steps": 2, "mark": 0},
    ray_objectives.steady,
    metric="loss",
    n_trials=2,
    checkpoint_dir=sys.argv[2],
    storage=sys.argv[3],
    launcher=RayLauncher(env={"HYPERSWEEP_TEST_MARKERS": sys.argv[4]}),
)
"""


def test_a_checkpoint_dir_the_workers_do_not_share_is_refused_before_the_first_trial(
    cluster: Cluster, markers: Path, run_dir: Path
) -> None:
    """A driver whose checkpoint folder is its own (a private mount over the path, as a laptop
    driver's local folder) is refused before any trial runs, instead of retrying from zero;
    the same sweep with the folder shared runs."""
    folder = run_dir / "checkpoints"
    folder.mkdir()
    args = [cluster.address, str(folder), str(run_dir / "sweep.journal"), str(markers)]
    script = f'mount -t tmpfs none {folder} && exec {PYTHON} -c "$0" "$@"'
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, UNSHARED_DRIVER, *args],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert run.returncode != 0
    assert "checkpoint_dir: " + str(folder) + " is not shared" in run.stderr, run.stderr[-3000:]
    assert not list(markers.glob("reached-*"))  # no trial ran
    assert not list(folder.iterdir())  # the probe's marker went with the driver's mount
    shared = subprocess.run(
        [PYTHON, "-c", UNSHARED_DRIVER, *args[:2], str(run_dir / "shared.journal"), args[3]],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert shared.returncode == 0, shared.stderr[-3000:]
    assert len(list(markers.glob("reached-*"))) == 2
    assert not list(folder.glob(".hypersweep-shared-*"))  # the probe cleans up


WITH_PARAMETERS_DRIVER = """
import json, os, sys

import ray
from ray import tune

import ray_objectives

ray.init(
    address=sys.argv[1],
    runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
    log_to_driver=False,
)
tuner = tune.Tuner(
    tune.with_parameters(ray_objectives.with_data, data=b"0" * (int(sys.argv[3]) * 2**20)),
    param_space={"x": tune.grid_search([1.0, 2.0, 3.0])},
    tune_config=tune.TuneConfig(metric="loss", mode="min"),
    run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0),
)
print(json.dumps([[r.config["x"], r.metrics["loss"]] for r in tuner.fit()]))
"""


def test_tune_with_parameters_puts_large_objects_in_the_object_store_once(
    cluster: Cluster, markers: Path
) -> None:
    """A trainable wrapped by tune.with_parameters (after ray.init, as Ray Tune scripts do)
    gets its object under hs.tune, on Ray and locally, as under Tuner; on Ray the pickle sent
    to the actors holds only the object's reference."""
    from ray import tune

    mb = 24
    run = subprocess.run(
        [PYTHON, "-c", WITH_PARAMETERS_DRIVER, cluster.address, str(markers / "rt"), str(mb)],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {float(x): loss for x, loss in json.loads(run.stdout.splitlines()[-1])}
    assert expected == {1.0: 1.0 + mb, 2.0: 2.0 + mb, 3.0: 3.0 + mb}
    trainable = tune.with_parameters(ray_objectives.with_data, data=b"0" * (mb * 2**20))
    space = {"x": tune.grid_search([1.0, 2.0, 3.0])}
    launcher = _launcher(markers, reuse_actors=False)  # a fresh actor per trial
    on_ray = hs.tune(space, trainable, metric="loss", strategy="grid", launcher=launcher)
    assert {t.config["x"]: t.value for t in on_ray.trials} == expected
    # What the launcher puts for every new actor holds the object's reference, not the object
    # (which the objective pickled for local workers does hold).
    shipped = resolve_objective(trainable)
    assert shipped.pickled is not None and len(shipped.pickled) > mb * 2**20
    assert len(cloudpickle.dumps(put_in_object_store(shipped))) < 2**20
    local = hs.tune(space, trainable, metric="loss", strategy="grid")
    assert {t.config["x"]: t.value for t in local.trials} == expected


def _shared_sweep(markers: Path, *, kill: bool) -> tuple[hs.SweepResult, dict[int, int]]:
    """6 trials, 3 per actor (half a CPU each), all running at once; trial -> first pid."""
    result = hs.tune(
        {"x": hs.uniform(1, 2), "trials": 6, "kill": kill},
        ray_objectives.shared_actor_trial,
        metric="loss",
        n_trials=6,
        max_retries=1,
        launcher=_launcher(markers, trials_per_actor=3, num_cpus=0.5),
    )
    pids = {m["trial"]: m["pid"] for m in read_markers(markers, "shared-t*-a0")}
    return result, pids


def test_trials_share_an_actor_run_at_once_and_report_for_themselves(
    cluster: Cluster, markers: Path
) -> None:
    result, pids = _shared_sweep(markers, kill=False)
    assert result.counts() == {"completed": 6}
    # Two actors of three trials each; the first attempts waited for one another, so the
    # three trials of an actor ran at the same time, each in its own thread.
    assert sorted(list(pids.values()).count(pid) for pid in set(pids.values())) == [3, 3]
    threads = {(m["pid"], m["thread"]) for m in read_markers(markers, "shared-t*-a0")}
    assert len(threads) == 6
    for trial in result.trials:
        assert trial.attempts == 1
        x = trial.config["x"]
        assert trial.intermediate_values == {s: pytest.approx(x * (s + 1)) for s in range(5)}


def test_a_lost_shared_actor_retries_exactly_its_trials(cluster: Cluster, markers: Path) -> None:
    result, pids = _shared_sweep(markers, kill=True)
    assert result.counts() == {"completed": 6}
    lost = {trial for trial, pid in pids.items() if pid == pids[0]}
    assert len(lost) == 3
    assert {t.number: t.attempts for t in result.trials} == {
        n: 2 if n in lost else 1 for n in range(6)
    }
    retried = {m["trial"] for m in read_markers(markers, "shared-t*-a1")}
    assert retried == lost
    for trial in result.trials:
        x = trial.config["x"]
        assert trial.intermediate_values == {s: pytest.approx(x * (s + 1)) for s in range(5)}


def test_trials_per_actor_is_checked_before_anything_starts() -> None:
    for bad in (0, 2.5, "3", True):
        with pytest.raises(ConfigError, match=r"launcher\.trials_per_actor: expected an integer"):
            RayLauncher(trials_per_actor=bad)  # type: ignore[arg-type]
    from_file = RayLauncher.from_spec({"type": "ray", "trials_per_actor": 8})
    assert from_file.trials_per_actor == 8
    assert RayLauncher.from_spec(from_file.to_spec()).trials_per_actor == 8  # resume keeps it
    with pytest.raises(ConfigError, match=r"launcher\.trials_per_actor: .*reuse_actors=True"):
        RayLauncher(trials_per_actor=4, reuse_actors=False)
    with pytest.raises(ConfigError, match=r"launcher\.trials_per_actor: .*replica"):
        hs.tune(
            {"x": hs.uniform(0, 1)},
            ray_objectives.gang_allreduce,
            metric="loss",
            n_trials=1,
            replicas=hs.Replicas(n=2),
            launcher=RayLauncher(trials_per_actor=2),
        )
