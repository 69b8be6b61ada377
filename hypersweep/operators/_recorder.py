"""Kubernetes Events for what the controllers do, as ``kubectl describe`` shows them.

Events are a log for people, not state: a controller never reads them back, and failing to write
one never fails a reconcile.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from hypersweep.operators._kube import EVENTS, ApiError, Kube
from hypersweep.operators._names import COMPONENT

logger = logging.getLogger("hypersweep.operator")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Writes core/v1 Events about objects, from one component."""

    def __init__(self, kube: Kube, component: str = COMPONENT, host: str = "") -> None:
        self.kube = kube
        self.component = component
        self.host = host

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
        try:
            self.kube.create(EVENTS, namespace, body)
        except ApiError as error:
            logger.debug("could not record event %s: %s", reason, error)
