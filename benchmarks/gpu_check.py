"""Multi-replica trials on a real GPU: NCCL rendezvous, CUDA checkpoints, GPU exclusivity.

What needs a GPU and so cannot run in the test suite (which runs on CPU machines):

1. NCCL rendezvous: launch to the first completed NCCL all-reduce across one rank per GPU
   (``--ranks``; 1 on a one-GPU machine, which the result says), for a cold Python process
   calling ``hs.tune(..., replicas=hs.Replicas(n, gpus_per_replica=1))`` against a cold
   ``torchrun --standalone --nproc-per-node n``, interleaved repeats.
2. CUDA checkpoints: a DDP trial on the GPU checkpoints its CUDA tensors every epoch and
   SIGKILLs itself in epoch 2 of its first attempt; the trial restarts from the checkpoint and
   its final weights must equal an uninterrupted run's (deterministic algorithms on).
3. GPU exclusivity: two trials wanting one GPU each on a machine with one GPU never hold it at
   the same time (``CUDA_VISIBLE_DEVICES`` pool), and both complete.
4. Refusal: a trial needing more GPUs than the machine has is refused before anything starts,
   with the field named.
5. The example sweep (``examples/pytorch_ddp.py``) on the GPU, with ASHA.
6. JAX on the GPU: a ``Replicas(n=1, framework="jax", gpus_per_replica=1)`` trial calls
   ``jax.distributed.initialize()`` with no arguments and runs a psum and a jitted bf16 matmul
   on its GPU (needs ``pip install 'jax[cuda12]'``; the check says so where JAX has no GPU).

    python benchmarks/gpu_check.py [--repeats 3] [--cpu] [--ranks N]

``--cpu`` runs the same checks with gloo on the CPU (a dry run of the script itself). Prints a
summary and writes benchmarks/results/gpu_check.json (or $OUT/gpu_check.json when OUT is set);
exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypersweep as hs
from hypersweep.launchers import LocalLauncher

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "gpu_check_train.py"


def _launcher(cpu: bool, max_concurrent: int = 1) -> LocalLauncher:
    # On the CPU dry run, one made-up GPU id stands in for the real one.
    return LocalLauncher(max_concurrent, gpus=["0"] if cpu else None)


def _in_env(env: dict[str, str], run: Callable[[], Any]) -> Any:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return run()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _tune_on_one_gpu(
    env: dict[str, str],
    objective: str,
    space: dict[str, Any],
    cpu: bool,
    *,
    max_concurrent: int = 1,
    **options: Any,
) -> hs.SweepResult:
    """``hs.tune`` of an objective of the training script, one GPU per trial, in ``env``."""
    return _in_env(
        env,
        lambda: hs.tune(
            space,
            f"{SCRIPT}:{objective}",
            metric="loss",
            replicas=hs.Replicas(n=1, gpus_per_replica=1),
            launcher=_launcher(cpu, max_concurrent),
            verbose=False,
            **options,
        ),
    )


COLD_TUNE = """
import sys
import hypersweep as hs
from hypersweep.launchers import LocalLauncher

script, ranks, cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
result = hs.tune(
    {"x": hs.uniform(0, 1)},
    f"{script}:first_allreduce",
    metric="loss",
    n_trials=1,
    replicas=hs.Replicas(n=ranks, gpus_per_replica=1),
    # On the CPU dry run, made-up GPU ids stand in for real ones.
    launcher=LocalLauncher(1, gpus=[str(i) for i in range(ranks)] if cpu else None),
    verbose=False,
)
assert result.counts() == {"completed": 1}, result.trials[0].error
"""


def nccl_first_allreduce(repeats: int, cpu: bool, ranks: int) -> dict[str, Any]:
    """Launch to the first completed all-reduce across ``ranks`` ranks (one GPU each), both
    from a cold Python process: ``torchrun --standalone`` and a script calling ``hs.tune()``,
    interleaved."""
    samples: dict[str, list[float]] = {"torchrun": [], "hs.tune() from a cold process": []}
    seen: dict[str, Any] = {}
    for _ in range(repeats):
        for name in samples:
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "BENCH_DIR": tmp, "HYPERSWEEP_RUNS_DIR": f"{tmp}/runs"}
                if name == "torchrun":
                    command = [
                        sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(ranks), str(SCRIPT), "first_allreduce",
                    ]  # fmt: skip
                else:
                    command = [
                        sys.executable, "-c", COLD_TUNE, str(SCRIPT), str(ranks),
                        "1" if cpu else "0",
                    ]  # fmt: skip
                start = time.time()
                subprocess.run(command, env=env, check=True, capture_output=True)
                seen = json.loads((Path(tmp) / "allreduce.json").read_text())
                samples[name].append(seen["done"] - start)
    assert seen["backend"] == ("gloo" if cpu else "nccl"), seen
    assert seen["world_size"] == ranks and seen["value"] == ranks, seen
    return {
        "ranks": ranks,
        "note": (
            f"{ranks} ranks with gloo on the CPU (dry run)"
            if cpu
            else "one rank: the machine has one GPU"
            if ranks == 1
            else f"{ranks} ranks, one GPU each"
        ),
        "what_the_trial_saw": seen,
        "seconds": {
            name: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "samples": values,
            }
            for name, values in samples.items()
        },
    }


def cuda_checkpoint_resume(cpu: bool) -> dict[str, Any]:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        env = {"BENCH_DIR": tmp, "HYPERSWEEP_RUNS_DIR": f"{tmp}/runs"}
        results = {}
        for kill in (False, True):
            results[kill] = _tune_on_one_gpu(
                env,
                "cuda_train",
                {"lr": hs.choice([0.05]), "epochs": 5, "kill": kill},
                cpu,
                n_trials=1,
                max_retries=1,
                name=f"cuda-train-{kill}",
            )
        killed = json.loads((Path(tmp) / "killed.json").read_text())
        a = torch.load(Path(tmp) / "uninterrupted.pt")
        b = torch.load(Path(tmp) / "killed.pt")
        difference = max(float((a[k] - b[k]).abs().max()) for k in a)
        trial = results[True].trials[0]
        outcome = {
            "killed_run": {"state": trial.state, "attempts_seen": killed},
            "uninterrupted_state": results[False].trials[0].state,
            "max_abs_weight_difference": difference,
        }
    assert trial.state == "completed", trial.error
    assert killed["attempt"] == 1 and killed["start"] == 2, killed
    assert killed["restored_on"] == ("cpu" if cpu else "cuda:0"), killed
    assert difference == 0.0, difference
    return outcome


def gpu_exclusivity(cpu: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"BENCH_DIR": tmp, "HYPERSWEEP_RUNS_DIR": f"{tmp}/runs"}
        result = _tune_on_one_gpu(
            env, "hold_gpu", {"x": hs.uniform(0, 1)}, cpu, max_concurrent=2, n_trials=2
        )
        holds = sorted(
            (json.loads(p.read_text()) for p in Path(tmp).glob("hold-*.json")),
            key=lambda h: h["begin"],
        )
    assert result.counts() == {"completed": 2}, result.counts()
    assert len(holds) == 2 and holds[0]["end"] <= holds[1]["begin"], holds
    return {"trials": holds}


def refusal() -> dict[str, Any]:
    import torch

    count = max(1, torch.cuda.device_count())
    try:
        hs.tune(
            {"x": hs.uniform(0, 1)},
            f"{SCRIPT}:hold_gpu",
            metric="loss",
            n_trials=1,
            replicas=hs.Replicas(n=count + 1, gpus_per_replica=1),
            verbose=False,
        )
    except hs.ConfigError as error:
        assert "replicas.gpus_per_replica" in str(error), error
        return {"error": str(error)}
    raise AssertionError("a trial needing more GPUs than there are was not refused")


def example_sweep(cpu: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HYPERSWEEP_RUNS_DIR": tmp}
        if cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        start = time.time()
        done = subprocess.run(
            [sys.executable, str(HERE.parent / "examples" / "pytorch_ddp.py"),
             "--replicas", "1", "--trials", "6"],
            env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
    tail = done.stdout.strip().splitlines()[-2:]
    assert done.returncode == 0, done.stderr[-2000:]
    return {"seconds": time.time() - start, "output": tail}


def jax_on_gpu(cpu: bool) -> dict[str, Any]:
    import jax

    platforms = {device.platform for device in jax.devices()}
    if not cpu and "gpu" not in platforms:
        raise AssertionError(f"JAX sees {platforms}, no GPU: pip install 'jax[cuda12]'")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"BENCH_DIR": tmp, "HYPERSWEEP_RUNS_DIR": f"{tmp}/runs"}
        result = _in_env(
            env,
            lambda: hs.tune(
                {"x": hs.uniform(0, 1)},
                f"{SCRIPT}:jax_device_probe",
                metric="loss",
                n_trials=1,
                replicas=hs.Replicas(n=1, framework="jax", gpus_per_replica=1),
                launcher=_launcher(cpu),
                verbose=False,
            ),
        )
        assert result.counts() == {"completed": 1}, result.trials[0].error
        seen = json.loads((Path(tmp) / "jax.json").read_text())
    assert seen["platform"] == ("cpu" if cpu else "gpu"), seen
    assert seen["psum"] == seen["devices"] and seen["matmul_corner"] == 2048.0, seen
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="dry run with gloo on the CPU")
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        help="all-reduce ranks (default: one per GPU; 2 on --cpu)",
    )
    args = parser.parse_args()

    import torch

    if args.cpu:
        os.environ["HYPERSWEEP_CHECK_CPU"] = "1"
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; --cpu tries the script on the CPU")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    ranks = args.ranks or (2 if args.cpu else torch.cuda.device_count())
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "nccl_first_allreduce": lambda: nccl_first_allreduce(args.repeats, args.cpu, ranks),
        "cuda_checkpoint_resume": lambda: cuda_checkpoint_resume(args.cpu),
        "gpu_exclusivity": lambda: gpu_exclusivity(args.cpu),
        "refusal": refusal,
        "example_sweep": lambda: example_sweep(args.cpu),
        "jax_on_gpu": lambda: jax_on_gpu(args.cpu),
    }
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version()))
            if torch.cuda.is_available()
            else None,
            "mode": "cpu dry run" if args.cpu else "gpu",
        },
        "arguments": vars(args),
        "checks": {},
    }
    failed = 0
    for name, check in checks.items():
        began = time.time()
        try:
            outcome = {"ok": True, **check()}
        except Exception:  # noqa: BLE001 - every failed check is reported, then the next runs
            failed += 1
            outcome = {"ok": False, "error": traceback.format_exc()[-3000:]}
        outcome["check_seconds"] = round(time.time() - began, 2)
        report["checks"][name] = outcome
        print(f"{name:28} {'ok' if outcome['ok'] else 'FAILED'} ({outcome['check_seconds']} s)")
        if not outcome["ok"]:
            print(outcome["error"])
    print(json.dumps(report, indent=2, default=str))
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
