"""Replica programs for the TrainJob tests: ``python replicas.py MODE``, run as pod commands.

Each finds its peers only through the environment the TrainJob controller set.

* ``torch``: ``torch.distributed`` with gloo, an all-reduce across every rank.
* ``tf-config``: reads ``TF_CONFIG`` as TensorFlow would, listens on its own address and
  connects to every peer's (plain sockets: importing TensorFlow takes too long on small CI
  machines; what is tested is the cluster spec the controller wrote).
* ``jax``: ``jax.distributed`` from JAXJob's variables, a cross-process ``psum`` over gloo.
* ``elastic``: run under torchrun (an elastic gang): each step all-reduces this rank's shard of
  a dataset (split by the round's ``RANK``/``WORLD_SIZE``, as ``DistributedSampler`` splits it)
  and rank 0 appends ``step <n> world <w> samples <s> sum <t>`` to ``$STEP_LOG`` and
  checkpoints the step to ``$CHECKPOINT_FILE``; a round resumes after it. It ends once
  ``$DONE_FILE`` exists (every rank learns it in the same all-reduce).
* ``gang``: PyTorch-style master/worker over ``MASTER_ADDR``/``MASTER_PORT`` that checkpoints
  each step to ``$CHECKPOINT_FILE`` (rank 0) and resumes from it after a gang restart.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time


def connect(host: str, port: int, timeout: float = 60.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def listen(port: int, host: str = "0.0.0.0") -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(16)
    return server


def run_torch() -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    expected = world * (world + 1) / 2
    master = os.environ["MASTER_ADDR"]
    print(
        f"rank {rank} of {world}: all_reduce={tensor.item()} expected={expected}"
        f" master={master} ({socket.gethostbyname(master)}) me={socket.gethostname()}",
        flush=True,
    )
    dist.destroy_process_group()
    return 0 if tensor.item() == expected else 1


def run_tf_config() -> int:
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    me = config["cluster"][task["type"]][task["index"]]
    peers = [
        address
        for role, addresses in config["cluster"].items()
        for address in addresses
        if address != me
    ]
    my_host, my_port = me.rsplit(":", 1)
    # Listen on the address this replica's own name resolves to, as a server bound to its
    # cluster address would: replicas sharing a port need addresses of their own.
    my_address = socket.gethostbyname(my_host)
    server = listen(int(my_port), my_address)
    heard: list[str] = []

    def accept() -> None:
        for _ in peers:
            connection, _ = server.accept()
            with connection:
                heard.append(connection.recv(256).decode())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    for address in peers:
        host, port = address.rsplit(":", 1)
        with connect(host, int(port)) as connection:
            connection.sendall(me.encode())
    thread.join(60)
    print(
        f"{task['type']}-{task['index']} at {me} ({my_address}) heard from {sorted(heard)}",
        flush=True,
    )
    return 0 if sorted(heard) == sorted(peers) else 1


def run_jax() -> int:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    # A bare pod, not a hypersweep trial: the arguments come from the variables, as in
    # Kubeflow's JAX guide (JAX reads JAX_COORDINATOR_ADDRESS itself).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
    rank, world = jax.process_index(), jax.process_count()
    mesh = Mesh(np.array(jax.devices()), ("p",))
    local = np.array([[rank + 1.0]], dtype=np.float32)
    stacked = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), local)
    summed = jax.jit(
        jax.shard_map(lambda b: jax.lax.psum(b, "p"), mesh=mesh, in_specs=P("p"), out_specs=P())
    )(stacked)
    total = float(np.asarray(summed.addressable_data(0))[0, 0])
    expected = world * (world + 1) / 2
    print(f"process {rank} of {world}: psum={total} expected={expected}", flush=True)
    return 0 if total == expected else 1


def run_gang() -> int:
    rank = int(os.environ["RANK"])
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    steps = int(os.environ.get("STEPS", "30"))
    checkpoint = os.environ["CHECKPOINT_FILE"]
    if rank == 0:
        server = listen(port)
        peer, _ = server.accept()
    else:
        peer = connect(host, port)
    start = 0
    if os.path.exists(checkpoint):
        with open(checkpoint) as handle:
            start = int(handle.read().strip()) + 1
    print(f"rank {rank} starts at step {start}", flush=True)
    for step in range(start, steps):
        time.sleep(0.2)
        if rank == 0:
            with open(checkpoint + ".tmp", "w") as handle:
                handle.write(str(step))
            os.replace(checkpoint + ".tmp", checkpoint)
    peer.close()
    print(f"rank {rank} done", flush=True)
    return 0


#: The dataset the elastic mode shards: sample i is the number i.
ELASTIC_SAMPLES = 1000


def run_elastic() -> int:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    checkpoint, log, done = (
        os.environ["CHECKPOINT_FILE"],
        os.environ["STEP_LOG"],
        os.environ["DONE_FILE"],
    )
    start = 0
    if os.path.exists(checkpoint):
        with open(checkpoint) as handle:
            start = int(handle.read().strip()) + 1
    print(f"rank {rank} of {world} starts at step {start}", flush=True)
    shard = range(rank, ELASTIC_SAMPLES, world)
    for step in range(start, 100_000):
        totals = torch.tensor([float(sum(shard)), float(len(shard)), float(os.path.exists(done))])
        dist.all_reduce(totals)
        if rank == 0:
            with open(log, "a") as handle:
                handle.write(
                    f"step {step} world {world} samples {int(totals[1])} sum {int(totals[0])}\n"
                )
            with open(checkpoint + ".tmp", "w") as handle:
                handle.write(str(step))
            os.replace(checkpoint + ".tmp", checkpoint)
        if totals[2] > 0:
            break
        time.sleep(0.3)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    modes = {
        "torch": run_torch,
        "tf-config": run_tf_config,
        "jax": run_jax,
        "gang": run_gang,
        "elastic": run_elastic,
    }
    sys.exit(modes[sys.argv[1]]())
