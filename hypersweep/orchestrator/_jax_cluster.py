"""Let ``jax.distributed.initialize()`` find a JAX replica's place with no arguments.

The launchers give each replica of a ``framework="jax"`` trial the variables that Kubeflow's
JAX runtimes set (see :func:`hypersweep.orchestrator._rendezvous.jax_env`). JAX itself reads
only ``JAX_COORDINATOR_ADDRESS``; the process count and id it takes from a detected cluster
environment (Slurm, Open MPI, GKE TPU, Kubernetes Indexed Jobs...). JAX's documented way to add
one is to subclass ``ClusterEnv`` (subclasses register themselves on import), so each replica
registers :class:`_HypersweepCluster` before its objective runs, ahead of the built-in ones:
inside a Kubernetes pod JAX's own ``K8sCluster`` would otherwise claim the process and look for
an Indexed Job that a hypersweep trial is not.

It also makes CPU collectives work across processes: gloo, as Kubeflow's JAX examples set,
unless ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` says otherwise.
"""

from __future__ import annotations

import os

#: Set in every JAX replica; their presence is what :func:`prepare_jax_replica` looks for.
PROCESS_COUNT_VAR = "JAX_NUM_PROCESSES"
PROCESS_ID_VAR = "JAX_PROCESS_ID"
COORDINATOR_VAR = "JAX_COORDINATOR_ADDRESS"

_registered = False


def is_jax_replica() -> bool:
    """Whether this process is a replica of a JAX trial (its launcher set the variables)."""
    return PROCESS_COUNT_VAR in os.environ and PROCESS_ID_VAR in os.environ


def prepare_jax_replica() -> None:
    """Register the replica's cluster environment with JAX (once per process)."""
    global _registered
    if _registered or not is_jax_replica():
        return
    import jax
    from jax._src import clusters  # ClusterEnv: JAX's extension point for cluster detection

    class _HypersweepCluster(clusters.ClusterEnv):
        name = "hypersweep"

        @classmethod
        def is_env_present(cls) -> bool:
            return is_jax_replica()

        @classmethod
        def get_coordinator_address(
            cls, timeout_secs: int | None, override_coordinator_port: str | None
        ) -> str:
            address = os.environ[COORDINATOR_VAR]
            if override_coordinator_port:
                address = f"{address.rsplit(':', 1)[0]}:{override_coordinator_port}"
            return address

        @classmethod
        def get_process_count(cls) -> int:
            return int(os.environ[PROCESS_COUNT_VAR])

        @classmethod
        def get_process_id(cls) -> int:
            return int(os.environ[PROCESS_ID_VAR])

        @classmethod
        def get_local_process_id(cls) -> int | None:
            return None  # one process per replica: it sees all the devices it was given

    # Subclassing appended it; detection takes the first environment present, so go first.
    types = clusters.ClusterEnv._cluster_types
    types.remove(_HypersweepCluster)
    types.insert(0, _HypersweepCluster)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    _registered = True
