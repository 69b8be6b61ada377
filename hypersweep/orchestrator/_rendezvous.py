"""The environment that lets replicas find each other, as the frameworks' own launchers set it.

Pure functions of a :class:`TrainJob`, a rank and the replicas' addresses: the local launcher
passes ``127.0.0.1`` and ports it allocated, a Kubernetes launcher passes the replicas' DNS
names under the job's headless Service and the job's fixed port, and both get what users' code
already reads:

- PyTorch: ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE`` (torchrun's names) and ``PET_*`` (PyTorchJob's names for torchrun run
  inside a replica), so ``torch.distributed.init_process_group()`` works unchanged.
- TensorFlow: ``TF_CONFIG`` with ``cluster`` and ``task`` exactly as TFJob writes it, so
  ``tf.distribute.MultiWorkerMirroredStrategy()`` works unchanged.
- JAX: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` (Kubeflow
  Trainer's JAX runtime) and ``COORDINATOR_ADDRESS``, ``COORDINATOR_PORT``, ``NUM_PROCESSES``,
  ``PROCESS_ID`` (Kubeflow's JAXJob), so ``jax.distributed.initialize()`` works with no
  arguments (see :mod:`hypersweep.orchestrator._jax_cluster`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypersweep.orchestrator._job import ReplicaId, TrainJob

Cluster = Mapping[str, Sequence[str]]
"""Role -> ``host:port`` of each replica of that role, in index order."""


def cluster_addresses(
    job: TrainJob,
    host: Callable[[ReplicaId], str],
    port: Callable[[ReplicaId], int] | int,
) -> dict[str, list[str]]:
    """Every replica's ``host:port``, by role, from functions of the replica (or one port)."""
    cluster: dict[str, list[str]] = {}
    for replica in job.replica_ids():
        replica_port = port if isinstance(port, int) else port(replica)
        cluster.setdefault(replica.role, []).append(f"{host(replica)}:{replica_port}")
    return cluster


def replica_dns_name(job_name: str, replica: ReplicaId, namespace: str) -> str:
    """``<job>-<role>-<i>.<job>.<ns>.svc``: the replica's pod (its ``hostname``) under the job's
    one headless Service (the pods' ``subdomain``), as JobSet names them."""
    return f"{job_name}-{replica.label}.{job_name}.{namespace}.svc"


def kubernetes_cluster(job: TrainJob, namespace: str) -> dict[str, list[str]]:
    """Addresses as the job's headless Service gives them (see :func:`replica_dns_name`)."""
    return cluster_addresses(
        job, lambda replica: replica_dns_name(job.name, replica, namespace), job.cluster_port
    )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); IPv6 hosts may be written ``[::1]:port``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def pytorch_env(
    job: TrainJob,
    rank: int,
    *,
    master_addr: str,
    master_port: int,
    agent_store: bool = False,
) -> dict[str, str]:
    """torchrun's and PyTorchJob's variables for replica ``rank`` (one process per replica).

    ``agent_store`` says that the launcher itself hosts the c10d store at the master's
    address, as torchrun's agent does: every rank, rank 0 included, then connects as a client
    (``TORCHELASTIC_USE_AGENT_STORE``) instead of rank 0 binding ``MASTER_PORT``.
    """
    world_size = job.world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a job of world size {world_size}")
    env = {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": str(rank),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
        "PET_NNODES": str(world_size),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if agent_store:
        env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
    return env


def tensorflow_config(job: TrainJob, rank: int, cluster: Cluster) -> dict[str, Any]:
    """The ``TF_CONFIG`` of replica ``rank``, as a dict (TFJob's layout)."""
    replica = job.replica_ids()[rank]
    return {
        "cluster": {role: list(addresses) for role, addresses in cluster.items()},
        "task": {"type": replica.role, "index": replica.index},
        "environment": "cloud",
    }


def tensorflow_env(job: TrainJob, rank: int, cluster: Cluster) -> dict[str, str]:
    """``TF_CONFIG`` (and ``PYTHONUNBUFFERED``) for replica ``rank``."""
    return {
        "TF_CONFIG": json.dumps(tensorflow_config(job, rank, cluster)),
        "PYTHONUNBUFFERED": "1",
    }


def jax_env(
    job: TrainJob, rank: int, *, coordinator_addr: str, coordinator_port: int
) -> dict[str, str]:
    """Kubeflow's JAX variables for replica ``rank``; process 0 serves the coordinator."""
    world_size = job.world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a job of world size {world_size}")
    host = f"[{coordinator_addr}]" if ":" in coordinator_addr else coordinator_addr
    return {
        "JAX_COORDINATOR_ADDRESS": f"{host}:{coordinator_port}",
        "JAX_COORDINATOR_PORT": str(coordinator_port),
        "JAX_NUM_PROCESSES": str(world_size),
        "JAX_PROCESS_ID": str(rank),
        "COORDINATOR_ADDRESS": coordinator_addr,
        "COORDINATOR_PORT": str(coordinator_port),
        "NUM_PROCESSES": str(world_size),
        "PROCESS_ID": str(rank),
        "PYTHONUNBUFFERED": "1",
    }


def replica_env(job: TrainJob, rank: int, cluster: Cluster) -> dict[str, str]:
    """The rendezvous environment of replica ``rank`` for the job's framework.

    For PyTorch and JAX only rank 0's address matters (it serves the store, or the coordinator,
    that the others join).
    """
    if job.framework == "pytorch":
        host, port = split_address(cluster[job.replicas[0].role][0])
        return pytorch_env(job, rank, master_addr=host, master_port=port)
    if job.framework == "jax":
        host, port = split_address(cluster[job.replicas[0].role][0])
        return jax_env(job, rank, coordinator_addr=host, coordinator_port=port)
    return tensorflow_env(job, rank, cluster)
