"""The operator's HTTP endpoint: trials' reports in, decisions out, plus health probes.

One server serves every sweep the process runs; each sweep's launcher registers itself under
``(namespace, sweep)`` and checks the trial's token itself (see ``KubernetesLauncher``). Routes:

* ``POST /v1/namespaces/NS/sweeps/SWEEP/trials/N``: a trial's message (``_channel``).
* ``GET /healthz``: the process is alive (liveness probe).
* ``GET /readyz``: the process serves and takes part in leader election (readiness probe).
  Readiness does not wait for the lease, so that a rolling upgrade's new pod becomes Ready
  while the old one still leads; the operator's Service selects the leader by the label
  ``hypersweep.io/leader`` that the leading pod puts on itself.
* ``GET /leaderz``: 200 while the process leads and runs its controllers, else 503.

Tokens are never logged: request lines are logged at debug level and carry no secret. The
server speaks plain HTTP inside the cluster; where the pod network is not trusted, encrypt it
with the cluster's service mesh or restrict it with a NetworkPolicy.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from hypersweep._metrics import operator_metrics

logger = logging.getLogger("hypersweep.operator")

_TRIAL_PATH = re.compile(r"^/v1/namespaces/([^/]+)/sweeps/([^/]+)/trials/(\d+)$")
_MAX_BODY = 1 << 20


class TrialEndpoint(Protocol):
    """What handles the messages of one sweep's trials."""

    def handle_trial_message(
        self, trial_number: int, token: str, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Handle one message; returns the HTTP status and the JSON answer."""


class ReportServer:
    """A threaded HTTP server for trial messages and probes.

    Args:
        host: the address to bind (all interfaces by default, as a pod serves its Service).
        port: the port to bind; 0 picks a free one (see :attr:`port`).
        ready: what ``/readyz`` reports; always ready if None.
        leading: what ``/leaderz`` reports; same as ``ready`` if None.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        ready: Callable[[], bool] | None = None,
        leading: Callable[[], bool] | None = None,
    ) -> None:
        self._endpoints: dict[tuple[str, str], TrialEndpoint] = {}
        self._retired: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.ready = ready or (lambda: True)
        self.leading = leading or self.ready
        self._server = _QuietServer((host, port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ReportServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="report-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def register(self, namespace: str, sweep: str, endpoint: TrialEndpoint) -> None:
        with self._lock:
            self._endpoints[(namespace, sweep)] = endpoint
            self._retired.discard((namespace, sweep))

    def unregister(
        self, namespace: str, sweep: str, endpoint: TrialEndpoint, *, finished: bool = False
    ) -> None:
        """Stop routing a sweep's messages to ``endpoint``.

        A ``finished`` sweep's trials get 410 Gone from then on (their outcome is stored, so
        they may exit); otherwise 503, and they retry until the sweep runs here again.
        """
        with self._lock:
            if self._endpoints.get((namespace, sweep)) is endpoint:
                del self._endpoints[(namespace, sweep)]
                if finished:
                    self._retired.add((namespace, sweep))

    def endpoint(self, namespace: str, sweep: str) -> TrialEndpoint | None:
        with self._lock:
            return self._endpoints.get((namespace, sweep))

    def retired(self, namespace: str, sweep: str) -> bool:
        with self._lock:
            return (namespace, sweep) in self._retired


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up early (a trial pod being deleted) is not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended early", client_address, exc_info=True)


def _make_handler(server: ReportServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "hypersweep-operator"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            self.answered = status
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, {"status": "ok"})
            elif self.path == "/readyz":
                ready = server.ready()
                self._answer(200 if ready else 503, {"ready": ready})
            elif self.path == "/leaderz":
                leading = server.leading()
                self._answer(200 if leading else 503, {"leading": leading})
            elif self.path == "/metrics":
                data, content_type = operator_metrics().exposition()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            started = time.monotonic()
            self.answered = 0
            try:
                self._post()
            finally:
                metrics = operator_metrics()
                metrics.report_requests.labels(str(self.answered)).inc()
                metrics.report_latency.observe(time.monotonic() - started)

        def _post(self) -> None:
            match = _TRIAL_PATH.match(self.path)
            if match is None:
                self._answer(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._answer(413, {"error": "message too large"})
                return
            try:
                payload = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._answer(400, {"error": "the body is not JSON"})
                return
            authorization = self.headers.get("Authorization") or ""
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                self._answer(401, {"error": "missing bearer token"})
                return
            namespace, sweep, number = match.group(1), match.group(2), int(match.group(3))
            endpoint = server.endpoint(namespace, sweep)
            if endpoint is None:
                if server.retired(namespace, sweep):
                    self._answer(410, {"error": "the sweep has finished"})
                else:
                    self._answer(503, {"error": "the sweep is not running here (yet)"})
                return
            if not isinstance(payload, dict):
                self._answer(400, {"error": "the body must be a JSON object"})
                return
            try:
                status, answer = endpoint.handle_trial_message(number, token.strip(), payload)
            except Exception:
                logger.exception(
                    "handling a message of trial %d of %s/%s", number, namespace, sweep
                )
                status, answer = 500, {"error": "internal error"}
            self._answer(status, answer)

    return Handler
