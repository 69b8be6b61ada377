"""Scale of the operator on kwok: many 4-replica trials over three GPU node pools.

One run starts the local control plane (``hypersweep.testing.LocalCluster``), creates three kwok
node pools (a100 and h100 with 8 ``nvidia.com/gpu`` per node, tpu with 8 ``google.com/tpu``;
2 per replica, so a node holds 4 replicas), runs the operator as its own process, and applies
one Sweep whose trials are 4-replica PyTorch gangs admitted onto the pools, with Optuna's median
pruner and ``runPolicy.ttlSecondsAfterFinished`` (``--ttl``).

kwok runs no containers, so each trial's rank-0 process is simulated (``SimulatedTrials``): once
kwok marks the master pod Running, the benchmark sends what the trial's process would, on the
real report path (HTTP to the operator's report server, with the trial's token from its Secret):
a few steps of a loss over ``--run-ms``, then its final value, or it stops when the pruner says
so. Then the "process exits": the pod is labelled and a kwok Stage ends it as Succeeded, which
ends the TrainJob (PyTorch's rule: the master decides); its TTL then deletes it, and its pods
and Service with it. So storage, early stopping and the HTTP path are in the cost, and trials
end succeeded or pruned.

Measured, in the same run:

* the operator's API requests per trial by verb and resource, as its own client counted them
  (``hypersweep_operator_api_requests`` on its ``/metrics``; watches are listed, not counted per
  trial), its CPU per trial (from ``kubectl apply`` on, like its requests: its own start is
  ``operator_cpu_s_before_apply``) and its memory (``/proc``), every 10 s and at the end
  (once the last trial's objects are gone: their clean-up is part of their cost);
* time from ``kubectl apply`` to the first trial pod (seen by a watch);
* what the API server holds (the namespace's TrainJobs, pods, Services, EndpointSlices, Secrets,
  Events) every 10 s and after the last TTL, and etcd's database size at the end;
* the Sweep object's size in bytes through the run (it must not grow with the trials);
* as context only: pods per second the operator creates, against the raw rate of the same API
  server (one plain client creating pods one after another, three alternating rounds of two
  kinds, every round kept: ``unscheduled`` pods no node can take, and ``trial_like`` pods bound
  and run by kwok), and each process's share of the cores during the first wave; the API
  server's own request counters (every client's).

Everything runs on one machine: on 2 cores the control plane saturates both during the first
wave, the API server taking the largest share, so every request the operator saves is time the
API server gets back.

    python benchmarks/k8s_scale.py [--trials 1000] [--nodes 500] [--run-ms 2000] [--ttl 5]

``--workers`` defaults to the operator's own default.

Writes benchmarks/results/k8s_scale.json (``--output`` to change).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from hypersweep.kube._client import SWEEPS, Kube
from hypersweep.operators import crd_manifests
from hypersweep.operators._operator import OperatorOptions
from hypersweep.testing import LocalCluster, create_namespace, create_node_pool, find_binaries

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE = "hypersweep-sim:trial"
#: The workers' image: kwok runs them until the job ends (PyTorch's rule: the master decides).
WORKER_IMAGE = "hypersweep-sim:worker"
#: The label the reporter puts on a master pod once its result is in: kwok then ends the pod.
SIM_DONE_LABEL = "hypersweep-sim-done"
SCHEDULER_ARGS = ("--kube-api-qps=5000", "--kube-api-burst=10000")
#: kwok plays this many pod stages at once (its default, 4, lags tens of seconds behind
#: 1,000 running trials: ranks that exit would be deleted as stuck first).
KWOK_POD_STAGE_PARALLELISM = 32
#: Each simulated node's lease (kwok renews it a quarter of that apart). A kubelet's 40 s
#: makes 1,000 nodes 100 lease writes a second, more than 2 cores serve beside the sweep:
#: in the 10,000-trial run renewals fell behind, nodes went NotReady and were tainted, and
#: their pods were evicted.
NODE_LEASE_SECONDS = 240
#: How long the node lifecycle controller waits for a renewal: longer than kwok's interval.
CONTROLLER_MANAGER_ARGS = ("--node-monitor-grace-period=180s",)
#: kwok renews this many leases at once (its default, 4).
KWOK_NODE_LEASE_PARALLELISM = 16
NAMESPACE = "bench"


def _stages() -> str:
    """kwok's default stages plus one that ends a trial's pods once its simulated process
    has reported its result or stopped (the reporter labels each pod ``SIM_DONE_LABEL``)."""
    default = (find_binaries().directory / "kwok-stages.yaml").read_text()
    complete: dict[str, Any] = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "pod-complete-simulated-trial"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchLabels": {SIM_DONE_LABEL: "true"},
                "matchExpressions": [
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                    {
                        "key": ".spec.containers.[].image",
                        "operator": "In",
                        "values": [IMAGE, WORKER_IMAGE],
                    },
                ],
            },
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
    options = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        # The others as kwok's defaults (a configuration given replaces them all).
        "options": {
            "podPlayStageParallelism": KWOK_POD_STAGE_PARALLELISM,
            "nodePlayStageParallelism": 4,
            "nodeLeaseParallelism": KWOK_NODE_LEASE_PARALLELISM,
            "podsOnNodeSyncParallelism": 1,
        },
    }
    return yaml.safe_dump(options) + "---\n" + yaml.safe_dump(complete) + "---\n" + default


def _bin_dir(workdir: Path) -> Path:
    """The control-plane binaries (linked) with the extended kwok stages."""
    source = find_binaries().directory
    target = workdir / "bin"
    target.mkdir()
    for entry in source.iterdir():
        if entry.name != "kwok-stages.yaml":
            (target / entry.name).symlink_to(entry)
    (target / "kwok-stages.yaml").write_text(_stages())
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


def _rss(pid: int) -> int:
    """Resident memory (bytes) of a process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _raw_pod(scheduled: bool) -> dict[str, Any]:
    """A pod for the plain client: left unscheduled (one API write), or like a trial replica
    (the trial container and requests, 2 GPUs on a pool's node: bound by the scheduler, run
    and ended by kwok like the operator's pods, without the job around it)."""
    if not scheduled:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "raw-"},
            "spec": {
                "nodeSelector": {"bench/none": "none"},
                "containers": [
                    {"name": "c", "image": "x", "resources": {"requests": {"cpu": "1m"}}}
                ],
            },
        }
    container = copy.deepcopy(_container())
    container["resources"]["requests"]["nvidia.com/gpu"] = "2"
    container["resources"]["limits"] = {"nvidia.com/gpu": "2"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "raw-trial-", "labels": {"bench": "raw"}},
        "spec": {
            "nodeSelector": {"hypersweep.io/pool": "a100"},
            "restartPolicy": "Never",
            "containers": [container],
        },
    }


def _raw_rate(api: Any, count: int, scheduled: bool) -> float:
    """Pods per second one plain client creates, one after another; the pods are deleted
    after (and gone before this returns)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    body = _raw_pod(scheduled)
    start = time.perf_counter()
    for _ in range(count):
        core.create_namespaced_pod("raw", body, _preload_content=False)
    rate = count / (time.perf_counter() - start)
    core.delete_collection_namespaced_pod("raw", grace_period_seconds=0)
    deadline = time.monotonic() + 120
    while core.list_namespaced_pod("raw", limit=1).items and time.monotonic() < deadline:
        time.sleep(0.5)
    return rate


def _raw_rates(api: Any, count: int, rounds: int = 3) -> dict[str, list[float]]:
    """Both kinds of raw rate, in alternating rounds (the rate varies from run to run)."""
    create_namespace(api, "raw")
    rates: dict[str, list[float]] = {"unscheduled": [], "trial_like": []}
    for _ in range(rounds):
        rates["unscheduled"].append(round(_raw_rate(api, count, scheduled=False), 1))
        rates["trial_like"].append(round(_raw_rate(api, count, scheduled=True), 1))
    return rates


def _request_counts(cluster: LocalCluster) -> dict[str, float]:
    """The API server's request counters (``apiserver_request_total``) by verb and resource."""
    counts: dict[str, float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(
            part.split("=", 1) for part in labels_text.replace('"', "").split(",") if "=" in part
        )
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = f"{labels.get('verb', '')} {resource}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def _stored_objects(api: Any) -> dict[str, int]:
    """Objects the API server holds now in the benchmark's namespace, by kind: one list of
    one item each (its ``remainingItemCount`` says how many more there are)."""
    from hypersweep.kube._client import EVENTS, PODS, SECRETS, SERVICES, TRAINJOBS, Resource

    endpointslices = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
    kube = Kube(api)
    counts: dict[str, int] = {}
    for resource in (TRAINJOBS, PODS, SERVICES, endpointslices, SECRETS, EVENTS):
        listing = kube.request("GET", resource.path(NAMESPACE), query={"limit": 1})
        remaining = int((listing.get("metadata") or {}).get("remainingItemCount") or 0)
        counts[resource.plural] = len(listing.get("items") or []) + remaining
    return counts


def _etcd_size(cluster: LocalCluster) -> dict[str, int]:
    """etcd's database size, allocated and in use, in bytes (its own metrics)."""
    import urllib.request

    sizes: dict[str, int] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.etcd_port}/metrics") as response:
        for line in response.read().decode().splitlines():
            for name in ("db_total_size_in_bytes", "db_total_size_in_use_in_bytes"):
                if line.startswith(f"etcd_mvcc_{name} "):
                    sizes[name] = int(float(line.split()[1]))
    return sizes


def _operator_counts(port: int) -> dict[str, float]:
    """The operator's own API requests by verb and resource, as its client counted them
    (``create pods``), and its reconciles by controller (``reconcile trainjob``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "hypersweep_operator_api_requests_total":
                counts[f"{labels['verb']} {labels['resource']}"] = sample.value
            elif sample.name == "hypersweep_operator_reconcile_duration_seconds_count":
                counts[f"reconcile {labels['controller']}"] = sample.value
            elif sample.name == "hypersweep_operator_watch_events_total":
                counts[f"watch events {labels['resource']}"] = sample.value
            elif sample.name == "hypersweep_operator_watch_bytes_total":
                counts[f"watch KiB {labels['resource']}"] = sample.value / 1024
    return counts


def _cpu_between(
    samples: list[tuple[float, dict[str, float]]], start: float, end: float
) -> dict[str, float]:
    """CPU seconds each sampled process used between two moments (nearest samples)."""
    if not samples:
        return {}
    first = min(samples, key=lambda s: abs(s[0] - start))
    last = min(samples, key=lambda s: abs(s[0] - end))
    return {name: last[1][name] - first[1].get(name, 0.0) for name in last[1]}


def _cores_from(samples: list[tuple[float, dict[str, float]]], start: float) -> dict[str, float]:
    """Share of one core each sampled process used from ``start`` to the last sample."""
    if not samples or samples[-1][0] <= start:
        return {}
    seconds = samples[-1][0] - start
    used = _cpu_between(samples, start, samples[-1][0])
    return {name: round(cpu / seconds, 2) for name, cpu in used.items()}


def _container() -> dict[str, Any]:
    return {
        "name": "pytorch",
        "image": IMAGE,
        "command": ["train"],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }


def _timeline(times: list[float], seconds: int) -> list[int]:
    counts = [0] * seconds
    for moment in times:
        index = int(moment - times[0])
        if index < seconds:
            counts[index] += 1
    return counts


def _template(ttl: int, replicas: int) -> dict[str, Any]:
    def role(count: int, image: str) -> dict[str, Any]:
        container = {**_container(), "image": image}
        return {"replicas": count, "template": {"spec": {"containers": [container]}}}

    return {
        "framework": "pytorch",
        "replicaSpecs": {"Master": role(1, IMAGE), "Worker": role(replicas - 1, WORKER_IMAGE)},
        # Kubeflow's convention: a finished trial's TrainJob (and with it its pods and
        # Service) is deleted this long after it finished; its result is in storage.
        "runPolicy": {"ttlSecondsAfterFinished": ttl},
    }


class SimulatedTrials:
    """What each trial's rank-0 process would send, sent on its behalf (kwok runs no process).

    When kwok marks a trial's master pod Running, the trial "trains" for ``run_ms``: it reports
    ``steps`` steps of a loss through the real report path (``HttpChannel``, the trial's own
    token read from its Secret, the URL, sweep, trial number and attempt from the pod's
    environment), then its final value, or ends as pruned when the operator says stop. Then
    every rank "exits", as a real trial's ranks do at the end of training or when told to stop
    (each gets the same decision): its pods get ``SIM_DONE_LABEL`` and kwok ends them as
    Succeeded.
    """

    def __init__(
        self, api: Any, namespace: str, run_ms: int, replicas: int, steps: int = 3
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.api = api
        self.namespace = namespace
        self.run_ms = run_ms
        self.replicas = replicas
        self.steps = steps
        self._seen: set[str] = set()
        # Trials sleep most of their run: a thread each for the trials running at once.
        self._pool = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="trial")
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()
        # How long a trial's end takes, in seconds, each step apart: the operator's answer to
        # its last message, labelling its ranks, and kwok ending each labelled pod.
        self.delays: dict[str, list[float]] = {"answer": [], "labels": [], "kwok_end": []}
        self._labelled: dict[str, float] = {}  # pod -> when it was labelled

    def pod_event(self, pod: dict[str, Any]) -> None:
        """A pod changed: start its trial once a master pod runs."""
        meta = pod["metadata"]
        containers = (pod.get("spec") or {}).get("containers") or []
        if (pod.get("status") or {}).get("phase") == "Succeeded":
            with self._lock:
                labelled = self._labelled.pop(meta["name"], None)
                if labelled is not None:
                    self.delays["kwok_end"].append(time.perf_counter() - labelled)
        if (
            meta["uid"] in self._seen
            or (pod.get("status") or {}).get("phase") != "Running"
            or not containers
            or containers[0].get("image") != IMAGE
            or meta.get("deletionTimestamp")
        ):
            return
        self._seen.add(meta["uid"])
        self._pool.submit(self._run, meta["name"], containers[0].get("env") or [])

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _run(self, pod: str, env_list: list[dict[str, Any]]) -> None:
        try:
            self._count(self._trial(pod, env_list))
        except BaseException as error:  # noqa: BLE001 - counted: the JSON says what happened
            logging.getLogger("k8s_scale").warning("simulated trial %s: %r", pod, error)
            self._count(type(error).__name__)

    def _trial(self, pod: str, env_list: list[dict[str, Any]]) -> str:
        import base64
        import random

        from kubernetes import client

        from hypersweep.kube import _names as names
        from hypersweep.operators._channel import HttpChannel

        env = {item["name"]: item.get("value") for item in env_list}
        secret_ref = next(
            item["valueFrom"]["secretKeyRef"]
            for item in env_list
            if item["name"] == names.TOKEN_ENV
        )
        core = client.CoreV1Api(self.api)
        secret = json.loads(
            core.read_namespaced_secret(
                secret_ref["name"], self.namespace, _preload_content=False
            ).data
        )
        token = base64.b64decode(secret["data"][secret_ref["key"]]).decode()
        channel = HttpChannel(
            env[names.REPORT_URL_ENV],
            token,
            namespace=env[names.NAMESPACE_ENV],
            sweep=env[names.SWEEP_ENV],
            trial_number=int(env[names.TRIAL_ENV]),
            attempt=int(env[names.ATTEMPT_ENV]),
            timeout=600.0,
        )
        config = json.loads(base64.b64decode(secret["data"][names.CONFIG_KEY]).decode() or "{}")
        lr = float(config.get("lr", random.random()))
        loss = 1.0
        outcome = "result"
        for step in range(self.steps):
            time.sleep(self.run_ms / 1000 / self.steps)
            loss = lr + 1.0 / (step + 2)
            if channel.request(("report", step, {"loss": loss})) == "stop":
                outcome = "pruned"
                break
        ending = time.perf_counter()
        channel.send(("stopped", "stop") if outcome == "pruned" else ("result", loss))
        answered = time.perf_counter()
        # Every rank's process exits: kwok ends their pods (unless deleted already).
        job = pod.removesuffix("-master-0")
        ranks = [pod] + [f"{job}-worker-{index}" for index in range(self.replicas - 1)]
        for rank in ranks:
            try:
                core.patch_namespaced_pod(
                    rank,
                    self.namespace,
                    {"metadata": {"labels": {SIM_DONE_LABEL: "true"}}},
                    _preload_content=False,
                )
                with self._lock:
                    self._labelled[rank] = time.perf_counter()
            except client.ApiException as error:
                if error.status != 404:
                    raise
        with self._lock:
            self.delays["answer"].append(answered - ending)
            self.delays["labels"].append(time.perf_counter() - answered)
        return outcome

    def delay_summary(self) -> dict[str, dict[str, float]]:
        """Median, 90th percentile and most of each delay, in seconds."""
        summary = {}
        with self._lock:
            for what, values in self.delays.items():
                ordered = sorted(values)
                if ordered:
                    summary[what] = {
                        "n": len(ordered),
                        "p50": round(ordered[len(ordered) // 2], 3),
                        "p90": round(ordered[int(len(ordered) * 0.9)], 3),
                        "max": round(ordered[-1], 3),
                    }
        return summary

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def profile_shares(path: str, top: int = 20) -> dict[str, float]:
    """From py-spy's raw profile (one ``frame;frame;... count`` line per stack): the share of
    samples whose stack holds each function, for the ``top`` functions of this project or the
    HTTP and JSON code under them (the threads' own bootstrap frames aside)."""
    holding: Counter[str] = Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        functions = {frame.rsplit(":", 1)[0] + ")" for frame in stack.split(";")}
        for function in functions:
            if "hypersweep/" in function or any(
                part in function for part in ("urllib3/", "http/", "ssl.py", "json")
            ):
                holding[function] += int(count)
    return {function: round(n / total, 3) for function, n in holding.most_common(top)}


def _events_by_reason(api: Any) -> dict[str, Any]:
    """The namespace's Events by the kind of object they are about and their reason, and the
    last message of each Warning reason."""
    from kubernetes import client

    counts: Counter[str] = Counter()
    warnings: dict[str, str] = {}
    for event in client.CoreV1Api(api).list_namespaced_event(NAMESPACE).items:
        kind = f"{event.involved_object.kind} {event.reason}"
        counts[kind] += event.count or 1
        if event.type == "Warning":
            warnings[kind] = event.message
    return {"counts": dict(counts.most_common()), "warning_messages": warnings}


def run(
    trials: int,
    nodes: int,
    run_ms: int,
    raw_pods: int,
    parallelism: int,
    workers: int,
    ttl: int,
    replicas: int = 4,
    profile: str | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="k8s-scale-"))
    try:
        with LocalCluster(
            bin_dir=_bin_dir(workdir),
            crds=crd_manifests(),
            # The simulated cluster must not be what limits the operator: no client rate limit
            # on the scheduler (as kwokctl's --disable-qps-limits), whose default of 50
            # requests/s (a binding and an Event per pod) holds pods Pending at this scale.
            extra_scheduler_args=SCHEDULER_ARGS,
            extra_controller_manager_args=CONTROLLER_MANAGER_ARGS,
            node_lease_seconds=NODE_LEASE_SECONDS,
        ) as cluster:
            result = _run(
                cluster,
                workdir,
                trials,
                nodes,
                raw_pods,
                parallelism,
                workers,
                run_ms,
                ttl,
                replicas,
                profile,
                time_limit,
            )
            result["simulated_run_ms"] = run_ms
            result["machine_reference_cpu_s"] = machine_speed()
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
    run_ms: int,
    ttl: int,
    replicas: int,
    profile: str | None,
    time_limit: float | None,
) -> dict[str, Any]:
    from kubernetes import client

    api = cluster.api_client()
    sizes = {"a100": int(nodes * 0.4), "h100": int(nodes * 0.4)}
    sizes["tpu"] = nodes - sizes["a100"] - sizes["h100"]
    for name, count in sizes.items():
        resource = "google.com/tpu" if name == "tpu" else "nvidia.com/gpu"
        # kwok marks nodes Ready one after another: on a loaded machine that takes a while.
        create_node_pool(api, name, count, capacity={resource: 8}, timeout=max(300, 3 * count))
    raw_rates = _raw_rates(api, raw_pods)

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
            "hypersweep._cli",
            "operator",
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

    # py-spy samples the operator from outside (its own session; without stopping it, and only
    # the thread holding the GIL: Python's CPU time), and writes its profile once the operator
    # has exited.
    profiler = (
        subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(operator.pid),
                "--rate",
                "50",
                "--nonblocking",
                "--gil",
                "--format",
                "raw",
                "--output",
                profile,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if profile
        else None
    )

    def end_operator() -> None:
        if operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)

    atexit.register(end_operator)  # its own session: it would outlive an interrupted run
    created: list[float] = []
    stop = threading.Event()
    simulated = SimulatedTrials(api, NAMESPACE, run_ms, replicas)

    def watch_pods() -> None:
        # Plain JSON lines, not the client's models: the benchmark must not compete for CPU.
        core = client.CoreV1Api(api)
        seen: set[str] = set()
        version = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
        while not stop.is_set():
            try:
                response = core.list_namespaced_pod(
                    NAMESPACE,
                    watch=True,
                    resource_version=version,
                    timeout_seconds=60,
                    _preload_content=False,
                )
                for line in response:
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # too old (410): the pods listed now are seen
                        listing = core.list_namespaced_pod(NAMESPACE)
                        seen.update(pod.metadata.uid for pod in listing.items)
                        version = listing.metadata.resource_version
                        break
                    meta = event["object"]["metadata"]
                    version = meta["resourceVersion"]
                    if event["type"] == "ADDED" and meta["uid"] not in seen:
                        seen.add(meta["uid"])
                        created.append(time.perf_counter())
                    if event["type"] in ("ADDED", "MODIFIED"):
                        simulated.pod_event(event["object"])
                    if stop.is_set():
                        break
            except Exception as error:  # noqa: BLE001 - resumed from the last version seen
                logging.getLogger("k8s_scale").debug("pod watch broke off: %s", error)
                time.sleep(0.1)

    threading.Thread(target=watch_pods, daemon=True).start()
    processes = {**cluster.component_pids, "operator": operator.pid, "benchmark": os.getpid()}
    cpu_samples: list[tuple[float, dict[str, float]]] = []

    def sample_cpu() -> None:
        while not stop.is_set():
            try:
                sample = {name: _proc(pid)[0] for name, pid in processes.items()}
            except OSError:  # a process ended: the run is over
                return
            cpu_samples.append((time.perf_counter(), sample))
            time.sleep(0.25)

    threading.Thread(target=sample_cpu, daemon=True).start()
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
            "earlyStopping": {"name": "median"},
            "trialTemplate": _template(ttl, replicas),
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
    requests_before = _request_counts(cluster)
    operator_before = _operator_counts(port)
    load_at_apply = os.getloadavg()
    # The operator's start (imports, first lists) is not a trial's cost, like its requests.
    cpu_at_apply = _proc(operator.pid)[0]
    applied = time.perf_counter()
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(sweep))
    status_sizes: list[int] = []
    live: list[dict[str, int]] = []
    finished = None
    polls = 0
    reader = Kube(api)
    progress: list[dict[str, Any]] = []
    completed = False  # the Sweep ended (not stopped at --time-limit)
    while True:
        time.sleep(2)
        polls += 1
        got = reader.get(SWEEPS, NAMESPACE, "scale") or {}
        status_sizes.append(len(json.dumps(got)))
        counts = (got.get("status") or {}).get("trials") or {}
        if polls % 5 == 0:  # every 10 s: how far it got, and what the API server holds now
            objects = _stored_objects(api)
            live.append(objects)
            cpu_now, _ = _proc(operator.pid)
            sample = {
                "s": round(time.perf_counter() - applied),
                "finished": sum(counts.get(k, 0) for k in ("succeeded", "pruned", "failed")),
                "running": counts.get("running", 0),
                "operator_cpu_s": round(cpu_now, 1),
                "operator_rss_mib": round(_rss(operator.pid) / 2**20, 1),
                "objects": objects,
            }
            progress.append(sample)
            print(json.dumps(sample), flush=True)
        conditions = {
            c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []
        }
        if conditions.get("Succeeded") == "True" or conditions.get("Failed") == "True":
            finished, completed = time.perf_counter(), True
            break
        if operator.poll() is not None:
            raise RuntimeError("the operator exited")
        if time_limit and time.perf_counter() - applied > time_limit:
            finished = time.perf_counter()  # measured as far as it got (not completed)
            break
    finished_trials = sum(
        ((got.get("status") or {}).get("trials") or {}).get(k, 0)
        for k in ("succeeded", "pruned", "failed")
    )
    # Per trial: per finished trial (a run stopped at its time limit divides what its running
    # trials cost so far by the finished ones only: an overestimate).
    per = max(finished_trials, 1) if not completed else trials
    stop.set()
    simulated.shutdown()
    # The trials' clean-up is part of their cost: the operator's requests and CPU are read
    # once the last trial's objects are gone (its TTL passed), or 60 s after the TTL.
    deadline = time.perf_counter() + (ttl + 60 if completed else 0)
    while True:
        stored_end = _stored_objects(api)
        left = sum(stored_end[kind] for kind in ("trainjobs", "pods", "services", "secrets"))
        if not left or time.perf_counter() > deadline:
            break
        time.sleep(1)
    cleaned_s = time.perf_counter() - finished
    cpu, peak = _proc(operator.pid)
    requests = _request_counts(cluster)
    operator_requests = _operator_counts(port)
    etcd_end = _etcd_size(cluster)
    events = _events_by_reason(api)
    os.killpg(operator.pid, signal.SIGTERM)
    try:
        operator.wait(60)
    except subprocess.TimeoutExpired:  # measured already: its exit is not what is measured
        os.killpg(operator.pid, signal.SIGKILL)
        operator.wait(60)
    if profiler is not None:
        profiler.wait(60)
    log.close()
    times = sorted(created)
    # The first wave: as many pods as the pools hold at once (4 replicas of 2 per 8-GPU node),
    # created as fast as the operator can, before capacity rather than the operator limits it.
    wave = min(len(times), nodes * 4)
    best = (wave - 1) / (times[wave - 1] - times[0]) if wave > 1 else 0.0
    trial_counts = (got.get("status") or {}).get("trials") or {}
    wave_cpu = _cpu_between(cpu_samples, times[0], times[wave - 1]) if wave > 1 else {}
    wave_s = times[wave - 1] - times[0] if wave > 1 else 0.0
    delta = {k: v - requests_before.get(k, 0) for k, v in requests.items()}
    per_trial = {k: round(v / per, 2) for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}
    operator_delta = {
        k: v - operator_before.get(k, 0.0)
        for k, v in sorted(operator_requests.items(), key=lambda kv: -kv[1])
        if v - operator_before.get(k, 0.0)
    }
    # Watches are long-lived streams, not per-trial work; they are listed but not counted.
    reconciles = {
        k: operator_delta.pop(k) for k in list(operator_delta) if k.startswith("reconcile ")
    }
    watched = {
        k: operator_delta.pop(k)
        for k in list(operator_delta)
        if k.startswith(("watch events ", "watch KiB "))
    }
    per_trial_total = sum(v for k, v in operator_delta.items() if not k.startswith("watch "))
    return {
        "trials": trials,
        # False: stopped at --time-limit; per-trial figures are then per finished trial.
        "completed": completed,
        "finished_trials": finished_trials,
        # The machine's load average (1, 5, 15 min) at apply and at the end: on 2 shared
        # cores, how busy it was with other work tells how to read the times.
        "load_average_at_apply_and_end": [
            [round(x, 2) for x in load_at_apply],
            [round(x, 2) for x in os.getloadavg()],
        ],
        "ttl_seconds_after_finished": ttl,
        "replicas_per_trial": replicas,
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
        # The best round of each kind: the ratios are the least flattering.
        "raw_pods_per_s": {kind: max(rates) for kind, rates in raw_rates.items()},
        "raw_rounds": raw_rates,
        "raw_pods": raw_pods,
        "operator_vs_raw": {
            kind: round(best / max(rates), 3) for kind, rates in raw_rates.items() if max(rates)
        },
        "cleaned_up_s_after_sweep": round(cleaned_s, 1),
        "operator_cpu_s": round(cpu, 1),
        "operator_cpu_s_before_apply": round(cpu_at_apply, 2),
        "operator_peak_rss_mib": round(peak / 2**20, 1),
        "sweep_object_bytes_first_last_max": [
            status_sizes[0],
            status_sizes[-1],
            max(status_sizes),
        ],
        "final_trial_counts": trial_counts,
        # Share of one core each process used during the first wave (2 cores: at most 2.0).
        "first_wave_cores": {k: round(v / wave_s, 2) for k, v in wave_cpu.items()}
        if wave_s
        else {},
        # The same from apply to the end of the run: where the machine's CPU went.
        "cores_from_apply_to_end": _cores_from(cpu_samples, applied),
        # The operator's own requests, counted by its client (its /metrics).
        "operator_requests_per_trial": round(per_trial_total / per, 2),
        "operator_requests_by_kind": {k: int(v) for k, v in operator_delta.items()},
        "operator_reconciles_per_trial": {k: round(v / per, 2) for k, v in reconciles.items()},
        # What the operator's watches delivered and it decoded, by resource.
        "operator_watched_per_trial": {k: round(v / per, 2) for k, v in watched.items()},
        "operator_cpu_ms_per_trial": round((cpu - cpu_at_apply) * 1000 / per, 1),
        # The Events the namespace holds at the end (the API server keeps them an hour), by
        # who wrote them and why.
        "events_at_end_by_reason": events,
        "simulated_trial_end_delays_s": simulated.delay_summary(),
        "simulated_cluster": {
            "scheduler_args": list(SCHEDULER_ARGS),
            "kwok_pod_stage_parallelism": KWOK_POD_STAGE_PARALLELISM,
            "kwok_node_lease_parallelism": KWOK_NODE_LEASE_PARALLELISM,
            "node_lease_seconds": NODE_LEASE_SECONDS,
            "controller_manager_args": list(CONTROLLER_MANAGER_ARGS),
        },
        "simulated_trial_outcomes": dict(simulated.outcomes),
        # Every client (operator, scheduler, kwok, controller-manager, this benchmark).
        "api_requests_per_trial_all_clients": dict(list(per_trial.items())[:20]),
        # Objects the API server holds (apiserver_storage_objects), every 10 s and at the end.
        "stored_objects_max": {
            kind: max(sample.get(kind, 0) for sample in live) for kind in live[-1]
        }
        if live
        else {},
        "stored_objects_end": stored_end,
        "etcd_end": etcd_end,
        # Every 10 s: trials finished and running, the operator's CPU and memory, live objects.
        "progress": progress,
        # The operator's resident memory when the first 1,000 trials had finished.
        "operator_rss_mib_at_1000_finished": next(
            (p["operator_rss_mib"] for p in progress if p["finished"] >= 1000), None
        ),
        # Pods created in each second after the first one (the first wave and beyond).
        "pods_per_second_timeline": _timeline(times, 60),
    }


def machine_speed() -> float:
    """CPU seconds of a fixed pure-Python workload (10 million additions) in this process:
    machines of the same nominal size differ per core, so CPU per trial from two machines
    compares only with this beside it."""
    started = time.process_time()
    total = 0
    for number in range(10_000_000):
        total += number
    return round(time.process_time() - started, 3)


def _commit() -> str | None:
    """The commit the operator ran from, ``+changes`` if the tree differed from it."""
    root = RESULTS.parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "hypersweep"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (head + ("+changes" if changed else "")) or None


#: The runs the README's scale table quotes, in its column order.
README_RUNS = ("k8s_scale.json", "k8s_scale_1000.json", "k8s_scale_10000.json")


def _share(payload: dict[str, Any], kind: str) -> float:
    """Requests of ``kind`` per trial, on the run's own per-trial basis."""
    counted = {k: v for k, v in payload["operator_requests_by_kind"].items() if "watch" not in k}
    return payload["operator_requests_per_trial"] * counted.get(kind, 0) / sum(counted.values())


def _readme_rows() -> list[tuple[str, Any, str]]:
    def objects(counts: dict[str, int]) -> str:
        return ", ".join(f"{counts[k]:,}" for k in ("trainjobs", "pods", "services", "secrets"))

    def events(payload: dict[str, Any]) -> str:
        counts = payload["events_at_end_by_reason"]["counts"]
        ours = sum(v for k, v in counts.items() if k.split()[0] in ("Sweep", "TrainJob"))
        return f"{sum(counts.values()):,}, {ours} of them the operator's"

    def commit(payload: dict[str, Any]) -> str:
        return f"`{payload['commit']}`" if payload.get("commit") else "not recorded"

    def ended(payload: dict[str, Any]) -> str:
        if payload.get("completed", True):
            return "yes"
        limit = payload["arguments"]["time_limit"]
        return f"no: stopped at {limit:.0f} s, {payload['finished_trials']:,} trials ended"

    def counts(payload: dict[str, Any]) -> str:
        got = payload["final_trial_counts"]
        return " / ".join(f"{got.get(k, 0):,}" for k in ("succeeded", "pruned", "failed"))

    def reconciles(payload: dict[str, Any]) -> str:
        got = payload.get("operator_reconciles_per_trial", {}).get("reconcile trainjob")
        return "not counted" if got is None else f"{got:.2f}"

    def apiserver(payload: dict[str, Any]) -> str:
        got = payload.get("cores_from_apply_to_end", {}).get("kube-apiserver")
        return "not measured" if got is None else f"{got:.2f}"

    def answered(payload: dict[str, Any]) -> str:
        got = payload["simulated_trial_end_delays_s"]["answer"]
        return f"{got['p50']:.3f} / {got['p90']:.3f} s"

    def load(payload: dict[str, Any]) -> str:
        at_apply, at_end = payload["load_average_at_apply_and_end"]
        return f"{at_apply[0]:.2f} / {at_end[0]:.2f}"

    def watched(payload: dict[str, Any]) -> str:
        got = payload.get("operator_watched_per_trial")
        if got is None:
            return "not counted"
        events = sum(v for k, v in got.items() if k.startswith("watch events "))
        kib = sum(v for k, v in got.items() if k.startswith("watch KiB "))
        return f"{events:.1f} / {kib:.0f} KiB"

    def status_writes(payload: dict[str, Any]) -> str:
        kinds = ("update trainjobs/status", "patch trainjobs/status")
        return f"{sum(_share(payload, kind) for kind in kinds):.2f}"

    return [
        (
            "saved in `benchmarks/results/`",
            lambda p: f"`{Path(p['arguments']['output']).name}`",
            "",
        ),
        ("the operator's commit", commit, ""),
        ("run to the end", ended, ""),
        ("trials succeeded / pruned / failed", counts, ""),
        ("sweep time", lambda p: f"{p['sweep_s']:,} s", ""),
        (
            "first trial pod after `kubectl apply`",
            lambda p: f"{p['first_pod_s']:.3f} s",
            "within 1 s",
        ),
        (
            "operator API requests per trial (watches aside)",
            lambda p: f"{p['operator_requests_per_trial']:.2f}",
            "at most 12",
        ),
        ("of them, TrainJob status writes", status_writes, ""),
        ("TrainJob reconciles per trial", reconciles, ""),
        ("watch events / JSON decoded per trial", watched, ""),
        (
            "operator CPU per trial",
            lambda p: f"{p['operator_cpu_ms_per_trial']:.1f} ms",
            "at most 15 ms",
        ),
        (
            "operator peak memory",
            lambda p: f"{p['operator_peak_rss_mib']:.1f} MiB",
            "at most 300 MiB at 1,000 trials, 1.5 times that at 10,000",
        ),
        (
            "most TrainJobs / pods live at once (every 10 s)",
            lambda p: (
                f"{p['stored_objects_max']['trainjobs']:,} / {p['stored_objects_max']['pods']:,}"
            ),
            "",
        ),
        (
            "TrainJobs, pods, Services, Secrets at the end",
            lambda p: objects(p["stored_objects_end"]),
            "",
        ),
        ("Events left (the API server keeps them an hour)", events, ""),
        (
            "etcd database at the end",
            lambda p: f"{p['etcd_end']['db_total_size_in_bytes'] / 2**20:.1f} MiB",
            "",
        ),
        (
            "Sweep object, first poll / last",
            lambda p: "{:,} / {:,} bytes".format(*p["sweep_object_bytes_first_last_max"][:2]),
            "the same size",
        ),
        ("a trial's last message answered (median / 90th percentile)", answered, ""),
        ("the API server's share of a core, apply to end", apiserver, ""),
        ("load average at apply / at the end", load, ""),
        (
            "the machine: a plain client's trial-like pods per second",
            lambda p: f"{p['raw_pods_per_s']['trial_like']:.1f}",
            "",
        ),
    ]


def readme_table(runs: list[dict[str, Any]]) -> str:
    """The README's scale table, one column per run, from the saved results alone."""
    heads = [f"{p['trials']:,} trials, {sum(p['nodes'].values()):,} nodes" for p in runs]
    lines = [
        f"| {runs[0]['replicas_per_trial']} replicas per trial, on 2 cores | "
        + " | ".join(heads)
        + " | target |",
        "|---" * (len(runs) + 2) + "|",
    ]
    for label, cell, target in _readme_rows():
        lines.append(f"| {label} | " + " | ".join(cell(p) for p in runs) + f" | {target} |")
    return "\n".join(lines)


def load_readme_runs() -> list[dict[str, Any]]:
    return [json.loads((RESULTS / name).read_text()) for name in README_RUNS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument(
        "--replicas", type=int, default=4, help="replicas per trial: a master and workers"
    )
    parser.add_argument("--run-ms", type=int, default=2000)
    parser.add_argument("--raw-pods", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=0, help="default: --trials")
    parser.add_argument(
        "--workers", type=int, default=OperatorOptions.workers, help="the operator's --workers"
    )
    parser.add_argument(
        "--ttl", type=int, default=5, help="the trials' runPolicy.ttlSecondsAfterFinished"
    )
    parser.add_argument("--output", default=str(RESULTS / "k8s_scale.json"))
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds after apply to stop and save what was measured (completed: false)",
    )
    parser.add_argument(
        "--profile", help="a file for the operator's CPU profile (py-spy's raw format)"
    )
    parser.add_argument(
        "--readme-table",
        action="store_true",
        help="print the README's table from the saved results, and run nothing",
    )
    args = parser.parse_args()
    if args.readme_table:
        print(readme_table(load_readme_runs()))
        return
    # SIGTERM ends the run like Ctrl-C: the control plane and the operator are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(
            args.trials,
            args.nodes,
            args.run_ms,
            args.raw_pods,
            args.parallelism or args.trials,
            args.workers,
            args.ttl,
            args.replicas,
            args.profile,
            args.time_limit,
        )
    except SystemExit as stop:
        # Stopped (SIGTERM: a time limit) after the control plane and the operator were: end
        # now, not once every simulated trial's thread has given up on the gone operator (its
        # report channel retries for minutes; the benchmark lock stays held meanwhile).
        sys.stdout.flush()
        os._exit(stop.code if isinstance(stop.code, int) else 1)
    # Saved as the command line says it (the default, inside the repository, relative to it).
    output = Path(args.output).resolve()
    shown = output.relative_to(RESULTS.parents[1]) if output.is_relative_to(RESULTS) else output
    result["arguments"] = {**vars(args), "output": str(shown)}
    result["commit"] = _commit()
    if args.profile:
        result["profile_shares"] = profile_shares(args.profile)
    print(json.dumps(result, indent=2))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    if not result["completed"]:
        # Stopped at its time limit: the threads of trials still running would retry their
        # reports to the stopped operator for minutes.
        sys.stdout.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
