"""A test node agent: a kubelet without containers.

kwok makes pods *look* Running, which is enough to test scheduling and controllers, but some
tests need the workload to really run: a trial that writes a result, a worker that exits 3.
The node agent serves one Node the way a kubelet does, through the API server only:

* registers the Node (label ``hypersweep.io/node-agent=true``), keeps its Ready condition and
  its Lease in ``kube-node-lease`` fresh, so the node lifecycle controller treats it as alive;
* watches the pods bound to it (``spec.nodeName``) and runs each container's ``command`` +
  ``args`` as a local process in its own process group, with the container's environment
  (literal values, ``$(VAR)`` expansion, ``fieldRef`` for pod name/namespace/uid/labels/
  annotations/IPs/node, ``configMapKeyRef``/``secretKeyRef``, ``envFrom``) plus ``HOSTNAME``;
  the pod IP is 127.0.0.1, or with ``cluster_dns`` an address of the pod's own whose DNS
  names resolve as cluster DNS would resolve them (:mod:`hypersweep.testing._cluster_dns`);
* reports ``Running`` (pod IP, container statuses), restarts containers as ``restartPolicy``
  says, then ``Succeeded``/``Failed`` with each container's exit code, and enforces
  ``activeDeadlineSeconds``;
* when a pod is deleted, stops its processes (SIGTERM, then SIGKILL after the grace period)
  and removes the pod, as a kubelet does.

Images are ignored: the command runs on the host, with the agent's environment as a base (so
the interpreter of the test run is found). Container output goes to
``<workdir>/pods/<namespace>/<pod>/<container>.log``.

Run it in-process (:class:`NodeAgent`, threads) or as a subprocess::

    python -m hypersweep.testing._node_agent --kubeconfig KUBECONFIG --node NAME

With a kubeconfig for ``system:node:<name>`` (see ``LocalCluster.node_kubeconfig``) the API
server restricts the agent exactly as it restricts a kubelet.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hypersweep.kube._client import json_lines
from hypersweep.testing._cluster_dns import (
    ClusterDns,
    find_nss_wrapper,
    pod_address,
    pod_dns_names,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["NODE_AGENT_LABEL", "NodeAgent", "expand_vars", "main"]

log = logging.getLogger("hypersweep.testing.node_agent")

#: Label on Nodes served by a node agent (pods there really run).
NODE_AGENT_LABEL = "hypersweep.io/node-agent"
_POD_IP = "127.0.0.1"
_MERGE_PATCH = "application/merge-patch+json"
_LEASE_NAMESPACE = "kube-node-lease"
_START_ERROR_EXIT_CODE = 128
_MAX_GRACE_SECONDS = 30.0

JsonDict = dict[str, Any]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents first (Linux ``/proc``; none elsewhere)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        parent = parents.pop()
        for tasks in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(child) for child in tasks.read_text().split()]
                found += children
                parents += children
    return found


def _now() -> str:
    """Current time as a Kubernetes ``Time`` (RFC 3339, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    """Current time as a Kubernetes ``MicroTime`` (used by Leases)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> float | None:
    """Kubernetes ``Time`` -> POSIX timestamp."""
    if not value:
        return None
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` references as Kubernetes does for command, args and env values.

    ``$$`` escapes a dollar sign; references to undefined variables are left unchanged.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def _total_memory() -> str:
    """Physical memory as a quantity string, for the Node's capacity."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    return "16Gi"


class _ContainerStartError(Exception):
    """The container could not be started (kubelet would report CreateContainerError)."""


class _ContainerConfigError(_ContainerStartError):
    """A Secret or ConfigMap the container's environment needs is missing: like a kubelet,
    the container waits (``CreateContainerConfigError``, the pod stays Pending) and the start
    is retried, since the object may still be created."""


#: Seconds between retries of a container waiting for its configuration.
_CONFIG_RETRY_SECONDS = 1.0


class _Container:
    """One container of a pod: its process, restarts and status as reported to the API."""

    def __init__(self, spec: JsonDict, init: bool) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None
        self.restart_count = 0
        self.started_at: str | None = None
        self.state: JsonDict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JsonDict = {}
        self.exit_code: int | None = None
        self.restart_at: float | None = None
        self.config_error = False  # waiting for a missing Secret or ConfigMap
        self.done = False

    def status(self) -> JsonDict:
        """The ``containerStatuses`` entry for this container."""
        running = "running" in self.state
        out: JsonDict = {
            "name": self.name,
            "image": self.spec.get("image") or "none",
            "imageID": "",
            "ready": running and not self.init,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.process is not None:
            out["containerID"] = f"process://{self.process.pid}"
        return out


class _PodRunner(threading.Thread):
    """Runs one pod: init containers in order, then all containers, until the pod ends."""

    def __init__(self, agent: NodeAgent, pod: JsonDict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.init_containers = [_Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [_Container(c, False) for c in spec.get("containers") or []]
        self.pod_dir = agent.workdir / "pods" / self.namespace / self.pod_name
        self.start_time = pod.get("status", {}).get("startTime") or _now()
        self.pod_ip = pod_address(self.uid) if agent.cluster_dns is not None else _POD_IP
        self._delete_grace: float | None = None
        self._ended = False  # run() returned: a deletion asked now is the caller's to finish
        self._forget = threading.Event()  # pod is gone from the API: just kill
        self._wake = threading.Event()
        self._lock = threading.Lock()

    # -- requests from the watch loop ---------------------------------------------------

    def request_delete(self, grace_seconds: float) -> bool:
        """The pod has a deletionTimestamp: stop it within ``grace_seconds``, then remove it.

        False if the runner has already ended (its containers exited by themselves): then the
        caller removes the pod, which nothing else would.
        """
        with self._lock:
            if self._ended:
                return False
            if self._delete_grace is None or grace_seconds < self._delete_grace:
                self._delete_grace = grace_seconds
        self._wake.set()
        return True

    def forget(self) -> None:
        """The pod was removed from the API: kill its processes, report nothing."""
        self._forget.set()
        self._wake.set()

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as err:
            log.exception("pod %s/%s: node agent error", self.namespace, self.pod_name)
            with contextlib.suppress(Exception):
                self._kill_all(0)
                self._patch_status("Failed", reason="NodeAgentError", message=str(err))
        finally:
            for c in self.init_containers + self.containers:
                if c.log_file is not None:
                    c.log_file.close()
            with self._lock:
                self._ended = True
                deleting = self._delete_grace is not None
            if deleting:  # asked while the containers were exiting by themselves
                with contextlib.suppress(Exception):
                    self.agent._delete_pod(self.namespace, self.pod_name, self.uid)
            if self.agent.cluster_dns is not None:
                with contextlib.suppress(OSError):
                    self.agent.cluster_dns.remove(self.uid)
            self.agent._runner_finished(self.uid)

    def _run(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        if self.agent.cluster_dns is not None:
            # Resolvable before any container starts, as an IP is assigned before it starts.
            self.agent.cluster_dns.add(self.uid, self.pod_ip, pod_dns_names(self.pod))
        self._patch_status("Pending")
        for container in self.init_containers:
            if not self._run_init_container(container):
                return
        for container in self.containers:
            self._start(container)
        self._patch_status(self._live_phase())
        deadline_s = self.pod["spec"].get("activeDeadlineSeconds")
        started = _parse_time(self.start_time) or time.time()
        while True:
            if self._handle_stop():
                return
            if deadline_s is not None and time.time() - started > float(deadline_s):
                self._kill_all(0)
                self._collect_exits(allow_restart=False)
                self._patch_status(
                    "Failed",
                    reason="DeadlineExceeded",
                    message=f"Pod was active on the node longer than {deadline_s}s",
                )
                return
            changed = self._collect_exits(allow_restart=True)
            changed |= self._do_restarts()
            if all(c.done for c in self.containers):
                failed = any(c.exit_code != 0 for c in self.containers)
                self._patch_status("Failed" if failed else "Succeeded")
                return
            if changed:
                self._patch_status(self._live_phase())
            self._wake.wait(0.1)
            self._wake.clear()

    def _run_init_container(self, container: _Container) -> bool:
        """Run an init container to completion (with restarts); False if the pod ended."""
        while True:
            self._start(container)
            self._patch_status("Pending")
            while container.process is not None and container.process.poll() is None:
                if self._handle_stop():
                    return False
                self._wake.wait(0.1)
                self._wake.clear()
            if self._handle_stop():
                return False
            self._collect_exits(allow_restart=False, containers=[container])
            if container.exit_code == 0:
                return True
            if self.restart_policy == "Never":
                self._patch_status("Failed", reason="InitContainerFailed")
                return False
            container.restart_count += 1
            container.last_state = container.state
            container.done = False
            self._patch_status("Pending")
            if self._sleep_interruptibly(self._backoff(container)):
                return False

    def _live_phase(self) -> str:
        """Pending while a container has never started (it waits for its configuration)."""
        waiting = any("waiting" in c.state and c.process is None for c in self.containers)
        return "Pending" if waiting else "Running"

    def _handle_stop(self) -> bool:
        """Deal with deletion / agent shutdown; True when the runner must end."""
        if self._forget.is_set() or self.agent.stopping:
            self._kill_all(0 if self._forget.is_set() else 5.0)
            return True
        if self._delete_grace is not None:
            self._kill_all(self._delete_grace)
            self._collect_exits(allow_restart=False)
            self.agent._delete_pod(self.namespace, self.pod_name, self.uid)
            return True
        return False

    def _sleep_interruptibly(self, seconds: float) -> bool:
        """Sleep, returning True early if the pod is being stopped."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._handle_stop():
                return True
            self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        return False

    @staticmethod
    def _backoff(container: _Container) -> float:
        """Restart delay: short (tests wait for it) but growing like the kubelet's."""
        return float(min(0.5 * 2 ** max(container.restart_count - 1, 0), 5.0))

    # -- containers ---------------------------------------------------------------------

    def _start(self, container: _Container) -> None:
        """Start a container's process; a start failure becomes a terminated state."""
        container.exit_code = None
        container.done = False
        container.restart_at = None
        try:
            argv, env, cwd = self._process_spec(container.spec)
            log_path = self.pod_dir / f"{container.name}.log"
            if container.log_file is None:
                container.log_file = log_path.open("ab")
            container.process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=container.log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except _ContainerConfigError as err:
            container.process = None
            container.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": str(err)}
            }
            container.restart_at = time.monotonic() + _CONFIG_RETRY_SECONDS
            container.config_error = True
            return
        except (_ContainerStartError, OSError) as err:
            container.process = None
            container.exit_code = _START_ERROR_EXIT_CODE
            container.state = {
                "terminated": {
                    "exitCode": _START_ERROR_EXIT_CODE,
                    "reason": "StartError",
                    "message": str(err),
                    "startedAt": _now(),
                    "finishedAt": _now(),
                }
            }
            self._after_exit(container, allow_restart=not container.init)
            return
        container.started_at = _now()
        container.state = {"running": {"startedAt": container.started_at}}

    def _collect_exits(
        self, *, allow_restart: bool, containers: Sequence[_Container] | None = None
    ) -> bool:
        """Record containers whose process exited; returns True if anything changed."""
        changed = False
        for container in containers if containers is not None else self.containers:
            proc = container.process
            if proc is None or "running" not in container.state:
                continue
            code = proc.poll()
            if code is None:
                continue
            # A signal shows as a negative return code; container runtimes report 128+signal.
            exit_code = code if code >= 0 else 128 - code
            container.exit_code = exit_code
            terminated: JsonDict = {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": container.started_at or _now(),
                "finishedAt": _now(),
                "containerID": f"process://{proc.pid}",
            }
            message = self._termination_message(container)
            if message:
                terminated["message"] = message
            container.state = {"terminated": terminated}
            self._after_exit(container, allow_restart=allow_restart and not container.init)
            changed = True
        return changed

    def _termination_message(self, container: _Container) -> str:
        """As a kubelet does: the file at ``terminationMessagePath`` if the container wrote
        one, else with ``FallbackToLogsOnError`` and a failure, the end of its output (the
        last 80 lines, at most 2048 bytes)."""
        path = Path(container.spec.get("terminationMessagePath") or "/dev/termination-log")
        with contextlib.suppress(OSError):
            if path.is_file() and str(path) != "/dev/termination-log":
                return path.read_bytes()[:4096].decode(errors="replace")
        policy = container.spec.get("terminationMessagePolicy") or "File"
        if policy != "FallbackToLogsOnError" or not container.exit_code:
            return ""
        if container.log_file is not None:
            container.log_file.flush()
        try:
            with (self.pod_dir / f"{container.name}.log").open("rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                size = log_file.tell()
                log_file.seek(max(0, size - 2048))
                tail = log_file.read()
        except OSError:
            return ""
        lines = tail.decode(errors="replace").splitlines()[-80:]
        return "\n".join(lines)

    def _after_exit(self, container: _Container, *, allow_restart: bool) -> None:
        """Decide whether an exited container restarts (restartPolicy) or is done."""
        code = container.exit_code
        restart = allow_restart and (
            self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        )
        if restart:
            container.restart_at = time.monotonic() + self._backoff(container)
        else:
            container.done = True

    def _do_restarts(self) -> bool:
        """Restart containers whose back-off has elapsed."""
        changed = False
        for container in self.containers:
            if container.restart_at is not None and time.monotonic() >= container.restart_at:
                if container.config_error:
                    container.config_error = False  # a retry of the start, not a restart
                    self._start(container)
                    changed = changed or not container.config_error
                    continue
                container.restart_count += 1
                container.last_state = container.state
                self._start(container)
                changed = True
        return changed

    def _kill_all(self, grace_seconds: float) -> None:
        """SIGTERM every running container's process group, SIGKILL after the grace period."""
        procs = [
            c.process
            for c in self.init_containers + self.containers
            if c.process is not None and c.process.poll() is None
        ]
        # Processes that left the container's process group (torchrun starts its workers in
        # sessions of their own) go too, as everything in a container's cgroup does.
        strays = [pid for proc in procs for pid in _descendants(proc.pid)]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM if grace_seconds > 0 else signal.SIGKILL)
        deadline = time.monotonic() + min(grace_seconds, _MAX_GRACE_SECONDS)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    # -- process spec -------------------------------------------------------------------

    def _process_spec(self, spec: JsonDict) -> tuple[list[str], dict[str, str], str]:
        """argv, environment and working directory for a container."""
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        meta = self.pod["metadata"]
        pod_spec = self.pod["spec"]
        env["HOSTNAME"] = pod_spec.get("hostname") or meta["name"]
        if self.agent.cluster_dns is not None:
            dns_env = self.agent.cluster_dns.process_env(self.pod)
            preload = [dns_env.pop("LD_PRELOAD"), env.get("LD_PRELOAD", "")]
            env["LD_PRELOAD"] = " ".join(p for p in preload if p)
            env.update(dns_env)
        container_env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            values = self._env_from(source)
            container_env.update({prefix + k: v for k, v in values.items()})
        for item in spec.get("env") or []:
            name = item["name"]
            if "valueFrom" in item:
                value = self._value_from(item["valueFrom"], spec)
                if value is None:
                    continue
            else:
                # Like Kubernetes: only the container's own, earlier variables expand.
                value = expand_vars(item.get("value") or "", container_env)
            container_env[name] = value
        env.update(container_env)
        words = (spec.get("command") or []) + (spec.get("args") or [])
        argv = [expand_vars(word, container_env) for word in words]
        if not argv:
            raise _ContainerStartError(
                f"container {spec['name']!r} has no command: the node agent runs commands, "
                "it does not pull images"
            )
        cwd = spec.get("workingDir") or str(self.pod_dir)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def _field(self, path: str) -> str | None:
        """Value of a downward-API ``fieldRef``."""
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": meta.get("name"),
            "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"),
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName"),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": _POD_IP,
            "status.hostIPs": _POD_IP,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        raise _ContainerStartError(f"unsupported fieldRef {path!r}")

    def _value_from(self, source: JsonDict, spec: JsonDict) -> str | None:
        """Resolve an env ``valueFrom``; None means an optional, missing key (skip)."""
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            kind, _, resource = str(ref["resource"]).partition(".")
            value = (spec.get("resources") or {}).get(kind, {}).get(resource)
            return str(value) if value is not None else "0"
        for key, secret in (("configMapKeyRef", False), ("secretKeyRef", True)):
            if key in source:
                ref = source[key]
                data = self.agent._read_config(self.namespace, ref["name"], secret)
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    kind = "secret" if secret else "configmap"
                    where = f"{kind} {self.namespace}/{ref['name']}"
                    what = (
                        f"{where} not found"
                        if data is None
                        else f"couldn't find key {ref['key']} in {where}"
                    )
                    raise _ContainerConfigError(what)
                return data[ref["key"]]
        raise _ContainerStartError(f"unsupported valueFrom {sorted(source)}")

    def _env_from(self, source: JsonDict) -> dict[str, str]:
        """Variables of an ``envFrom`` ConfigMap/Secret."""
        for key, secret in (("configMapRef", False), ("secretRef", True)):
            if key in source:
                ref = source[key]
                data = self.agent._read_config(self.namespace, ref["name"], secret)
                if data is None:
                    if ref.get("optional"):
                        return {}
                    raise _ContainerConfigError(f"{key} {ref['name']!r} not found")
                return data
        return {}

    # -- status -------------------------------------------------------------------------

    def _patch_status(self, phase: str, *, reason: str = "", message: str = "") -> None:
        """Report the pod's status (merge patch of the whole status) like a kubelet."""
        if self._forget.is_set():
            return
        now = _now()
        init_done = all(c.done and c.exit_code == 0 for c in self.init_containers)
        running = phase == "Running" and all("running" in c.state for c in self.containers)
        terminal = phase in ("Succeeded", "Failed")

        def cond(kind: str, ok: bool, why: str = "") -> JsonDict:
            out: JsonDict = {
                "type": kind,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if why and not ok:
                out["reason"] = why
            return out

        managed = {"PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"}
        kept = [
            c
            for c in (self.pod.get("status", {}).get("conditions") or [])
            if c.get("type") not in managed
        ]
        not_ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        conditions = [
            cond("PodReadyToStartContainers", not terminal),
            cond("Initialized", init_done, "ContainersNotInitialized"),
            cond("ContainersReady", running, not_ready_reason),
            cond("Ready", running, not_ready_reason),
            *kept,
        ]
        status: JsonDict = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": _POD_IP,
            "hostIPs": [{"ip": _POD_IP}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
            "reason": reason or None,
            "message": message or None,
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        self.agent._patch_pod_status(self.namespace, self.pod_name, status)


class NodeAgent:
    """Serve one Node: register it, heartbeat it, and run the pods bound to it.

    ``api_client`` is a ``kubernetes.client.ApiClient``; ideally authenticated as
    ``system:node:<node_name>`` so the API server applies the same rules as for a kubelet.
    ``capacity`` is merged over the host's CPUs and memory and 110 pods; ``taints`` are
    ``key[=value]:Effect`` strings. ``cluster_dns`` is the hosts file the cluster's agents
    share in cluster-DNS mode (:mod:`hypersweep.testing._cluster_dns`); None keeps every pod
    at 127.0.0.1.
    """

    def __init__(
        self,
        api_client: ApiClient,
        node_name: str,
        *,
        workdir: Path | str,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, str | int] | None = None,
        taints: Sequence[str] = (),
        heartbeat_interval: float = 10.0,
        lease_duration_seconds: int = 40,
        cluster_dns: Path | str | None = None,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        # Loosely typed on purpose: bodies are plain JSON dicts and responses are read raw
        # (``_preload_content=False``), which works across client releases.
        self.core: Any = client.CoreV1Api(api_client)
        self.coordination: Any = client.CoordinationV1Api(api_client)
        self.node_name = node_name
        self.workdir = Path(workdir)
        self.labels = dict(labels or {})
        self.capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": _total_memory(),
            "pods": "110",
            **{k: str(v) for k, v in (capacity or {}).items()},
        }
        self.taints = list(taints)
        self.heartbeat_interval = heartbeat_interval
        self.lease_duration_seconds = lease_duration_seconds
        self._stop = threading.Event()
        self._runners: dict[str, _PodRunner] = {}
        self._finished: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._node_uid = ""
        self._kubelet_version = "v0.0.0"
        self.cluster_dns = ClusterDns(cluster_dns) if cluster_dns is not None else None
        if self.cluster_dns is not None:
            find_nss_wrapper()  # fail at start, naming the package, rather than per pod

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        """Where a container's output is written."""
        return self.workdir / "pods" / namespace / pod / f"{container}.log"

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NodeAgent:
        """Register the node and start the heartbeat and pod-watch threads."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "watch")):
            thread = threading.Thread(target=target, name=f"{self.node_name}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving: kill every pod process (pods keep their last reported status)."""
        self._stop.set()
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner._wake.set()
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, min(1.0, deadline - time.monotonic())))

    # -- node -------------------------------------------------------------------------

    def _node_status(self) -> JsonDict:
        now = _now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": dict(self.capacity),
            "allocatable": dict(self.capacity),
            "conditions": [
                {
                    "type": kind,
                    "status": status,
                    "reason": reason,
                    "message": "hypersweep test node agent",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
                for kind, status, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": _POD_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "hypersweep node agent",
                "containerRuntimeVersion": "process://",
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self) -> None:
        """Create the Node (or refresh it if it already exists)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from hypersweep.testing._k8s import _parse_taint

        with contextlib.suppress(Exception):
            # Report the control plane's version, as a kubelet of the same release would.
            version_api: Any = client.VersionApi(self.api_client)
            info = version_api.get_code(_preload_content=False)
            self._kubelet_version = str(json.loads(info.data)["gitVersion"])
        body: JsonDict = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    NODE_AGENT_LABEL: "true",
                    **self.labels,
                },
            },
            "spec": {"taints": [_parse_taint(t) for t in self.taints]},
            "status": self._node_status(),
        }
        try:
            created = self.core.create_node(body=body, _preload_content=False)
            self._node_uid = json.loads(created.data)["metadata"]["uid"]
        except ApiException as err:
            if err.status != 409:
                raise
            current = json.loads(self.core.read_node(self.node_name, _preload_content=False).data)
            self._node_uid = current["metadata"]["uid"]
        self._update_node_status()
        self._renew_lease()
        log.info("node %s registered", self.node_name)

    def _update_node_status(self) -> None:
        self.core.patch_node_status(
            self.node_name, {"status": self._node_status()}, _content_type=_MERGE_PATCH
        )

    def _renew_lease(self) -> None:
        """Renew (or create) the node's Lease, the cheap heartbeat kubelets use."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.coordination.patch_namespaced_lease(
                self.node_name,
                _LEASE_NAMESPACE,
                {"spec": {"holderIdentity": self.node_name, "renewTime": _now_micro()}},
                _content_type=_MERGE_PATCH,
            )
        except ApiException as err:
            if err.status != 404:
                raise
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": self._node_uid,
            }
            self.coordination.create_namespaced_lease(
                _LEASE_NAMESPACE,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node_name,
                        "namespace": _LEASE_NAMESPACE,
                        "ownerReferences": [owner],
                    },
                    "spec": {
                        "holderIdentity": self.node_name,
                        "leaseDurationSeconds": self.lease_duration_seconds,
                        "renewTime": _now_micro(),
                    },
                },
            )

    def _heartbeat_loop(self) -> None:
        """Renew the Lease every interval and re-post the node status every minute."""
        last_status = time.monotonic()
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= 60.0:
                    self._update_node_status()
                    last_status = time.monotonic()
            except Exception:
                log.exception("node %s: heartbeat failed", self.node_name)

    # -- pods -------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """List+watch the pods bound to this node; re-list when the watch expires."""
        selector = f"spec.nodeName={self.node_name}"
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    listing = json.loads(
                        self.core.list_pod_for_all_namespaces(
                            field_selector=selector, _preload_content=False
                        ).data
                    )
                    resource_version = listing["metadata"]["resourceVersion"]
                    present = set()
                    for pod in listing.get("items") or []:
                        present.add(pod["metadata"]["uid"])
                        self._on_pod("SYNC", pod)
                    with self._lock:
                        gone = [r for uid, r in self._runners.items() if uid not in present]
                    for runner in gone:
                        runner.forget()
                response = self.core.list_pod_for_all_namespaces(
                    field_selector=selector,
                    watch=True,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=10,
                    _preload_content=False,
                    _request_timeout=(5, 30),
                )
                try:
                    for event in map(json.loads, json_lines(response)):
                        kind = event.get("type")
                        obj = event.get("object") or {}
                        if kind == "ERROR":
                            if obj.get("code") == 410:  # too old: list again
                                resource_version = None
                                break
                            raise RuntimeError(f"watch error: {obj}")
                        resource_version = obj["metadata"]["resourceVersion"]
                        if kind != "BOOKMARK":
                            self._on_pod(str(kind), obj)
                        if self._stop.is_set():
                            break
                finally:
                    response.release_conn()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("node %s: pod watch failed; retrying", self.node_name)
                resource_version = None
                self._stop.wait(0.5)

    def _on_pod(self, kind: str, pod: JsonDict) -> None:
        """React to a pod event like a kubelet's sync loop."""
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            runner = self._runners.get(uid)
            finished = uid in self._finished
        if kind == "DELETED":
            if runner is not None:
                runner.forget()
            return
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            if runner is None or not runner.request_delete(
                float(grace) if grace is not None else 30.0
            ):
                self._delete_pod(meta["namespace"], meta["name"], uid)
            return
        phase = pod.get("status", {}).get("phase")
        if runner is None and not finished and phase not in ("Succeeded", "Failed"):
            runner = _PodRunner(self, pod)
            with self._lock:
                if self._stop.is_set() or uid in self._runners:
                    return
                self._runners[uid] = runner
            log.info("pod %s/%s: starting", meta["namespace"], meta["name"])
            runner.start()

    def _runner_finished(self, uid: str) -> None:
        with self._lock:
            self._runners.pop(uid, None)
            self._finished.add(uid)

    def _patch_pod_status(self, namespace: str, name: str, status: JsonDict) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": status}, _content_type=_MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:  # deleted meanwhile: nothing to report
                raise

    def _delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Final removal of a pod whose processes are gone (grace period 0, like a kubelet)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def _read_config(self, namespace: str, name: str, secret: bool) -> dict[str, str] | None:
        """Data of a ConfigMap or Secret (decoded), or None when it does not exist.

        A 403 is retried for a few seconds, as a kubelet does: the Node authorizer lets a node
        read a pod's Secrets only once its graph has the pod bound there, which can lag the
        pod's binding that this agent saw.
        """
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + 10.0
        while True:
            try:
                if secret:
                    raw = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
                    data = json.loads(raw.data).get("data") or {}
                    return {k: base64.b64decode(v).decode() for k, v in data.items()}
                raw = self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
                return dict(json.loads(raw.data).get("data") or {})
            except ApiException as err:
                if err.status == 404:
                    return None
                if err.status != 403 or time.monotonic() > deadline or self._stop.is_set():
                    raise
            time.sleep(0.2)


def _key_values(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: serve a node until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m hypersweep.testing._node_agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig to reach the API server")
    parser.add_argument("--node", required=True, help="name of the Node to register and serve")
    parser.add_argument("--workdir", default="", help="where pod output goes (default: ./NODE)")
    parser.add_argument("--label", action="append", default=[], help="node label KEY=VALUE")
    parser.add_argument(
        "--capacity", action="append", default=[], help="node capacity RESOURCE=QUANTITY"
    )
    parser.add_argument("--taint", action="append", default=[], help="KEY[=VALUE]:EFFECT")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument(
        "--cluster-dns",
        default="",
        help="hosts file shared by the cluster's agents: pods get addresses and DNS names",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )

    from kubernetes import config

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = NodeAgent(
        config.new_client_from_config(config_file=args.kubeconfig),
        args.node,
        workdir=args.workdir or Path.cwd() / args.node,
        labels=_key_values(args.label, "label"),
        capacity=_key_values(args.capacity, "capacity"),
        taints=args.taint,
        heartbeat_interval=args.heartbeat_interval,
        cluster_dns=args.cluster_dns or None,
    )
    agent.start()
    try:
        stop.wait()
    finally:
        agent.stop()
        log.info("node %s: stopped", args.node)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
