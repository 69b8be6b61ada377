"""The training script that ``benchmarks/rendezvous.py`` launches with hypersweep and torchrun.

The same functions run under both: as a hypersweep objective (``rendezvous_train.py:NAME``)
and as ``python -m torch.distributed.run ... rendezvous_train.py NAME``. Each writes the
wall-clock times it measures to files named by ``BENCH_DIR``, so that the benchmark reads
both launchers' figures the same way.

- ``first_allreduce``: join the process group and complete one gloo all-reduce.
- ``one_second``: a trial of about one second: join the process group, all-reduce until one
  second has passed since its imports, leave; logs its own start and end.
- ``train``: DDP training that checkpoints every epoch and logs every step's completion time;
  the benchmark SIGKILLs rank 1 mid-run, and the launcher restarts the gang from the latest
  checkpoint. It returns one epoch after the restart.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _bench_dir() -> Path:
    return Path(os.environ["BENCH_DIR"])


def _trial_context() -> Any:
    import hypersweep as hs

    return hs.get_trial_context()


def _attempt() -> int:
    context = _trial_context()
    if context is not None:
        return int(context.attempt)
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def first_allreduce(config: dict[str, Any]) -> dict[str, float]:
    """Time at which the first all-reduce completed (on rank 0)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tensor = torch.ones(1)
    dist.all_reduce(tensor)
    done = time.time()
    assert tensor.item() == dist.get_world_size()
    if dist.get_rank() == 0:
        (_bench_dir() / "allreduce.json").write_text(json.dumps({"done": done}))
    dist.destroy_process_group()
    return {"loss": 0.0, "done": done}


def one_second(config: dict[str, Any]) -> dict[str, float]:
    """About one second of all-reduces, from after the imports (rank 0 logs its own time).

    The imports are not the trial's own time: they are what a launcher can take off the trial's
    path. The ranks agree on when to stop (a max all-reduce of "my second is up"), so that no
    rank leaves the group while another still all-reduces.
    """
    import torch
    import torch.distributed as dist

    began = time.time()
    dist.init_process_group("gloo")
    flag = torch.zeros(1)
    while True:
        flag.fill_(1.0 if time.time() - began >= 1.0 else 0.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            break
        time.sleep(0.01)
    dist.destroy_process_group()
    ended = time.time()
    if int(os.environ["RANK"]) == 0:
        with open(_bench_dir() / "trials.jsonl", "a") as log:
            log.write(json.dumps({"began": began, "ended": ended}) + "\n")
    return {"loss": 0.0}


def _save(state: dict[str, Any], epoch: int, rank: int) -> None:
    import torch

    if _trial_context() is not None:
        import hypersweep as hs

        hs.checkpoint(state, step=epoch)
    elif rank == 0:
        path = _bench_dir() / "checkpoint.pt"
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)


def _load() -> dict[str, Any] | None:
    import torch

    if _trial_context() is not None:
        import hypersweep as hs

        state: dict[str, Any] | None = hs.restore()
        return state
    path = _bench_dir() / "checkpoint.pt"
    return torch.load(path) if path.exists() else None


def train(config: dict[str, Any]) -> dict[str, float]:
    """DDP steps of about ``step_s`` seconds each, ``steps`` per epoch, checkpointed per epoch."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    attempt = _attempt()
    if rank == 1:
        (_bench_dir() / f"rank1-attempt{attempt}.pid").write_text(str(os.getpid()))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    state = _load()
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
    ddp = DistributedDataParallel(model)
    features = torch.randn(16, 32)
    log = open(_bench_dir() / "progress.jsonl", "a") if rank == 0 else None  # noqa: SIM115
    last = config["epochs"] if attempt == 0 else start + 1
    for epoch in range(start, last):
        for step in range(config["steps"]):
            time.sleep(config["step_s"])  # stands for the forward/backward compute
            optimizer.zero_grad()
            ddp(features).pow(2).mean().backward()  # the all-reduce of the gradients
            optimizer.step()
            if log is not None:
                record = {"t": time.time(), "attempt": attempt, "epoch": epoch, "step": step}
                log.write(json.dumps(record) + "\n")
                log.flush()
        _save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
            epoch,
            rank,
        )
    dist.destroy_process_group()
    return {"loss": 0.0}


if __name__ == "__main__":  # under torchrun
    name = sys.argv[1]
    settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    {"first_allreduce": first_allreduce, "train": train, "one_second": one_second}[name](settings)
