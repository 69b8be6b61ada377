"""GPU node pools and gang admission: a trial starts only where all of its replicas fit at once.

A sweep may name the node pools its trials can use (``Sweep.spec.pools``,
``KubernetesLauncher(pools=...)``): each pool is a node selector, the accelerator resource and
count every replica needs there, tolerations for the pool's taints and a weight (preference).

Why admission here rather than leaving it to the scheduler: kube-scheduler places pods one at a
time, so two multi-replica trials that each got half of a pool's GPUs both wait forever for the
other half (a deadlock of partial gangs), and the usual cure is an extra gang scheduler. The
operator already decides *when* a trial's pods are created, so it admits a trial only when one
of its pools has room for every replica at once, and creates the pods then.

Capacity is read from the API, not from our own bookkeeping: for each node, allocatable minus
the requests of every non-terminated pod bound to it (``spec.nodeName``) or nominated for it
(``status.nominatedNodeName``), whoever created the pod, kept up to date from pod events
rather than recounted on every pass; a replica must fit on one node, so the check bin-packs
replicas onto nodes (largest first, best fit). The only bookkeeping is a
*reservation* per admitted gang, held from its admission until the scheduler has bound all of
its pods (their requests then count from the API), so that two admissions in a row do not
both count the same free GPUs.

Restarts: a TrainJob admitted onto a pool carries it (annotation ``hypersweep.io/pool``), and
when its gang restarts, the TrainJob controller submits it here again before it creates the new
pods, so a restarted gang (after a failed replica or a lost node) is never partial either.

Fairness (several sweeps, one operator): waiting trials of every sweep form one queue in
arrival order. An admission pass goes through it in that order; a trial that does not fit
*blocks* the pools it could use for every trial behind it (no back-filling), so a large gang is
never starved by a stream of small ones, and since a sweep's next trial joins the queue behind
the trials already waiting, sweeps sharing a pool take turns. A trial that cannot fit in any
of its pools even when they are empty is refused (it would wait forever).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep._metrics import operator_metrics
from hypersweep.kube._client import PODS, ApiError, JsonDict, Kube, Resource, object_key
from hypersweep.kube._informer import Informer
from hypersweep.kube._names import JOB_NAME_LABEL
from hypersweep.kube._tpu import TPU_RESOURCE, TpuSlice, chips_per_host, parse_tpu, slices

logger = logging.getLogger("hypersweep.operator")

NODES = Resource("", "v1", "nodes", "Node", namespaced=False)

#: ``schedulingPolicy.gang``: built-in admission, none (pods go straight to the scheduler),
#: or handing the gang to Kueue, to a PodGroup (scheduler-plugins or Volcano), or to
#: kube-scheduler's own gang scheduling (the upstream Workload API).
GANG_MODES = ("builtin", "none", "kueue", "podGroup", "workload")

_SUFFIXES: dict[str, Decimal | int] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}

Demand = dict[str, int]  # resource -> milli-units


def quantity(value: Any) -> int:
    """A Kubernetes quantity (``"100m"``, ``"2"``, ``"1Gi"``) in milli-units."""
    return _quantity(str(value).strip())


@functools.lru_cache(maxsize=4096)
def _quantity(text: str) -> int:
    # Cached: admission reads the same few quantities of every node and pod at each pass.
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            number, factor = text[: -len(suffix)], Decimal(_SUFFIXES[suffix])
            break
    else:
        number, factor = text, Decimal(1)
    try:
        return int((Decimal(number) * factor * 1000).to_integral_value(rounding="ROUND_CEILING"))
    except InvalidOperation:
        raise ConfigError(f"{text!r} is not a resource quantity") from None


# --- pools ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """One node pool a sweep's trials may use."""

    name: str
    node_selector: Mapping[str, str]
    resource: str | None = None  # the accelerator, e.g. nvidia.com/gpu
    per_replica: int = 0
    tolerations: tuple[JsonDict, ...] = ()
    weight: int = 1
    #: A TPU slice shape: each gang is one whole slice of it (see :mod:`hypersweep.kube._tpu`).
    tpu: TpuSlice | None = None
    #: The slice (GKE node pool) admission put a gang on; only on an admitted TPU pool.
    slice: str | None = None

    def matches(self, node: Mapping[str, Any]) -> bool:
        labels = node["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in self.node_selector.items())

    def to_dict(self) -> JsonDict:
        """The plain-data form that :func:`parse_pools` reads (``Sweep.spec.pools``)."""
        data: JsonDict = {
            "name": self.name,
            "nodeSelector": dict(self.node_selector),
            "tolerations": [dict(t) for t in self.tolerations],
            "weight": self.weight,
        }
        if self.tpu is not None:
            data["tpu"] = self.tpu.to_dict()
        elif self.resource:
            data["accelerator"] = {"resource": self.resource, "perReplica": self.per_replica}
        return data

    def with_chips_per_host(self, nodes: Sequence[Mapping[str, Any]], where: str) -> Pool:
        """A TPU pool with its chips per host known (from ``nodes``, see
        :func:`~hypersweep.kube._tpu.chips_per_host`) and requested by every replica; other
        pools as they are."""
        if self.tpu is None:
            return self
        count = chips_per_host(self.tpu, nodes, f"{where}.tpu", self.node_selector)
        shape = dataclasses.replace(self.tpu, chips_per_host=count)
        return dataclasses.replace(self, tpu=shape, per_replica=count)

    def groups(self, nodes: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, list[str]]]:
        """The sets of node names one gang may be placed across, each with its slice: a TPU
        pool's slices (GKE node pools), one at a time, so no gang spans two; any other pool's
        nodes, all together (slice None)."""
        if self.tpu is None:
            return [(None, [str(n["metadata"]["name"]) for n in nodes])]
        return sorted(slices(nodes).items())

    def apply(self, pod_spec: JsonDict, main: JsonDict) -> None:
        """Point one replica's pod spec at this pool (selector, tolerations, accelerator)."""
        pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **self.node_selector}
        if self.tolerations:
            pod_spec["tolerations"] = [*(pod_spec.get("tolerations") or []), *self.tolerations]
        if self.resource and self.per_replica:
            resources = main.setdefault("resources", {})
            for kind in ("requests", "limits"):
                resources.setdefault(kind, {})[self.resource] = str(self.per_replica)


def parse_pools(raw: Any, where: str = "pools") -> tuple[Pool, ...]:
    """Pools from their plain-data form (``Sweep.spec.pools``); ConfigError names the field."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ConfigError(f"{where}: expected a list of pools")
    pools: list[Pool] = []
    for index, item in enumerate(raw):
        if isinstance(item, Pool):
            pools.append(item)
            continue
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{at}: expected a mapping")
        name = str(item.get("name") or "")
        selector = item.get("nodeSelector") or {}
        tpu = parse_tpu(item["tpu"], f"{at}.tpu") if item.get("tpu") is not None else None
        if not name:
            raise ConfigError(f"{at}.name: required")
        if not isinstance(selector, Mapping):
            raise ConfigError(f"{at}.nodeSelector: expected a mapping of node labels")
        if tpu is not None:
            if item.get("accelerator"):
                raise ConfigError(
                    f"{at}.accelerator: a tpu pool requests {TPU_RESOURCE} = chips per host; "
                    "leave accelerator out"
                )
            selector = {**selector, **tpu.node_selector()}
        if not selector:
            raise ConfigError(f"{at}.nodeSelector: give at least one node label")
        accelerator = item.get("accelerator") or {}
        count = accelerator.get("perReplica", 1 if accelerator.get("resource") else 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{at}.accelerator.perReplica: expected an integer >= 0")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise ConfigError(f"{at}.weight: expected an integer")
        pools.append(
            Pool(
                name=name,
                node_selector={str(k): str(v) for k, v in selector.items()},
                resource=TPU_RESOURCE if tpu else accelerator.get("resource") or None,
                per_replica=(tpu.chips_per_host or 0) if tpu else count,
                tolerations=tuple(dict(t) for t in item.get("tolerations") or []),
                weight=weight,
                tpu=tpu,
            )
        )
    if len({pool.name for pool in pools}) != len(pools):
        raise ConfigError(f"{where}: pool names must be unique")
    return tuple(pools)


def pod_requests(pod_spec: Mapping[str, Any]) -> Demand:
    """What a pod requests, as the scheduler counts it: the sum over its containers, or the
    largest init container if more, plus one pod."""
    total: Demand = {}
    for container in pod_spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, 0) + quantity(value)
    for container in pod_spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, 0), quantity(value))
    total["pods"] = 1000
    return total


# --- nodes and bin-packing -----------------------------------------------------------------


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration.get("key") == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and str(
            toleration.get("value") or ""
        ) == str(taint.get("value") or ""):
            return True
    return False


def is_ready(node: Mapping[str, Any]) -> bool:
    """Whether the node's Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def usable(node: Mapping[str, Any], pool: Pool, *, now: bool = True) -> bool:
    """A node of ``pool`` that takes new pods: not cordoned, its taints tolerated and, if
    ``now``, Ready. Without ``now`` (could the gang *ever* run here?), what node conditions
    say for the moment (not Ready, ``node.kubernetes.io/*`` taints) does not count."""
    if not pool.matches(node) or (node.get("spec") or {}).get("unschedulable"):
        return False
    if now and not is_ready(node):
        return False
    return all(
        taint.get("effect") == "PreferNoSchedule"
        or _tolerated(taint, pool.tolerations)
        or (not now and str(taint.get("key", "")).startswith("node.kubernetes.io/"))
        for taint in (node.get("spec") or {}).get("taints") or []
    )


def allocatable(node: Mapping[str, Any]) -> Demand:
    raw = (node.get("status") or {}).get("allocatable") or {}
    return {name: quantity(value) for name, value in raw.items()}


def place(replicas: Sequence[Demand], free: Mapping[str, Demand]) -> dict[str, list[int]] | None:
    """Bin-pack ``replicas`` onto nodes with ``free`` room: largest replica first, each on the
    node it leaves the least room on (best fit). Returns node -> replica indexes, or None when
    some replica fits nowhere. ``free`` is not changed."""
    room = {node: dict(left) for node, left in free.items()}
    placement: dict[str, list[int]] = {}
    order = sorted(range(len(replicas)), key=lambda i: -sum(replicas[i].values()))
    for index in order:
        need = replicas[index]
        best: tuple[int, str] | None = None
        for node, left in room.items():
            if all(left.get(name, 0) >= amount for name, amount in need.items()):
                slack = sum(left.get(name, 0) - amount for name, amount in need.items())
                if best is None or (slack, node) < best:
                    best = (slack, node)
        if best is None:
            return None
        node = best[1]
        for name, amount in need.items():
            room[node][name] = room[node].get(name, 0) - amount
        placement.setdefault(node, []).append(index)
    return placement


# --- admission -----------------------------------------------------------------------------


@dataclass
class GangRequest:
    """One trial's gang waiting for admission.

    ``demands`` gives, per pool name, what each replica requests there.
    """

    key: str  # namespace/TrainJob name
    owner: str  # the sweep, for messages
    pools: tuple[Pool, ...]
    demands: Mapping[str, Sequence[Demand]]
    seq: int = 0
    since: float = field(default_factory=time.monotonic)
    admitted: Pool | None = None
    reason: str = ""


@dataclass
class _Reservation:
    namespace: str
    name: str
    replicas: int
    per_node: dict[str, Demand]


def _use(pod: Mapping[str, Any]) -> tuple[str, Demand] | None:
    """The node a live pod is bound to or nominated for, and what it requests there; None for
    a pod that holds no room (not placed yet, or terminated)."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    spec = pod.get("spec") or {}
    node = spec.get("nodeName") or status.get("nominatedNodeName")
    return (str(node), pod_requests(spec)) if node else None


class _PodUsage:
    """What live pods request per node, kept up to date from pod events.

    An admission pass used to recount every pod's requests; with thousands of pods that
    recount was most of the operator's work. Each event now moves one pod's requests instead.
    Pods are keyed by the informer they come from too, so a pod that moves between informers
    (its job label removed) is never counted twice or dropped by the order of their events.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[tuple[int, str], tuple[str, Demand]] = {}
        self._by_node: dict[str, Demand] = {}
        # Keys an event touched while a listing was being read: the listing is older for them.
        self._touched: set[tuple[int, str]] | None = None

    def begin_seeding(self) -> None:
        """Call before adding the handlers: events from then on win over the listing."""
        with self._lock:
            self._touched = set()

    def seed(self, source: int, pods: Sequence[Mapping[str, Any]]) -> None:
        """Count the pods an informer held when its handler was added."""
        with self._lock:
            touched = self._touched or set()
            for pod in pods:
                key = (source, object_key(pod))
                if key not in touched and key not in self._pods:
                    self._set(key, _use(pod))

    def end_seeding(self) -> None:
        with self._lock:
            self._touched = None

    def changed(self, source: int, kind: str, pod: Mapping[str, Any]) -> None:
        key = (source, object_key(pod))
        use = None if kind == "DELETED" else _use(pod)
        with self._lock:
            if self._touched is not None:
                self._touched.add(key)
            self._set(key, use)

    def _set(self, key: tuple[int, str], use: tuple[str, Demand] | None) -> None:
        old = self._pods.pop(key, None)
        if old is not None:
            left = self._by_node[old[0]]
            for name, amount in old[1].items():
                left[name] -= amount
            if not any(left.values()):
                del self._by_node[old[0]]
        if use is not None:
            self._pods[key] = use
            total = self._by_node.setdefault(use[0], {})
            for name, amount in use[1].items():
                total[name] = total.get(name, 0) + amount

    def subtract_from(self, free: dict[str, Demand]) -> None:
        """Take the pods' requests off ``free`` (nodes not in it are skipped)."""
        with self._lock:
            for node, used in self._by_node.items():
                left = free.get(node)
                if left is not None:
                    for name, amount in used.items():
                        left[name] = left.get(name, 0) - amount

    def of(self, source: int, pod: Mapping[str, Any]) -> tuple[str, Demand] | None:
        """What ``pod`` (of the informer ``source``) is counted as, if anything."""
        with self._lock:
            return self._pods.get((source, object_key(pod)))


class GangAdmission:
    """Admits trials' gangs onto node pools, for every sweep this process runs.

    Thread-safe: each sweep's launcher calls :meth:`submit`, :meth:`pump` and :meth:`withdraw`
    from its own thread. Node and pod state comes from informers (all namespaces).

    Args:
        kube: the API client.
        min_interval: the shortest time between two admission passes.
        nodes: a node informer to share (the operator's TrainJob controller has one); default:
            an own one.
        trial_pods: an informer of the trial pods (those labelled with their job's name,
            indexed by it) of one namespace or all, to share; the other pods then come from
            informers of their own (other namespaces', and pods without that label). Default:
            one informer of every pod. Sharing spares decoding each trial pod event twice, the
            operator's largest cost at scale.
    """

    def __init__(
        self,
        kube: Kube,
        *,
        min_interval: float = 0.2,
        nodes: Informer | None = None,
        trial_pods: Informer | None = None,
    ) -> None:
        self.kube = kube
        self.min_interval = min_interval
        self._own: list[Informer] = []  # made here, so stopped here
        if nodes is None:
            nodes = Informer(kube, NODES)
            self._own.append(nodes)
        self.nodes = nodes
        # The pods together are every pod, each in exactly one informer.
        self._other_pods: list[Informer] = []
        if trial_pods is not None:
            if trial_pods.label_selector != JOB_NAME_LABEL or trial_pods.index != JOB_NAME_LABEL:
                raise ValueError("trial_pods: expected an informer of trial pods, by job")
            self.pods = trial_pods  # a gang's pods by its job
            space = trial_pods.namespace
            self._other_pods.append(
                Informer(kube, PODS, namespace=space, label_selector=f"!{JOB_NAME_LABEL}")
            )
            if space is not None:
                self._other_pods.append(
                    Informer(kube, PODS, field_selector=f"metadata.namespace!={space}")
                )
        else:
            self.pods = Informer(kube, PODS, index=JOB_NAME_LABEL)
            self._own.append(self.pods)
        self._own += self._other_pods
        self._lock = threading.Lock()
        self._waiting: dict[str, GangRequest] = {}  # by key, in arrival order
        self._reserved: dict[str, _Reservation] = {}
        self._seq = 0
        self._changes = 0
        self._last_pass: tuple[int, int] = (-1, -1)
        self._last_time = 0.0
        self._started = False
        # What fits_empty found, valid while no node changes what it depends on (its shape).
        self._node_shapes: dict[str, tuple[str, ...]] = {}
        self._node_version = 0
        self._fits: dict[tuple[int, str, str], bool] = {}
        # Each pool's usable nodes, valid while no node changes its shape or readiness.
        self._node_ready: dict[str, bool] = {}
        self._usable_version = 0
        self._usable: dict[str, tuple[int, list[tuple[str | None, list[str]]]]] = {}
        # Parsed node allocatable, with the raw form it came from: mostly unchanged.
        self._allocatable: dict[str, tuple[Any, Demand]] = {}
        self._usage = _PodUsage()

    def start(self, timeout: float = 60.0) -> None:
        """Start watching nodes and pods (once); returns when both caches are filled, for
        every caller (sweeps start concurrently)."""
        with self._lock:
            if not self._started:
                self._started = True
                self.nodes.add_handler(self._node_changed)
                for node in self.nodes.list():  # a shared informer may have listed already
                    self._node_changed("ADDED", node)
                self._usage.begin_seeding()
                for source, informer in enumerate(self._pod_informers()):
                    informer.add_handler(functools.partial(self._pod_changed, source))
                    # A shared informer may have listed already: count what it holds.
                    self._usage.seed(source, informer.list())
                    informer.start()
        for informer in self._informers():
            if not informer.wait_synced(timeout):
                raise TimeoutError(f"could not list {informer.resource.plural}")
        self._usage.end_seeding()

    def stop(self) -> None:
        """Stop the informers of its own (shared ones belong to whoever shared them)."""
        for informer in self._own:
            informer.stop()

    def _informers(self) -> list[Informer]:
        return [self.nodes, *self._pod_informers()]

    def _pod_informers(self) -> list[Informer]:
        """Every pod is in one of these; the first holds the trial pods, by job."""
        return [self.pods, *self._other_pods]

    def _pod_changed(self, source: int, kind: str, pod: JsonDict) -> None:
        self._usage.changed(source, kind, pod)
        self._changes += 1

    # --- what fits -------------------------------------------------------------------------

    def free(self) -> dict[str, Demand]:
        """Free room per node: allocatable minus requests of live pods bound to or nominated
        for the node, minus reservations of admitted gangs not fully bound yet."""
        free: dict[str, Demand] = {}
        for item in self.nodes.list():
            name = item["metadata"]["name"]
            raw = (item.get("status") or {}).get("allocatable")
            known = self._allocatable.get(name)
            if known is None or known[0] != raw:
                known = self._allocatable[name] = (raw, allocatable(item))
            free[name] = dict(known[1])
        self._usage.subtract_from(free)
        for reservation in self._reserved.values():
            # Its pods count by its reservation until the whole gang is bound.
            for use in self._gang_uses(reservation):
                if use[0] in free:
                    left = free[use[0]]
                    for name, amount in use[1].items():
                        left[name] = left.get(name, 0) + amount
            for node, demand in reservation.per_node.items():
                if node in free:
                    for name, amount in demand.items():
                        free[node][name] = free[node].get(name, 0) - amount
        return free

    def _gang_uses(self, reservation: _Reservation) -> list[tuple[str, Demand]]:
        """What the pods of a reserved gang are counted as: from the trial pods' index, or,
        for a namespace that informer does not watch, from the others."""
        labels = {JOB_NAME_LABEL: reservation.name}
        if self.pods.namespace in (None, reservation.namespace):
            sources = [(0, self.pods)]
        else:
            sources = list(enumerate(self._pod_informers()))[1:]
        uses = []
        for source, informer in sources:
            for pod in informer.list(reservation.namespace, labels):
                use = self._usage.of(source, pod)
                if use is not None:
                    uses.append(use)
        return uses

    def fits_empty(self, pool: Pool, replicas: Sequence[Demand]) -> bool:
        """Whether the gang would fit in ``pool`` with nothing else running there.

        Remembered until a node is added, removed, or changes its labels, allocatable
        resources, taints or cordon: every trial of a sweep asks the same question.
        """
        key = (self._node_version, repr(pool), repr(list(replicas)))
        known = self._fits.get(key)
        if known is not None:
            return known
        nodes = [n for n in self.nodes.list() if usable(n, pool, now=False)]
        empty = {n["metadata"]["name"]: allocatable(n) for n in nodes}
        fits = any(
            bool(names) and place(replicas, {n: empty[n] for n in names}) is not None
            for _, names in pool.groups(nodes)
        )
        if len(self._fits) > 1024:
            self._fits.clear()
        self._fits[key] = fits
        return fits

    def _node_changed(self, kind: str, node: JsonDict) -> None:
        """Count the node changes that can change admission: its shape (labels, allocatable,
        taints, cordon: what :meth:`fits_empty` finds) and its readiness (which nodes take
        pods now). Heartbeats, which change a node every few seconds, change neither, so
        they neither start an admission pass nor make one list the nodes again."""
        meta = node["metadata"]
        spec = node.get("spec") or {}
        shape = (
            json.dumps(meta.get("labels") or {}, sort_keys=True),
            json.dumps((node.get("status") or {}).get("allocatable") or {}, sort_keys=True),
            json.dumps(spec.get("taints") or [], sort_keys=True),
            str(bool(spec.get("unschedulable"))),
        )
        name = str(meta["name"])
        if kind == "DELETED":
            self._node_shapes.pop(name, None)
            self._allocatable.pop(name, None)
            self._node_ready.pop(name, None)
            self._node_version += 1
        elif self._node_shapes.get(name) != shape:
            self._node_shapes[name] = shape
            self._node_ready[name] = is_ready(node)
            self._node_version += 1
        elif self._node_ready.get(name) != (now_ready := is_ready(node)):
            self._node_ready[name] = now_ready
        else:
            return
        self._usable_version += 1
        self._changes += 1

    def _usable_groups(self, pool: Pool) -> list[tuple[str | None, list[str]]]:
        """The pool's usable nodes (by slice, for a TPU pool), listed again only after a node
        changed its shape or readiness: every gang of every pass looks at the same pools."""
        key = repr(pool)
        version = self._usable_version  # before listing: a change meanwhile lists again
        known = self._usable.get(key)
        if known is None or known[0] != version:
            if len(self._usable) > 256:
                self._usable.clear()
            groups = pool.groups([n for n in self.nodes.list() if usable(n, pool)])
            known = self._usable[key] = (version, groups)
        return known[1]

    # --- the queue -------------------------------------------------------------------------

    def submit(self, request: GangRequest) -> None:
        """Queue a gang; it is admitted by a later :meth:`pump` in arrival order.

        A gang submitted again (restarted) supersedes its earlier admission: the reservation
        of its old pods, which are gone or going, no longer holds room.
        """
        with self._lock:
            self._reserved.pop(request.key, None)
            self._seq += 1
            request.seq = self._seq
            self._waiting.pop(request.key, None)  # superseded: it joins the back of the queue
            self._waiting[request.key] = request

    def withdraw(self, key: str) -> None:
        """Forget a gang: waiting, or admitted and holding a reservation (its trial ended)."""
        with self._lock:
            self._waiting.pop(key, None)
            self._reserved.pop(key, None)
            self._changes += 1

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def pump(self) -> None:
        """One admission pass over the waiting gangs, in arrival order (see the module doc)."""
        with self._lock:
            state = (self._changes, self._seq)
            now = time.monotonic()
            if now - self._last_time < self.min_interval:
                return
            if state == self._last_pass and now - self._last_time < 1.0:
                return  # nothing changed since the last pass
            self._last_pass, self._last_time = state, now
            self._release_bound()
            if not self._waiting:
                return
            free = self.free()
            blocked: set[str] = set()
            admitted: list[float] = []  # seconds each admitted gang waited
            usable_nodes: dict[int, list[tuple[str | None, list[str]]]] = {}  # by pool (id)
            for request in list(self._waiting.values()):
                if blocked and all(pool.name in blocked for pool in request.pools):
                    continue  # behind a gang that waits for the same pools
                choice = self._choose(request, free, blocked, usable_nodes)
                if choice is None:
                    blocked.update(pool.name for pool in request.pools)
                    continue
                pool, placement = choice
                replicas = request.demands[pool.name]
                per_node: dict[str, Demand] = {}
                for node, indexes in placement.items():
                    total = per_node.setdefault(node, {})
                    for index in indexes:
                        for name, amount in replicas[index].items():
                            total[name] = total.get(name, 0) + amount
                            free[node][name] = free[node].get(name, 0) - amount
                namespace, _, name = request.key.partition("/")
                self._reserved[request.key] = _Reservation(namespace, name, len(replicas), per_node)
                request.admitted = pool
                admitted.append(now - request.since)
                del self._waiting[request.key]
        if admitted:  # outside the lock: the metric has its own
            wait = operator_metrics().admission_wait
            for seconds in admitted:
                wait.observe(seconds)

    def _choose(
        self,
        request: GangRequest,
        free: dict[str, Demand],
        blocked: set[str],
        usable_nodes: dict[int, list[tuple[str | None, list[str]]]],
    ) -> tuple[Pool, dict[str, list[int]]] | None:
        """The pool for a gang now: highest weight, then the most accelerators left (spread).

        ``usable_nodes`` keeps each pool's usable nodes (by slice, for TPU pools) for the pass,
        by the pool's id (cheaper than :meth:`_usable_groups`'s key). Pools are tried heaviest
        first, and none lighter than one that fits: it could not rank above it.
        """
        best: tuple[tuple[int, int], Pool, dict[str, list[int]]] | None = None
        pools = sorted(
            (pool for pool in request.pools if pool.name not in blocked), key=lambda p: -p.weight
        )
        for pool in pools:
            if best is not None and pool.weight < best[1].weight:
                break
            groups = usable_nodes.get(id(pool))
            if groups is None:
                groups = usable_nodes[id(pool)] = self._usable_groups(pool)
            for slice_name, names in groups:
                room = {name: free[name] for name in names if name in free}
                placement = place(request.demands[pool.name], room)
                if placement is None:
                    request.reason = f"pool {pool.name} has no room for all replicas"
                    continue
                spare = sum(left.get(pool.resource or "pods", 0) for left in room.values())
                rank = (pool.weight, spare)
                if best is None or rank > best[0]:
                    # A TPU gang's pods are pinned to the slice it fits on (its node pool).
                    on = dataclasses.replace(pool, slice=slice_name) if slice_name else pool
                    best = (rank, on, placement)
        if best is None:
            return None
        return best[1], best[2]

    def _release_bound(self) -> None:
        """Drop reservations whose pods are all bound: the API accounts for them now."""
        if not self._reserved:
            return
        for job, reservation in list(self._reserved.items()):
            pods = self.pods.list(reservation.namespace, {JOB_NAME_LABEL: reservation.name})
            bound = sum(
                1
                for pod in pods
                if (pod.get("spec") or {}).get("nodeName")
                and not pod["metadata"].get("deletionTimestamp")
            )
            if bound >= reservation.replicas:
                del self._reserved[job]


def describe_demand(replicas: Sequence[Demand], pool: Pool) -> str:
    """``4 replicas x nvidia.com/gpu=1`` for messages."""
    if pool.resource:
        return f"{len(replicas)} replicas x {pool.resource}={pool.per_replica}"
    return f"{len(replicas)} replicas"


# --- handing the gang to another scheduler ---------------------------------------------------

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_GROUP_COUNT = "kueue.x-k8s.io/pod-group-total-count"
COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
POD_GROUPS = {
    "schedulerPlugins": Resource("scheduling.x-k8s.io", "v1alpha1", "podgroups", "PodGroup"),
    "volcano": Resource("scheduling.volcano.sh", "v1beta1", "podgroups", "PodGroup"),
}
_DEFAULT_SCHEDULERS = {"schedulerPlugins": "scheduler-plugins-scheduler", "volcano": "volcano"}
#: The upstream Workload API (alpha in Kubernetes 1.35/1.36, behind the GenericWorkload and
#: GangScheduling feature gates): a Workload holds the gang's template, a PodGroup made from it
#: is the gang at run time, and each pod names its PodGroup in ``spec.schedulingGroup``.
WORKLOADS = Resource("scheduling.k8s.io", "v1alpha2", "workloads", "Workload")
WORKLOAD_POD_GROUPS = Resource("scheduling.k8s.io", "v1alpha2", "podgroups", "PodGroup")
#: The one PodGroupTemplate of a trial's Workload: all of its replicas.
WORKLOAD_GANG_TEMPLATE = "replicas"


@dataclass(frozen=True)
class SchedulingPolicy:
    """Who makes a trial's replicas start together (``Sweep.spec.schedulingPolicy``).

    * ``builtin`` (default): the operator's gang admission onto ``pools``;
    * ``none``: pods go to the scheduler as soon as the trial starts (partial gangs can
      deadlock a pool: only for comparison, or for single-replica trials);
    * ``kueue``: Kueue admits the gang. Pods carry ``kueue.x-k8s.io/queue-name`` and Kueue's
      pod-group label and total-count annotation, so Kueue's webhook creates them gated
      (suspended) and ungates the whole group at once; the TrainJob carries the queue label;
    * ``podGroup``: a PodGroup with ``minMember`` = all replicas, for the coscheduling plugin of
      scheduler-plugins (``scheduling.x-k8s.io/v1alpha1``) or Volcano
      (``scheduling.volcano.sh/v1beta1``), and pods that name it and that scheduler;
    * ``workload``: kube-scheduler's own gang scheduling (``scheduling.k8s.io/v1alpha2``): a
      Workload with one gang template of ``minCount`` = all replicas, the PodGroup made from it,
      and pods that name that PodGroup in ``spec.schedulingGroup``. No second scheduler, but the
      cluster must serve the alpha API (feature gates ``GenericWorkload`` and
      ``GangScheduling``, ``--runtime-config=scheduling.k8s.io/v1alpha2=true``).
    """

    gang: str = "builtin"
    queue_name: str | None = None
    provider: str = "schedulerPlugins"
    scheduler_name: str | None = None
    schedule_timeout_seconds: int | None = None

    def job_labels(self) -> dict[str, str]:
        return (
            {KUEUE_QUEUE_LABEL: self.queue_name} if self.gang == "kueue" and self.queue_name else {}
        )

    def pod_template(self, template: Mapping[str, Any], group: str, total: int) -> JsonDict:
        """A replica's pod template with what the gang scheduler needs to see the gang."""
        out: JsonDict = dict(template)
        meta: JsonDict = dict(out.get("metadata") or {})
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        spec: JsonDict = dict(out.get("spec") or {})
        if self.gang == "kueue":
            if self.queue_name:
                labels[KUEUE_QUEUE_LABEL] = self.queue_name
            labels[KUEUE_GROUP_LABEL] = group
            annotations[KUEUE_GROUP_COUNT] = str(total)
        elif self.gang == "podGroup":
            if self.provider == "volcano":
                annotations[VOLCANO_GROUP_ANNOTATION] = group
            else:
                labels[COSCHEDULING_LABEL] = group
            spec["schedulerName"] = self.scheduler_name or _DEFAULT_SCHEDULERS[self.provider]
        elif self.gang == "workload":
            spec["schedulingGroup"] = {"podGroupName": group}
            if self.scheduler_name:
                spec["schedulerName"] = self.scheduler_name
        else:
            return out
        meta["labels"], meta["annotations"], out["metadata"], out["spec"] = (
            labels,
            annotations,
            meta,
            spec,
        )
        return out

    def pod_group_resource(self) -> Resource:
        return WORKLOAD_POD_GROUPS if self.gang == "workload" else POD_GROUPS[self.provider]

    def gang_objects(
        self,
        metadata: Mapping[str, Any],
        total: int,
        controller: Mapping[str, str] | None = None,
    ) -> list[tuple[Resource, JsonDict]]:
        """What to create, in order, before a trial's pods so that the scheduler sees one gang.

        ``controller`` (``apiGroup``, ``kind``, ``name``) is the object whose pods form the gang,
        recorded as the Workload's ``controllerRef``. Empty for modes with nothing to create.
        """
        if self.gang == "podGroup":
            return [(self.pod_group_resource(), self.pod_group(metadata, total))]
        if self.gang != "workload":
            return []
        policy: JsonDict = {"gang": {"minCount": total}}
        workload_spec: JsonDict = {
            "podGroupTemplates": [{"name": WORKLOAD_GANG_TEMPLATE, "schedulingPolicy": policy}]
        }
        if controller:
            workload_spec["controllerRef"] = dict(controller)
        workload: JsonDict = {
            "apiVersion": WORKLOADS.api_version,
            "kind": WORKLOADS.kind,
            "metadata": dict(metadata),
            "spec": workload_spec,
        }
        # The PodGroup copies the template's policy, as the API asks of whoever creates it.
        group: JsonDict = {
            "apiVersion": WORKLOAD_POD_GROUPS.api_version,
            "kind": WORKLOAD_POD_GROUPS.kind,
            "metadata": dict(metadata),
            "spec": {
                "podGroupTemplateRef": {
                    "workload": {
                        "workloadName": metadata["name"],
                        "podGroupTemplateName": WORKLOAD_GANG_TEMPLATE,
                    }
                },
                "schedulingPolicy": policy,
            },
        }
        return [(WORKLOADS, workload), (WORKLOAD_POD_GROUPS, group)]

    def pod_group(self, metadata: Mapping[str, Any], total: int) -> JsonDict:
        """The PodGroup of one trial's gang: all replicas or none."""
        resource = self.pod_group_resource()
        spec: JsonDict = {"minMember": total}
        if self.provider == "volcano" and self.queue_name:
            spec["queue"] = self.queue_name
        if self.provider == "schedulerPlugins" and self.schedule_timeout_seconds:
            spec["scheduleTimeoutSeconds"] = self.schedule_timeout_seconds
        return {
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": dict(metadata),
            "spec": spec,
        }


#: The gangs whose objects are an API the cluster may not serve (checked by check_served).
GANG_APIS = ("podGroup", "workload")


def check_served(kube: Kube, policy: SchedulingPolicy, where: str = "schedulingPolicy") -> None:
    """Refuse, before any trial starts, a policy whose gang objects the cluster does not serve.

    Asks the API server's discovery (open to every authenticated client: no RBAC rule), so a
    sweep with ``gang: workload`` on a cluster without the alpha API fails at once with the fix,
    rather than each of its trials failing. Other answers (no discovery access, say) leave the
    check to the creation of each trial's objects.
    """
    if policy.gang not in GANG_APIS:
        return
    resources = [resource for resource, _ in policy.gang_objects({"name": "x"}, 1)]
    if policy.gang == "workload":
        fix = (
            "kube-scheduler's gang scheduling needs Kubernetes 1.36 or later with the feature "
            "gates GenericWorkload and GangScheduling on (API server, scheduler and "
            "controller-manager) and --runtime-config=scheduling.k8s.io/v1alpha2=true on the "
            "API server"
        )
    else:
        fix = f"install the {policy.provider} scheduler and its PodGroup CRD first"
    for resource in resources:
        try:
            found = kube.request("GET", f"/apis/{resource.group}/{resource.version}")
        except ApiError as error:
            if error.status != 404:
                return
            found = {"resources": []}
        if resource.plural not in {r.get("name") for r in found.get("resources") or []}:
            raise ConfigError(
                f"{where}.gang: {policy.gang} needs {resource.api_version} {resource.kind}, "
                f"which this cluster does not serve: {fix}"
            )


def parse_policy(raw: Any, where: str = "schedulingPolicy") -> SchedulingPolicy:
    """The scheduling policy from its plain-data form; ConfigError names the field."""
    if raw is None:
        return SchedulingPolicy()
    if isinstance(raw, SchedulingPolicy):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    gang = str(raw.get("gang") or "builtin")
    if gang not in GANG_MODES:
        raise ConfigError(f"{where}.gang: expected one of {', '.join(GANG_MODES)}, got {gang!r}")
    provider = str(raw.get("provider") or "schedulerPlugins")
    if provider not in POD_GROUPS:
        raise ConfigError(f"{where}.provider: expected one of {', '.join(POD_GROUPS)}")
    if gang == "kueue" and not raw.get("queueName"):
        raise ConfigError(f"{where}.queueName: required with gang: kueue (a Kueue LocalQueue)")
    timeout = raw.get("scheduleTimeoutSeconds")
    return SchedulingPolicy(
        gang=gang,
        queue_name=raw.get("queueName") or None,
        provider=provider,
        scheduler_name=raw.get("schedulerName") or None,
        schedule_timeout_seconds=int(timeout) if timeout else None,
    )
