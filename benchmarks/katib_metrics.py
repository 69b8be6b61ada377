"""Operator CPU per 1,000 metric lines of a Katib-shaped Sweep's StdOut collection.

A Katib trial prints ``Validation-accuracy=...`` lines; the trial entry point parses them in the
trial pod and sends each objective observation to the operator as one report (no sidecar, no
log following). What the operator pays per line is that report: one HTTP request, the early
stopping check and one storage write. Measured on the local test cluster (real API server, node
agent, the operator as its own process with the ServiceAccount's permissions): the same
Experiment twice per round, with few and with many epochs (one metric line each); the operator's
CPU seconds (``/proc``) from ``kubectl apply`` to the Sweep's end, and the difference per 1,000
extra lines, so the sweep's fixed costs (TrainJobs, pods, status) cancel out.

    python benchmarks/katib_metrics.py [--lines 1000] [--trials 2] [--rounds 2]

Writes benchmarks/results/katib_metrics.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The operator tests' helpers, which import the suite's top-level conftest as `conftest`.
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hypersweep.operators import crd_manifests  # noqa: E402
from hypersweep.testing import LocalCluster, apply_data_claim, create_namespace  # noqa: E402
from tests.operators.conftest import (  # noqa: E402
    OPERATOR_USER,
    SECRETS_BINDING,
    Namespace,
    OperatorProcess,
    install_operator_rbac,
    operator_account_kubeconfig,
    wait_until,
)
from tests.operators.test_katib import experiment  # noqa: E402


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _finished(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", "sweep", name, "-n", namespace, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    true = {c["type"] for c in status.get("conditions") or [] if c["status"] == "True"}
    if "Failed" in true:
        raise RuntimeError(f"sweep {name} failed: {status}")
    return status if "Succeeded" in true else None


def _reports(namespace: Namespace, status: dict[str, Any]) -> int:
    """Intermediate values stored for the sweep's trials: every metric line arrived once."""
    from tests.operators.test_sweep import stored_trials

    return sum(len(t.intermediate_values) for t in stored_trials(namespace, status))


def _one(
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: Namespace,
    epochs: int,
    trials: int,
) -> dict[str, Any]:
    name = f"bench-{epochs}-{uuid.uuid4().hex[:5]}"
    body = experiment(name, max_trials=trials, parallel=1, extra_args=[f"--epochs={epochs}"])
    assert operator.process is not None
    before, started = _cpu(operator.process.pid), time.perf_counter()
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(body))
    status = wait_until(lambda: _finished(cluster, namespace.name, name), 900, f"sweep {name}")
    cpu, wall = _cpu(operator.process.pid) - before, time.perf_counter() - started
    assert status is not None
    reports = _reports(namespace, status)
    if reports != epochs * trials:
        raise RuntimeError(f"{reports} reports stored for {epochs * trials} metric lines")
    return {"cpu_s": cpu, "wall_s": wall, "lines": epochs * trials, "reports_stored": reports}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1000, help="metric lines per trial (many)")
    parser.add_argument("--few", type=int, default=10, help="metric lines per trial (few)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "benchmarks/results/katib_metrics.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="katib-bench-"))
    with LocalCluster(crds=crd_manifests(), audit_users=[OPERATOR_USER]) as cluster:
        cluster.start_node_agent("agent-0")
        install_operator_rbac(cluster)
        kubeconfig = operator_account_kubeconfig(cluster)
        name = "katib-bench"
        (work / "data").mkdir()
        (work / "markers").mkdir()
        create_namespace(cluster.api_client(), name)
        cluster.kubectl(
            "create",
            "rolebinding",
            SECRETS_BINDING,
            "-n",
            name,
            f"--clusterrole={SECRETS_BINDING}",
            "--serviceaccount=hypersweep-system:hypersweep-operator",
        )
        apply_data_claim(cluster, name, work / "data")
        namespace = Namespace(name, work / "data", work / "markers")
        operator = OperatorProcess(kubeconfig, namespace, work / "operator.log")
        operator.start()
        try:
            rounds: list[dict[str, Any]] = []
            for _ in range(args.rounds):
                few = _one(cluster, operator, namespace, args.few, args.trials)
                many = _one(cluster, operator, namespace, args.lines, args.trials)
                extra = (many["lines"] - few["lines"]) / 1000
                rounds.append(
                    {
                        "few": few,
                        "many": many,
                        "cpu_s_per_1000_lines": (many["cpu_s"] - few["cpu_s"]) / extra,
                        "wall_s_per_1000_lines": (many["wall_s"] - few["wall_s"]) / extra,
                    }
                )
        finally:
            operator.stop()
    per_1000 = [float(r["cpu_s_per_1000_lines"]) for r in rounds]
    result: dict[str, Any] = {
        "what": "operator CPU seconds per 1,000 StdOut metric lines of a Katib-shaped Sweep "
        "(relayed by the trial entry point, one report per objective line)",
        "operator_cpu_s_per_1000_lines_median": round(statistics.median(per_1000), 3),
        "operator_cpu_ms_per_line_median": round(statistics.median(per_1000), 3),
        "trial_wall_s_per_1000_lines_median": round(
            statistics.median(float(r["wall_s_per_1000_lines"]) for r in rounds), 2
        ),
        "settings": vars(args) | {"output": None},
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "2 shared cores; the API server, node agent and trial processes run beside the "
        "operator",
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
