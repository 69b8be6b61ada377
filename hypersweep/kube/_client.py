"""A small JSON client for the Kubernetes API, on top of the official ``kubernetes`` package.

The official client handles what is hard to get right (kubeconfig and in-cluster configuration,
TLS, client certificates, rotating service-account tokens); its typed model classes are not used.
Objects travel as plain JSON dicts, camelCase, exactly as the API server sends them, so the same
code reads custom resources and core objects, works across client releases, and what the
controllers write is what ``kubectl get -o yaml`` shows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson  # watch streams decode 2x faster than with json: the operator's main cost

from hypersweep._metrics import operator_metrics
from hypersweep.kube._names import GROUP, VERSION

logger = logging.getLogger("hypersweep.operator")

JsonDict = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: JsonDict | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = body or {}
        message = self.body.get("message") or reason
        super().__init__(f"{status} {reason}: {message}")

    @property
    def message(self) -> str:
        """The API server's explanation (e.g. which field a validation rule refused)."""
        return str(self.body.get("message") or self.reason)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: already exists, or the object changed since it was read."""
        return self.status == 409


@dataclass(frozen=True)
class Resource:
    """One kind of API object and where it is served."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path of the collection (in ``namespace``, or all) or of one object."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
TRAINJOBS = Resource(GROUP, VERSION, "trainjobs", "TrainJob")
SWEEPS = Resource(GROUP, VERSION, "sweeps", "Sweep")


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_kind(method: str, path: str, watch: bool = False) -> tuple[str, str]:
    """The verb and resource of a request, as the API server's own counters name them
    (``apiserver_request_total``): ``("list", "pods")``, ``("patch", "trainjobs/status")``.

    A GET is ``watch`` with ``watch=true``, ``list`` on a collection, else ``get``.
    """
    parts = [part for part in path.split("?", 1)[0].strip("/").split("/") if part]
    # /api/v1/... or /apis/GROUP/VERSION/...
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        rest = rest[2:]  # namespaces/NS/plural/...; a namespace itself stays as is
    resource = rest[0] if rest else ""
    if len(rest) >= 3:
        resource += "/" + rest[2]
    if method == "GET":
        verb = "watch" if watch else ("list" if len(rest) == 1 else "get")
    elif method == "DELETE" and len(rest) == 1:
        verb = "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return verb, resource


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` of an object, the key of caches and work queues."""
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def split_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


def owner_reference(obj: Mapping[str, Any], *, controller: bool = True) -> JsonDict:
    """An ownerReference to ``obj``, so that deleting it deletes what it owns."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
    }


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj`` has an ownerReference to the object with ``uid``."""
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


class Kube:
    """JSON requests to one API server, safe to share between threads.

    Args:
        api_client: a ``kubernetes.client.ApiClient``; see :meth:`from_config`.
    """

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    @classmethod
    def from_config(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        """A client from ``kubeconfig`` or, inside a pod, from its service account."""
        from kubernetes import client, config

        configuration = client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        # Every thread that may call at once keeps its connection: an informer's watch, the
        # TrainJob controller's calls (6 per worker, 48 by default), the launcher's creates
        # (16). A smaller pool discards the extra connections, and each new one costs both
        # sides a TLS handshake.
        configuration.connection_pool_maxsize = 128
        return cls(client.ApiClient(configuration))

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] = 30.0,
        stream: bool = False,
    ) -> Any:
        """Send one request; the decoded JSON answer, or the raw response with ``stream``.

        Raises :class:`ApiError` for an error status. The request goes through the client's
        own connection pool (TLS, client certificates, proxy) with its current credentials
        (``auth_settings`` refreshes rotating tokens), which every client release provides.
        """
        import urllib3

        configuration = self.api_client.configuration
        headers = {
            "Accept": "application/json",
            "Content-Type": content_type,
            "User-Agent": "hypersweep-operator",
        }
        for setting in (configuration.auth_settings() or {}).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        params = [
            (key, str(value).lower() if isinstance(value, bool) else value)
            for key, value in (query or {}).items()
            if value is not None
        ]
        url = configuration.host.rstrip("/") + path + ("?" + urlencode(params) if params else "")
        # Counted by the client itself, so that what this process costs the API server is
        # known apart from every other client's requests (exposed at the operator's /metrics).
        verb, kind = request_kind(method, path, watch=bool((query or {}).get("watch")))
        operator_metrics().api_requests.labels(verb, kind).inc()
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        response = self.api_client.rest_client.pool_manager.request(
            method,
            url,
            body=orjson.dumps(body) if body is not None else None,
            headers=headers,
            timeout=urllib3.Timeout(connect=connect, read=read),
            preload_content=False,
            retries=False,
        )
        if stream and 200 <= response.status < 300:
            return response
        try:
            data = response.read()
        finally:
            response.release_conn()
        decoded: Any = {}
        if data:
            try:
                decoded = orjson.loads(data)
            except ValueError:
                decoded = {"message": data.decode(errors="replace")[:500]}
        if not 200 <= response.status < 300:
            raise ApiError(response.status, str(response.reason), decoded)
        return decoded

    # --- verbs ---------------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str | None, name: str) -> JsonDict | None:
        """One object, or None if it does not exist."""
        try:
            result: JsonDict = self.request("GET", resource.path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise
        return result

    def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JsonDict:
        """A list of objects (``items`` plus the list's ``metadata.resourceVersion``)."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        result: JsonDict = self.request("GET", resource.path(namespace), query=query)
        kind = resource.kind
        for item in result.get("items") or []:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", kind)
        return result

    def create(
        self, resource: Resource, namespace: str | None, body: Mapping[str, Any]
    ) -> JsonDict:
        result: JsonDict = self.request("POST", resource.path(namespace), body=dict(body))
        return result

    def replace(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> JsonDict:
        """Replace an object (or its ``status``); 409 if its resourceVersion is not current."""
        path = resource.path(namespace, name, subresource)
        result: JsonDict = self.request("PUT", path, body=dict(body))
        return result

    def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> JsonDict:
        """A JSON merge patch. With ``metadata.resourceVersion`` in ``body`` it is applied only
        if the object has not changed since (409 otherwise): optimistic concurrency."""
        path = resource.path(namespace, name, subresource)
        return self._patch(path, dict(body), MERGE_PATCH)

    def json_patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        operations: Sequence[Mapping[str, Any]],
        *,
        subresource: str | None = None,
    ) -> JsonDict:
        """A JSON patch (RFC 6902): its operations applied in order, all or none. A ``test``
        operation that fails refuses the whole patch (422)."""
        path = resource.path(namespace, name, subresource)
        return self._patch(path, list(operations), JSON_PATCH)

    def _patch(self, path: str, body: Any, content_type: str) -> JsonDict:
        result: JsonDict = self.request("PATCH", path, body=body, content_type=content_type)
        return result

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str = "Background",
        grace_seconds: int | None = None,
    ) -> bool:
        """Delete an object (only the one with ``uid`` if given); False if it was gone."""
        body: JsonDict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        body["propagationPolicy"] = propagation
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            self.request("DELETE", resource.path(namespace, name), body=body)
        except ApiError as error:
            if error.not_found or (error.conflict and uid is not None):
                return False  # gone, or replaced by a new object of the same name
            raise
        return True

    def delete_collection(
        self,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str,
        field_selector: str | None = None,
        propagation: str = "Background",
    ) -> Sequence[JsonDict]:
        """Delete every object the selectors match in one request; the objects it deleted
        (or began to delete: a pod's grace period)."""
        body: JsonDict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        body["propagationPolicy"] = propagation
        query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        result = self.request("DELETE", resource.path(namespace), query=query, body=body)
        items: Sequence[JsonDict] = (result or {}).get("items") or []
        return items

    def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[JsonDict]:
        """Watch events (``{"type": ..., "object": ...}``) from ``resource_version`` on.

        Ends when the server closes the watch after ``timeout_seconds``.
        """
        query = {
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout_seconds,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        response = self.request(
            "GET",
            resource.path(namespace),
            query=query,
            stream=True,
            timeout=(10.0, timeout_seconds + 30.0),
        )
        # What each watch costs to decode, by resource (exposed at the operator's /metrics).
        metrics = operator_metrics()
        events = metrics.watch_events.labels(resource.plural)
        sizes = metrics.watch_bytes.labels(resource.plural)
        try:
            for line in json_lines(response):
                events.inc()
                sizes.inc(len(line))
                yield orjson.loads(line)
        finally:
            response.release_conn()


def json_lines(response: Any) -> Iterator[bytes]:
    """The lines of a watch response (one JSON event each) as they stream in."""
    pieces: list[bytes] = []  # of the line not complete yet
    for chunk in response.stream(amt=None, decode_content=True):
        pieces.append(chunk)
        if b"\n" not in chunk:
            continue
        lines = b"".join(pieces).split(b"\n")
        pieces = [lines.pop()]
        for line in lines:
            if line.strip():
                yield line
    rest = b"".join(pieces)
    if rest.strip():
        yield rest
