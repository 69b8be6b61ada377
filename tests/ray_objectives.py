"""Objectives of the Ray tests; each records where it ran (Ray node, pid) under the markers.

They run in Ray actors, which import this module by name (the driver's ``sys.path`` is passed
on), and find the markers folder through ``HYPERSWEEP_TEST_MARKERS``, which the tests give the
actors through ``RayLauncher(env=...)``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import hypersweep as hs


def _markers() -> Path:
    path = Path(os.environ["HYPERSWEEP_TEST_MARKERS"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def _context() -> hs.TrialContext:
    context = hs.get_trial_context()
    assert context is not None
    return context


def record(name: str, **extra: Any) -> None:
    """Write where this replica runs, its rendezvous environment and ``extra``."""
    import ray

    context = _context()
    data = {
        "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "trial": context.trial_number,
        "attempt": context.attempt,
        "rank": context.rank,
        "world_size": context.world_size,
        "time": time.time(),
        "env": {
            name: os.environ.get(name)
            for name in (
                "MASTER_ADDR",
                "MASTER_PORT",
                "WORLD_SIZE",
                "RANK",
                "CUDA_VISIBLE_DEVICES",
                "TORCHELASTIC_USE_AGENT_STORE",
            )
        },
        **extra,
    }
    staging = _markers() / f".{name}.json"
    staging.write_text(json.dumps(data))
    staging.rename(_markers() / f"{name}.json")


def gang_allreduce(config: dict[str, Any]) -> dict[str, float]:
    """Every rank adds rank + 1 over gloo; all ranks must see the same total."""
    import torch
    import torch.distributed as dist

    context = _context()
    dist.init_process_group("gloo")
    try:
        total = torch.tensor([float(context.rank + 1)])
        dist.all_reduce(total)
        record(f"allreduce-t{context.trial_number}-r{context.rank}", total=total.item())
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"loss": total.item()}


def node_loss_train(config: dict[str, Any]) -> dict[str, float]:
    """Epochs of all-reduced "training", checkpointed by rank 0 after each.

    In the first attempt every rank stops at the start of epoch 2 (after the epoch-1
    checkpoint), records its node and waits for the test to remove a node; later attempts
    run through. The loss is the same whether or not the trial was interrupted.
    """
    import torch
    import torch.distributed as dist

    context = _context()
    dist.init_process_group("gloo")
    state = hs.restore()
    start = 0 if state is None else state["epoch"] + 1
    weight = torch.zeros(1) if state is None else torch.tensor([state["weight"]])
    record(f"train-a{context.attempt}-r{context.rank}", start=start)
    for epoch in range(start, config["epochs"]):
        if epoch == 2 and context.attempt == 0:
            record(f"waiting-r{context.rank}")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # killed with its node, or with its gang
                time.sleep(0.1)
        gradient = torch.tensor([float(context.rank + 1) * (epoch + 1)])
        dist.all_reduce(gradient)
        weight += config["lr"] * gradient
        hs.checkpoint({"epoch": epoch, "weight": weight.item()}, step=epoch)
        hs.report(epoch, loss=1.0 / (1.0 + weight.item()))
    dist.destroy_process_group()
    return {
        "loss": 1.0 / (1.0 + weight.item()),
        "resumed_from": float(start),
        "attempt": float(context.attempt),
    }


def mixed(config: dict[str, Any]) -> float:
    """Trial ``n`` of a 20-trial grid: fails if n % 7 == 3, is pruned if n % 5 == 1."""
    context = _context()
    with open(_markers() / f"pids-{context.trial_number}", "w") as handle:
        handle.write(str(os.getpid()))
    n = config["n"]
    if n % 7 == 3:
        raise ValueError(f"n={n} is unlucky")
    loss = float(n)
    for step in range(3):
        hs.report(step, loss=1000.0 if n % 5 == 1 else loss + 1.0 / (step + 1))
    return loss


def timed(config: dict[str, Any]) -> float:
    """Records when it ran (for concurrency checks); the quadratic of ``x`` and ``y``."""
    began = time.time()
    time.sleep(float(config.get("seconds", 0.2)))
    context = _context()
    (_markers() / f"span-{context.trial_number}.json").write_text(
        json.dumps({"began": began, "ended": time.time()})
    )
    return (config["x"] - 2.0) ** 2 + (config["y"] + 1.0) ** 2


def held(config: dict[str, Any]) -> float:
    """Records its start (GPUs, actor name), then waits while the marker ``hold`` exists.

    The tests change the cluster while trials are held, then release them.
    """
    import ray

    context = _context()
    tag = f"t{context.trial_number}-a{context.attempt}"
    record(f"held-{tag}", actor=ray.get_runtime_context().get_actor_name())
    deadline = time.monotonic() + 300.0
    while (_markers() / "hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(config.get("seconds", 0.0)))
    return float(context.trial_number)


def tune_trainable(config: dict[str, Any]) -> None:
    """A Ray Tune function trainable, written the way Ray Tune's docs write them.

    Resumes from ``tune.get_checkpoint()``; with ``crash_at`` set, its first attempt dies
    there (the process exits) once, so that the retry must resume.
    """
    import json as json_module
    import tempfile

    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = json_module.loads(Path(folder, "state.json").read_text())
        start = state["step"] + 1
    for step in range(start, 5):
        if config.get("crash_at") == step:
            crashed = _markers() / f"crashed-{config['x']}"
            if not crashed.exists():
                crashed.touch()
                os._exit(1)
        loss = (config["x"] - 2.0) ** 2 + 1.0 / (step + 1)
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "state.json"), "w") as handle:
                json_module.dump({"step": step}, handle)
            tune.report(
                {"loss": loss, "step": step, "started_at": start},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )


def steady(config: dict[str, Any]) -> float:
    """Reports every step of ``steps`` with ``loss = x``; checkpoints every ``every`` steps.

    Writes a marker ``reached-t<N>-s<step>`` after reporting step ``mark``, and on its
    first attempt SIGKILLs its own actor right after reporting step ``kill_at``, if given.
    """
    import signal

    context = _context()
    state = hs.restore()
    start = 0 if state is None else state["step"] + 1
    every = int(config.get("every", 0))
    for step in range(start, int(config["steps"])):
        if every and step % every == 0:
            hs.checkpoint({"step": step}, step=step)
        hs.report(step, loss=config["x"])
        if step == config.get("mark"):
            (_markers() / f"reached-t{context.trial_number}-s{step}").touch()
        if step == config.get("kill_at") and context.attempt == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return float(config["x"])


def with_data(config: dict[str, Any], data: bytes = b"") -> None:
    """A Ray Tune trainable given a large object through ``tune.with_parameters``."""
    from ray import tune

    tune.report({"loss": config["x"] + len(data) / 2**20})


def elastic_node_train(config: dict[str, Any]) -> dict[str, float]:
    """The elastic regression of ``replica_objectives`` whose epochs record the world size and
    node they ran with (``elastic-e<epoch>-w<world>-r<rank>``).

    In epoch 2 of a round of 4, before the test has removed a node (its ``node-removed``
    marker), every rank records its node (``elastic-wait-r<rank>``) and waits: the replicas on
    the removed node die with it, the others are ended with their round. A smaller round waits
    at each epoch until the test says that the cluster has room again (``capacity-back``).
    """
    from replica_objectives import elastic_regression

    markers = _markers()

    def before_epoch(epoch: int, context: hs.TrialContext) -> None:
        world = context.world_size
        record(f"elastic-e{epoch}-w{world}-r{context.rank}", epoch=epoch)
        waits_for = None
        if world == 4 and epoch == 2 and not (markers / "node-removed").exists():
            record(f"elastic-wait-r{context.rank}")
            waits_for = markers / "node-removed"
        elif world < 4:
            waits_for = markers / "capacity-back"
        deadline = time.monotonic() + 300
        while waits_for is not None and not waits_for.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    return elastic_regression(config, before_epoch)


def _wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.02)


def shared_actor_trial(config: dict[str, Any]) -> float:
    """A light trial for actors that run several (``trials_per_actor``).

    Its first attempt waits until ``config["trials"]`` first attempts run, so that the test
    sees them run at once; then it reports ``x * (step + 1)`` for 5 steps, its own values. With
    ``config["kill"]``, trial 0's first attempt then ends its whole actor process
    (``os._exit``), and the first attempts that share the process wait to die with it.
    """
    import threading

    context = _context()
    trial, attempt = context.trial_number, context.attempt
    record(f"shared-t{trial}-a{attempt}", thread=threading.get_ident())
    if attempt == 0:

        def started() -> bool:
            return len(list(_markers().glob("shared-t*-a0.json"))) >= config["trials"]

        _wait_for(started, "every first attempt to start")
    for step in range(5):
        hs.report(step, loss=config["x"] * (step + 1))
    if config["kill"] and attempt == 0:
        if trial == 0:
            (_markers() / "killing").write_text("")
            os._exit(1)
        _wait_for((_markers() / "killing").exists, "trial 0 to end its actor")
        killer = json.loads((_markers() / "shared-t0-a0.json").read_text())
        while killer["pid"] == os.getpid():  # ends with the process
            time.sleep(0.05)
    return float(config["x"]) * 5
