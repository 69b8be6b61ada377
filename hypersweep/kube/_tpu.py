"""Multi-host TPU slices on GKE: a trial's gang is one whole slice.

A pool with ``tpu`` (``Sweep.spec.pools[].tpu``, ``KubernetesLauncher(pools=...)``) names a TPU
slice shape as GKE labels its nodes: the accelerator type (``cloud.google.com/gke-tpu-accelerator``,
e.g. ``tpu-v5-lite-podslice``) and the chip topology (``cloud.google.com/gke-tpu-topology``, e.g.
``2x4``). GKE builds a multi-host slice as one node pool (label ``cloud.google.com/gke-nodepool``)
of ``hosts = chips in topology / chips per host`` nodes, each with ``google.com/tpu`` = chips per
host, and the slice works only when every host runs one process of the same program. So:

* **One replica per host.** The chips per host come from the nodes' ``google.com/tpu`` capacity
  (GKE's table when no node of the shape exists yet, e.g. a pool scaled to zero), every replica
  requests all of its host's chips, and a trial whose replica count is not the slice's host
  count is refused before anything starts, naming the field.
* **A whole slice, all or nothing.** Gang admission (:mod:`hypersweep.kube._pools`) places the
  gang only onto the usable nodes of *one* slice node pool at a time, and the pods carry that
  node pool as a node selector, so no trial spans two slices and no slice holds half a trial.
  A restarted gang (a lost node) is admitted again onto any slice that is whole.
* **A host that stops is a slice that stops.** A host that is deleted, or whose node turns
  NotReady (its kubelet stopped reporting, see :func:`node_down`), loses the whole gang at
  once: the TrainJob controller restarts it (one counted restart) on another whole slice,
  and force-deletes the pods left on the silent host (no kubelet will finish their
  deletion, and the new start reuses their names).
* **What multi-host TPU programs read.** Each pod gets ``TPU_WORKER_ID`` (its JAX process id)
  and ``TPU_WORKER_HOSTNAMES`` (every host's stable DNS name, in process order), the variables
  GKE's TPU webhook injects into JobSet pods, and JobSet's names: the hostname
  ``<jobset>-<replicatedjob>-<jobindex>-<podindex>`` under the subdomain ``<jobset>`` (the
  TrainJob's headless Service), with the ``jobset.sigs.k8s.io/*`` labels and annotations and the
  Indexed Job's ``batch.kubernetes.io/job-completion-index``. The TrainJob plays the JobSet, its
  role the replicated job (one job, index 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.kube._client import JsonDict

TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
#: GKE's node pool label: the nodes of one multi-host slice share it, and only they do.
NODE_POOL_LABEL = "cloud.google.com/gke-nodepool"
#: On a trial's TrainJob: the slice (node pool) gang admission put its first start on.
SLICE_ANNOTATION = "hypersweep.io/tpu-slice"

#: JobSet's pod labels and annotations (sigs.k8s.io/jobset, api/jobset/v1alpha2), and the
#: Indexed Job's completion index: what GKE's TPU webhook reads to name a slice's hosts.
JOBSET_NAME_KEY = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_NAME_KEY = "jobset.sigs.k8s.io/replicatedjob-name"
REPLICATED_JOB_REPLICAS_KEY = "jobset.sigs.k8s.io/replicatedjob-replicas"
JOB_INDEX_KEY = "jobset.sigs.k8s.io/job-index"
RESTART_ATTEMPT_KEY = "jobset.sigs.k8s.io/restart-attempt"
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"

WORKER_ID_ENV = "TPU_WORKER_ID"
WORKER_HOSTNAMES_ENV = "TPU_WORKER_HOSTNAMES"

#: Chips per host of GKE's multi-host TPU machine types, by accelerator (GKE's "TPU
#: configurations" table), used only while no node of the shape exists to read it from.
GKE_CHIPS_PER_HOST = {
    "tpu-v4-podslice": 4,
    "tpu-v5p-slice": 4,
    "tpu-v5-lite-podslice": 4,
    "tpu-v6e-slice": 4,
}

_TOPOLOGY = re.compile(r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$")


@dataclass(frozen=True)
class TpuSlice:
    """A TPU slice shape: accelerator type, chip topology and (once known) chips per host."""

    accelerator: str
    topology: str
    chips_per_host: int | None = None

    @property
    def chips(self) -> int:
        """The chips of the slice: the product of the topology's dimensions."""
        return math.prod(int(d) for d in self.topology.split("x"))

    @property
    def hosts(self) -> int:
        """Hosts (nodes, replicas) of one slice; needs :attr:`chips_per_host`."""
        if not self.chips_per_host:
            raise ValueError("chips per host not known yet")
        return self.chips // self.chips_per_host

    def node_selector(self) -> dict[str, str]:
        return {ACCELERATOR_LABEL: self.accelerator, TOPOLOGY_LABEL: self.topology}

    def to_dict(self) -> JsonDict:
        data: JsonDict = {"accelerator": self.accelerator, "topology": self.topology}
        if self.chips_per_host:
            data["chipsPerHost"] = self.chips_per_host
        return data

    def describe(self) -> str:
        return f"{self.accelerator} {self.topology}"


def parse_tpu(raw: Any, where: str) -> TpuSlice:
    """``pools[i].tpu`` from its plain-data form; ConfigError names the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with accelerator and topology")
    accelerator = raw.get("accelerator")
    if not isinstance(accelerator, str) or not accelerator:
        raise ConfigError(
            f"{where}.accelerator: give the GKE TPU accelerator type (the node label "
            f"{ACCELERATOR_LABEL}), e.g. tpu-v5-lite-podslice"
        )
    topology = raw.get("topology")
    if not isinstance(topology, str) or not _TOPOLOGY.match(topology):
        raise ConfigError(
            f"{where}.topology: give the chip topology (the node label {TOPOLOGY_LABEL}), "
            f"e.g. 2x4 or 2x2x2, got {topology!r}"
        )
    shape = TpuSlice(accelerator, topology)
    per_host = raw.get("chipsPerHost")
    if per_host is not None:
        if isinstance(per_host, bool) or not isinstance(per_host, int) or per_host < 1:
            raise ConfigError(f"{where}.chipsPerHost: expected an integer >= 1")
        if shape.chips % per_host:
            raise ConfigError(
                f"{where}.chipsPerHost: {per_host} does not divide the {shape.chips} chips of "
                f"topology {topology}"
            )
        shape = TpuSlice(accelerator, topology, per_host)
    return shape


def chips_per_host(
    shape: TpuSlice,
    nodes: Iterable[Mapping[str, Any]],
    where: str,
    selector: Mapping[str, str] | None = None,
) -> int:
    """Chips per host of ``shape``: as given, else the ``google.com/tpu`` capacity of the nodes
    ``selector`` picks (default: the shape's GKE labels), else GKE's table. ConfigError (naming
    ``where``) when those nodes disagree or nothing says."""
    if shape.chips_per_host:
        return shape.chips_per_host
    selector = selector or shape.node_selector()
    found: set[int] = set()
    for node in nodes:
        labels = node["metadata"].get("labels") or {}
        if all(labels.get(k) == v for k, v in selector.items()):
            capacity = ((node.get("status") or {}).get("capacity") or {}).get(TPU_RESOURCE)
            if capacity is not None and str(capacity).isdigit() and int(capacity) > 0:
                found.add(int(capacity))
    if len(found) > 1:
        raise ConfigError(
            f"{where}.chipsPerHost: nodes of {shape.describe()} have {sorted(found)} "
            f"{TPU_RESOURCE} each; give chipsPerHost to pick one shape"
        )
    if found:
        count = found.pop()
    elif shape.accelerator in GKE_CHIPS_PER_HOST:
        count = min(GKE_CHIPS_PER_HOST[shape.accelerator], shape.chips)
    else:
        raise ConfigError(
            f"{where}.chipsPerHost: no node of {shape.describe()} exists to read "
            f"{TPU_RESOURCE} from, and {shape.accelerator!r} is not in GKE's table "
            f"({', '.join(sorted(GKE_CHIPS_PER_HOST))}): give chipsPerHost"
        )
    if shape.chips % count:
        raise ConfigError(
            f"{where}.chipsPerHost: {count} chips per host does not divide the {shape.chips} "
            f"chips of topology {shape.topology}"
        )
    return count


def check_replicas(shape: TpuSlice, replicas: int, where: str) -> None:
    """Refuse a gang that is not one process per host of one slice."""
    if replicas != shape.hosts:
        raise ConfigError(
            f"{where}: a trial on a {shape.describe()} TPU slice runs one replica per host: "
            f"{shape.chips} chips / {shape.chips_per_host} chips per host = {shape.hosts} "
            f"replicas, got {replicas}; set the replicas to {shape.hosts} or pick a topology "
            f"of {replicas} hosts"
        )


def slices(nodes: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Node names by slice: the ``cloud.google.com/gke-nodepool`` they share (a node without
    that label is a slice of its own)."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        name = str(node["metadata"]["name"])
        slice_name = (node["metadata"].get("labels") or {}).get(NODE_POOL_LABEL) or name
        out.setdefault(slice_name, []).append(name)
    return out


def node_down(node: Mapping[str, Any]) -> bool:
    """Whether a node cannot run its part of a slice: its ``Ready`` condition is not True.

    The node lifecycle controller sets ``Ready`` to Unknown once the kubelet has not
    heartbeated for the node monitor grace period (40-50 s), and a kubelet that is up but
    unhealthy reports False. The TrainJob controller reads this from the node informer it
    already runs, rather than waiting for the lifecycle controller's taint eviction of the
    pods: that takes the pods' ``tolerationSeconds`` (300 s by default) and then leaves them
    Terminating for as long as the kubelet is gone, holding the names the next start needs;
    a slice missing one host is useless at once, so there is nothing to wait for.
    """
    conditions = (node.get("status") or {}).get("conditions") or []
    return not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# --- pods ----------------------------------------------------------------------------------


def hostname(job_name: str, role: str, index: int) -> str:
    """JobSet's pod hostname ``<jobset>-<replicatedjob>-<jobindex>-<podindex>``: the TrainJob
    is the JobSet, the role its replicated job, of one job (index 0)."""
    return f"{job_name}-{role}-0-{index}"


def worker_hostnames(job_name: str, roles: Sequence[tuple[str, int]], namespace: str) -> list[str]:
    """Every host's DNS name in process order: ``<hostname>.<subdomain>.<namespace>.svc``."""
    return [
        f"{hostname(job_name, role, index)}.{job_name}.{namespace}.svc"
        for role, count in roles
        for index in range(count)
    ]


def current_slice(
    job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], restart: int, restart_label: str
) -> str | None:
    """The slice the gang's current start runs on: where its pods already are (a start's pods
    may be created over several reconciles), else the TrainJob's annotation."""
    for pod in pods:
        if (pod["metadata"].get("labels") or {}).get(restart_label) == str(restart):
            chosen = ((pod.get("spec") or {}).get("nodeSelector") or {}).get(NODE_POOL_LABEL)
            if chosen:
                return str(chosen)
    return (job["metadata"].get("annotations") or {}).get(SLICE_ANNOTATION)


def with_slice(job: JsonDict, slice_name: str | None) -> JsonDict:
    """A copy of the TrainJob (metadata copied, the rest shared) on ``slice_name``."""
    annotations = dict(job["metadata"].get("annotations") or {})
    if slice_name is None or annotations.get(SLICE_ANNOTATION) == slice_name:
        return job
    annotations[SLICE_ANNOTATION] = slice_name
    return {**job, "metadata": {**job["metadata"], "annotations": annotations}}


def tpu_pod(
    job: Mapping[str, Any],
    pod: JsonDict,
    roles: Sequence[tuple[str, int]],
    role: str,
    index: int,
    rank: int,
    restart: int,
    coordinator_port: int | None,
) -> None:
    """Make one replica's pod a host of a TPU slice, as GKE's multi-host TPU workloads are.

    Sets JobSet's hostname, labels and annotations, ``TPU_WORKER_ID`` and
    ``TPU_WORKER_HOSTNAMES`` (JAX's GKE TPU cluster detection reads them), points JAX's
    coordinator at process 0's JobSet name (``coordinator_port``: its port when replicas are
    reached by their DNS names, else None), and pins the pod to the gang's slice. A no-op for
    a TrainJob that is not on a TPU slice (no ``hypersweep.io/tpu-slice`` annotation).
    """
    meta = job["metadata"]
    slice_name = (meta.get("annotations") or {}).get(SLICE_ANNOTATION)
    if not slice_name:
        return
    name, namespace = meta["name"], meta["namespace"]
    spec = pod["spec"]
    spec["hostname"] = hostname(name, role, index)
    spec["subdomain"] = name
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), NODE_POOL_LABEL: slice_name}
    names = {
        JOBSET_NAME_KEY: name,
        REPLICATED_JOB_NAME_KEY: role,
        REPLICATED_JOB_REPLICAS_KEY: "1",
        JOB_INDEX_KEY: "0",
        RESTART_ATTEMPT_KEY: str(restart),
        COMPLETION_INDEX_KEY: str(index),
    }
    pod["metadata"]["labels"] = {**pod["metadata"]["labels"], **names}
    pod["metadata"]["annotations"] = {**(pod["metadata"].get("annotations") or {}), **names}
    hosts = worker_hostnames(name, roles, namespace)
    ours = {WORKER_ID_ENV: str(rank), WORKER_HOSTNAMES_ENV: ",".join(hosts)}
    # Replicas reached by DNS: JAX's coordinator is process 0 under its JobSet name (None:
    # replicas share one address, which the rendezvous variables already give).
    coordinator = None if coordinator_port is None else (hosts[0], coordinator_port)
    for container in spec["containers"]:
        env = [dict(e) for e in container.get("env") or []]
        if coordinator is not None:
            host, port = coordinator
            for entry in env:
                if entry.get("name") == "JAX_COORDINATOR_ADDRESS":
                    entry["value"] = f"{host}:{port}"
                elif entry.get("name") == "COORDINATOR_ADDRESS":
                    entry["value"] = host
        container["env"] = [{"name": k, "value": v} for k, v in ours.items()] + env
