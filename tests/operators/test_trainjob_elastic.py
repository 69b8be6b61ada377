"""Elastic PyTorch TrainJobs (``elasticPolicy``) on the test cluster, with real processes.

Each pod runs ``replicas.py elastic`` under torch's elastic agent (torchrun), which reads its
rendezvous from the ``PET_*`` variables the controller set; a lost pod is a pod whose agent and
workers are all killed, as a container's processes are when its pod is lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import hypersweep as hs
from hypersweep.testing import LocalCluster
from hypersweep.testing._node_agent import _descendants

from .conftest import HERE, Namespace, OperatorProcess, free_port, kubectl_json, wait_until
from .test_trainjob import _process_id, create, job_state, replica, wait_finished

pytestmark = pytest.mark.k8s

REPLICAS = str(HERE / "replicas.py")
SAMPLES = 1000  # replicas.ELASTIC_SAMPLES
NODE = "agent-0"  # the test node agent's node


def elastic_container(port: int | None, env: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "pytorch",
        "image": "hypersweep:test",
        "command": [sys.executable, "-m", "torch.distributed.run", REPLICAS, "elastic"],
        "env": [{"name": k, "value": v} for k, v in {**env, "OMP_NUM_THREADS": "1"}.items()],
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}},
    }
    if port is not None:
        spec["ports"] = [{"name": "pytorchjob-port", "containerPort": port}]
    return spec


def elastic_job(
    cluster: LocalCluster, namespace: str, name: str, tmp: Path, workers: int, minimum: int
) -> tuple[Path, Path]:
    """An elastic job of a Master and ``workers`` Workers; its step log and done file."""
    log, done = tmp / f"{name}.steps", tmp / f"{name}.done"
    env = {
        "CHECKPOINT_FILE": str(tmp / f"{name}.step"),
        "STEP_LOG": str(log),
        "DONE_FILE": str(done),
    }
    create(
        cluster,
        namespace,
        name,
        {
            "pytorchReplicaSpecs": {
                "Master": replica(elastic_container(free_port(span=workers + 1), env)),
                "Worker": replica(elastic_container(None, env), replicas=workers),
            },
            "elasticPolicy": {
                "minReplicas": minimum,
                "maxReplicas": workers + 1,
                "rdzvBackend": "c10d",
                "maxRestarts": 5,
                # A shrunk round starts 2 s after the survivors meet (torch's default: 30 s).
                "rdzvConf": [{"key": "last_call_timeout", "value": "2"}],
            },
        },
    )
    return log, done


def steps(log: Path) -> list[tuple[int, int]]:
    """(step, world size) of each step rank 0 logged; each step saw the whole dataset."""
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        _, step, _, world, _, samples, _, total = line.split()
        assert (int(samples), int(total)) == (SAMPLES, SAMPLES * (SAMPLES - 1) // 2), line
        out.append((int(step), int(world)))
    return out


def worlds(log: Path) -> list[int]:
    """The world sizes of the rounds, in order (consecutive steps of one size are one)."""
    out: list[int] = []
    for _, world in steps(log):
        if not out or out[-1] != world:
            out.append(world)
    return out


def kill_pod(cluster: LocalCluster, namespace: str, pod: str) -> None:
    """SIGKILL every process of the pod: torchrun's agent and the workers it started (these run
    in sessions of their own, so the agent's process group alone would leave them running)."""
    pid = wait_until(lambda: _process_id(cluster, namespace, pod), 30, f"{pod}'s process")
    for victim in [pid, *_descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def cordoned(cluster: LocalCluster) -> Iterator[None]:
    """No new pod fits on the node: capacity that is gone, until the block ends."""
    cluster.kubectl("cordon", NODE)
    try:
        yield
    finally:
        cluster.kubectl("uncordon", NODE)


def test_an_elastic_job_goes_on_with_fewer_replicas_and_grows_back(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """4 replicas, minReplicas 2: one is lost, the other 3 go on from the checkpoint (world
    3, the dataset sharded 3 ways), and once there is room again its new pod joins (world 4)."""
    ns = namespace.name
    log, done = elastic_job(cluster, ns, "elastic", tmp_path, workers=3, minimum=2)
    wait_until(lambda: len(steps(log)) >= 3, 240, "3 steps of the 4-replica gang")
    assert worlds(log) == [4]
    with cordoned(cluster):
        kill_pod(cluster, ns, "elastic-worker-1")
        wait_until(lambda: worlds(log)[-1:] == [3], 180, "the 3 survivors to go on")
        last = steps(log)[-1][0]
        wait_until(lambda: steps(log)[-1][0] >= last + 2, 60, "more steps of the 3 survivors")
        # The lost replica's pod is back, waiting for room; the job did not restart.
        pod = kubectl_json(cluster, "get", "pod", "elastic-worker-1", "-n", ns)
        assert pod["status"]["phase"] == "Pending", pod["status"]
        status = job_state(cluster, ns, "elastic")
        assert status["restartCount"] == 0 and "Failed" not in status["true"], status
    wait_until(lambda: worlds(log)[-1:] == [4], 180, "the gang to grow back to 4")
    done.touch()
    status = wait_finished(cluster, ns, "elastic", timeout=120)
    assert "Succeeded" in status["true"], (status, operator.log_tail())
    assert status["restartCount"] == 0
    assert worlds(log) == [4, 3, 4], worlds(log)
    # Each round went on from the checkpoint of the round before it, not from step 0.
    logged = steps(log)
    for (step, world), (earlier, before) in zip(logged[1:], logged, strict=False):
        if world != before:
            assert step >= earlier > 0, logged
    events = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=elastic"
    ).stdout
    assert "ElasticReplicaLost" in events and "goes on with 3 replicas" in events, events


def test_an_elastic_job_below_min_replicas_restarts_counted(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """2 replicas, minReplicas 2: losing one leaves too few, so the gang restarts (counted
    toward backoffLimit) from the checkpoint, with both replicas."""
    ns = namespace.name
    log, done = elastic_job(cluster, ns, "below", tmp_path, workers=1, minimum=2)
    wait_until(lambda: len(steps(log)) >= 3, 240, "3 steps of the 2-replica gang")
    before = steps(log)[-1][0]
    kill_pod(cluster, ns, "below-worker-0")
    wait_until(
        lambda: job_state(cluster, ns, "below").get("restartCount") == 1, 60, "a counted restart"
    )
    wait_until(lambda: steps(log)[-1][0] >= before + 3, 240, "the restarted gang's steps")
    done.touch()
    status = wait_finished(cluster, ns, "below", timeout=120)
    assert "Succeeded" in status["true"], (status, operator.log_tail())
    assert status["restartCount"] == 1
    assert set(worlds(log)) == {2}


def test_an_elastic_trial_of_tune_goes_on_with_fewer_replicas_and_grows_back(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    """``tune(replicas=Replicas(n=(2, 3)))`` on Kubernetes: the trial's TrainJob is elastic and
    its replicas run the entry point under torchrun. A replica is lost mid-trial: the objective
    goes on from its checkpoint with world 2, then 3 again, in one attempt (no retry)."""
    from hypersweep.kube._client import Kube
    from hypersweep.launchers import KubernetesLauncher

    from .conftest import trial_template

    ns = namespace.name
    worlds_log, done = tmp_path / "worlds", tmp_path / "done"
    template = trial_template(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "-m",
            "hypersweep.operators.trial_entrypoint",
        ],
        {"OMP_NUM_THREADS": "1", "WORLDS_LOG": str(worlds_log), "DONE_FILE": str(done)},
    )
    master = template["replicaSpecs"]["Master"]
    master["template"]["spec"]["containers"][0]["ports"] = [
        {"name": "pytorchjob-port", "containerPort": free_port(span=3)}
    ]
    template["replicaSpecs"]["Worker"] = {**master, "replicas": 2}
    template["elasticPolicy"] = {"rdzvConf": [{"key": "last_call_timeout", "value": "2"}]}
    port = free_port()
    launcher = KubernetesLauncher(
        ns,
        trial_template=template,
        kube=Kube(cluster.api_client()),
        report_url=f"http://127.0.0.1:{port}",
        report_port=port,
    )

    def objective(config: dict[str, Any]) -> float:  # shipped to the pods by value
        import os
        import time

        import torch
        import torch.distributed as dist

        import hypersweep

        dist.init_process_group("gloo")
        context = hypersweep.get_trial_context()
        assert context is not None
        rank, world = dist.get_rank(), dist.get_world_size()
        assert (context.rank, context.world_size) == (rank, world)
        state = hypersweep.restore()
        start = state["step"] + 1 if state else 0
        loss = 0.0
        for step in range(start, 100_000):
            shard = range(rank, 1000, world)  # this round's share of the data
            totals = torch.tensor(
                [float(len(shard)), float(os.path.exists(os.environ["DONE_FILE"]))]
            )
            dist.all_reduce(totals)
            loss = config["x"] ** 2 + 1 / (step + 1)
            if rank == 0:
                with open(os.environ["WORLDS_LOG"], "a") as handle:
                    handle.write(f"{step} {world} {int(totals[0])}\n")
                hypersweep.checkpoint({"step": step})
            hypersweep.report(step, loss=loss)
            if totals[1] > 0:
                break
            time.sleep(0.3)
        dist.destroy_process_group()
        return loss

    def seen() -> list[int]:
        out: list[int] = []
        for line in worlds_log.read_text().splitlines() if worlds_log.exists() else []:
            _, world, samples = map(int, line.split())
            assert samples == 1000, line  # every round covered the whole dataset
            if not out or out[-1] != world:
                out.append(world)
        return out

    failures: list[Exception] = []

    def lose_a_replica() -> None:
        try:
            wait_until(lambda: seen() == [3], 240, "the 3-replica trial's steps")
            with cordoned(cluster):
                kill_pod(cluster, ns, "elastic-tune-trial-0-worker-1")
                wait_until(lambda: seen()[-1:] == [2], 180, "the 2 survivors to go on")
            wait_until(lambda: seen()[-1:] == [3], 180, "the trial to grow back to 3")
        except Exception as error:  # noqa: BLE001 - the trial still ends; the test reports it
            failures.append(error)
        finally:
            done.touch()

    chaos = threading.Thread(target=lose_a_replica, daemon=True)
    chaos.start()
    result = hs.tune(
        {"x": hs.choice([0.5])},
        objective,
        metric="loss",
        n_trials=1,
        name="elastic-tune",
        replicas=hs.Replicas(n=(2, 3)),
        max_retries=0,
        launcher=launcher,
        storage=str(tmp_path / "journal.log"),
    )
    chaos.join(10)
    assert not failures, (failures, seen(), operator.log_tail())
    assert [t.state for t in result.trials] == ["completed"], (result.trials, operator.log_tail())
    assert seen() == [3, 2, 3]
    job = kubectl_json(cluster, "get", "trainjob", "elastic-tune-trial-0", "-n", ns)
    assert job["spec"]["elasticPolicy"]["minReplicas"] == 2
    assert job["status"]["restartCount"] == 0
