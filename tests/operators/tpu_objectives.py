"""The objective a TPU-slice trial's hosts run in tests: a JAX gang that checks, in each process,
the variables GKE's multi-host TPU workloads read, then meets its peers at their names."""

from __future__ import annotations

import os
import socket
from typing import Any


def slice_host(config: dict[str, Any]) -> float:
    """Each host: ``TPU_WORKER_ID`` is its JAX process id, ``TPU_WORKER_HOSTNAMES`` lists every
    host in process order with its own name (its pod's hostname) at that place, resolving to
    its own address; then every process publishes its host name in the key-value store of
    JAX's coordinator (reached at process 0's JobSet name) and reads all the others back.

    JAX's distributed state is read rather than ``jax.process_index()``: that starts the CPU
    backend, whose gloo collectives do not start in the test node agent's cluster-DNS mode.
    """
    import jax
    from jax._src import distributed  # the coordinator client JAX itself uses

    import hypersweep

    jax.distributed.initialize()  # at JAX_COORDINATOR_ADDRESS: process 0's JobSet name
    state = distributed.global_state
    worker = int(os.environ["TPU_WORKER_ID"])
    hosts = os.environ["TPU_WORKER_HOSTNAMES"].split(",")
    own = socket.gethostname()
    problems = []
    if worker != state.process_id:
        problems.append(f"TPU_WORKER_ID {worker} != process {state.process_id}")
    if len(hosts) != state.num_processes:
        problems.append(f"{len(hosts)} hostnames for {state.num_processes} processes")
    elif not own.startswith(hosts[worker] + "."):
        problems.append(f"my hostname {own} is not {hosts[worker]}")
    elif socket.gethostbyname(hosts[worker]) != socket.gethostbyname(own):
        problems.append(f"{hosts[worker]} does not resolve to my address")
    client = state.client
    assert client is not None
    client.key_value_set(f"tpu-host/{worker}", own)
    seen = [client.blocking_key_value_get(f"tpu-host/{i}", 60_000) for i in range(len(hosts))]
    if [name.split(".")[0] for name in seen] != [name.split(".")[0] for name in hosts]:
        problems.append(f"the hosts met at the coordinator are {seen}, not {hosts}")
    print(f"host {worker} of {len(hosts)}: {own} in {hosts}: {problems or 'ok'}", flush=True)
    if problems:
        raise RuntimeError("; ".join(problems))
    total = float(len(seen)) + float(config["x"])
    hypersweep.report(0, loss=total)
    return total
