"""Replica loss to training resumed: an elastic gang against a full-gang restart, locally.

Four replicas train (DDP-style all-reduces, gloo on CPU) and checkpoint every epoch; rank 3
SIGKILLs itself in the middle of epoch 2, once. Measured: from the moment it kills itself to
the moment rank 0 completes its first all-reduce after the restart. Compared:

- elastic, ``Replicas(n=(2, 4))``: the 3 others go on at once in a new round of 3 (no retry);
- full restart, ``Replicas(n=4)`` with ``max_retries=1``: the trial is retried with 4.

Both restart every process from the epoch-1 checkpoint (torchrun restarts its workers on a
membership change too); what differs is the retry path and the world size. The elastic run then
grows back to 4 (the time of that round is reported too).

With ``--launcher ray`` the same runs go through ``RayLauncher`` on a ``ray.cluster_utils.Cluster``
on this machine (a head node that runs no trials, two worker nodes of 2 CPUs: 4 replicas fill
it), each replica an actor; a new round is new actors in new or held placement-group bundles.

    python benchmarks/elastic.py [--repeats 3] [--launcher local|ray]

Prints the medians and writes them to benchmarks/results/elastic.json (the Ray runs under
``"ray"``, the local runs at the top level; a run of one launcher keeps the other's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import hypersweep as hs

RESULTS = Path(__file__).resolve().parent / "results"


def train(config: dict[str, Any]) -> float:
    """Rank 0 logs the end of each all-reduce; rank 3 dies once in epoch 2."""
    import torch
    import torch.distributed as dist

    context = hs.get_trial_context()
    assert context is not None
    folder = Path(config["folder"])
    dist.init_process_group("gloo")
    state = hs.restore()
    start = 0 if state is None else state["epoch"] + 1
    for epoch in range(start, 5):
        for step in range(5):
            killer = (epoch, step, context.rank) == (2, 2, 3)
            if killer and not (folder / "killed").exists():
                (folder / "killed").write_text(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)
            dist.all_reduce(torch.ones(1))
            time.sleep(0.02)
            if context.rank == 0:
                with open(folder / "steps.jsonl", "a") as log:
                    record = {
                        "t": time.time(),
                        "pid": os.getpid(),
                        "epoch": epoch,
                        "world": context.world_size,
                    }
                    log.write(json.dumps(record) + "\n")
        hs.checkpoint({"epoch": epoch}, step=epoch)
        hs.report(epoch, loss=1.0)
    return 1.0


def _run(kind: str, repeat: int, launcher: str = "local") -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        options: dict[str, Any] = {}
        if launcher == "ray":
            from hypersweep.launchers import RayLauncher

            options["launcher"] = RayLauncher()
        os.environ["HYPERSWEEP_RUNS_DIR"] = str(Path(folder) / "runs")
        replicas = hs.Replicas(n=(2, 4)) if kind == "elastic" else hs.Replicas(n=4)
        result = hs.tune(
            {"folder": folder, "x": hs.choice([repeat])},
            train,
            metric="loss",
            n_trials=1,
            max_retries=1,
            replicas=replicas,
            name=f"elastic-bench-{launcher}-{kind}-{repeat}",
            **options,
        )
        assert result.counts() == {"completed": 1}, result.counts()
        killed = float((Path(folder) / "killed").read_text())
        steps = [
            json.loads(line) for line in (Path(folder) / "steps.jsonl").read_text().splitlines()
        ]
        # Resumed: rank 0 of the next round (a new process) completed an all-reduce.
        before = [s for s in steps if s["t"] <= killed]
        after = [s for s in steps if s["t"] > killed and s["pid"] != before[-1]["pid"]]
        resumed = after[0]
        grown = next((s for s in after if s["world"] == 4), None) if kind == "elastic" else None
        return {
            "loss_to_resumed_s": resumed["t"] - killed,
            "world_after_loss": resumed["world"],
            "attempts": result.trials[0].attempts,
            **({"loss_to_regrown_s": grown["t"] - killed} if grown else {}),
        }


def _summary(runs: dict[str, list[dict[str, float]]], repeats: int) -> dict[str, Any]:
    summary = {
        kind: {
            "median_loss_to_resumed_s": statistics.median(r["loss_to_resumed_s"] for r in rs),
            "world_after_loss": rs[0]["world_after_loss"],
            "attempts": rs[0]["attempts"],
        }
        for kind, rs in runs.items()
    }
    regrown = [r["loss_to_regrown_s"] for r in runs["elastic"] if "loss_to_regrown_s" in r]
    if regrown:
        summary["elastic"]["median_loss_to_regrown_s"] = statistics.median(regrown)
    return {"repeats": repeats, "summary": summary, "runs": runs}


def _ray_cluster() -> Any:
    """The tests' Ray cluster: a head node without CPUs for trials, two nodes of 2 CPUs."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--launcher", choices=("local", "ray"), default="local")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"elastic": [], "full_restart": []}
    cluster = _ray_cluster() if args.launcher == "ray" else None
    try:
        for repeat in range(args.repeats):
            for kind in runs:
                runs[kind].append(_run(kind, repeat, args.launcher))
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
    path = RESULTS / "elastic.json"
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    measured = _summary(runs, args.repeats)
    if args.launcher == "ray":
        out["ray"] = measured
    else:
        out.update(measured)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for kind, row in measured["summary"].items():
        print(args.launcher, kind, json.dumps(row))


if __name__ == "__main__":
    main()
