"""The TrainJob controller: a gang of replica pods with the rendezvous environment set.

Level-triggered: each reconcile reads the TrainJob, the pods and services it owns, and computes
what should change (:func:`decide`, a pure function of what it observed); then it writes the
status, deletes, creates and records events. Running it twice changes nothing the second time;
missing an event changes nothing either, because the next reconcile sees the same state.

* **Pods and a headless Service.** One pod per replica, ``<job>-<role>-<index>`` as Kubeflow
  names them, and one headless Service named after the job, all owned by the TrainJob
  (deleting the TrainJob deletes them). Each pod's ``hostname`` is its name and its
  ``subdomain`` the Service, so every replica resolves as ``<pod>.<job>.<namespace>.svc`` (as
  JobSet does): one Service per job rather than one per replica, which is a fraction of the
  API writes (the Service, and the Endpoints and EndpointSlices that the control plane keeps
  for each Service). Each pod gets the rendezvous environment of the job description
  (``orchestrator._rendezvous``): ``MASTER_ADDR`` (the master's DNS name), ``MASTER_PORT``,
  ``WORLD_SIZE``, ``RANK`` and ``PET_*`` for PyTorch; ``TF_CONFIG`` with every replica's DNS name
  and port for TensorFlow. The Service publishes not-ready addresses, so a name resolves as soon
  as its pod has an IP: workers do not crash looking up a master that is still starting.
* **Creating fast, as Kubernetes' controllers do.** A reconcile creates the missing pods in
  slow-start batches (4, 8, 16... at once, ``kube._batch``), like the Job controller, and records
  one ``SuccessfulCreatePod`` event for them; events are written in the background
  (``_recorder``). The TrainJob is read from the informer's cache, and a reconcile waits until
  the caches show the controller's own writes (``_expectations``): a status it wrote, pods it
  created or deleted. So no reconcile acts on a status older than its own last write (the
  restart count above all), creates a pod twice, or counts half of a gang it just created.
  Pod changes reach a job's reconcile after a short batch period, as in the Job controller,
  so a gang whose pods change together costs one reconcile and one status write; a start
  writes its status alongside the pods' creation, counting them as active.
* **Gang restarts.** Pods run with ``restartPolicy: Never``; the controller restarts the whole
  gang instead, because one replica restarted alone cannot rejoin a collective its peers are
  blocked in. A failed replica (as its ``restartPolicy`` says: any failure, or for ``ExitCode``
  exit codes >= 128) increments ``status.restartCount``, every pod of the previous start is
  deleted, and new pods start, restoring from the trial's latest checkpoint on the shared
  volume. Pods carry the start they belong to (label ``hypersweep.io/restart-count``), so pods
  of an old start are never mistaken for the current one, and the count is written with the
  TrainJob's resourceVersion as a precondition, so a restart is never counted twice. After
  ``runPolicy.backoffLimit`` restarts the job fails.
* **Run policy.** ``activeDeadlineSeconds`` fails a job that runs too long; ``suspend`` deletes
  the pods and keeps the job; ``cleanPodPolicy`` says which pods go when the job finishes, and
  ``ttlSecondsAfterFinished`` deletes the finished job.

Replica addresses: by default each replica is reached at its Service's DNS name and every
replica listens on the same port (each pod has its own IP). When pods share one network
namespace, that cannot work: with ``hostNetwork: true`` replicas on one node would collide on the
port, so replica ``r`` listens on ``port + r`` (Kubeflow also gives host-network replicas ports of
their own). The operator's ``replica_host`` option addresses every replica by one host instead
of DNS names (and implies distinct ports): that is for clusters whose pods all run on one
machine without cluster DNS, such as the process-based test node agent, where every pod's IP is
127.0.0.1.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypersweep._errors import ConfigError
from hypersweep._metrics import operator_metrics
from hypersweep.kube._batch import all_at_once, slow_start
from hypersweep.kube._client import (
    PODS,
    SERVICES,
    TRAINJOBS,
    ApiError,
    JsonDict,
    Kube,
    object_key,
    owned_by,
    owner_reference,
    split_key,
)
from hypersweep.kube._expectations import Expectations, HeldStatuses, LatestWrites
from hypersweep.kube._informer import Controller, Informer, enqueue_owner
from hypersweep.kube._jobspec import (
    COLLECTED_SOON_TTL,
    CONTAINER_NAMES,
    PORT_NAMES,
    JobSpec,
    Replica,
    ReplicaSpec,
    SpecError,
    condition,
    is_true,
    main_container,
    parse_time,
    rfc3339,
    set_condition,
    true_conditions,
    with_suspend,
)
from hypersweep.kube._names import (
    FAILURE_ANNOTATION,
    JOB_NAME_LABEL,
    OUTCOME_ANNOTATION,
    POOL_ANNOTATION,
    REPLICA_INDEX_LABEL,
    REPLICA_TYPE_LABEL,
    RESTART_LABEL,
)
from hypersweep.kube._pools import NODES, GangAdmission, GangRequest, parse_pools, pod_requests
from hypersweep.kube._recorder import EventRecorder
from hypersweep.kube._tpu import SLICE_ANNOTATION, current_slice, node_down, tpu_pod, with_slice
from hypersweep.orchestrator._job import ReplicaId
from hypersweep.orchestrator._rendezvous import (
    cluster_addresses,
    jax_env,
    kubernetes_cluster,
    pytorch_env,
    replica_dns_name,
    split_address,
    tensorflow_env,
)

logger = logging.getLogger("hypersweep.operator")

#: Pods a reconcile creates at once at first (then 8, 16...): a 4-replica gang in one round trip.
FIRST_BATCH = 4
#: Seconds a pod's change waits before its job is reconciled, with the other changes since.
POD_BATCH_SECONDS = 0.5
#: Seconds a status change that is not urgent waits to be written with the next ones: a new
#: job's "created", its pods' counts and "running" are one write when its pods start fast.
STATUS_BATCH_SECONDS = 1.0
#: The conditions whose change is written at once: what users and the sweep act on.
URGENT_CONDITIONS = frozenset(("Succeeded", "Failed", "Suspended", "Restarting", "Stalled"))


def urgent_status_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Whether a status change must be written now: the job ended, restarted, was suspended or
    resumed, or a pod stalled (or recovered). Its creation, its pods' counts and its running
    can wait for the batch period."""

    def shown(status: Mapping[str, Any]) -> tuple[Any, ...]:
        return (
            true_conditions(status) & URGENT_CONDITIONS,
            status.get("restartCount") or 0,
            status.get("completionTime"),
        )

    return shown(before) != shown(after)


# TensorFlow roles in no collective: the evaluator is not part of TF_CONFIG's cluster.
_OUTSIDE_CLUSTER = ("evaluator",)


@dataclass(frozen=True)
class Networking:
    """How replicas address each other (see the module docstring)."""

    replica_host: str | None = None


def replica_ports(spec: JobSpec, networking: Networking) -> list[int]:
    """Each replica's port, by rank: one port for all, or ``port + rank`` on a shared network."""
    base = spec.port()
    spread = networking.replica_host is not None or spec.host_network
    return [base + replica.rank if spread else base for replica in spec.replicas()]


def rendezvous_env(
    spec: JobSpec, name: str, namespace: str, rank: int, networking: Networking
) -> dict[str, str]:
    """The environment that lets replica ``rank`` find the others (PyTorchJob's and TFJob's)."""
    ports = replica_ports(spec, networking)
    job = spec.description(name, ports[0])
    replica_host = networking.replica_host

    def host(replica: ReplicaId) -> str:
        return replica_host or replica_dns_name(name, replica, namespace)

    def port(replica: ReplicaId) -> int:
        return ports[replica.rank]

    if replica_host is None and len(set(ports)) == 1:
        cluster = kubernetes_cluster(job, namespace)
    else:
        cluster = cluster_addresses(job, host, port)
    if spec.framework == "pytorch":
        master_host, master_port = split_address(cluster[job.replicas[0].role][0])
        env = pytorch_env(job, rank, master_addr=master_host, master_port=master_port)
        if spec.elastic is not None:  # torchrun's arguments: it sets RANK and WORLD_SIZE itself
            env.update(
                spec.elastic.env(
                    job_name=name,
                    rank=rank,
                    master_host=master_host,
                    master_port=master_port,
                    shared_host=replica_host,
                )
            )
        return env
    if spec.framework == "jax":  # worker 0 hosts the coordinator
        host0, port0 = split_address(cluster[job.replicas[0].role][0])
        return jax_env(job, rank, coordinator_addr=host0, coordinator_port=port0)
    if spec.framework == "tensorflow":
        in_cluster = {
            role: hosts for role, hosts in cluster.items() if role not in _OUTSIDE_CLUSTER
        }
        return tensorflow_env(job, rank, in_cluster)
    replica = job.replica_ids()[rank]
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(job.world_size),
        "HYPERSWEEP_REPLICA_TYPE": replica.role,
        "HYPERSWEEP_REPLICA_INDEX": str(replica.index),
        "HYPERSWEEP_CLUSTER": json.dumps(cluster),
        "PYTHONUNBUFFERED": "1",
    }


def _selector(name: str, replica: Replica) -> dict[str, str]:
    return {
        JOB_NAME_LABEL: name,
        REPLICA_TYPE_LABEL: replica.spec.label,
        REPLICA_INDEX_LABEL: str(replica.index),
    }


def render_pod(
    job: Mapping[str, Any],
    spec: JobSpec,
    replica: Replica,
    restart: int,
    networking: Networking,
) -> JsonDict:
    """The pod of ``replica`` for start number ``restart`` of the gang."""
    meta = job["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    template = copy.deepcopy(replica.spec.template)
    template_meta = template.get("metadata") or {}
    labels = {
        **(template_meta.get("labels") or {}),
        **_selector(name, replica),
        RESTART_LABEL: str(restart),
    }
    pod_spec = template["spec"]
    pod_spec["restartPolicy"] = "Never"  # the controller restarts the whole gang
    # <pod>.<job>.<ns>.svc: the pod's DNS name under the job's headless Service.
    pod_spec["hostname"] = replica.pod_name(name)
    pod_spec["subdomain"] = name
    env = rendezvous_env(spec, name, namespace, replica.rank, networking)
    port = replica_ports(spec, networking)[replica.rank]
    ours = [{"name": key, "value": value} for key, value in env.items()]
    for container in pod_spec["containers"]:
        # The template's own variables come last: where both set one, the template wins.
        container["env"] = ours + list(container.get("env") or [])
        # A crash's last lines of output become the failure's message (TrainJob, Sweep).
        container.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
    container = main_container(spec, pod_spec["containers"])
    port_name = PORT_NAMES[spec.framework]
    ports = [p for p in container.get("ports") or [] if p.get("name") != port_name]
    declared: JsonDict = {"name": port_name, "containerPort": port, "protocol": "TCP"}
    if pod_spec.get("hostNetwork"):
        declared["hostPort"] = port
    container["ports"] = [*ports, declared]
    pod: JsonDict = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": replica.pod_name(name),
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(template_meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }
    # A host of a TPU slice: JobSet's names, TPU_WORKER_*, pinned to the gang's slice.
    by_dns = networking.replica_host is None and len(set(replica_ports(spec, networking))) == 1
    roles = [(r.label, r.replicas) for r in spec.replica_specs]
    tpu_pod(
        job,
        pod,
        roles,
        replica.spec.label,
        replica.index,
        replica.rank,
        restart,
        port if by_dns else None,
    )
    return pod


def render_service(job: Mapping[str, Any], spec: JobSpec, networking: Networking) -> JsonDict:
    """The job's headless Service, named after the job: the ``subdomain`` of its pods, which
    gives each replica the stable DNS name ``<pod>.<job>.<ns>.svc``."""
    meta = job["metadata"]
    name = meta["name"]
    ports = replica_ports(spec, networking)
    if len(set(ports)) == 1:
        listed = [{"name": PORT_NAMES[spec.framework], "port": ports[0], "targetPort": ports[0]}]
    else:  # replicas sharing a network listen on ports of their own
        listed = [
            {"name": f"rank-{rank}", "port": port, "targetPort": port}
            for rank, port in enumerate(ports)
        ]
    selector = {JOB_NAME_LABEL: name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(selector),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": listed,
        },
    }


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _disrupted(pod: Mapping[str, Any]) -> bool:
    """Whether the control plane is taking the pod away (eviction, preemption, node loss)."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return is_true(conditions, "DisruptionTarget")


def _terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ordered = sorted(statuses, key=lambda s: s.get("name") != container)
    for status in ordered:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated and (terminated.get("exitCode") or status.get("name") == container):
            return dict(terminated)
    return None


def describe_failure(pod: Mapping[str, Any], container: str) -> tuple[int | None, str]:
    """The failed pod's exit code (None if it never ran to an exit) and a reading of it."""
    terminated = _terminated(pod, container)
    if terminated is None:
        status = pod.get("status") or {}
        why = status.get("reason") or "failed"
        detail = status.get("message")
        return None, f"{why}: {detail}" if detail else str(why)
    code = int(terminated.get("exitCode") or 0)
    said = _last_line(str(terminated.get("message") or ""))
    if code > 128:
        return code, f"was killed by signal {code - 128} (exit code {code})" + (
            f": {said}" if said else ""
        )
    reason = terminated.get("reason")
    return code, f"exited with code {code}" + (
        f" ({reason})" if reason and reason != "Error" else ""
    ) + (f": {said}" if said else "")


def _last_line(text: str, limit: int = 300) -> str:
    """The last line of a termination message (a crash's output ends with its error)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."


#: Container waiting reasons that a pod does not get out of by itself: the image cannot be
#: pulled, or the container cannot be made (a missing Secret or ConfigMap key, a root image
#: under ``runAsNonRoot``...). ``ContainerCreating`` and ``PodInitializing`` are progress.
STALLED_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


#: Seconds a pod may wait for the scheduler before it counts as stalled: longer than the
#: scheduler's longest back-off between two tries (``podMaxBackoffSeconds``, 10 s by default).
#: A busy sweep's churn (room freed a moment before the scheduler's cache shows it) is no stall.
UNSCHEDULABLE_NOTICE_SECONDS = 15.0


def stalled(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a pending pod cannot start (reason, message), or None if it is making progress:
    the scheduler found no node for it, or a container waits for what will not come."""
    if _phase(pod) != "Pending" or not _alive(pod):
        return None
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    scheduled = _unscheduled(pod)
    if scheduled is not None:
        reason = str(scheduled.get("reason") or "Unschedulable")
        return reason, f"pod {name}: {scheduled.get('message') or 'no node fits it'}"
    for entry in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason")
        if why in STALLED_WAITING_REASONS:
            detail = waiting.get("message") or why
            return str(why), f"pod {name}, container {entry.get('name')}: {detail}"
    return None


def _unscheduled(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's ``PodScheduled`` condition if the scheduler has not placed it."""
    found = condition((pod.get("status") or {}).get("conditions") or [], "PodScheduled")
    return found if found is not None and found.get("status") == "False" else None


def _notice_left(pod: Mapping[str, Any], now: dt.datetime) -> float:
    """Seconds until a pod the scheduler has not placed counts as stalled (0: it does)."""
    unscheduled = _unscheduled(pod)
    if unscheduled is None:
        return 0.0
    since = parse_time(unscheduled.get("lastTransitionTime")) or now
    return max(0.0, (since - now).total_seconds() + UNSCHEDULABLE_NOTICE_SECONDS)


#: Seconds before the first restart of a gang after a replica failed; doubled at each
#: further restart, up to RESTART_BACKOFF_MAX (the Job controller's 10 s, 20 s ... is meant
#: for pods retried alone; a gang restart already costs a rendezvous).
RESTART_BACKOFF = 2.0
RESTART_BACKOFF_MAX = 120.0


def restart_backoff(restart: int) -> float:
    """Seconds to wait before start number ``restart`` (>= 1) after a replica failure."""
    return float(min(RESTART_BACKOFF * 2 ** max(restart - 1, 0), RESTART_BACKOFF_MAX))


def restartable(policy: str, exit_code: int | None) -> bool:
    """Kubeflow's rule: ExitCode restarts on signals (>= 128) and on failures without an exit
    (eviction, a lost node); OnFailure and Always restart on any failure; Never does not."""
    if policy == "Never":
        return False
    if policy == "ExitCode":
        return exit_code is None or exit_code >= 128
    return True


# --- the decision -------------------------------------------------------------------------

#: The outcomes (annotation ``hypersweep.io/outcome``) that end a suspended trial's TrainJob
#: for good: its condition, reason and what happened. ``paused`` is not one of them (the trial
#: may resume) until its sweep ends, which makes it ``pruned``.
FINAL_OUTCOMES: dict[str, tuple[str, str, str]] = {
    "pruned": ("Succeeded", "EarlyStopped", "was stopped early by the sweep's early stopping."),
    "stopped": ("Succeeded", "SweepEnded", "was stopped because its sweep ended."),
    "failed": ("Failed", "TrialFailed", "failed: its trial reported an error."),
}

#: Seconds a pruned trial's ranks get to exit by themselves once the controller sees the
#: outcome on the job (each rank was told to stop; their pods then stay for ``kubectl logs``):
#: those still running then are deleted (``cleanPodPolicy``), like a pod past its grace period.
RANKS_EXIT_SECONDS = 10.0


@dataclass
class Plan:
    """What one reconcile changes: the status to write, then pods and services, then events."""

    status: JsonDict
    create_pods: list[JsonDict] = field(default_factory=list)
    delete_pods: list[JsonDict] = field(default_factory=list)
    create_services: list[JsonDict] = field(default_factory=list)
    delete_services: list[JsonDict] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None
    #: Pods on a node that is gone: no kubelet will finish their deletion, so they are
    #: removed at once (grace period 0), as the pod garbage collector does.
    force_delete_pods: list[JsonDict] = field(default_factory=list)
    #: The gang's pods wait for gang admission to find room for all of them again.
    awaiting_admission: bool = False
    #: The job's pods not being deleted yet (but those force-deleted): a plan that deletes all
    #: of them (or all that still run) does it in one request.
    alive_pods: list[JsonDict] = field(default_factory=list)
    #: Whether Normal Events are recorded: not for a job collected within a minute of its end
    #: (each would outlive it by an hour, one per trial of a long sweep; its conditions say
    #: the same). Warnings always are.
    normal_events: bool = True
    #: The job is ending within the plan's requeue (a pruned trial's ranks exiting): a status
    #: change that is not urgent waits for its end, and is written with it.
    status_waits_for_end: bool = False

    def requeue(self, seconds: float) -> None:
        self.requeue_after = (
            seconds if self.requeue_after is None else min(self.requeue_after, seconds)
        )


def _alive(pod: Mapping[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp")


def decide(
    job: Mapping[str, Any],
    spec: JobSpec,
    pods: Sequence[JsonDict],
    services: Sequence[JsonDict],
    now: dt.datetime,
    networking: Networking = Networking(),
    *,
    nodes: Collection[str] | None = None,
    unready: Collection[str] = (),
    admitted: bool = True,
    outcome_seen: dt.datetime | None = None,
) -> Plan:
    """Everything a reconcile of ``job`` should do, from what was observed. No I/O.

    ``pods`` and ``services`` are those labelled with the job's name (whoever owns them).
    ``nodes`` are the names of the nodes that exist (None: not watched); a replica on a node
    that is gone is lost, and so is one whose pod vanished while the gang ran: either restarts
    the gang, whatever the restart policy, since the trial did not fail. ``unready`` are the
    nodes that are not Ready: on a TPU slice (the ``hypersweep.io/tpu-slice`` annotation) a
    replica there is lost like one on a deleted node, since the slice cannot run without that
    host; other jobs leave such pods to the node lifecycle controller. ``admitted`` is False
    while a restarted gang waits for gang admission: its pods are not created yet.
    ``outcome_seen`` is when the trial's final outcome was first seen on the job (None: now):
    a pruned trial's ranks have ``RANKS_EXIT_SECONDS`` from then to exit by themselves.

    The phases run in order, and the first that settles the job ends the reconcile: a finished
    job is cleaned up; a trial's final outcome finishes it; a suspended job runs nothing; the
    deadline fails it; a failed replica fails it or restarts the gang; a pod that cannot start
    fails it after a grace period; the replicas' success ends it; a restarted gang waits for
    admission; otherwise the pods and the Service converge on the spec.
    """
    seen = _observe(job, spec, pods, services, now, nodes, unready)
    seen.plan.normal_events = not seen.collected_soon
    name = seen.name
    if set_condition(
        seen.conditions,
        "Created",
        True,
        "TrainJobCreated",
        f"TrainJob {name} is created.",
        seen.stamp,
    ):
        seen.plan.events.append(("Normal", "Created", f"TrainJob {name} is created"))
    if is_true(seen.conditions, "Succeeded") or is_true(seen.conditions, "Failed"):
        _after_finish(seen)
        return seen.plan
    if (
        _ended_trial(seen, outcome_seen or now)
        or _suspended(seen)
        or _past_deadline(seen)
        or _failed_replicas(seen)
        or _stalled_pods(seen)
        or _completed(seen)
        or _awaiting_admission(seen, admitted)
    ):
        return seen.plan
    _converge(seen, networking)
    return seen.plan


@dataclass
class _Observed:
    """What one reconcile of a job saw, and the :class:`Plan` its phases fill in."""

    job: Mapping[str, Any]
    spec: JobSpec
    pods: Sequence[JsonDict]
    services: Sequence[JsonDict]
    now: dt.datetime
    plan: Plan
    #: The start of the gang the current pods belong to (``status.restartCount``).
    gang: int
    replicas: list[Replica]
    #: Live pods of the current start, by name.
    current: dict[str, JsonDict]
    #: Live pods of earlier starts.
    stale: list[JsonDict]
    #: Pod name -> how its replica was lost (node gone, evicted, deleted).
    lost: dict[str, str]
    own_services: list[JsonDict]

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    @property
    def status(self) -> JsonDict:
        return self.plan.status

    @property
    def conditions(self) -> list[JsonDict]:
        conditions: list[JsonDict] = self.plan.status["conditions"]
        return conditions

    @property
    def stamp(self) -> str:
        return rfc3339(self.now)

    def finish(self, kind: str, reason: str, message: str, event_type: str) -> None:
        """Set the final condition (``Succeeded`` or ``Failed``) and end the others."""
        for entry, status in ((kind, True), ("Running", False), ("Restarting", False)):
            set_condition(self.conditions, entry, status, reason, message, self.stamp)
        self.status.setdefault("completionTime", self.stamp)
        self.plan.events.append((event_type, reason, message))

    @property
    def collected_soon(self) -> bool:
        """Whether the job is deleted within a minute of its end (ttlSecondsAfterFinished)."""
        ttl = self.spec.ttl_seconds_after_finished
        return ttl is not None and ttl <= COLLECTED_SOON_TTL

    def counts(self, creating: Collection[str] = ()) -> None:
        """``replicaStatuses`` from the pods, counting those being created as active (as the
        Job controller does: one status write less per start)."""
        by_role: dict[str, JsonDict] = {}
        for replica_spec in self.spec.replica_specs:
            by_role[replica_spec.role] = {"active": 0, "succeeded": 0, "failed": 0}
        for replica in self.replicas:
            pod = self.current.get(replica.pod_name(self.name))
            if pod is None:
                if replica.pod_name(self.name) in creating:
                    by_role[replica.spec.role]["active"] += 1
                continue
            phase = _phase(pod)
            entry = by_role[replica.spec.role]
            if phase == "Succeeded":
                entry["succeeded"] += 1
            elif phase == "Failed":
                entry["failed"] += 1
            else:
                entry["active"] += 1
        self.status["replicaStatuses"] = by_role

    def clean_up(self) -> None:
        """Delete pods and services as ``cleanPodPolicy`` says, for a finished job."""
        policy = self.spec.clean_pod_policy
        for pod in [*self.current.values(), *self.stale]:
            if policy == "All" or (
                policy == "Running" and _phase(pod) not in ("Succeeded", "Failed")
            ):
                self.plan.delete_pods.append(pod)
        # A job deleted soon after it finished takes its Services with it (the garbage
        # collector deletes what the job owns): no request of ours for them.
        if policy != "None" and not self.collected_soon:
            self.plan.delete_services.extend(self.own_services)

    def who(self, replica: Replica) -> str:
        return f"replica {replica.spec.label}-{replica.index} (rank {replica.rank})"


def _observe(
    job: Mapping[str, Any],
    spec: JobSpec,
    pods: Sequence[JsonDict],
    services: Sequence[JsonDict],
    now: dt.datetime,
    nodes: Collection[str] | None,
    unready: Collection[str] = (),
) -> _Observed:
    """Sort the job's pods: the current start's, earlier starts', and replicas lost."""
    meta = job["metadata"]
    name, uid = meta["name"], meta["uid"]
    status: JsonDict = copy.deepcopy(job.get("status") or {})
    conditions: list[JsonDict] = status.setdefault("conditions", [])
    status["observedGeneration"] = meta.get("generation", 1)
    gang = int(status.get("restartCount") or 0)
    status["restartCount"] = gang
    plan = Plan(status=status)
    replicas = spec.replicas()
    current: dict[str, JsonDict] = {}
    stale: list[JsonDict] = []
    lost: dict[str, str] = {}
    on_slice = SLICE_ANNOTATION in (meta.get("annotations") or {})
    for pod in (pod for pod in pods if owned_by(pod, uid)):
        labels = pod["metadata"].get("labels") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        gone = nodes is not None and bool(node) and node not in nodes
        # A slice host that stopped reporting: its pods never finish by themselves (nor
        # their deletion), and they hold the names the next start needs.
        silent = (
            not gone and on_slice and node in unready and _phase(pod) not in ("Succeeded", "Failed")
        )
        if gone or silent:
            plan.force_delete_pods.append(pod)
            if labels.get(RESTART_LABEL) == str(gang) and _phase(pod) != "Succeeded":
                lost[pod["metadata"]["name"]] = f"was lost with its node {node}" + (
                    " (NotReady: its kubelet stopped reporting)" if silent else ""
                )
        elif _alive(pod) and labels.get(RESTART_LABEL) == str(gang):
            current[pod["metadata"]["name"]] = pod
            if _disrupted(pod):
                lost[pod["metadata"]["name"]] = "was evicted or preempted"
        elif _alive(pod):
            stale.append(pod)
    plan.alive_pods = [*current.values(), *stale]
    if is_true(conditions, "Running"):
        # Every replica ran: one whose pod is gone now was deleted under the gang's feet.
        for replica in replicas:
            pod_name = replica.pod_name(name)
            if pod_name not in current and pod_name not in lost:
                lost[pod_name] = "disappeared (its pod was deleted)"
    return _Observed(
        job=job,
        spec=spec,
        pods=pods,
        services=services,
        now=now,
        plan=plan,
        gang=gang,
        replicas=replicas,
        current=current,
        stale=stale,
        lost=lost,
        own_services=[svc for svc in services if owned_by(svc, uid)],
    )


#: Seconds a pod's node may be missing from the watched nodes before its replica is lost.
UNSEEN_NODE_GRACE = 30.0
#: Node names remembered as deleted at most.
DELETED_NODES_KEPT = 10_000

#: Seconds a created Service stands in for the watch's view of it, at most (it shows it
#: within seconds; a Service deleted meanwhile is then created again).
MADE_SERVICE_TTL = 30.0

#: TrainJob uids remembered as deleted at most (each one's cache catches up within seconds).
DELETED_JOBS_KEPT = 10_000
#: Created Services remembered at most until the watch shows them.
MADE_SERVICES_KEPT = 10_000
#: At most this many ending jobs' first sight of their trial's outcome are remembered.
OUTCOMES_SEEN_KEPT = 10_000

K = TypeVar("K")
V = TypeVar("V")


def _remember(kept: dict[K, V], key: K, value: V, limit: int) -> None:
    """Keep ``key`` in ``kept`` as its newest entry, forgetting the oldest beyond ``limit``."""
    kept.pop(key, None)
    kept[key] = value
    while len(kept) > limit:
        del kept[next(iter(kept))]


def _collection_selector(deleting: Mapping[str, JsonDict], alive: Sequence[JsonDict]) -> str | None:
    """The field selector (``""`` for none) that, with the job's label, deletes exactly
    ``deleting`` in one request: every alive pod of the job, or every one that still runs
    (``cleanPodPolicy: Running``). None when neither is what is deleted, or for one pod."""
    if len(deleting) < 2:
        return None
    if deleting.keys() == {str(pod["metadata"]["uid"]) for pod in alive}:
        return ""
    running = {
        str(pod["metadata"]["uid"]) for pod in alive if _phase(pod) not in ("Succeeded", "Failed")
    }
    if deleting.keys() == running:
        return "status.phase!=Succeeded,status.phase!=Failed"
    return None


def _after_finish(seen: _Observed) -> None:
    """A finished job: clean up, and delete it once ``ttlSecondsAfterFinished`` is over."""
    # The counts stay as the job ended: its clean-up changes nothing a user asked about.
    seen.clean_up()
    ttl = seen.spec.ttl_seconds_after_finished
    if ttl is not None and not seen.job["metadata"].get("deletionTimestamp"):  # once
        done_at = parse_time(seen.status.get("completionTime")) or seen.now
        left = (done_at - seen.now).total_seconds() + ttl
        if left <= 0:
            seen.plan.delete_job = True
        else:
            seen.plan.requeue(left)


def _ended_trial(seen: _Observed, outcome_seen: dt.datetime) -> bool:
    """A trial that ended for good (not paused to resume): the job finishes, so that its
    Service goes and ttlSecondsAfterFinished applies; nothing restarts it. Unsuspended, a
    failed trial's job finishes once a replica has exited (the others may wait for it
    forever), a pruned one's once every replica has exited (each was told to stop), or
    ``RANKS_EXIT_SECONDS`` after ``outcome_seen``; cleanPodPolicy says which pods stay: exited
    ones stay for ``kubectl logs``."""
    annotations = seen.job["metadata"].get("annotations") or {}
    outcome = str(annotations.get(OUTCOME_ANNOTATION))
    ended = FINAL_OUTCOMES.get(outcome)
    if ended is None:
        return False
    spec, current = seen.spec, seen.current
    running = [p for p in current.values() if _phase(p) not in ("Succeeded", "Failed")]
    if not spec.suspend and running:
        left = RANKS_EXIT_SECONDS - (seen.now - outcome_seen).total_seconds()
        waiting = left > 0 if outcome == "pruned" else len(running) == len(current)
        if waiting:
            seen.counts()
            if outcome == "pruned":
                seen.plan.requeue(left)
                seen.plan.status_waits_for_end = True
            return True  # its replicas are exiting: their events bring the job back
    kind, reason, text = ended
    failure = annotations.get(FAILURE_ANNOTATION)
    message = f"TrainJob {seen.name} {text}" + (f" {failure}" if failure else "")
    seen.finish(kind, reason, message, "Warning" if kind == "Failed" else "Normal")
    if spec.suspend:
        set_condition(seen.conditions, "Suspended", False, reason, message, seen.stamp)
    seen.counts()
    seen.clean_up()
    if spec.suspend:
        seen.plan.delete_pods = [*current.values(), *seen.stale]  # a suspended job runs nothing
    return True


def _suspended(seen: _Observed) -> bool:
    """``runPolicy.suspend``: delete the pods, keep the job (and say when it resumes)."""
    name, conditions, stamp, plan = seen.name, seen.conditions, seen.stamp, seen.plan
    if not seen.spec.suspend:
        if set_condition(
            conditions, "Suspended", False, "TrainJobResumed", f"TrainJob {name} is resumed.", stamp
        ):
            plan.events.append(("Normal", "Resumed", f"TrainJob {name} is resumed"))
        return False
    message = f"TrainJob {name} is suspended."
    if set_condition(conditions, "Suspended", True, "TrainJobSuspended", message, stamp):
        plan.events.append(
            ("Normal", "Suspended", f"TrainJob {name} is suspended: its pods are deleted")
        )
    set_condition(conditions, "Running", False, "TrainJobSuspended", message, stamp)
    set_condition(conditions, "Restarting", False, "TrainJobSuspended", message, stamp)
    seen.status.pop("startTime", None)  # the deadline counts again from the resume
    plan.delete_pods.extend([*seen.current.values(), *seen.stale])
    seen.current.clear()
    seen.counts()
    return True


def _past_deadline(seen: _Observed) -> bool:
    """Start the clock; ``activeDeadlineSeconds`` fails a job that runs too long."""
    started = parse_time(seen.status.get("startTime"))
    if started is None:
        seen.status["startTime"] = seen.stamp
        started = seen.now
    deadline = seen.spec.active_deadline_seconds
    if deadline is None:
        return False
    left = (started - seen.now).total_seconds() + deadline
    if left > 0:
        seen.plan.requeue(left)
        return False
    seen.finish(
        "Failed",
        "DeadlineExceeded",
        f"TrainJob {seen.name} was active longer than activeDeadlineSeconds ({deadline} s)",
        "Warning",
    )
    seen.counts()
    seen.clean_up()
    seen.plan.delete_pods = [*seen.current.values(), *seen.stale]  # a deadline stops everything
    return True


def _failed_replicas(seen: _Observed) -> bool:
    """A failed replica fails the job or restarts the gang, as its restart policy says."""
    name, spec, gang = seen.name, seen.spec, seen.gang
    main_name = CONTAINER_NAMES[spec.framework]
    failures: list[tuple[Replica, int | None, str]] = []
    for replica in seen.replicas:
        observed = seen.current.get(replica.pod_name(name))
        if observed is not None and _phase(observed) == "Failed":
            code, reading = describe_failure(observed, main_name)
            failures.append((replica, code, f"{seen.who(replica)} {reading}"))
    for replica in seen.replicas:
        if replica.pod_name(name) in seen.lost:
            failures.insert(
                0, (replica, None, f"{seen.who(replica)} {seen.lost[replica.pod_name(name)]}")
            )
    if not failures:
        return False
    # After a lost replica its peers fail too (their collective broke): not their fault.
    fatal = (
        []
        if seen.lost
        else [f for f in failures if not restartable(f[0].spec.restart_policy, f[1])]
    )
    if not fatal and _elastic_goes_on(seen, failures):
        return False
    seen.counts()
    if fatal:
        replica, _, message = fatal[0]
        seen.finish(
            "Failed",
            "TrainJobFailed",
            f"{message} (restartPolicy {replica.spec.restart_policy})",
            "Warning",
        )
        seen.clean_up()
        return True
    _, _, message = failures[0]
    if gang >= spec.backoff_limit:
        seen.finish(
            "Failed",
            "BackoffLimitExceeded",
            f"{message}; the job was restarted {gang} times (backoffLimit {spec.backoff_limit})",
            "Warning",
        )
        seen.clean_up()
        return True
    _restart_gang(seen, message)
    return True


def _elastic_goes_on(seen: _Observed, failures: Sequence[tuple[Replica, int | None, str]]) -> bool:
    """An elastic gang with ``minReplicas`` or more replicas left goes on without a restart.

    The survivors' agents re-rendezvous by themselves (torchrun); the failed pods are deleted
    here, and the missing ones are created again (:func:`_converge`), so their agents join the
    next rendezvous and the gang grows back. Nothing is counted toward ``backoffLimit``.
    """
    policy = seen.spec.elastic
    if policy is None:
        return False
    name = seen.name
    down = {replica.pod_name(name) for replica, _, _ in failures}
    alive = [
        pod
        for pod_name, pod in seen.current.items()
        if pod_name not in down and _phase(pod) in ("Pending", "Running")
    ]
    if len(alive) < policy.min_replicas:
        return False
    for replica, _, message in failures:
        pod = seen.current.get(replica.pod_name(name))
        if pod is None:
            continue  # already gone: _converge creates it again
        seen.plan.delete_pods.append(pod)
        seen.plan.events.append(
            (
                "Warning",
                "ElasticReplicaLost",
                f"{message}; the gang goes on with {len(alive)} replicas (elasticPolicy."
                f"minReplicas {policy.min_replicas}) and the replica is created again",
            )
        )
    return True


def _restart_gang(seen: _Observed, message: str) -> None:
    """Count a restart, delete every pod of this start, and start again (after a back-off)."""
    gang, conditions, stamp, plan = seen.gang, seen.conditions, seen.stamp, seen.plan
    seen.status["restartCount"] = gang + 1
    # A replica's own failure backs off before the next start, as the Job controller does
    # (a lost replica is no one's fault: its gang starts again at once).
    reason = "ReplicaLost" if seen.lost else "TrainJobRestarting"
    delay = 0.0 if seen.lost else restart_backoff(gang + 1)
    text = (
        f"{message}; restarting every replica from the latest checkpoint "
        f"(restart {gang + 1} of {seen.spec.backoff_limit}"
        + (f", in {delay:g} s)" if delay else ")")
    )
    set_condition(conditions, "Restarting", True, reason, text, stamp)
    for entry in conditions:
        if entry.get("type") == "Restarting":
            entry["lastUpdateTime"] = stamp  # when the back-off starts
    set_condition(conditions, "Running", False, "TrainJobRestarting", text, stamp)
    plan.events.append(("Warning", "Restarting", text))
    plan.delete_pods.extend([*seen.current.values(), *seen.stale])
    plan.requeue(0.5)


def _stalled_pods(seen: _Observed) -> bool:
    """A pod that cannot start fails the job after the grace period (it counts as active, not
    failed, to the pods' phases: nothing else would ever end the trial)."""
    name, conditions, stamp = seen.name, seen.conditions, seen.stamp
    stuck = []
    for pod in (seen.current.get(r.pod_name(name)) for r in seen.replicas):
        why = stalled(pod) if pod is not None else None
        if pod is None or why is None:
            continue
        left = _notice_left(pod, seen.now)
        if left > 0:
            seen.plan.requeue(left)  # not yet: room may come free within seconds
        else:
            stuck.append(why)
    if not stuck:
        set_condition(conditions, "Stalled", False, "PodsStarting", "No pod is stalled.", stamp)
        return False
    reason, message = stuck[0]
    grace = seen.spec.stalled_timeout_seconds
    running = sum(1 for pod in seen.current.values() if _phase(pod) == "Running")
    elastic = seen.spec.elastic
    if elastic is not None and running >= elastic.min_replicas:
        text = f"{message} (the elastic gang runs with {running} replicas meanwhile)"
        if set_condition(conditions, "Stalled", True, reason, text, stamp):
            seen.plan.events.append(("Warning", reason, message))
        return False
    text = f"{message} (the job fails if this lasts {grace} s: runPolicy.stalledTimeoutSeconds)"
    if set_condition(conditions, "Stalled", True, reason, text, stamp):
        seen.plan.events.append(("Warning", reason, message))
    since = parse_time((condition(conditions, "Stalled") or {}).get("lastTransitionTime"))
    left = ((since or seen.now) - seen.now).total_seconds() + grace
    if left > 0:
        seen.plan.requeue(left)
        return False
    seen.finish("Failed", reason, f"{message}; for {grace} s or more", "Warning")
    seen.counts()
    seen.clean_up()
    seen.plan.delete_pods = [*seen.current.values(), *seen.stale]  # none of them can run
    return True


def _completed(seen: _Observed) -> bool:
    """The replicas that decide it succeeded: so did the job."""
    if not _succeeded(seen.spec, seen.replicas, seen.current, seen.name):
        return False
    seen.counts()
    # Kubeflow's rule: the job succeeded, so did the replicas still active (cleaned up now).
    for entry in seen.status["replicaStatuses"].values():
        entry["succeeded"] += entry["active"]
        entry["active"] = 0
    seen.finish("Succeeded", "TrainJobSucceeded", f"TrainJob {seen.name} succeeded.", "Normal")
    seen.clean_up()
    return True


def _awaiting_admission(seen: _Observed, admitted: bool) -> bool:
    """A restarted gang under gang admission: its pods wait until all of them fit at once."""
    if admitted or seen.current:
        return False
    seen.plan.awaiting_admission = True
    text = f"TrainJob {seen.name} waits for room for all {len(seen.replicas)} replicas in its pool"
    set_condition(seen.conditions, "Restarting", True, "WaitingForCapacity", text, seen.stamp)
    seen.plan.delete_pods.extend(seen.stale)
    seen.plan.requeue(0.5)
    seen.counts()
    return True


def _converge(seen: _Observed, networking: Networking) -> None:
    """One live pod per replica and the job's headless Service; Running once all are up."""
    name, plan, replicas, current = seen.name, seen.plan, seen.replicas, seen.current
    plan.delete_pods.extend(seen.stale)
    restarting = condition(seen.conditions, "Restarting")
    if (
        not current
        and seen.gang > 0
        and restarting is not None
        and restarting.get("status") == "True"
        and restarting.get("reason") == "TrainJobRestarting"
    ):
        since = parse_time(restarting.get("lastUpdateTime")) or seen.now
        left = (since - seen.now).total_seconds() + restart_backoff(seen.gang)
        if left > 0:
            plan.requeue(left)  # backing off after a failure
            seen.counts()
            return
    taken = {pod["metadata"]["name"] for pod in seen.pods}
    for replica in replicas:
        pod_name = replica.pod_name(name)
        if pod_name in current:
            continue
        if pod_name in taken:
            plan.requeue(1.0)  # an old pod of that name is still going away
            continue
        plan.create_pods.append(render_pod(seen.job, seen.spec, replica, seen.gang, networking))
    if name not in {svc["metadata"]["name"] for svc in seen.services}:
        plan.create_services.append(render_service(seen.job, seen.spec, networking))

    seen.counts({pod["metadata"]["name"] for pod in plan.create_pods})
    phases = [_phase(current[r.pod_name(name)]) for r in replicas if r.pod_name(name) in current]
    all_up = len(phases) == len(replicas) and all(p in ("Running", "Succeeded") for p in phases)
    if all_up and "Running" in phases:
        message = f"TrainJob {name} is running."
        # A condition, not an Event too (as the Training Operator): one write per trial less.
        set_condition(seen.conditions, "Running", True, "TrainJobRunning", message, seen.stamp)
        set_condition(seen.conditions, "Restarting", False, "TrainJobRunning", message, seen.stamp)


def _succeeded(
    spec: JobSpec, replicas: Sequence[Replica], current: Mapping[str, JsonDict], name: str
) -> bool:
    def done(role: str, index: int | None = None) -> bool:
        chosen = [
            r for r in replicas if r.spec.role == role and (index is None or r.index == index)
        ]
        return bool(chosen) and all(
            _phase(current.get(r.pod_name(name), {})) == "Succeeded" for r in chosen
        )

    if spec.framework == "pytorch":
        return done("Master", 0)
    if spec.framework == "tensorflow":
        for lead in ("Chief", "Master"):
            if spec.role(lead) is not None and spec.role(lead).replicas:  # type: ignore[union-attr]
                return done(lead, 0)
        if spec.success_policy == "AllWorkers":
            return done("Worker")
        return done("Worker", 0)
    return all(_phase(current.get(r.pod_name(name), {})) == "Succeeded" for r in replicas)


# --- the controller -----------------------------------------------------------------------


class TrainJobController:
    """Watches TrainJobs, their pods and services, and reconciles each TrainJob.

    Args:
        kube: the API client.
        recorder: where Events go.
        namespace: the namespace to manage; None for all.
        networking: how replicas address each other.
        workers: reconciles that may run at once (on different TrainJobs).
        calls: API calls that the reconciles may make at once, all together (pods created or
            deleted concurrently); default: 6 per worker.
        admission: the operator's gang admission (called when first needed): a gang that
            admission put on a pool (annotation ``hypersweep.io/pool``) and then restarted is
            admitted again before its new pods are created, so a restart never makes a partial
            gang either; it queues behind the trials already waiting.

    Nodes are watched too: a replica on a node that is deleted is lost, and its gang restarts
    on other capacity (see :func:`decide`); so is a TPU slice replica on a node that turns
    NotReady (:func:`hypersweep.kube._tpu.node_down` says why the node's condition, and not
    the pods' taint eviction).
    """

    def __init__(
        self,
        kube: Kube,
        recorder: EventRecorder,
        *,
        namespace: str | None = None,
        networking: Networking = Networking(),
        workers: int = 2,
        calls: int | None = None,
        admission: Callable[[], GangAdmission] | None = None,
        watch_nodes: bool = True,
    ) -> None:
        self.kube = kube
        self._admission = admission
        self._readmitting: dict[str, tuple[int, GangRequest]] = {}  # job key -> restart, request
        self._lock = threading.Lock()
        self._node_names: frozenset[str] | None = None
        # Nodes that pods are bound to but the watch has not shown yet (a cluster adding
        # nodes fast: their ADDED events lag the pods bound there), by when first met.
        self._unseen_nodes: dict[str, float] = {}
        self._deleted_nodes: dict[str, None] = {}  # seen DELETED (and not back), oldest first
        self._unready: frozenset[str] = frozenset()  # nodes whose Ready condition is not True
        self.recorder = recorder
        self.networking = networking
        # Default: every worker's status write, Service and 4-replica gang at once.
        self._calls = ThreadPoolExecutor(calls or 6 * workers, thread_name_prefix="trainjob-call")
        # Own writes that the caches may not show yet (see _expectations).
        self._expectations = Expectations()
        self._written = LatestWrites()
        self._held = HeldStatuses(STATUS_BATCH_SECONDS)
        # TrainJobs this controller deleted after their TTL (by uid, oldest first).
        self._deleted_jobs: dict[str, None] = {}
        # Services this controller created that its watch may not show yet (by job key: the
        # Service and when), so that a reconcile in between does not create them again.
        self._made_services: dict[str, tuple[JsonDict, float]] = {}
        # Each live job's parsed spec, by uid, with the generation it was parsed from.
        self._specs: dict[str, tuple[int, JobSpec]] = {}
        # When each ending trial's outcome was first seen on its TrainJob (by uid).
        self._outcomes_seen: dict[str, dt.datetime] = {}
        self.jobs = Informer(kube, TRAINJOBS, namespace=namespace)
        self.pods = Informer(
            kube, PODS, namespace=namespace, label_selector=JOB_NAME_LABEL, index=JOB_NAME_LABEL
        )
        self.services = Informer(
            kube, SERVICES, namespace=namespace, label_selector=JOB_NAME_LABEL, index=JOB_NAME_LABEL
        )
        # Nodes are cluster-scoped: a namespaced operator (a Role only) cannot watch them, and
        # then a replica on a deleted node is noticed only once its pod is deleted.
        self.nodes: Informer | None = Informer(kube, NODES) if watch_nodes else None
        self.controller = Controller("trainjob", self.reconcile, workers=workers)
        queue = self.controller.queue
        # Expectations are ticked off first: the reconcile that an event queues must see them.
        # A deleted job's reconcile would only forget it: _job_seen does, and queues nothing.
        self.jobs.add_handler(self._job_seen)
        self.pods.add_handler(self._pod_seen)

        # Like the Job controller's sync batch period: the pods of a gang change together, and
        # one reconcile (one status write) for them all is enough. The pods and Service of a
        # job deleted after its TTL go after it, and queue nothing.
        def job_exists(namespace: str, name: str) -> bool:
            return self.jobs.get(namespace, name) is not None

        self.pods.add_handler(
            enqueue_owner(queue, JOB_NAME_LABEL, batch=POD_BATCH_SECONDS, owner_exists=job_exists)
        )
        self.services.add_handler(enqueue_owner(queue, JOB_NAME_LABEL, owner_exists=job_exists))
        if self.nodes is not None:
            self.nodes.add_handler(self._node_changed)

    def _job_seen(self, kind: str, job: JsonDict) -> None:
        key = object_key(job)
        if kind == "DELETED":
            self._written.forget(key)
            self._expectations.forget(key)
            self._forget_readmission(key)
            self._held.forget(key)
            uid = str(job["metadata"].get("uid"))
            self._specs.pop(uid, None)
            with self._lock:
                self._outcomes_seen.pop(uid, None)
        else:
            self._written.observed(key, job)
            self.controller.queue.add(key)

    def _pod_seen(self, kind: str, pod: JsonDict) -> None:
        meta = pod["metadata"]
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        if not job:
            return
        key = f"{meta.get('namespace', '')}/{job}"
        if kind == "ADDED":
            self._expectations.created(key)
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            self._expectations.deleted(key, str(meta.get("uid")))

    def _node_changed(self, kind: str, node: JsonDict) -> None:
        """A node went away or stopped being Ready: reconcile the TrainJobs with pods there
        (their replicas are lost: any job's on a deleted node, a TPU slice's on a NotReady
        one)."""
        gone = node["metadata"]["name"]
        down = kind != "DELETED" and node_down(node)
        with self._lock:
            if kind in ("ADDED", "DELETED"):
                self._node_names = None  # heartbeats (MODIFIED) change no name
                self._unseen_nodes.pop(gone, None)
            if kind == "DELETED":
                _remember(self._deleted_nodes, gone, None, DELETED_NODES_KEPT)
            else:
                self._deleted_nodes.pop(gone, None)
            # Only a change of readiness queues anything: heartbeats are most node events.
            went_down = down and gone not in self._unready
            if down != (gone in self._unready):
                self._unready = (self._unready | {gone}) if down else (self._unready - {gone})
        if kind != "DELETED" and not went_down:
            return
        for pod in self.pods.list():
            if (pod.get("spec") or {}).get("nodeName") == gone:
                job = (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL)
                if job:
                    self.controller.queue.add(f"{pod['metadata'].get('namespace')}/{job}")

    def _informers(self) -> list[Informer]:
        informers = [self.jobs, self.pods, self.services]
        return informers + ([self.nodes] if self.nodes is not None else [])

    def start(self, timeout: float = 60.0) -> None:
        for informer in self._informers():
            informer.start()
        for informer in self._informers():
            if not informer.wait_synced(timeout):
                raise TimeoutError(f"could not list {informer.resource.plural}")
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        for informer in self._informers():
            informer.stop()
        self.controller.join()  # no reconcile is left to make calls
        self._calls.shutdown(wait=False)

    def reconcile(self, key: str) -> float | None:
        namespace, name = split_key(key)
        waiting = self._expectations.pending(key)
        if waiting is not None:
            return waiting  # the events of its own pod writes queue it again (or expiry does)
        job = self._latest(key)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._forget_readmission(key)
            self._held.forget(key)
            return None
        written_status = job.get("status") or {}
        job = self._held.overlay(key, job)
        job.setdefault("apiVersion", TRAINJOBS.api_version)
        job.setdefault("kind", TRAINJOBS.kind)
        try:
            spec = self._spec(job)
        except SpecError as error:
            self._refuse(job, str(error))
            return None
        labels = {JOB_NAME_LABEL: name}
        pods = self.pods.list(namespace, labels)
        admitted = self._gang_admitted(key, job, spec, pods)
        job = self._on_slice(key, job, pods)
        nodes, recheck = self._nodes(pods)
        now = dt.datetime.now(dt.timezone.utc)
        plan = decide(
            job,
            spec,
            pods,
            self._services_of(key, self.services.list(namespace, labels)),
            now,
            self.networking,
            nodes=nodes,
            unready=self._unready,
            admitted=admitted,
            outcome_seen=self._outcome_seen(job, now),
        )
        if not plan.awaiting_admission:
            finished = plan.status.get("conditions") or []
            if is_true(finished, "Succeeded") or is_true(finished, "Failed"):
                self._forget_readmission(key)
        after = self.apply(job, plan, written_status)
        if recheck is not None:
            after = recheck if after is None else min(after, recheck)
        return after

    def _outcome_seen(self, job: JsonDict, now: dt.datetime) -> dt.datetime | None:
        """When this controller first saw the trial's outcome on ``job`` (None: none yet)."""
        if OUTCOME_ANNOTATION not in (job["metadata"].get("annotations") or {}):
            return None
        uid = str(job["metadata"]["uid"])
        with self._lock:
            seen = self._outcomes_seen.get(uid)
            if seen is None:
                seen = now
                _remember(self._outcomes_seen, uid, now, OUTCOMES_SEEN_KEPT)
        return seen

    def _services_of(self, key: str, watched: Sequence[JsonDict]) -> Sequence[JsonDict]:
        """The job's Services: those watched, plus one this controller created that the
        watch does not show yet (for at most MADE_SERVICE_TTL seconds)."""
        with self._lock:
            made = self._made_services.get(key)
            if made is None:
                return watched
            service, at = made
            uid = service["metadata"].get("uid")
            if any(s["metadata"].get("uid") == uid for s in watched) or (
                time.monotonic() - at > MADE_SERVICE_TTL
            ):
                del self._made_services[key]  # the watch shows it: the cache is the truth
                return watched
        return [*watched, service]

    def _nodes(self, pods: Sequence[JsonDict]) -> tuple[frozenset[str] | None, float | None]:
        """The names of the nodes taken to exist (None when nodes are not watched): every
        watched node, and a node of ``pods`` the watch has not shown yet; and when to look
        again at such a node.

        A node the watch showed deleted is gone. One it has not shown at all is given
        ``UNSEEN_NODE_GRACE`` seconds to appear: a cluster adding many nodes binds pods to
        them before their ADDED events arrive here, and such a pod is not lost. A node still
        unseen after that (deleted before this operator started) is gone.
        """
        if self.nodes is None:
            return None, None
        now = time.monotonic()
        recheck: float | None = None
        with self._lock:
            if self._node_names is None:
                self._node_names = frozenset(n["metadata"]["name"] for n in self.nodes.list())
            names = self._node_names
            young: set[str] = set()
            for pod in pods:
                node = (pod.get("spec") or {}).get("nodeName")
                if not node or node in names or node in self._deleted_nodes:
                    continue
                left = self._unseen_nodes.setdefault(node, now) + UNSEEN_NODE_GRACE - now
                if left > 0:
                    young.add(node)
                    recheck = left if recheck is None else min(recheck, left)
        return (names | young if young else names), recheck

    def _spec(self, job: JsonDict) -> JobSpec:
        """The job's parsed spec: parsed once per generation (a spec change bumps it), not at
        every reconcile. Raises :class:`SpecError`."""
        meta = job["metadata"]
        uid, generation = str(meta["uid"]), int(meta.get("generation") or 0)
        known = self._specs.get(uid)
        if known is not None and known[0] == generation:
            return known[1]
        spec = JobSpec.from_spec(job.get("spec") or {})
        if len(self._specs) >= 4096:
            self._specs.clear()  # jobs whose deletion was missed (a relist); any parses again
        self._specs[uid] = (generation, spec)
        return spec

    def _latest(self, key: str) -> JsonDict | None:
        """The TrainJob, with the status of this controller's last write at least.

        Its status (the restart count above all) must be current when deciding to restart the
        gang. It comes from the cache once the cache shows that write (until then, from the
        write's answer), so a reconcile reads nothing from the API server.
        """
        namespace, name = split_key(key)
        cached = self.jobs.get(namespace, name)
        if cached is None:
            return None  # deleted (or not seen yet: its ADDED event will queue it)
        # By uid: a write to a deleted TrainJob says nothing about a new one of the same name.
        job = self._written.get(key, cached["metadata"].get("uid")) or cached
        # A reconcile sets fields at the top and in metadata only; decide() copies the rest.
        return {**job, "metadata": dict(job["metadata"])}

    def _gang_admitted(
        self, key: str, job: JsonDict, spec: JobSpec, pods: Sequence[JsonDict]
    ) -> bool:
        """Whether the gang may create its pods now; False while a restarted gang that gang
        admission placed on a pool waits to be admitted there again."""
        pool_data = (job["metadata"].get("annotations") or {}).get(POOL_ANNOTATION)
        restart = int((job.get("status") or {}).get("restartCount") or 0)
        if pool_data is None or self._admission is None or restart == 0:
            return True
        uid = job["metadata"]["uid"]
        started = any(
            owned_by(pod, uid)
            and (pod["metadata"].get("labels") or {}).get(RESTART_LABEL) == str(restart)
            for pod in pods
        )
        admission = self._admission()
        with self._lock:
            waiting = self._readmitting.get(key)
            if started:
                self._readmitting.pop(key, None)  # its reservation ends once its pods are bound
                return True
            if waiting is None or waiting[0] != restart:
                try:
                    (pool,) = parse_pools([json.loads(pool_data)], POOL_ANNOTATION)
                except (ValueError, ConfigError) as error:
                    logger.warning("TrainJob %s: unreadable %s: %s", key, POOL_ANNOTATION, error)
                    return True
                # An elastic gang is admitted with minReplicas; the rest start when they fit.
                admitted = spec.replicas()[: spec.elastic.min_replicas if spec.elastic else None]
                demands = [pod_requests(r.spec.template.get("spec") or {}) for r in admitted]
                request = GangRequest(key, f"TrainJob {key}", (pool,), {pool.name: demands})
                admission.start()
                admission.submit(request)
                waiting = self._readmitting[key] = (restart, request)
        admission.pump()
        return waiting[1].admitted is not None

    def _on_slice(self, key: str, job: JsonDict, pods: Sequence[JsonDict]) -> JsonDict:
        """A TPU gang's job as of its current start's slice: the one admission chose when it
        restarted (any whole slice), else where its pods are, else its first one."""
        if SLICE_ANNOTATION not in (job["metadata"].get("annotations") or {}):
            return job
        restart = int((job.get("status") or {}).get("restartCount") or 0)
        with self._lock:
            waiting = self._readmitting.get(key)
        if waiting is not None and waiting[0] == restart and waiting[1].admitted is not None:
            return with_slice(job, waiting[1].admitted.slice)
        return with_slice(job, current_slice(job, pods, restart, RESTART_LABEL))

    def _forget_readmission(self, key: str) -> None:
        with self._lock:
            waiting = self._readmitting.pop(key, None)
        if waiting is not None and self._admission is not None:
            self._admission().withdraw(key)

    def apply(self, job: JsonDict, plan: Plan, written: JsonDict) -> float | None:
        """Carry a plan out: status first, then the rest.

        ``job`` carries the status held back for it (:class:`HeldStatuses`), if any;
        ``written`` is the one last written. A change that is not urgent
        (:func:`urgent_status_change`) waits up to ``STATUS_BATCH_SECONDS`` to be written
        together with the next ones, or, for a job about to end, until its end. A plan that
        starts pods of the same gang writes its status alongside their creation (one round
        trip instead of two, the critical path of a trial's start): the pods' names are fixed,
        so a plan made from a stale cache cannot create a second set. A plan that restarts the
        gang writes its new restart count before anything else, guarded by the resourceVersion
        it was made from.
        """
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = f"{namespace}/{name}"
        latest = job  # the TrainJob as of the last write, for a refusal's own status write
        status_write: Future[JsonDict] | None = None
        urgent = urgent_status_change(written, plan.status)
        uid = meta.get("uid")
        if plan.status == written:
            self._held.forget(key)
        elif not urgent and plan.status_waits_for_end:
            self._held.keep(key, uid, plan.status)
        elif not urgent and (wait := self._held.hold(key, uid, plan.status)) is not None:
            plan.requeue(wait)
        else:
            same_gang = plan.status.get("restartCount") == written.get("restartCount", 0)
            if plan.create_pods and same_gang:
                status_write = self._calls.submit(self._write_status, key, job, plan.status)
            else:
                latest = self._write_status(key, job, plan.status, guarded=not same_gang)
                if not same_gang:
                    operator_metrics().trainjob_restarts.inc()
        # A new job's "Created" goes with its pods' creation: one Event for both.
        created_event = ("Normal", "Created", f"TrainJob {name} is created")
        fold = bool(plan.create_pods) and created_event in plan.events
        for event in plan.events:
            if not (fold and event == created_event) and (
                plan.normal_events or event[0] != "Normal"
            ):
                self.recorder.event(job, *event)
        for pod in plan.force_delete_pods:
            self.kube.delete(
                PODS,
                namespace,
                pod["metadata"]["name"],
                uid=pod["metadata"]["uid"],
                grace_seconds=0,
            )
        self._delete(key, plan)
        # The Service goes alongside the pods: their DNS names resolve once both exist.
        refused: list[str] = []
        services = [
            self._calls.submit(self._create_service, key, job, service, plan, refused)
            for service in plan.create_services
        ]
        try:
            created = self._create_pods(key, job, plan, refused)
        finally:
            for service in services:
                service.result()
            if status_write is not None:
                latest = status_write.result()
        if refused:
            self._refuse(latest, refused[0])
        if created and plan.normal_events:
            names = [pod["metadata"]["name"] for pod in created]
            message = (
                f"Created pod: {names[0]}"
                if len(names) == 1
                else f"Created {len(names)} pods: {', '.join(names)}"
            )
            if fold:
                message = f"TrainJob {name} is created. {message}"
            self.recorder.event(job, "Normal", "SuccessfulCreatePod", message)
        elif fold and plan.normal_events:
            self.recorder.event(job, *created_event)
        if plan.delete_job and meta["uid"] not in self._deleted_jobs:
            # Once per job: a reconcile from a cache that does not show the deletion yet
            # would send it again.
            _remember(self._deleted_jobs, meta["uid"], None, DELETED_JOBS_KEPT)
            self.kube.delete(TRAINJOBS, namespace, name, uid=meta["uid"])
            # Logged, not an Event: an Event of a deleted object outlives it (an hour in the
            # API server) and costs a write per trial; Kubernetes' own TTL controller has none.
            logger.info("TrainJob %s/%s deleted after its TTL", namespace, name)
        return plan.requeue_after

    def _write_status(
        self, key: str, job: JsonDict, status: JsonDict, *, guarded: bool = False
    ) -> JsonDict:
        """Write the job's status; the job as written.

        A patch that sets the status, not a replace: the launcher's outcome annotation and a
        user's edits move the job's resourceVersion too, and a replace would then fail with a
        conflict and cost a read and a second write. Only this controller (its leader) writes
        the status, from ``job``, which holds what it last wrote, so nothing of another
        writer's is lost. The patch first tests the uid: a write meant for a deleted job is
        refused by a new job of the same name. A ``guarded`` write (a gang's restart) also
        carries the resourceVersion the plan was made from: if anything changed since, it
        fails with a conflict and the job is reconciled again from the cache.
        """
        meta = job["metadata"]
        operations: list[JsonDict] = [{"op": "test", "path": "/metadata/uid", "value": meta["uid"]}]
        if guarded:
            operations.append(
                {
                    "op": "replace",
                    "path": "/metadata/resourceVersion",
                    "value": meta["resourceVersion"],
                }
            )
        operations.append({"op": "add", "path": "/status", "value": status})
        try:
            written = self.kube.json_patch(
                TRAINJOBS, meta["namespace"], meta["name"], operations, subresource="status"
            )
        except ApiError as error:
            if error.conflict:
                self._written.forget(key)
            raise
        self._written.wrote(key, written)
        self._held.wrote(key)
        return written

    def _delete(self, key: str, plan: Plan) -> None:
        """Delete the plan's pods and services at once; the pods' deletions are expected."""
        namespace = split_key(key)[0]
        pods = {pod["metadata"]["uid"]: pod for pod in plan.delete_pods}
        self._expectations.expect(key, deletions=pods)
        selector = _collection_selector(pods, plan.alive_pods)
        if selector is not None:
            # One request for a gang's pods, not one per pod (a finished or suspended job's).
            try:
                deleted = self.kube.delete_collection(
                    PODS,
                    namespace,
                    label_selector=f"{JOB_NAME_LABEL}={split_key(key)[1]}",
                    field_selector=selector or None,
                )
            except BaseException:
                for uid in pods:
                    self._expectations.deleted(key, uid)
                raise
            gone = {str(pod["metadata"].get("uid")) for pod in deleted}
            for uid in pods.keys() - gone:  # exited meanwhile: no deletion of it will come
                self._expectations.deleted(key, uid)
            pods = {}

        def delete(item: tuple[Any, JsonDict]) -> None:
            resource, obj = item
            uid = obj["metadata"]["uid"]
            gone = False
            try:
                gone = self.kube.delete(resource, namespace, obj["metadata"]["name"], uid=uid)
            finally:
                if resource is PODS and not gone:
                    self._expectations.deleted(key, uid)  # no event of it will come

        deletes = [(PODS, pod) for pod in pods.values()]
        deletes += [(SERVICES, service) for service in plan.delete_services]
        all_at_once(deletes, delete, self._calls)

    def _create_pods(
        self, key: str, job: JsonDict, plan: Plan, refused: list[str]
    ) -> list[JsonDict]:
        """Create the plan's pods in slow-start batches; their creations are expected."""
        pods = plan.create_pods
        self._expectations.expect(key, creations=len(pods))
        tried: list[JsonDict] = []

        def create(pod: JsonDict) -> bool:
            tried.append(pod)
            created = False
            try:
                created = self._create(PODS, job, pod, plan, refused) is not None
                if created:
                    operator_metrics().pods_created.inc()
            finally:
                if not created:
                    self._expectations.created(key)  # no event of it will come
            return created

        try:
            return slow_start(pods, create, self._calls, initial=FIRST_BATCH)
        finally:
            for _ in range(len(pods) - len(tried)):
                self._expectations.created(key)  # never tried after a failed batch

    def _create_service(
        self, key: str, job: JsonDict, body: JsonDict, plan: Plan, refused: list[str]
    ) -> bool:
        """Create the job's Service, remembered until the watch shows it."""
        created = self._create(SERVICES, job, body, plan, refused)
        if created is not None:
            with self._lock:
                _remember(self._made_services, key, (created, time.monotonic()), MADE_SERVICES_KEPT)
        return created is not None

    def _create(
        self, resource: Any, job: JsonDict, body: JsonDict, plan: Plan, refused: list[str]
    ) -> JsonDict | None:
        """Create one object (the object created; None if not); a refusal (invalid, or
        refused by admission) goes to ``refused``, for the job to be refused once however
        many creations it failed."""
        try:
            return self.kube.create(resource, job["metadata"]["namespace"], body)
        except ApiError as error:
            if error.conflict:
                plan.requeue(1.0)  # the cache had not seen it yet, or an old one is going away
                return None
            if error.status in (400, 403, 422):
                refused.append(f"{resource.kind} {body['metadata']['name']}: {error.message}")
                return None
            raise

    def _refuse(self, job: JsonDict, message: str) -> None:
        """Fail a TrainJob whose spec cannot run, once."""
        status = copy.deepcopy(job.get("status") or {})
        conditions: list[JsonDict] = status.setdefault("conditions", [])
        if is_true(conditions, "Failed"):
            return
        stamp = rfc3339(dt.datetime.now(dt.timezone.utc))
        set_condition(conditions, "Failed", True, "InvalidSpec", message, stamp)
        set_condition(conditions, "Running", False, "InvalidSpec", message, stamp)
        status.setdefault("completionTime", stamp)
        status["observedGeneration"] = job["metadata"].get("generation", 1)
        self._write_status(object_key(job), job, status)
        self.recorder.event(job, "Warning", "InvalidSpec", message)


__all__ = [
    "JobSpec",
    "Networking",
    "Plan",
    "Replica",
    "ReplicaSpec",
    "SpecError",
    "TrainJobController",
    "decide",
    "render_pod",
    "render_service",
    "rendezvous_env",
    "with_suspend",
]
