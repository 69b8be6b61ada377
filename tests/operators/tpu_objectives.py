"""The objective a TPU-slice trial's hosts run in tests: a JAX gang that checks, in each process,
the variables GKE's multi-host TPU workloads read, then meets its peers at their names."""

from __future__ import annotations

import os
import socket
from typing import Any


def slice_host(config: dict[str, Any]) -> float:
    """Each host: ``TPU_WORKER_ID`` is its JAX process id, ``TPU_WORKER_HOSTNAMES`` lists every
    host in process order with its own name (its pod's hostname) at that place, resolving to
    its own address; then the processes sum their ids over JAX's collectives."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import hypersweep

    jax.distributed.initialize()  # at JAX_COORDINATOR_ADDRESS: process 0's JobSet name
    worker = int(os.environ["TPU_WORKER_ID"])
    hosts = os.environ["TPU_WORKER_HOSTNAMES"].split(",")
    own = socket.gethostname()
    problems = []
    if worker != jax.process_index():
        problems.append(f"TPU_WORKER_ID {worker} != process {jax.process_index()}")
    if len(hosts) != jax.process_count():
        problems.append(f"{len(hosts)} hostnames for {jax.process_count()} processes")
    elif not own.startswith(hosts[worker] + "."):
        problems.append(f"my hostname {own} is not {hosts[worker]}")
    elif socket.gethostbyname(hosts[worker]) != socket.gethostbyname(own):
        problems.append(f"{hosts[worker]} does not resolve to my address")
    print(f"host {worker} of {len(hosts)}: {own} in {hosts}: {problems or 'ok'}", flush=True)
    if problems:
        raise RuntimeError("; ".join(problems))
    mesh = Mesh(np.array(jax.devices()), ("p",))
    mine = np.array([[float(worker + 1)]], dtype=np.float32)
    stacked = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), mine)
    summed = jax.jit(
        jax.shard_map(lambda b: jax.lax.psum(b, "p"), mesh=mesh, in_specs=P("p"), out_specs=P())
    )(stacked)
    total = float(np.asarray(summed.addressable_data(0))[0, 0]) + float(config["x"])
    hypersweep.report(0, loss=total)
    return total
