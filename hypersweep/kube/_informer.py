"""Informers, a work queue and a controller loop: the client-go pattern, in a few hundred lines.

Why not kopf (the usual Python operator framework)? Its model is edge-triggered handlers per
change (``@kopf.on.create``, ``on.update``) with per-object progress stored in annotations, and its
leader election is its own ``KopfPeering`` resource. The controllers here are level-triggered
instead: every reconcile reads the whole observed state (the resource, its pods, services) and
converges it on the desired state, whatever events were missed, coalesced or repeated; the only
memory is the resource's own status. That is exactly what client-go's informer + work queue
gives Go controllers, it needs nothing beyond the ``kubernetes`` client, it runs on threads
(the orchestrator loop that a Sweep runs is synchronous code), and leader election uses a
standard ``coordination.k8s.io`` Lease (``_leader``), which ``kubectl`` and other tools
understand.

* :class:`Informer` lists then watches one resource type, keeps a cache of every object, and
  tells handlers what changed. A watch that expires is resumed from the last resource version;
  one that is too old (410) is replaced by a fresh list. Like client-go's indexers, it can
  index its cache by one label (a TrainJob's pods by the job's name), so a reconcile finds the
  objects it owns without scanning every object of the cluster.
* :class:`WorkQueue` holds keys (``namespace/name``) to reconcile. A key is queued once however
  many events arrive for it, is handed to one worker at a time, and can be requeued after a
  delay or with exponential back-off after an error.
* :class:`Controller` runs worker threads that take keys from the queue and reconcile them.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from hypersweep._metrics import operator_metrics
from hypersweep.kube._client import PODS, ApiError, JsonDict, Kube, Resource, object_key

logger = logging.getLogger("hypersweep.operator")

Handler = Callable[[str, JsonDict], None]
Transform = Callable[[JsonDict], JsonDict]

#: What of a container the controllers read (what it requests, to count capacity; its name).
_CONTAINER_KEEP = ("name", "image", "resources")
#: What of a pod's spec the controllers never read: the bulk of a trial pod (its environment,
#: volumes, commands), which would otherwise be held for every pod of every running trial.
_POD_SPEC_DROP = ("volumes",)


def trim(obj: JsonDict) -> JsonDict:
    """Drop what no controller reads, before an object is cached (client-go's transform).

    ``metadata.managedFields`` (server-side apply's bookkeeping, often the largest part of an
    object) and ``kubectl apply``'s copy of the last applied object go from every object.
    """
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if annotations:
            annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    return obj


def trim_pod(obj: JsonDict) -> JsonDict:
    """:func:`trim`, and of a pod's spec only what the controllers read: its containers' names,
    images and resources, and the rest of the spec but its volumes (the node, scheduling,
    tolerations). A trial pod's environment and volumes are most of its size."""
    trim(obj)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        for key in _POD_SPEC_DROP:
            spec.pop(key, None)
        for field in ("containers", "initContainers"):
            if spec.get(field):
                spec[field] = [
                    {key: c[key] for key in _CONTAINER_KEEP if key in c} for c in spec[field]
                ]
    return obj


class Informer:
    """A watched, cached view of one resource type (in one namespace or all).

    Args:
        kube: the API client.
        resource: what to watch.
        namespace: the namespace to watch; None for all.
        label_selector: only objects with these labels.
        field_selector: only objects with these fields.
        index: a label whose value, with the namespace, indexes the cache (see :meth:`list`).
        transform: applied to each object before it is cached and handed to handlers; by
            default :func:`trim_pod` for pods and :func:`trim` for the rest.
    """

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 240,
        index: str | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.kube = kube
        self.transform = transform or (trim_pod if resource == PODS else trim)
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self._cache: dict[str, JsonDict] = {}
        self.index = index
        self._indexed: dict[tuple[str, str], dict[str, JsonDict]] = {}  # (ns, value) -> objects
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(event_type, obj)`` for every change (ADDED, MODIFIED, DELETED)."""
        self._handlers.append(handler)

    def remove_handler(self, handler: Handler) -> None:
        """Stop calling ``handler`` (a user of a shared informer that is done)."""
        if handler in self._handlers:
            self._handlers = [h for h in self._handlers if h != handler]

    def start(self) -> None:
        """Start listing and watching (once: an informer shared by several users is started
        by each of them)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"informer-{self.resource.plural}", daemon=True
            )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float = 60.0) -> bool:
        """Wait for the first complete list; the cache is usable after it."""
        return self._synced.wait(timeout)

    # --- reading the cache ---------------------------------------------------------------

    def get(self, namespace: str, name: str) -> JsonDict | None:
        with self._lock:
            return self._cache.get(f"{namespace}/{name}")

    def list(
        self, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[JsonDict]:
        """Cached objects in ``namespace`` (all if None) whose labels include ``labels``: from
        the index when ``namespace`` and the index label are given."""
        wanted = dict(labels or {})
        with self._lock:
            if self.index is not None and namespace is not None and self.index in wanted:
                objects = list(self._indexed.get((namespace, wanted[self.index]), {}).values())
            else:
                objects = list(self._cache.values())
        if namespace is None and not wanted:
            return objects
        return [
            obj
            for obj in objects
            if (namespace is None or obj["metadata"].get("namespace") == namespace)
            and all(obj["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]

    # --- list and watch ------------------------------------------------------------------

    def _run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                failures = 0
            except _Expired:
                resource_version = None
            except Exception as error:  # noqa: BLE001 - an informer must outlive API hiccups
                failures += 1
                if not self._stop.is_set():
                    logger.warning("watch of %s failed: %s", self.resource.plural, error)
                resource_version = None
                self._stop.wait(min(0.2 * 2**failures, 5.0))

    def _relist(self) -> str:
        listing = self.kube.list(
            self.resource,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
        )
        fresh = {object_key(obj): self.transform(obj) for obj in listing.get("items") or []}
        with self._lock:
            old, self._cache = self._cache, fresh
            self._indexed = {}
            for key, obj in fresh.items():
                self._index(key, obj)
        for key, obj in fresh.items():
            self._emit("MODIFIED" if key in old else "ADDED", obj)
        for key, obj in old.items():
            if key not in fresh:
                self._emit("DELETED", obj)
        self._synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        events = self.kube.watch(
            self.resource,
            self.namespace,
            resource_version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=self.watch_timeout,
        )
        for event in events:
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), obj)
            resource_version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
            obj = self.transform(obj)
            key = object_key(obj)
            with self._lock:
                self._unindex(key, self._cache.get(key))
                if kind == "DELETED":
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = obj
                    self._index(key, obj)
            self._emit(str(kind), obj)
            if self._stop.is_set():
                break
        return resource_version

    def _index_key(self, obj: JsonDict) -> tuple[str, str] | None:
        if self.index is None:
            return None
        meta = obj["metadata"]
        value = (meta.get("labels") or {}).get(self.index)
        return None if value is None else (str(meta.get("namespace", "")), value)

    def _index(self, key: str, obj: JsonDict) -> None:
        """Add ``obj`` to the index (with the lock held)."""
        where = self._index_key(obj)
        if where is not None:
            self._indexed.setdefault(where, {})[key] = obj

    def _unindex(self, key: str, obj: JsonDict | None) -> None:
        """Remove ``obj`` from the index (with the lock held)."""
        where = self._index_key(obj) if obj is not None else None
        if where is not None:
            bucket = self._indexed.get(where, {})
            bucket.pop(key, None)
            if not bucket:
                self._indexed.pop(where, None)

    def _emit(self, kind: str, obj: JsonDict) -> None:
        for handler in self._handlers:
            try:
                handler(kind, obj)
            except Exception:
                logger.exception("informer handler failed")


class _Expired(Exception):
    """The watch's resource version is too old: list again."""


class WorkQueue:
    """Keys to reconcile, each queued once and processed by one worker at a time.

    A key asked for later (:meth:`add_after`) is remembered once, at the earliest time asked:
    the many events of one object in a batch window cost a lookup each, not a timer. One idle
    worker at a time waits for the next such key to fall due; the others sleep until a key is
    queued, so that it does not wake every worker.
    """

    def __init__(self, base_delay: float = 0.05, max_delay: float = 30.0) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._condition = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, str]] = []  # a heap; stale entries are skipped
        self._due: dict[str, float] = {}  # when each delayed key falls due
        self._watched: float | None = None  # the due time a worker waits for, if any
        self._failures: dict[str, int] = {}
        self._closed = False

    def add(self, key: str) -> None:
        with self._condition:
            if self._closed or key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._condition.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds (at once if ``delay`` <= 0); nothing to do if it
        is queued already or due sooner."""
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        with self._condition:
            if self._closed or key in self._dirty or self._due.get(key, due + 1) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._delayed, (due, key))
            if self._watched is None or due < self._watched:
                self._condition.notify()  # a worker to wait for this one

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` again after an exponentially growing delay (after a failure)."""
        with self._condition:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        self.add_after(key, min(self.base_delay * 2**failures, self.max_delay))

    def forget(self, key: str) -> None:
        """Reset ``key``'s back-off after a successful reconcile."""
        with self._condition:
            self._failures.pop(key, None)

    def get(self, timeout: float = 1.0) -> str | None:
        """The next key to process (call :meth:`done` after), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                self._promote_delayed()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    if self._queue or (self._delayed and self._watched is None):
                        self._condition.notify()  # the next key, or the next timer, to another
                    return key
                if self._closed:
                    return None
                now = time.monotonic()
                if now >= deadline:
                    return None
                wait = deadline - now
                due = self._delayed[0][0] if self._delayed else None
                watching = due is not None and (self._watched is None or due < self._watched)
                if watching:
                    assert due is not None
                    self._watched = due
                    wait = min(wait, max(0.0, due - now))
                self._condition.wait(wait)
                if watching and self._watched == due:
                    self._watched = None

    def done(self, key: str) -> None:
        with self._condition:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._condition.notify()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def _promote_delayed(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, key = heapq.heappop(self._delayed)
            if self._due.get(key) != due:
                continue  # asked again for sooner, and queued then
            del self._due[key]
            if key not in self._dirty:
                self._dirty.add(key)
                if key not in self._processing:
                    self._queue.append(key)


Reconcile = Callable[[str], "float | None"]


class Controller:
    """Worker threads that reconcile the keys of a work queue.

    ``reconcile(key)`` converges one object and returns None, or the seconds after which to
    look again (a deadline, a TTL, a pod still terminating). Conflicts (the object changed since
    it was read) and other errors requeue the key with back-off.
    """

    def __init__(self, name: str, reconcile: Reconcile, *, workers: int = 2) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.queue = WorkQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()

    def join(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            metrics = operator_metrics()
            started = time.monotonic()
            try:
                again = self.reconcile(key)
            except ApiError as error:
                if not error.conflict:
                    metrics.reconcile_errors.labels(self.name).inc()
                if error.conflict:
                    logger.debug("%s %s: %s; retrying", self.name, key, error)
                else:
                    logger.warning("%s %s: %s", self.name, key, error)
                self.queue.add_rate_limited(key)
            except Exception:
                metrics.reconcile_errors.labels(self.name).inc()
                logger.exception("%s %s: reconcile failed", self.name, key)
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                metrics.reconcile_duration.labels(self.name).observe(time.monotonic() - started)
                self.queue.done(key)


def enqueue_owner(
    queue: WorkQueue,
    label: str,
    *,
    batch: float = 0.0,
    owner_exists: Callable[[str, str], bool] | None = None,
) -> Handler:
    """An informer handler that queues the owner named by ``label`` of the changed object,
    ``batch`` seconds later: the changes of that time are reconciled at once.

    With ``owner_exists(namespace, name)``, the changes of an object whose owner is gone (its
    objects deleted after it, by the garbage collector) queue nothing: there is nothing left
    to reconcile."""

    def handler(kind: str, obj: JsonDict) -> None:
        del kind
        meta = obj["metadata"]
        owner = (meta.get("labels") or {}).get(label)
        namespace = meta.get("namespace", "")
        if owner and (owner_exists is None or owner_exists(namespace, owner)):
            queue.add_after(f"{namespace}/{owner}", batch)

    return handler


def enqueue_self(queue: WorkQueue) -> Handler:
    """An informer handler that queues the changed object itself."""

    def handler(kind: str, obj: JsonDict) -> None:
        del kind
        queue.add(object_key(obj))

    return handler
