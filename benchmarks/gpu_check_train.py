"""The trial functions that ``benchmarks/gpu_check.py`` runs on a GPU machine.

Each runs as a hypersweep objective (``gpu_check_train.py:NAME``); ``first_allreduce`` also runs
under ``torchrun``. They write what they saw (times, devices, weights) under ``BENCH_DIR`` for
the check to read. With ``HYPERSWEEP_CHECK_CPU=1`` they use gloo on the CPU, so that the check
itself can be tried on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _bench_dir() -> Path:
    return Path(os.environ["BENCH_DIR"])


def _cuda() -> bool:
    return os.environ.get("HYPERSWEEP_CHECK_CPU") != "1"


def _backend() -> str:
    return "nccl" if _cuda() else "gloo"


def _device() -> Any:
    """This rank's device: under hypersweep each replica sees only its own GPU (index 0); under
    torchrun every rank sees every GPU and takes the one of its LOCAL_RANK."""
    import torch

    if not _cuda():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def first_allreduce(config: dict[str, Any]) -> dict[str, float]:
    """Join the process group and complete one all-reduce on the device; record when."""
    import torch
    import torch.distributed as dist

    if _cuda():
        torch.cuda.set_device(_device())
    dist.init_process_group(_backend())
    tensor = torch.ones(1, device=_device())
    dist.all_reduce(tensor)
    torch.cuda.synchronize() if _cuda() else None
    done = time.time()
    if dist.get_rank() == 0:
        seen = {
            "done": done,
            "backend": dist.get_backend(),
            "value": tensor.item(),
            "world_size": dist.get_world_size(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": torch.cuda.get_device_name(0) if _cuda() else "cpu",
        }
        (_bench_dir() / "allreduce.json").write_text(json.dumps(seen))
    dist.destroy_process_group()
    return {"loss": 0.0}


def cuda_train(config: dict[str, Any]) -> dict[str, float]:
    """DDP regression on the device, checkpointed every epoch with the device's tensors.

    With ``kill`` set, the first attempt SIGKILLs itself in the middle of epoch 2; the trial
    restarts from the epoch-1 checkpoint. The final weights go to ``final-<tag>.pt``.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import hypersweep as hs

    context = hs.get_trial_context()
    assert context is not None
    torch.use_deterministic_algorithms(True)
    device = _device()
    dist.init_process_group(_backend())
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1)
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    state = hs.restore()
    start = 0
    restored_on = None
    if state is not None:
        restored_on = str(next(iter(state["model"].values())).device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    ddp = DistributedDataParallel(model, device_ids=[0] if _cuda() else None)
    generator = torch.Generator().manual_seed(1234)
    features = torch.randn(1024, 32, generator=generator).to(device)
    targets = (features @ torch.linspace(-1.0, 1.0, 32, device=device).unsqueeze(1)).sin()
    loss = torch.zeros((), device=device)
    for epoch in range(start, config["epochs"]):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(epoch))
        for batch, begin in enumerate(range(0, len(features), 64)):
            if config["kill"] and context.attempt == 0 and epoch == 2 and batch == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            index = order[begin : begin + 64].to(device)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(ddp(features[index]), targets[index])
            loss.backward()
            optimizer.step()
        hs.checkpoint(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            step=epoch,
        )
        hs.report(epoch, loss=loss.item())
    tag = "killed" if config["kill"] else "uninterrupted"
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, _bench_dir() / f"{tag}.pt")
    (_bench_dir() / f"{tag}.json").write_text(
        json.dumps({"attempt": context.attempt, "start": start, "restored_on": restored_on})
    )
    dist.destroy_process_group()
    return {"loss": loss.item()}


def hold_gpu(config: dict[str, Any]) -> float:
    """Hold the device for a while; record which GPU this trial saw, and when."""
    import torch

    import hypersweep as hs

    context = hs.get_trial_context()
    assert context is not None
    begin = time.time()
    tensor = torch.ones(1024, 1024, device=_device())
    for _ in range(20):
        tensor = tensor @ tensor / 1024.0
        time.sleep(0.05)
    float(tensor.sum())
    record = {
        "trial": context.trial_number,
        "begin": begin,
        "end": time.time(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    (_bench_dir() / f"hold-{context.trial_number}.json").write_text(json.dumps(record))
    return 0.0


if __name__ == "__main__":  # under torchrun: ``gpu_check_train.py first_allreduce``
    first_allreduce({} if len(sys.argv) < 3 else json.loads(sys.argv[2]))


def jax_device_probe(config: dict[str, Any]) -> dict[str, float]:
    """One JAX process on its GPU: ``jax.distributed.initialize()`` with no arguments, a psum
    over the process's devices and a jitted matmul; writes the platform and the timings."""
    import jax
    import jax.numpy as jnp

    began = time.time()
    jax.distributed.initialize()
    devices = jax.local_devices()
    summed = jax.pmap(lambda x: jax.lax.psum(x, "d"), axis_name="d")(jnp.ones((len(devices), 1)))
    matrix = jnp.ones((2048, 2048), dtype=jnp.bfloat16)
    product = jax.jit(lambda a: a @ a)(matrix).block_until_ready()
    seen = {
        "platform": devices[0].platform,
        "devices": len(devices),
        "process_count": jax.process_count(),
        "psum": float(summed[0, 0]),
        "matmul_corner": float(product[0, 0]),
        "seconds": time.time() - began,
    }
    (_bench_dir() / "jax.json").write_text(json.dumps(seen))
    return {"loss": 0.0}
