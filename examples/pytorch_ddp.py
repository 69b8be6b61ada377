"""Tune a DistributedDataParallel model: every trial is a gang of PyTorch replicas.

Each trial trains a small MLP on scikit-learn's bundled digits (nothing downloaded) with
``torch.distributed`` across 2 replicas (``--replicas 4`` for more): gloo on CPU, NCCL when
there is a GPU per replica. The training function is plain DDP code, as it would run under
torchrun; hypersweep sets ``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``... for each replica. Every rank
reports validation accuracy each epoch (rank 0's value is the trial's; every rank gets the same
early-stopping decision) and rank 0 checkpoints, so a gang that loses a replica restarts from
its last epoch.

    python examples/pytorch_ddp.py [--replicas 2] [--trials 8]
    # or: hypersweep run examples/pytorch_ddp.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import hypersweep as hs

SPACE = {
    "lr": hs.loguniform(1e-2, 5e-1),
    "momentum": hs.uniform(0.0, 0.95),
    "hidden": hs.choice([32, 64, 128]),
    "batch_size": 64,  # global: split between the replicas
    "epochs": 12,
}


def train_ddp(config: dict[str, Any]) -> dict[str, float]:
    """One replica of a trial: join the process group, train, report, checkpoint."""
    import torch
    import torch.distributed as dist
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    cuda = torch.cuda.is_available()  # this replica's own GPU, if it was given one
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")

    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        features / 16.0, labels, test_size=0.25, random_state=0, stratify=labels
    )

    def tensors(x: Any, y: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

    train_set, val_set = tensors(x_train, y_train), tensors(x_val, y_val)
    sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=0)
    train = DataLoader(train_set, batch_size=config["batch_size"] // world_size, sampler=sampler)
    val_sampler = DistributedSampler(val_set, world_size, rank, shuffle=False)
    val = DataLoader(val_set, batch_size=256, sampler=val_sampler)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, config["hidden"]),
        torch.nn.ReLU(),
        torch.nn.Linear(config["hidden"], 10),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    state = hs.restore()  # every rank reads the same checkpoint: None on a first attempt
    start, best = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = state["epoch"] + 1, state["best"]
    ddp = DistributedDataParallel(model, device_ids=[0] if cuda else None)

    accuracy = 0.0
    try:
        for epoch in range(start, config["epochs"]):
            sampler.set_epoch(epoch)
            ddp.train()
            for x, y in train:
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(ddp(x.to(device)), y.to(device))
                loss.backward()  # gradients are all-reduced across the replicas here
                optimizer.step()
            ddp.eval()
            counts = torch.zeros(2, device=device)
            with torch.no_grad():
                for x, y in val:
                    predicted = ddp(x.to(device)).argmax(dim=1)
                    counts += torch.tensor(
                        [(predicted == y.to(device)).sum(), len(y)], device=device
                    )
            dist.all_reduce(counts)  # the same accuracy on every rank
            accuracy = float(counts[0] / counts[1])
            best = max(best, accuracy)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best": best,
            }
            hs.checkpoint(state, step=epoch)  # written by rank 0 only
            hs.report(epoch, accuracy=accuracy)  # the same decision on every rank
    finally:
        dist.destroy_process_group()
    return {"accuracy": best, "final_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()

    import torch

    # A GPU per replica when there are enough; otherwise the same code runs on CPU.
    gpus = 1 if torch.cuda.device_count() >= args.replicas else 0
    result = hs.tune(
        SPACE,
        train_ddp,
        metric="accuracy",
        mode="max",
        n_trials=args.trials,
        early_stopping={"name": "asha", "min_resource": 2, "reduction_factor": 3},
        replicas=hs.Replicas(n=args.replicas, framework="pytorch", gpus_per_replica=gpus),
        seed=0,
        name=f"pytorch-ddp-{args.replicas}",
        resume=True,
    )
    print(f"\n{result.counts()}")
    if result.best_trial is not None:
        print(f"best accuracy {result.best_value:.4f} with {result.best_config}")


if __name__ == "__main__":
    main()
