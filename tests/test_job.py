"""The job description and the rendezvous environment: plain data and pure functions."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import hypersweep as hs
from hypersweep.launchers import LocalLauncher, SweepContext
from hypersweep.launchers._resources import GpuPool, PortAllocator, detect_gpus
from hypersweep.orchestrator import ReplicaGroup, Resources, RestartPolicy, TrainJob
from hypersweep.orchestrator._objective import resolve_objective
from hypersweep.orchestrator._rendezvous import (
    cluster_addresses,
    kubernetes_cluster,
    pytorch_env,
    replica_env,
    tensorflow_config,
)
from hypersweep.orchestrator._spec import SweepSettings, load_spec_file, parse_spec


def test_replicas_become_a_job_with_kubeflow_roles() -> None:
    torch_job = hs.Replicas(n=4, gpus_per_replica=1).to_job("sweep", backoff_limit=3)
    assert [(g.role, g.count) for g in torch_job.replicas] == [("master", 1), ("worker", 3)]
    assert torch_job.world_size == 4 and torch_job.gpus == 4
    assert torch_job.restart_policy == RestartPolicy("OnFailure", 3)
    assert [r.label for r in torch_job.replica_ids()] == [
        "master-0",
        "worker-0",
        "worker-1",
        "worker-2",
    ]
    tf_job = hs.Replicas(n=2, framework="tensorflow").to_job("sweep", backoff_limit=0)
    assert [(g.role, g.count) for g in tf_job.replicas] == [("worker", 2)]
    assert tf_job.cluster_port == 2222 and torch_job.cluster_port == 23456


def test_a_job_round_trips_through_plain_data() -> None:
    job = TrainJob(
        name="s-trial-3",
        framework="tensorflow",
        replicas=(
            ReplicaGroup("chief", 1, Resources(cpus=2, gpus=1, memory="4Gi")),
            ReplicaGroup("worker", 2, Resources(gpus=1), env={"A": "1"}),
        ),
        env={"B": "2"},
        restart_policy=RestartPolicy("ExitCode", 5),
    ).validated()
    data = json.loads(json.dumps(job.to_dict()))
    assert TrainJob.from_dict(data) == job
    assert job.for_trial("My_Sweep.v2", 7).name == "my-sweep-v2-trial-7"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"framework": "mxnet", "replicas": [{"role": "worker", "count": 1}]}, "framework"),
        ({"framework": "jax", "replicas": [{"role": "master", "count": 1}]}, "role"),
        ({"framework": "pytorch", "replicas": [{"role": "chief", "count": 1}]}, "role"),
        ({"framework": "pytorch", "replicas": [{"role": "master", "count": 2}]}, "count"),
        ({"framework": "pytorch", "replicas": [{"role": "worker", "count": 0}]}, "count"),
        (
            {
                "framework": "pytorch",
                "replicas": [{"role": "worker", "count": 1, "resources": {"gpus": -1}}],
            },
            "resources.gpus",
        ),
        (
            {
                "framework": "tensorflow",
                "replicas": [{"role": "worker", "count": 1}, {"role": "chief", "count": 1}],
            },
            "rank order",
        ),
    ],
)
def test_invalid_jobs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(hs.ConfigError, match=field):
        TrainJob.from_dict({"name": "j", **data})


def test_pytorch_env_is_torchruns_and_pytorchjobs() -> None:
    job = hs.Replicas(n=3).to_job("s", backoff_limit=0).for_trial("s", 0)
    cluster = kubernetes_cluster(job, "team")
    assert cluster["master"] == ["s-trial-0-master-0.s-trial-0.team.svc:23456"]
    env = replica_env(job, 2, cluster)
    assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "s-trial-0-master-0.s-trial-0.team.svc"
    assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "23456"
    assert (env["WORLD_SIZE"], env["RANK"], env["PET_NODE_RANK"]) == ("3", "2", "2")
    assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], env["PET_NPROC_PER_NODE"]) == (
        "0",
        "1",
        "1",
    )
    assert env["PET_NNODES"] == "3"
    assert "TORCHELASTIC_USE_AGENT_STORE" not in env  # rank 0 serves the store in a cluster
    local = pytorch_env(job, 0, master_addr="127.0.0.1", master_port=4000, agent_store=True)
    assert local["TORCHELASTIC_USE_AGENT_STORE"] == "True"
    with pytest.raises(ValueError, match="rank 3"):
        pytorch_env(job, 3, master_addr="h", master_port=1)


def test_tf_config_is_tfjobs() -> None:
    job = TrainJob(
        "j",
        "tensorflow",
        (ReplicaGroup("chief", 1), ReplicaGroup("worker", 2)),
    ).validated()
    cluster = kubernetes_cluster(job, "ns")
    config = tensorflow_config(job, 2, cluster)
    assert config == {
        "cluster": {
            "chief": ["j-chief-0.j.ns.svc:2222"],
            "worker": ["j-worker-0.j.ns.svc:2222", "j-worker-1.j.ns.svc:2222"],
        },
        "task": {"type": "worker", "index": 1},
        "environment": "cloud",
    }
    local = cluster_addresses(job, lambda r: "127.0.0.1", lambda r: 5000 + r.rank)
    assert json.loads(replica_env(job, 0, local)["TF_CONFIG"])["cluster"]["worker"] == [
        "127.0.0.1:5001",
        "127.0.0.1:5002",
    ]


def test_replicas_are_validated_naming_the_field() -> None:
    with pytest.raises(hs.ConfigError, match=r"replicas\.n: expected an integer >= 1"):
        hs.tune({"x": hs.uniform(0, 1)}, "m:f", metric="loss", n_trials=1, replicas={"n": 0})
    with pytest.raises(hs.ConfigError, match=r"replicas\.framework"):
        SweepSettings(
            {"x": hs.uniform(0, 1)},
            "loss",
            n_trials=1,
            replicas=hs.Replicas(
                2,
                framework="mxnet",  # type: ignore[arg-type]
            ),
        ).validated()
    with pytest.raises(hs.ConfigError, match=r"replicas\.gpu: unknown field"):
        SweepSettings(
            {"x": hs.uniform(0, 1)}, "loss", n_trials=1, replicas={"n": 2, "gpu": 1}
        ).validated()


def test_yaml_replicas(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "objective: m.py:f\nmetric: loss\nn_trials: 2\nspace: {x: {type: float, low: 0, high: 1}}\n"
        "replicas: {n: 4, framework: tensorflow, gpus_per_replica: 1, cpus_per_replica: 2}\n"
    )
    settings = load_spec_file(path).to_settings()
    job = settings.job
    assert job is not None and job.framework == "tensorflow" and job.world_size == 4
    assert job.gpus == 4 and job.replicas[0].resources.cpus == 2.0
    assert settings.to_data(None)["replicas"]["n"] == 4  # stored for resume
    base = {"objective": "m:f", "metric": "loss", "n_trials": 1, "space": {"x": 1.0}}
    with pytest.raises(hs.ConfigError, match=r"sweep: replicas\.n: Input should be greater"):
        parse_spec({**base, "replicas": {"n": 0}})
    with pytest.raises(
        hs.ConfigError, match=r"replicas\.gpus: unknown field; allowed fields are n, framework"
    ):
        parse_spec({**base, "replicas": {"n": 2, "gpus": 1}})
    with pytest.raises(hs.ConfigError, match=r"replicas\.framework: Input should be"):
        parse_spec({**base, "replicas": {"n": 2, "framework": "mxnet"}})


def test_ports_are_held_until_released() -> None:
    allocator = PortAllocator()
    held = [allocator.allocate() for _ in range(20)]
    assert len({h.port for h in held}) == 20
    # Another program cannot take a held port...
    intruder = socket.socket()
    with pytest.raises(OSError):
        intruder.bind(("127.0.0.1", held[0].port))
    intruder.close()
    # ...but a server that asks for address reuse (gRPC does) binds it once it is its turn.
    tf_port = allocator.allocate("0.0.0.0")
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", tf_port.port))
    server.listen()
    server.close()
    for h in [*held, tf_port]:
        allocator.release(h)
    assert not allocator.in_use


def test_gpu_pool_lends_each_gpu_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = GpuPool(["0", "1", "2"])
    first = pool.acquire(2)
    assert first == ["0", "1"] and pool.acquire(2) is None and pool.free == 1
    pool.release(first)
    assert pool.acquire(3) == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,-1,4")
    assert detect_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


def test_free_slots_account_for_gpus() -> None:
    job = hs.Replicas(n=2, gpus_per_replica=1).to_job("s", backoff_limit=0)
    objective = resolve_objective("replica_objectives:gpu_probe")
    launchers: list[LocalLauncher] = []

    def started(gpus: list[str]) -> LocalLauncher:
        launchers.append(LocalLauncher(4, gpus=gpus))
        launchers[-1].start(SweepContext("s", objective, "loss", job))
        return launchers[-1]

    try:
        assert started(["0", "1", "2"]).free_slots() == 1  # 3 GPUs, 2 per trial
        assert started(["0", "1", "2", "3"]).free_slots() == 2
        with pytest.raises(
            hs.ConfigError, match=r"replicas\.gpus_per_replica: a trial needs 2 GPUs"
        ):
            started(["0"])
    finally:
        for launcher in launchers:
            launcher.shutdown()
