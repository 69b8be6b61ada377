"""Chaos, with figures: what SIGKILLs of the operator and of replicas break (nothing, we claim).

1. **Operator.** One ASHA Sweep (trials paused and promoted) on the local control plane
   (``hypersweep.testing.LocalCluster`` with a node agent running the trial pods); the operator
   runs as its own process and is SIGKILLed ``--operator-kills`` times, each at a random moment
   (uniform in ``--kill-delay`` seconds after it leads, so kills land in the middle of Secret,
   TrainJob and pod creation, suspensions, promotions and status writes alike), and started
   again each time. Counted: trials (must be ``maxTrials``), TrainJobs per trial number beyond
   one, pods of a trial alive at once beyond its one replica, pods and Secrets left after the
   sweep, reports lost (a step whose ``report()`` returned in the trial but is not in storage),
   trials started over from step 0.
2. **Gangs.** A local sweep of ``--replicas``-replica trials run twice: without faults, then
   with ``--replica-kills`` random replica SIGKILLs (each restarts its gang from the
   checkpoint). Counted: trials lost, and whether every final value equals the fault-free one
   (the objective is deterministic).
3. **Gangs as TrainJobs.** The same on the local control plane: a grid Sweep of
   ``--replicas``-pod trials (a PyTorch master and workers, run by the node agent as processes)
   twice, without faults and with ``--trainjob-kills`` SIGKILLs of random replica processes;
   each kill fails a pod and the TrainJob controller restarts the gang from the checkpoint.

Sized for a 2-core machine shared with other work: the defaults (20 operator kills in a
30-trial sweep, 100 replica kills in a local 16-trial sweep of 4-replica trials, 100 in a
34-trial sweep as TrainJobs, at most ceil(kills / trials) = 3 per trial since a gang's restarts
back off exponentially, so more trials rather than more kills per trial) take a few minutes
to a quarter of an hour each. Kills stop when the sweep ends: the JSON says how many were
delivered.

    python benchmarks/chaos.py [--operator-kills 20] [--replica-kills 100] [--trainjob-kills 100]
        [--trainjob-trials 34] [--seed 0] [--skip operator|gangs|trainjob-gangs ...]

Writes benchmarks/results/chaos.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypersweep.operators import crd_manifests
from hypersweep.testing import (
    LocalCluster,
    OperatorProcess,
    apply_data_claim,
    chaos_sweep,
    create_namespace,
    run_gang_chaos,
    run_operator_chaos,
    run_trainjob_gang_chaos,
)

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "chaos"


COMMAND = [
    sys.executable,
    "-m",
    "hypersweep.operators.trial_entrypoint",
    "hypersweep.testing._chaos:chaos_curve",
]


@contextlib.contextmanager
def chaos_cluster(
    args: argparse.Namespace, workdir: Path
) -> Iterator[tuple[LocalCluster, OperatorProcess, Path, Path]]:
    """A test cluster with one node, the data claim and a running operator; yields the
    cluster, the operator, the data folder and the markers folder."""
    data, markers = workdir / "data", workdir / "markers"
    data.mkdir()
    markers.mkdir()
    with LocalCluster(crds=crd_manifests()) as cluster:
        cluster.start_node_agent("agent-0")
        create_namespace(cluster.api_client(), NAMESPACE)
        apply_data_claim(cluster, NAMESPACE, data)
        # Serving is enough to count as started (/readyz does not wait for the lease); one
        # that exits by itself (it lost its lease on a loaded machine) is started again.
        operator = OperatorProcess(
            cluster.kubeconfig,
            NAMESPACE,
            data,
            workdir / "operator.log",
            lease_duration=args.lease,
            identity="chaos",  # a new pod's name at each start: it waits for the lease
            ready_path="/readyz",
            restart_on_exit=True,
            start_timeout=120,
        )
        operator.start()
        try:
            yield cluster, operator, data, markers
        finally:
            if operator.process is not None and operator.process.poll() is None:
                operator.kill()


def operator_chaos(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with chaos_cluster(args, workdir) as (cluster, operator, data, markers):
        sweep = chaos_sweep(
            "chaos",
            COMMAND,
            markers,
            max_trials=args.max_trials,
            parallelism=args.parallelism,
            seed=args.seed,
        )
        report = run_operator_chaos(
            cluster,
            NAMESPACE,
            lambda study: data / NAMESPACE / study / "journal.log",
            operator,
            sweep,
            markers,
            kills=args.operator_kills,
            seed=args.seed,
            delay=tuple(args.kill_delay),
            log=print,
        )
    return report.as_dict()


def trainjob_gang_chaos(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with chaos_cluster(args, workdir) as (cluster, _operator, data, markers):
        report = run_trainjob_gang_chaos(
            cluster,
            NAMESPACE,
            lambda study: data / NAMESPACE / study / "journal.log",
            COMMAND,
            markers,
            kills=args.trainjob_kills,
            trials=args.trainjob_trials,
            replicas=args.replicas,
            parallelism=2,
            steps=args.trainjob_steps,
            pause=0.3,
            seed=args.seed,
            delay=(0.5, 1.5),
            timeout=3600,
            log=print,
        )
    return report.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operator-kills", type=int, default=20)
    parser.add_argument("--max-trials", type=int, default=30)
    parser.add_argument("--parallelism", type=int, default=3)
    parser.add_argument("--kill-delay", type=float, nargs=2, default=(0.3, 3.0))
    parser.add_argument("--lease", type=float, default=3.0, help="operator lease, seconds")
    parser.add_argument("--replica-kills", type=int, default=100)
    parser.add_argument("--gang-trials", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainjob-kills", type=int, default=100)
    parser.add_argument("--trainjob-trials", type=int, default=34)
    parser.add_argument("--trainjob-steps", type=int, default=30)
    parser.add_argument(
        "--skip",
        choices=("operator", "gangs", "trainjob-gangs"),
        action="append",
        default=[],
        help="parts not to run (repeatable); the saved JSON keeps their previous figures",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    arguments = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    arguments["output"] = str(args.output)
    # Parts skipped keep the figures (and the arguments they ran with) of the last run.
    results: dict[str, Any] = {}
    if args.skip and args.output.exists():
        results = json.loads(args.output.read_text())
    results.setdefault("arguments_by_part", {})
    if "arguments" in results:  # a file from before arguments were kept per part
        old = results.pop("arguments")
        for part in ("operator", "gangs"):
            results["arguments_by_part"].setdefault(part, old)
    results["machine"] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="hypersweep-chaos-") as tmp:
        workdir = Path(tmp)
        if "operator" not in args.skip:
            (workdir / "operator").mkdir()
            results["operator"] = operator_chaos(args, workdir / "operator")
            results["arguments_by_part"]["operator"] = arguments
            print(json.dumps(results["operator"], indent=2))
        if "trainjob-gangs" not in args.skip:
            (workdir / "trainjob-gangs").mkdir()
            results["trainjob_gangs"] = trainjob_gang_chaos(args, workdir / "trainjob-gangs")
            results["arguments_by_part"]["trainjob_gangs"] = arguments
            print(json.dumps(results["trainjob_gangs"], indent=2))
        if "gangs" not in args.skip:
            os.environ["HYPERSWEEP_RUNS_DIR"] = str(workdir / "runs")
            results["gangs"] = run_gang_chaos(
                workdir / "gangs",
                kills=args.replica_kills,
                trials=args.gang_trials,
                replicas=args.replicas,
                seed=args.seed,
                log=print,
            ).as_dict()
            results["arguments_by_part"]["gangs"] = arguments
            print(json.dumps(results["gangs"], indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
