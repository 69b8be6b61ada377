"""Scale of the operator on kwok: many 4-replica trials over three GPU node pools.

One run starts the local control plane (``hypersweep.testing.LocalCluster``), creates three kwok
node pools (a100 and h100 with 8 ``nvidia.com/gpu`` per node, tpu with 8 ``google.com/tpu``;
2 per replica, so a node holds 4 replicas), runs the operator as its own process, and applies
one Sweep whose trials are 4-replica gangs admitted onto the pools. kwok runs no containers: a
kwok Stage added for this benchmark ends each trial pod (image ``hypersweep-sim:trial``)
``--run-ms`` after it starts, which is the simulated training run. Such trials never report a
result, so each ends as failed ("succeeded without reporting") a few seconds later: what is
measured is the machinery, not the objective.

Measured, in the same run:

* time from ``kubectl apply`` to the first trial pod (seen by a watch);
* pods per second the operator creates (in the first wave, as many pods as the pools hold at
  once, so capacity does not limit it; and over the whole sweep) against the
  raw rate of the same API server: one plain client creating pods one after another;
* the operator's CPU seconds and peak memory (``/proc``), and the Sweep object's size in bytes
  (sampled through the run: it must not grow with the trials).

What the two rates cost differs: a raw pod is left unscheduled, one API write; a trial pod is
also bound by the scheduler, updated by kwok and published in its job's EndpointSlice, and each
trial adds its Secret, TrainJob, headless Service, status writes and Events, while earlier
trials finish. Everything runs on one machine: on 2 cores the control plane saturates both
during the first wave, the API server taking the largest share.

    python benchmarks/k8s_scale.py [--trials 1000] [--nodes 500] [--run-ms 2000] [--workers 8]

``--workers`` defaults to the operator's own default.

Writes benchmarks/results/k8s_scale.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from hypersweep.operators import crd_manifests
from hypersweep.operators._operator import OperatorOptions
from hypersweep.testing import LocalCluster, create_namespace, create_node_pool, find_binaries

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE = "hypersweep-sim:trial"
NAMESPACE = "bench"


def _stages(run_ms: int) -> str:
    """kwok's default stages plus one that ends trial pods ``run_ms`` after they run."""
    default = (find_binaries().directory / "kwok-stages.yaml").read_text()
    complete: dict[str, Any] = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "pod-complete-simulated-trial"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    {"key": ".spec.containers.[].image", "operator": "In", "values": [IMAGE]},
                ]
            },
            "delay": {"durationMilliseconds": run_ms},
            "next": {
                "statusTemplate": (
                    "{{ $now := Now }}\ncontainerStatuses:\n{{ range $index, $item := "
                    ".spec.containers }}\n- image: {{ $item.image | Quote }}\n  name: "
                    "{{ $item.name | Quote }}\n  ready: false\n  restartCount: 0\n  started: "
                    "false\n  state:\n    terminated:\n      exitCode: 0\n      finishedAt: "
                    "{{ $now | Quote }}\n      reason: Completed\n      startedAt: "
                    "{{ $now | Quote }}\n{{ end }}\nphase: Succeeded\n"
                )
            },
        },
    }
    return yaml.safe_dump(complete) + "---\n" + default


def _bin_dir(workdir: Path, run_ms: int) -> Path:
    """The control-plane binaries (linked) with the extended kwok stages."""
    source = find_binaries().directory
    target = workdir / "bin"
    target.mkdir()
    for entry in source.iterdir():
        if entry.name != "kwok-stages.yaml":
            (target / entry.name).symlink_to(entry)
    (target / "kwok-stages.yaml").write_text(_stages(run_ms))
    return target


def _proc(pid: int) -> tuple[float, int]:
    """CPU seconds and peak resident memory (bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def _raw_rate(api: Any, count: int) -> float:
    """Pods per second one plain client creates, one after another (pods left unscheduled)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    create_namespace(api, "raw")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "raw-"},
        "spec": {
            "nodeSelector": {"bench/none": "none"},
            "containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1m"}}}],
        },
    }
    start = time.perf_counter()
    for _ in range(count):
        core.create_namespaced_pod("raw", body, _preload_content=False)
    rate = count / (time.perf_counter() - start)
    core.delete_collection_namespaced_pod("raw", grace_period_seconds=0)
    return rate


def _template() -> dict[str, Any]:
    container = {
        "name": "pytorch",
        "image": IMAGE,
        "command": ["train"],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }

    def role(count: int) -> dict[str, Any]:
        return {"replicas": count, "template": {"spec": {"containers": [container]}}}

    return {"framework": "pytorch", "replicaSpecs": {"Master": role(1), "Worker": role(3)}}


def run(
    trials: int, nodes: int, run_ms: int, raw_pods: int, parallelism: int, workers: int
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="k8s-scale-"))
    try:
        with LocalCluster(bin_dir=_bin_dir(workdir, run_ms), crds=crd_manifests()) as cluster:
            result = _run(cluster, workdir, trials, nodes, raw_pods, parallelism, workers)
            result["simulated_run_ms"] = run_ms
            return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(
    cluster: LocalCluster,
    workdir: Path,
    trials: int,
    nodes: int,
    raw_pods: int,
    parallelism: int,
    workers: int,
) -> dict[str, Any]:
    from kubernetes import client, watch

    api = cluster.api_client()
    sizes = {"a100": int(nodes * 0.4), "h100": int(nodes * 0.4)}
    sizes["tpu"] = nodes - sizes["a100"] - sizes["h100"]
    for name, count in sizes.items():
        resource = "google.com/tpu" if name == "tpu" else "nvidia.com/gpu"
        create_node_pool(api, name, count, capacity={resource: 8}, timeout=300)
    raw = _raw_rate(api, raw_pods)

    create_namespace(api, NAMESPACE)
    data = workdir / "data"
    data.mkdir()
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": "bench-data"},
                        "spec": {
                            "capacity": {"storage": "1Gi"},
                            "accessModes": ["ReadWriteMany"],
                            "storageClassName": "",
                            "hostPath": {"path": str(data)},
                            "claimRef": {"namespace": NAMESPACE, "name": "hypersweep-data"},
                        },
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "hypersweep-data", "namespace": NAMESPACE},
                        "spec": {
                            "accessModes": ["ReadWriteMany"],
                            "storageClassName": "",
                            "volumeName": "bench-data",
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    },
                ],
            }
        ),
    )
    port = 18000 + os.getpid() % 1000
    log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed below
    operator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypersweep.operators._operator",
            "run",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--namespace={NAMESPACE}",
            f"--data-dir={data}",
            "--bind=127.0.0.1",
            f"--port={port}",
            f"--report-url=http://127.0.0.1:{port}",
            f"--lease-namespace={NAMESPACE}",
            "--lease-name=bench",
            "--identity=bench",
            f"--workers={workers}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    created: list[float] = []
    stop = threading.Event()

    def watch_pods() -> None:
        core = client.CoreV1Api(api)
        stream = watch.Watch()
        try:
            for event in stream.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=0):
                if event["type"] == "ADDED":
                    created.append(time.perf_counter())
                if stop.is_set():
                    stream.stop()
        except Exception:  # noqa: BLE001 - the cluster stops under the watch at the end
            pass

    threading.Thread(target=watch_pods, daemon=True).start()
    time.sleep(8)  # the operator takes the lead and syncs its caches
    sweep = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": "scale"},
        "spec": {
            "space": {"lr": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"metric": "loss", "mode": "min"},
            "strategy": {"name": "random"},
            "maxTrials": trials,
            "parallelism": parallelism,
            "maxRetries": 0,
            "trialTemplate": _template(),
            "pools": [
                {
                    "name": name,
                    "nodeSelector": {"hypersweep.io/pool": name},
                    "accelerator": {
                        "resource": "google.com/tpu" if name == "tpu" else "nvidia.com/gpu",
                        "perReplica": 2,
                    },
                    "weight": 2 if name == "h100" else 1,
                }
                for name in sizes
            ],
        },
    }
    applied = time.perf_counter()
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(sweep))
    status_sizes: list[int] = []
    finished = None
    while True:
        time.sleep(2)
        got = json.loads(
            cluster.kubectl("get", "sweep", "scale", "-n", NAMESPACE, "-o", "json").stdout
        )
        status_sizes.append(len(json.dumps(got)))
        conditions = {
            c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []
        }
        if conditions.get("Succeeded") == "True" or conditions.get("Failed") == "True":
            finished = time.perf_counter()
            break
        if operator.poll() is not None:
            raise RuntimeError("the operator exited")
    cpu, peak = _proc(operator.pid)
    stop.set()
    os.killpg(operator.pid, signal.SIGTERM)
    operator.wait(60)
    log.close()
    times = sorted(created)
    # The first wave: as many pods as the pools hold at once (4 replicas of 2 per 8-GPU node),
    # created as fast as the operator can, before capacity rather than the operator limits it.
    wave = min(len(times), nodes * 4)
    best = (wave - 1) / (times[wave - 1] - times[0]) if wave > 1 else 0.0
    trial_counts = (got.get("status") or {}).get("trials") or {}
    return {
        "trials": trials,
        "replicas_per_trial": 4,
        "nodes": sizes,
        "parallelism": parallelism,
        "operator_workers": workers,
        "first_pod_s": round(times[0] - applied, 3) if times else None,
        "sweep_s": round(finished - applied, 1),
        "pods_created": len(times),
        "first_wave_pods": wave,
        "operator_pods_per_s_first_wave": round(best, 1),
        "operator_pods_per_s_overall": round(len(times) / (times[-1] - times[0]), 1)
        if len(times) > 1
        else None,
        "raw_pods_per_s": round(raw, 1),
        "raw_pods": raw_pods,
        "operator_vs_raw": round(best / raw, 3) if raw else None,
        "operator_cpu_s": round(cpu, 1),
        "operator_peak_rss_mib": round(peak / 2**20, 1),
        "sweep_object_bytes_first_last_max": [
            status_sizes[0],
            status_sizes[-1],
            max(status_sizes),
        ],
        "final_trial_counts": trial_counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--run-ms", type=int, default=2000)
    parser.add_argument("--raw-pods", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=0, help="default: --trials")
    parser.add_argument(
        "--workers", type=int, default=OperatorOptions.workers, help="the operator's --workers"
    )
    parser.add_argument("--output", default=str(RESULTS / "k8s_scale.json"))
    args = parser.parse_args()
    result = run(
        args.trials,
        args.nodes,
        args.run_ms,
        args.raw_pods,
        args.parallelism or args.trials,
        args.workers,
    )
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
