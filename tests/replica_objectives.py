"""Objectives of multi-replica trials for the tests: real processes, real collectives.

Each writes what it saw (its environment, its pid, where it stopped) under the folder named by
``HYPERSWEEP_TEST_MARKERS``, so that tests can check every rank, not only rank 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypersweep as hs

RENDEZVOUS_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "PET_NNODES",
    "PET_NODE_RANK",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TF_CONFIG",
)


def _markers() -> Path:
    path = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def _context() -> hs.TrialContext:
    context = hs.get_trial_context()
    assert context is not None
    return context


def record(name: str, **extra: Any) -> None:
    """Write this replica's environment and ``extra`` to ``<markers>/<name>.json``."""
    context = _context()
    data = {
        "pid": os.getpid(),
        "trial": context.trial_number,
        "attempt": context.attempt,
        "rank": context.rank,
        "world_size": context.world_size,
        "time": time.time(),
        "env": {name: os.environ.get(name) for name in RENDEZVOUS_VARS},
        **extra,
    }
    (_markers() / f"{name}.json").write_text(json.dumps(data))


def _wait_for_files(pattern: str, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(_markers().glob(pattern))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited for {count} files {pattern}")
        time.sleep(0.05)


def allreduce_sum(config: dict[str, Any]) -> dict[str, float]:
    """Every rank contributes rank + 1; all ranks must see the same total."""
    import torch
    import torch.distributed as dist

    context = _context()
    dist.init_process_group("gloo")
    try:
        assert dist.get_rank() == context.rank and dist.get_world_size() == context.world_size
        total = torch.tensor([float(context.rank + 1)])
        dist.all_reduce(total)
        record(f"allreduce-t{context.trial_number}-r{context.rank}", total=total.item())
        # Optionally hold every trial's gang until all of them are up, to prove they overlap.
        together = int(config.get("together", 0))
        if together:
            _wait_for_files("allreduce-t*-r0.json", together)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"loss": total.item(), "rank": float(context.rank)}


def _ddp_data(rank: int, world_size: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(1234)
    features = torch.randn(256, 8, generator=generator)
    targets = features @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1) + 0.1
    return features[rank::world_size], targets[rank::world_size]


def ddp_train(config: dict[str, Any]) -> dict[str, float]:
    """A small regression with DistributedDataParallel, checkpointed each epoch.

    With ``kill_rank`` >= 0 that rank SIGKILLs itself in the middle of epoch 2 of the first
    attempt; the gang restarts from the epoch-1 checkpoint. Rank 0 saves the final weights so
    the test compares them with an uninterrupted run's.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    context = _context()
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    state = hs.restore()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    ddp = DistributedDataParallel(model)
    features, targets = _ddp_data(context.rank, context.world_size)
    loss = torch.tensor(0.0)
    record(f"ddp-{config['kill_rank']}-a{context.attempt}-r{context.rank}", start=start)
    for epoch in range(start, config["epochs"]):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(epoch))
        for batch, begin in enumerate(range(0, len(features), 8)):
            if (
                context.rank == config["kill_rank"]
                and context.attempt == 0
                and epoch == 2
                and batch == 3
            ):
                record(f"ddp-{config['kill_rank']}-killed")  # the moment of the kill
                os.kill(os.getpid(), signal.SIGKILL)
            index = order[begin : begin + 8]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(features[index]), targets[index])
            loss.backward()
            optimizer.step()
        hs.checkpoint(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            step=epoch,
        )
        hs.report(epoch, loss=loss.item())
    if context.rank == 0:
        torch.save(model.state_dict(), _markers() / f"final-{config['kill_rank']}.pt")
    dist.destroy_process_group()
    return {"loss": loss.item(), "resumed_from": float(start), "attempt": float(context.attempt)}


def prune_probe(config: dict[str, Any]) -> float:
    """An all-reduce every step; rank 0's loss jumps at step 3 so that early stopping stops it.

    A rank that missed the decision would block in the next all-reduce: each rank records the
    step at which it was stopped.
    """
    import torch
    import torch.distributed as dist

    context = _context()
    dist.init_process_group("gloo")
    record(f"probe-r{context.rank}")
    step = 0
    try:
        for step in range(10):
            dist.all_reduce(torch.ones(1))
            loss = 100.0 if step >= 3 else 1.0
            hs.report(step, loss=loss if context.rank == 0 else -1.0)
    except hs.TrialPruned:
        record(f"pruned-r{context.rank}", step=step)
        raise
    return 1.0


def fail_on_rank(config: dict[str, Any]) -> float:
    """Rank ``bad_rank`` raises while the others wait in a collective for it."""
    import torch
    import torch.distributed as dist

    context = _context()
    dist.init_process_group("gloo")
    record(f"fail-a{context.attempt}-r{context.rank}")
    if context.rank == config["bad_rank"]:
        raise ValueError(f"bad shard on rank {context.rank}")
    dist.all_reduce(torch.ones(1))
    return 0.0


def hold(config: dict[str, Any]) -> float:
    """Replicas that report slowly until they are stopped (no collectives)."""
    context = _context()
    record(f"hold-t{context.trial_number}-r{context.rank}")
    for step in range(10_000):
        time.sleep(0.1)
        hs.report(step, loss=1.0)
    return 0.0


def gpu_probe(config: dict[str, Any]) -> float:
    """Records the GPUs this replica was given, and how long it held them."""
    context = _context()
    began = time.time()
    time.sleep(float(config.get("seconds", 0.5)))
    record(f"gpu-t{context.trial_number}-r{context.rank}", began=began, ended=time.time())
    return 0.0


def tf_train(config: dict[str, Any]) -> dict[str, float]:
    """Keras layers and optimizer under MultiWorkerMirroredStrategy, a custom training loop.

    (Keras 3's ``fit`` does not support MultiWorkerMirroredStrategy: keras-team/keras#20585.)
    """
    import numpy as np
    import tensorflow as tf

    context = _context()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    global_batch = 32
    generator = np.random.default_rng(0)
    features = generator.normal(size=(256, 8)).astype("float32")
    targets = (features @ np.linspace(-1, 1, 8).astype("float32"))[:, None] + 0.1

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
        )
        optimizer = keras.optimizers.SGD(config["lr"])
        optimizer.build(model.trainable_variables)

    def dataset(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((features, targets))
        data = data.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return data.batch(input_context.get_per_replica_batch_size(global_batch))

    batches = strategy.distribute_datasets_from_function(dataset)

    @tf.function
    def train_epoch(iterator: Any, steps: Any) -> Any:
        total = tf.constant(0.0)
        for _ in tf.range(steps):

            def step(x: Any, y: Any) -> Any:
                with tf.GradientTape() as tape:
                    error = tf.reduce_sum(tf.square(model(x, training=True) - y), axis=1)
                    loss = tf.nn.compute_average_loss(error, global_batch_size=global_batch)
                gradients = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
                return loss

            total += strategy.reduce("sum", strategy.run(step, args=next(iterator)), axis=None)
        return total / tf.cast(steps, tf.float32)

    loss = 0.0
    for epoch in range(config["epochs"]):
        loss = float(train_epoch(iter(batches), tf.constant(len(features) // global_batch)))
        hs.report(epoch, loss=loss)
    checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
    record(
        f"tf-r{context.rank}",
        replicas=int(strategy.num_replicas_in_sync),
        checksum=checksum,
        loss=loss,
    )
    return {"loss": loss, "checksum": checksum}


def elastic_regression(
    config: dict[str, Any], before_epoch: Callable[[int, hs.TrialContext], None]
) -> dict[str, float]:
    """DDP regression over the round's world, its data sharded by rank, checkpointed each epoch.

    ``before_epoch(epoch, context)`` runs at the start of each epoch: where a test records the
    world it ran with, and kills or holds a replica.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    context = _context()
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    state = hs.restore()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        start = state["epoch"] + 1
    ddp = DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(96, 8, generator=generator)
    targets = features.sum(dim=1, keepdim=True)
    shard = slice(context.rank, None, context.world_size)  # the data follows the world size
    loss = torch.tensor(0.0)
    for epoch in range(start, config["epochs"]):
        before_epoch(epoch, context)
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(features[shard]), targets[shard])
            loss.backward()
            optimizer.step()
        hs.checkpoint({"model": model.state_dict(), "epoch": epoch}, step=epoch)
        hs.report(epoch, loss=loss.item(), world_size=float(context.world_size))
    dist.destroy_process_group()
    return {"loss": loss.item(), "world_size": float(context.world_size)}


def elastic_train(config: dict[str, Any]) -> dict[str, float]:
    """:func:`elastic_regression` whose epochs record the world size they ran with.

    The replica with rank ``kill_rank`` of the first round SIGKILLs itself in epoch
    ``kill_epoch`` (once: a marker file says it happened).
    """
    killed = _markers() / "elastic-killed"

    def before_epoch(epoch: int, context: hs.TrialContext) -> None:
        record(f"elastic-e{epoch}-w{context.world_size}-r{context.rank}", epoch=epoch)
        chosen = (epoch, context.rank) == (config["kill_epoch"], config["kill_rank"])
        if chosen and not killed.exists():
            killed.write_text("1")
            os.kill(os.getpid(), signal.SIGKILL)

    return elastic_regression(config, before_epoch)


def warm_probe(config: dict[str, Any]) -> float:
    """Records what a replica inherits from the previous trial of its worker, then leaves a mess.

    At start: its pid, whether torch was imported already and a process group is initialised,
    and the variables a previous trial set. Then it joins the gang, all-reduces, sets variables
    and ``CUDA_VISIBLE_DEVICES`` and ends as ``config["plan"]`` says for this trial (by trial
    number, comma-separated): ``keep`` returns with its process group still initialised,
    ``prune`` is stopped by early stopping (process group initialised), ``raise`` raises on rank
    1 while rank 0 waits in a collective, ``return`` cleans up and returns.
    """
    import sys

    inherited = {
        "torch_imported": "torch" in sys.modules,
        "leak": os.environ.get("HYPERSWEEP_TEST_LEAK"),
        "cwd": os.getcwd(),
    }
    import torch
    import torch.distributed as dist

    context = _context()
    inherited["initialized"] = dist.is_initialized()
    plan = config["plan"].split(",")[context.trial_number]
    record(f"warm-t{context.trial_number}-r{context.rank}", plan=plan, **inherited)
    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    os.environ["HYPERSWEEP_TEST_LEAK"] = f"trial {context.trial_number}"
    os.environ["CUDA_VISIBLE_DEVICES"] = "7"
    os.chdir(_markers())
    time.sleep(float(config.get("seconds", 0.0)))
    if plan == "prune":
        hs.report(0, loss=100.0)
    elif plan == "raise":
        if context.rank == 1:
            raise ValueError("rank 1 fails")
        dist.all_reduce(total)  # waits for rank 1 until its process group goes
    elif plan == "return":
        dist.destroy_process_group()
        record(f"warm-end-t{context.trial_number}-r{context.rank}")
    return total.item()
