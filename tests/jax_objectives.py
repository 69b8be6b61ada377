"""Objectives of JAX multi-process trials for the tests: real processes, real gloo collectives.

Every objective calls ``jax.distributed.initialize()`` with no arguments, as a JAXJob's code
does, and writes what it saw under ``HYPERSWEEP_TEST_MARKERS`` (see :mod:`replica_objectives`).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import numpy as np
from replica_objectives import _context, _markers, record

import hypersweep as hs

JAX_VARS = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_PORT",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "COORDINATOR_ADDRESS",
    "COORDINATOR_PORT",
    "NUM_PROCESSES",
    "PROCESS_ID",
)


def _initialize() -> Any:
    import jax

    jax.distributed.initialize()  # no arguments: the replica's variables say it all
    return jax


def _ray_node() -> str | None:
    """The Ray node this process runs on, in a Ray actor (where ray is imported already)."""
    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def psum_across_processes(value: np.ndarray) -> np.ndarray:
    """``lax.psum`` of each process's ``value`` over a mesh of every process's device."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), ("processes",))
    local = np.asarray(value, dtype=np.float32)[None]
    stacked = jax.make_array_from_process_local_data(NamedSharding(mesh, P("processes")), local)
    summed = jax.jit(
        jax.shard_map(
            lambda block: jax.lax.psum(block, "processes"),
            mesh=mesh,
            in_specs=P("processes"),
            out_specs=P(),
        )
    )(stacked)
    return np.asarray(summed.addressable_data(0))[0]


def jax_psum(config: dict[str, Any]) -> dict[str, float]:
    """Each process contributes ``rank + 1``; every process must see the same total."""
    jax = _initialize()
    context = _context()
    total = float(psum_across_processes(np.array(context.rank + 1.0)))
    record(
        f"jax-t{context.trial_number}-r{context.rank}",
        total=total,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        devices=jax.device_count(),
        collectives=jax.config.jax_cpu_collectives_implementation,
        node=_ray_node(),
        jax_env={name: os.environ.get(name) for name in JAX_VARS},
    )
    return {"loss": total}


def jax_collectives_probe(config: dict[str, Any]) -> float:
    """Records the CPU collectives the replica's JAX is set to use, before any device is used
    (creating the CPU backend is what would load them)."""
    jax = _initialize()
    context = _context()
    record(
        f"jaxcollectives-r{context.rank}",
        collectives=jax.config.jax_cpu_collectives_implementation,
    )
    return 0.0


def jax_prune_probe(config: dict[str, Any]) -> float:
    """A cross-process psum every step; rank 0's loss jumps at step 3 so that it is pruned.

    A process that missed the decision would block in the next psum: each records the step at
    which it was stopped.
    """
    _initialize()
    context = _context()
    record(f"jaxprobe-r{context.rank}")
    step = 0
    try:
        for step in range(10):
            psum_across_processes(np.ones(1))
            loss = 100.0 if step >= 3 else 1.0
            hs.report(step, loss=loss if context.rank == 0 else -1.0)
    except hs.TrialPruned:
        record(f"jaxpruned-r{context.rank}", step=step)
        raise
    return 1.0


def _regression_data(rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's shard of a fixed regression problem (generated, the same everywhere)."""
    generator = np.random.default_rng(0)
    features = generator.normal(size=(64, 8)).astype(np.float32)
    targets = (features @ np.arange(1, 9, dtype=np.float32) / 8).astype(np.float32)
    return features[rank::world_size], targets[rank::world_size]


def jax_train(config: dict[str, Any]) -> dict[str, float]:
    """Data-parallel linear regression: gradients summed across processes each step.

    Rank 0 checkpoints the weights as numpy each epoch. With ``kill_rank`` >= 0 that rank
    SIGKILLs itself in epoch 2 of the first attempt; the gang restarts from the epoch-1
    checkpoint. Rank 0 saves the final weights for the test to compare with a clean run's.
    """
    import jax
    import jax.numpy as jnp

    _initialize()
    context = _context()
    features, targets = _regression_data(context.rank, context.world_size)
    weights = np.zeros(8, dtype=np.float32)
    start = 0
    state = hs.restore()
    if state is not None:
        weights, start = np.asarray(state["weights"]), state["epoch"] + 1
    record(f"jaxtrain-{config['kill_rank']}-a{context.attempt}-r{context.rank}", start=start)

    def local_loss(w: Any) -> Any:
        return jnp.sum((features @ w - targets) ** 2)

    gradient = jax.jit(jax.grad(local_loss))
    loss = 0.0
    for epoch in range(start, config["epochs"]):
        for step in range(5):
            killed_now = (context.rank, context.attempt, epoch, step) == (
                config["kill_rank"],
                0,
                2,
                2,
            )
            if killed_now:
                os.kill(os.getpid(), signal.SIGKILL)
            summed = psum_across_processes(np.asarray(gradient(weights)))
            weights = weights - config["lr"] * summed / 64
        loss = float(psum_across_processes(np.asarray(local_loss(weights)))) / 64
        hs.checkpoint({"weights": np.asarray(weights), "epoch": epoch}, step=epoch)
        hs.report(epoch, loss=loss)
    if context.rank == 0:
        np.save(_markers() / f"jaxfinal-{config['kill_rank']}.npy", weights)
    return {"loss": loss, "resumed_from": float(start)}
