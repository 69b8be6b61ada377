"""Kubernetes Events for what the controllers do, as ``kubectl describe`` shows them.

Events are a log for people, not state: a controller never reads them back, and failing to write
one never fails a reconcile. So, as client-go's event broadcaster does, recording one only puts it
on a bounded queue, and a background thread writes it: a reconcile never waits for an event
write, and a burst that outruns the API server drops events (counted in
:attr:`EventRecorder.dropped`) instead of slowing the controllers down.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from hypersweep.kube._client import EVENTS, JsonDict, Kube
from hypersweep.kube._names import COMPONENT

logger = logging.getLogger("hypersweep.operator")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Events waiting to be written at most (client-go's broadcaster queues 1000 too).
MAX_QUEUED = 1000


class EventRecorder:
    """Writes core/v1 Events about objects, from one component, in the background.

    Args:
        kube: the API client.
        component: ``source.component`` of the events.
        host: ``source.host`` (the operator's identity).
        max_queued: events waiting to be written at most; more are dropped.
    """

    def __init__(
        self,
        kube: Kube,
        component: str = COMPONENT,
        host: str = "",
        *,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.kube = kube
        self.component = component
        self.host = host
        self.dropped = 0
        # Events to write, and markers that :meth:`flush` waits for.
        self._queue: queue.Queue[JsonDict | threading.Event] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """Record ``reason: message`` on ``obj``; ``kind`` is ``Normal`` or ``Warning``."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host or self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        logger.info("%s %s/%s: %s: %s", obj.get("kind"), namespace, meta["name"], reason, message)
        self._start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            logger.debug("event queue full: dropped event %s", reason)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event recorded so far is written (or given up); False on timeout."""
        done = threading.Event()
        self._start()
        try:
            self._queue.put(done, timeout=timeout)  # the writer reaches it after the others
        except queue.Full:
            return False
        return done.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write, name="events", daemon=True)
                self._thread.start()

    def _write(self) -> None:
        """The writer thread: one event after another, in the order they were recorded."""
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self.kube.create(EVENTS, item["metadata"]["namespace"], item)
            except Exception as error:  # noqa: BLE001 - a lost connection too: keep writing
                logger.debug("could not record event %s: %s", item["reason"], error)
