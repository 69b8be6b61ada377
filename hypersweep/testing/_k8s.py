"""A real, local Kubernetes control plane for tests.

Everything hypersweep does with Kubernetes is tested against a real API server rather than a
mock: mocks cannot tell us whether the scheduler would place a pod, whether a CRD schema
accepts an object, whether RBAC allows a call or whether garbage collection removes children.
There is no container runtime in a typical CI runner, so :class:`LocalCluster` runs the control
plane itself as plain local processes:

* ``etcd``,
* ``kube-apiserver`` (TLS, client-certificate authentication, ``Node,RBAC`` authorization and
  the ``NodeRestriction`` admission plugin, so permission problems show up in tests),
* ``kube-controller-manager`` (garbage collection, service accounts, node lifecycle, jobs, ...),
* ``kube-scheduler`` (real scheduling decisions, including extended resources and taints),
* ``kwok``, which simulates kubelets for nodes annotated ``kwok.x-k8s.io/node=fake``: their pods
  become Running without any container being started.

Pods that must really run a command go to a node served by the test node agent
(:mod:`hypersweep.testing._node_agent`), which runs the container command as a local process.

The binaries are built once per machine by ``bash hack/k8s/build.sh`` into
``~/.cache/hypersweep/k8s/<version>/bin``; :func:`find_binaries` reports which are missing.
Only the standard library is needed to start a cluster; :meth:`LocalCluster.api_client` and the
node-pool helpers need the ``kubernetes`` Python client.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hypersweep.testing._waiting import free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, CoreV1Api

__all__ = [
    "BUILD_COMMAND",
    "CONTROL_PLANE_BINARIES",
    "DEFAULT_K8S_VERSION",
    "KWOK_NODE_ANNOTATION",
    "KWOK_STAGES_FILE",
    "NODE_AGENT_LABEL",
    "POOL_LABEL",
    "BinaryCheck",
    "ClusterStartError",
    "LocalCluster",
    "NodeAgentProcess",
    "binaries_dir",
    "create_namespace",
    "create_node_pool",
    "find_binaries",
    "wait_for_nodes_ready",
]

#: Kubernetes version of the control plane; must match KUBERNETES_VERSION in hack/k8s/build.sh.
DEFAULT_K8S_VERSION = "v1.36.3"
#: Executables a :class:`LocalCluster` needs.
CONTROL_PLANE_BINARIES: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
#: kwok's node/pod lifecycle stages, written next to the binaries by the build script.
KWOK_STAGES_FILE = "kwok-stages.yaml"
#: How to get the binaries, shown when they are missing.
BUILD_COMMAND = "bash hack/k8s/build.sh"

#: Label carried by every node of a pool made by :func:`create_node_pool`.
POOL_LABEL = "hypersweep.io/pool"
#: Label carried by nodes served by the test node agent (real processes, not kwok).
NODE_AGENT_LABEL = "hypersweep.io/node-agent"
#: Annotation selecting the nodes kwok manages.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

#: Alpha gates the control plane runs with: the upstream Workload/PodGroup API
#: (``scheduling.k8s.io/v1alpha2``) and kube-scheduler's gang scheduling of its PodGroups, which
#: ``schedulingPolicy.gang: workload`` hands gangs to. Same gates on every component, as a
#: cluster that turns them on must.
FEATURE_GATES = "GenericWorkload=true,GangScheduling=true"
#: Alpha API versions the API server serves besides the default ones.
RUNTIME_CONFIG = "scheduling.k8s.io/v1alpha2=true"

_SERVICE_CIDR = "10.96.0.0/16"
_SERVICE_IP = "10.96.0.1"
_POD_CIDR = "10.244.0.0/16"
_DEFAULT_POOL_CAPACITY: Mapping[str, str] = {"cpu": "8", "memory": "32Gi", "pods": "110"}


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


def binaries_dir(version: str = DEFAULT_K8S_VERSION) -> Path:
    """Directory holding the control-plane binaries for ``version``.

    ``$HYPERSWEEP_K8S_BIN_DIR`` wins when set (binaries built elsewhere); otherwise
    ``$HYPERSWEEP_K8S_CACHE/<version>/bin``, defaulting to ``~/.cache/hypersweep/k8s``, which is
    where ``hack/k8s/build.sh`` puts them.
    """
    explicit = os.environ.get("HYPERSWEEP_K8S_BIN_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("HYPERSWEEP_K8S_CACHE")
    root = Path(cache).expanduser() if cache else Path.home() / ".cache" / "hypersweep" / "k8s"
    return root / version / "bin"


@dataclass(frozen=True)
class BinaryCheck:
    """Result of :func:`find_binaries`: which binaries exist and which are missing."""

    directory: Path
    found: Mapping[str, Path]
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when everything a :class:`LocalCluster` needs is present."""
        return not self.missing

    def describe(self) -> str:
        """A human-readable explanation, including how to build what is missing."""
        if self.ok:
            return f"Kubernetes control-plane binaries found in {self.directory}"
        return (
            f"Kubernetes control-plane binaries missing in {self.directory}: "
            f"{', '.join(self.missing)}. Build them once with `{BUILD_COMMAND}` "
            "(needs Go >= 1.26 and access to the Go module proxy)."
        )


def find_binaries(directory: Path | str | None = None) -> BinaryCheck:
    """Look for the control-plane binaries (and kwok's stage file) in ``directory``.

    Never raises: callers decide whether missing binaries mean *skip* or *fail*.
    """
    where = Path(directory) if directory is not None else binaries_dir()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in CONTROL_PLANE_BINARIES:
        path = where / name
        if path.is_file() and os.access(path, os.X_OK):
            found[name] = path
        else:
            missing.append(name)
    stages = where / KWOK_STAGES_FILE
    if stages.is_file():
        found[KWOK_STAGES_FILE] = stages
    else:
        missing.append(KWOK_STAGES_FILE)
    return BinaryCheck(directory=where, found=found, missing=tuple(missing))


class ClusterStartError(RuntimeError):
    """The local control plane did not become ready; the message carries component logs."""


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    """Run the ``openssl`` CLI, raising with its output on failure."""
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterStartError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


@dataclass(frozen=True)
class _Credentials:
    """What the control plane's components authenticate with (files under the work dir)."""

    pki: _Pki
    serving_cert: Path
    serving_key: Path
    proxy_cert: Path
    proxy_key: Path
    sa_key: Path
    sa_pub: Path
    kcm_kubeconfig: Path
    sched_kubeconfig: Path


@dataclass(frozen=True)
class _Ports:
    """Free local ports for the components, picked when the cluster starts."""

    etcd: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)
    kwok: int = field(default_factory=free_port)


class _Pki:
    """A throw-away certificate authority and the certificates a cluster needs.

    Keys are ECDSA P-256: much faster to generate than RSA, which matters for start-up time,
    and accepted by every component (TLS, client certificates, service-account tokens).
    """

    def __init__(self, directory: Path) -> None:
        if shutil.which("openssl") is None:
            raise ClusterStartError("the `openssl` command is required to create certificates")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self._lock = threading.Lock()
        self._serial = int.from_bytes(os.urandom(8), "big")
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", "/CN=hypersweep-local-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            cwd=self.dir,
        )  # fmt: skip

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> tuple[Path, Path]:
        """Issue a certificate signed by the CA; returns ``(cert, key)`` paths.

        With ``server_names``/``server_ips`` the certificate is a serving certificate,
        otherwise a client certificate whose CN/O become the Kubernetes user/groups.
        """
        with self._lock:
            self._serial += 1
            serial = self._serial
        subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
        key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.crt"
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
        if server_names or server_ips:
            sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
            lines += ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(sans)]
        else:
            lines += ["extendedKeyUsage=clientAuth"]
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", csr, "-subj", subject,
            cwd=self.dir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "365", "-extfile", ext.name, "-out", cert,
            cwd=self.dir,
        )  # fmt: skip
        return self.dir / cert, self.dir / key

    def service_account_keys(self) -> tuple[Path, Path]:
        """Key pair signing service-account tokens; returns ``(private, public)``."""
        _openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", "sa.key",
            cwd=self.dir,
        )  # fmt: skip
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=self.dir)
        return self.dir / "sa.key", self.dir / "sa.pub"


def _write_kubeconfig(
    path: Path, server: str, ca: Path, cert: Path, key: Path, user: str = "admin"
) -> Path:
    """Write a kubeconfig (JSON is valid YAML) pointing at ``server`` with a client cert."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


@dataclass
class _Component:
    """A running control-plane process and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str]) -> _Component:
    """Start ``argv`` in its own session (process group) with output to ``<name>.log``.

    A process group per component lets teardown kill the component with everything it may
    have started, and keeps a Ctrl-C in the terminal from reaching it before teardown does.
    When ``setpriv`` (util-linux) is available and we are on the main thread, the component
    also gets SIGKILL if this process dies without tearing down (e.g. a CI job killed hard),
    so no control plane is left behind.
    """
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    command = list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        # The parent-death signal fires when the *thread* that forked exits: main thread only.
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=dict(env),
        start_new_session=True,
    )
    return _Component(name=name, process=process, log_path=log_path, log_file=log_file)


def _terminate(component: _Component, timeout: float = 10.0) -> None:
    """SIGTERM the component's process group, SIGKILL it if it lingers, and reap it."""
    proc = component.process
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # Children left in the group (if any) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        component.log_file.close()


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------

_live_clusters: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _stop_live_clusters() -> None:
    """Never leave control-plane processes behind, even if a test run forgets to stop one."""
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.stop()


@dataclass
class NodeAgentProcess:
    """A test node agent running as a subprocess (see :mod:`hypersweep.testing._node_agent`)."""

    node_name: str
    workdir: Path
    component: _Component = field(repr=False)

    @property
    def pid(self) -> int:
        """Process id of the agent."""
        return self.component.process.pid

    def alive(self) -> bool:
        """Whether the agent process is still running."""
        return self.component.alive()

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the agent's own log."""
        return self.component.log_tail(lines)

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        """Where the output of a container the agent ran is written."""
        return self.workdir / "pods" / namespace / pod / f"{container}.log"


class LocalCluster:
    """A Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, kwok).

    Use as a context manager::

        with LocalCluster() as cluster:
            cluster.kubectl("get", "nodes")
            api = cluster.api_client()

    Every component listens on 127.0.0.1 on ports chosen by the kernel, and all state lives in
    a fresh temporary directory, so several clusters can run at once. ``stop()`` (or leaving the
    ``with`` block) kills every process group it started and removes the directory unless
    ``keep_workdir`` is true (or ``$HYPERSWEEP_K8S_KEEP=1``), which helps reading component logs
    after a failure.

    ``audit_users`` turns on the API server's audit log for those users (see
    :meth:`audit_events`): tests derive the permissions a component needs from what it did.
    ``alpha_gang_scheduling=False`` leaves out the alpha gates of the upstream Workload API
    (:data:`FEATURE_GATES`), which are on by default. ``node_lease_seconds`` and
    ``extra_controller_manager_args`` let a benchmark simulate a thousand nodes on a few cores:
    kwok renews each node's lease a quarter of that apart, and the controller-manager's
    ``--node-monitor-grace-period`` must then be longer than that.
    """

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        workdir: Path | str | None = None,
        startup_timeout: float = 90.0,
        keep_workdir: bool | None = None,
        extra_apiserver_args: Sequence[str] = (),
        extra_scheduler_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        node_lease_seconds: int = 40,
        crds: Sequence[Mapping[str, Any] | Path | str] = (),
        audit_users: Sequence[str] = (),
        alpha_gang_scheduling: bool = True,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else binaries_dir()
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self.startup_timeout = startup_timeout
        self.keep_workdir = (
            keep_workdir
            if keep_workdir is not None
            else os.environ.get("HYPERSWEEP_K8S_KEEP", "") == "1"
        )
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.extra_scheduler_args = tuple(extra_scheduler_args)
        self.extra_controller_manager_args = tuple(extra_controller_manager_args)
        #: The lease kwok keeps for each simulated node (a kubelet's default: 40 s).
        self.node_lease_seconds = node_lease_seconds
        self.crds = tuple(crds)
        #: Users whose every API request the API server writes to its audit log.
        self.audit_users = tuple(audit_users)
        #: Whether the components run with :data:`FEATURE_GATES` and the API server serves
        #: :data:`RUNTIME_CONFIG` (off: a cluster as it comes, without the Workload API).
        self.alpha_gang_scheduling = alpha_gang_scheduling
        self._components: list[_Component] = []
        self._agents: list[NodeAgentProcess] = []
        self._lock = threading.RLock()
        self._workdir: Path | None = None
        self._started_at = 0.0
        self._pki: _Pki | None = None
        self._kubeconfig: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        self.apiserver_port = 0
        self.etcd_port = 0
        #: Seconds from ``start()`` until the cluster was ready (warm start, binaries built).
        self.startup_seconds: float | None = None
        #: Seconds since ``start()`` at which each start-up step finished.
        self.startup_timeline: dict[str, float] = {}

    # -- properties -----------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Temporary directory with certificates, kubeconfigs, etcd data and component logs."""
        if self._workdir is None:
            raise RuntimeError("the cluster is not started")
        return self._workdir

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines) of the requests of ``audit_users``."""
        return self.workdir / "audit" / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event logged so far: one per request of an ``audit_users`` user.

        Each has ``verb``, ``user.username``, ``objectRef`` (``apiGroup``, ``resource``,
        ``subresource``, ``namespace``, ``name``) and ``responseStatus.code``; see
        https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/.
        """
        if not self.audit_users:
            raise RuntimeError("the cluster was started without audit_users")
        try:
            text = self.audit_log.read_text()
        except FileNotFoundError:
            return []
        # The log is appended to while we read: a last line may be half written.
        events = []
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    @property
    def kubeconfig(self) -> Path:
        """Path of an admin kubeconfig (user in group ``system:masters``)."""
        if self._kubeconfig is None:
            raise RuntimeError("the cluster is not started")
        return self._kubeconfig

    @property
    def server(self) -> str:
        """URL of the API server."""
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pids(self) -> list[int]:
        """Process ids of every process this cluster started and that has not exited."""
        with self._lock:
            procs = [c.process for c in self._components] + [
                a.component.process for a in self._agents
            ]
        return [p.pid for p in procs if p.poll() is None]

    @property
    def component_pids(self) -> dict[str, int]:
        """Process id of each running control-plane component, by name (``kube-apiserver``...)."""
        with self._lock:
            return {c.name: c.process.pid for c in self._components if c.alive()}

    def log_path(self, component: str) -> Path:
        """Log file of a component (``etcd``, ``kube-apiserver``, ``kwok``, ...)."""
        return self.workdir / "logs" / f"{component}.log"

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Start every component and wait until the cluster is usable.

        Ready means: ``/readyz`` answers ok, the controller-manager, scheduler and kwok report
        healthy, and the ``default`` namespace has its ``default`` service account (so pods can
        be created in it).
        """
        check = find_binaries(self.bin_dir)
        if not check.ok:
            raise ClusterStartError(check.describe())
        started = self._started_at = time.monotonic()
        self.startup_timeline = {}
        with self._lock:
            if self._workdir is not None:
                raise RuntimeError("the cluster is already started")
            if self._requested_workdir is not None:
                self._requested_workdir.mkdir(parents=True, exist_ok=True)
                self._workdir = self._requested_workdir
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="hypersweep-k8s-"))
            _live_clusters.add(self)
        try:
            self._start_components()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Kill every process started by the cluster (idempotent) and remove its directory."""
        with self._lock:
            agents, self._agents = self._agents, []
            components, self._components = self._components, []
            workdir = self._workdir
            self._workdir = None
            self._kubeconfig = None
        # Node agents first: they kill the pods they run on SIGTERM.
        for agent in agents:
            _terminate(agent.component, timeout=15.0)
        for component in reversed(components):
            _terminate(component)
        _live_clusters.discard(self)
        if workdir is not None and not self.keep_workdir and self._requested_workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    def _start_components(self) -> None:
        """Generate certificates, then start etcd+apiserver, then the rest, waiting as needed."""
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        ports = _Ports()  # first: the kubeconfigs name the API server's port
        self.etcd_port, self.apiserver_port = ports.etcd, ports.apiserver
        creds = self._issue_credentials()
        self._mark("certificates")
        self._start_control_plane(creds, ports, logs, env)
        if self.crds:
            # Before the controller-manager starts, so that its garbage collector knows the
            # custom resources from its first discovery (it re-discovers only every 30 s).
            self.install_crds(self.crds, timeout=self.startup_timeout)
            self._mark("crds installed")
        self._start_controllers(creds, ports, logs, env)
        self._wait_for_controllers(ports)

    def _issue_credentials(self) -> _Credentials:
        """The cluster's certificates and kubeconfigs (the admin's is :attr:`kubeconfig`)."""
        workdir = self.workdir
        pki = _Pki(workdir / "pki")
        self._pki = pki
        serving_cert, serving_key = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=["127.0.0.1", _SERVICE_IP],
        )
        admin_cert, admin_key = pki.issue("admin", "hypersweep-admin", ["system:masters"])
        kcm_cert, kcm_key = pki.issue("controller-manager", "system:kube-controller-manager")
        sched_cert, sched_key = pki.issue("scheduler", "system:kube-scheduler")
        proxy_cert, proxy_key = pki.issue("front-proxy-client", "front-proxy-client")
        sa_key, sa_pub = pki.service_account_keys()
        server = self.server
        self._kubeconfig = _write_kubeconfig(
            workdir / "kubeconfig", server, pki.ca_cert, admin_cert, admin_key
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(admin_cert), str(admin_key))
        self._ssl = ctx
        return _Credentials(
            pki=pki,
            serving_cert=serving_cert,
            serving_key=serving_key,
            proxy_cert=proxy_cert,
            proxy_key=proxy_key,
            sa_key=sa_key,
            sa_pub=sa_pub,
            kcm_kubeconfig=_write_kubeconfig(
                workdir / "controller-manager.kubeconfig", server, pki.ca_cert, kcm_cert, kcm_key
            ),
            sched_kubeconfig=_write_kubeconfig(
                workdir / "scheduler.kubeconfig", server, pki.ca_cert, sched_cert, sched_key
            ),
        )

    def _start_control_plane(
        self, creds: _Credentials, ports: _Ports, logs: Path, env: dict[str, str]
    ) -> None:
        """etcd and the API server, waiting until the API server is ready."""
        workdir, bins, pki = self.workdir, self.bin_dir, creds.pki
        etcd_url = f"http://127.0.0.1:{ports.etcd}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        self._add(
            _spawn(
                "etcd",
                [
                    str(bins / "etcd"),
                    "--name=local",
                    f"--data-dir={workdir / 'etcd'}",
                    f"--listen-client-urls={etcd_url}",
                    f"--advertise-client-urls={etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=local={peer_url}",
                    "--initial-cluster-state=new",
                    # Test data is disposable: skip fsync, which dominates etcd latency.
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                logs,
                env,
            )
        )
        self._add(
            _spawn(
                "kube-apiserver",
                [
                    str(bins / "kube-apiserver"),
                    f"--etcd-servers={etcd_url}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.apiserver_port}",
                    "--advertise-address=127.0.0.1",
                    f"--cert-dir={workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={creds.serving_cert}",
                    f"--tls-private-key-file={creds.serving_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--anonymous-auth=false",
                    "--allow-privileged=true",
                    f"--service-cluster-ip-range={_SERVICE_CIDR}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={creds.sa_pub}",
                    f"--service-account-signing-key-file={creds.sa_key}",
                    # The kubernetes service cannot have a loopback endpoint; nothing here
                    # reaches the API server through it anyway.
                    "--endpoint-reconciler-type=none",
                    # Front-proxy (request header) authentication, as in a real cluster: the
                    # controller-manager and scheduler delegate authentication to it and
                    # aggregated API servers could be added.
                    f"--requestheader-client-ca-file={pki.ca_cert}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={creds.proxy_cert}",
                    f"--proxy-client-key-file={creds.proxy_key}",
                    "--profiling=false",
                    *self._gate_args(runtime_config=True),
                    *self._audit_args(),
                    *self.extra_apiserver_args,
                ],
                logs,
                env,
            )
        )
        self._wait("etcd", lambda: self._http_ok(f"{etcd_url}/health"))
        self._wait("kube-apiserver", lambda: self._get(f"{self.server}/readyz") == 200)

    def _gate_args(self, runtime_config: bool = False) -> list[str]:
        """The alpha feature gates (and, for the API server, the alpha API) of every component."""
        if not self.alpha_gang_scheduling:
            return []
        gates = [f"--feature-gates={FEATURE_GATES}"]
        return [*gates, f"--runtime-config={RUNTIME_CONFIG}"] if runtime_config else gates

    def _audit_args(self) -> list[str]:
        """The API server's audit flags: for :attr:`audit_users` only, else none."""
        if not self.audit_users:
            return []
        workdir = self.workdir
        # Metadata (who did what to which object, and the answer) for the listed users
        # only, so the log stays small; written synchronously ("blocking") so that a
        # request is in the log once its response arrived.
        (workdir / "audit").mkdir()
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "Metadata", "users": list(self.audit_users)},
                {"level": "None"},
            ],
        }
        (workdir / "audit" / "policy.json").write_text(json.dumps(policy))
        return [
            f"--audit-policy-file={workdir / 'audit' / 'policy.json'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
        ]

    def _start_controllers(
        self, creds: _Credentials, ports: _Ports, logs: Path, env: dict[str, str]
    ) -> None:
        """kube-controller-manager, kube-scheduler and kwok (the fake nodes' kubelet)."""
        workdir, bins, pki = self.workdir, self.bin_dir, creds.pki
        self._add(
            _spawn(
                "kube-controller-manager",
                [
                    str(bins / "kube-controller-manager"),
                    f"--kubeconfig={creds.kcm_kubeconfig}",
                    f"--authentication-kubeconfig={creds.kcm_kubeconfig}",
                    f"--authorization-kubeconfig={creds.kcm_kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports.controller_manager}",
                    f"--cert-dir={workdir / 'controller-manager-certs'}",
                    "--leader-elect=false",
                    "--use-service-account-credentials=true",
                    # Every controller fetches its own credentials at start-up; the default
                    # client rate limit (20 qps) then delays start-up by seconds.
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    f"--service-account-private-key-file={creds.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    f"--service-cluster-ip-range={_SERVICE_CIDR}",
                    f"--cluster-cidr={_POD_CIDR}",
                    "--profiling=false",
                    *self._gate_args(),
                    *self.extra_controller_manager_args,
                ],
                logs,
                env,
            )
        )
        self._add(
            _spawn(
                "kube-scheduler",
                [
                    str(bins / "kube-scheduler"),
                    f"--kubeconfig={creds.sched_kubeconfig}",
                    f"--authentication-kubeconfig={creds.sched_kubeconfig}",
                    f"--authorization-kubeconfig={creds.sched_kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={ports.scheduler}",
                    f"--cert-dir={workdir / 'scheduler-certs'}",
                    "--leader-elect=false",
                    "--profiling=false",
                    *self._gate_args(),
                    *self.extra_scheduler_args,
                ],
                logs,
                env,
            )
        )
        self._add(
            _spawn(
                "kwok",
                [
                    str(bins / "kwok"),
                    f"--kubeconfig={self._kubeconfig}",
                    f"--config={bins / KWOK_STAGES_FILE}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    f"--server-address=127.0.0.1:{ports.kwok}",
                    "--node-ip=10.0.0.1",
                    "--cidr=10.0.0.1/16",
                    f"--node-lease-duration-seconds={self.node_lease_seconds}",
                ],
                logs,
                # kwok reads ~/.kwok by default; keep it inside the cluster directory.
                {**env, "HOME": str(workdir / "kwok-home")},
            )
        )

    def _wait_for_controllers(self, ports: _Ports) -> None:
        """Until the controllers are healthy and the default service account exists."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            "kube-controller-manager",
            lambda: self._http_ok(
                f"https://127.0.0.1:{ports.controller_manager}/healthz", context=insecure
            ),
        )
        self._wait(
            "kube-scheduler",
            lambda: self._http_ok(f"https://127.0.0.1:{ports.scheduler}/healthz", context=insecure),
        )
        self._wait("kwok", lambda: self._http_ok(f"http://127.0.0.1:{ports.kwok}/healthz"))
        sa_url = f"{self.server}/api/v1/namespaces/default/serviceaccounts/default"
        self._wait("default service account", lambda: self._get(sa_url) == 200)

    def _mark(self, step: str) -> None:
        """Record when a start-up step finished (see :attr:`startup_timeline`)."""
        self.startup_timeline[step] = round(time.monotonic() - self._started_at, 3)

    def _add(self, component: _Component) -> None:
        with self._lock:
            self._components.append(component)

    def _get(self, url: str) -> int:
        """GET ``url`` as the admin user; returns the HTTP status (0 if unreachable)."""
        try:
            with urllib.request.urlopen(url, context=self._ssl, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except (OSError, ssl.SSLError):
            return 0

    @staticmethod
    def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
        """Whether ``url`` answers 200."""
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                return int(response.status) == 200
        except (OSError, ssl.SSLError):
            return False

    def _wait(self, what: str, ready: Any, interval: float = 0.05) -> None:
        """Poll ``ready()`` until true; fail early, with logs, if a component died."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if ready():
                self._mark(f"{what} ready")
                return
            with self._lock:
                dead = [c for c in self._components if not c.alive()]
            if dead or time.monotonic() > deadline:
                culprits = dead or [c for c in self._components if c.name == what]
                reason = "exited" if dead else f"not ready after {self.startup_timeout:.0f} s"
                details = "\n".join(
                    f"--- {c.name} (exit code {c.process.poll()}) ---\n{c.log_tail()}"
                    for c in culprits
                )
                raise ClusterStartError(f"local Kubernetes cluster: {what} {reason}\n{details}")
            time.sleep(interval)

    # -- custom resources -----------------------------------------------------------------

    def install_crds(
        self, crds: Sequence[Mapping[str, Any] | Path | str], *, timeout: float = 60.0
    ) -> list[str]:
        """Create or update CustomResourceDefinitions and wait until they are served.

        ``crds`` are manifests (dicts) or paths of YAML/JSON files or directories. Returns the
        CRD names. Waits for the Established condition and for the resources to appear in
        discovery. Prefer the ``crds`` constructor argument for CRDs that own other objects:
        the garbage collector picks up resources created later only at its next 30 s resync.
        """
        manifests = [dict(c) for c in crds if isinstance(c, Mapping)]
        args = ["apply", "-o", "json"]
        stdin = None
        if manifests:
            stdin = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
            args += ["-f", "-"]
        for path in (c for c in crds if not isinstance(c, Mapping)):
            args += ["-f", str(path)]
        applied = json.loads(self.kubectl(*args, input=stdin, timeout=timeout).stdout)
        items = applied.get("items", [applied]) if applied.get("kind") == "List" else [applied]
        crd_items = [i for i in items if i.get("kind") == "CustomResourceDefinition"]
        names = [i["metadata"]["name"] for i in crd_items]
        if names:
            for attempt in range(10):
                try:
                    self.kubectl(
                        "wait",
                        "--for=condition=Established",
                        f"--timeout={int(timeout)}s",
                        *(f"customresourcedefinition/{n}" for n in names),
                        timeout=timeout + 10,
                    )
                    break
                except subprocess.CalledProcessError as error:
                    # A CRD just created may have no status yet: kubectl wait then fails at
                    # once ("accessor error") instead of waiting.
                    if "accessor error" not in (error.stderr or "") or attempt == 9:
                        raise
                    time.sleep(0.2)
        deadline = time.monotonic() + timeout
        for item in crd_items:
            spec = item["spec"]
            plural = spec["names"]["plural"]
            for version in (v["name"] for v in spec["versions"] if v.get("served", True)):
                url = f"{self.server}/apis/{spec['group']}/{version}"
                while not self._discovery_lists(url, plural):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{plural} not served at {url} after {timeout} s")
                    time.sleep(0.05)
        return names

    def _discovery_lists(self, url: str, plural: str) -> bool:
        """Whether the API group-version discovery document at ``url`` lists ``plural``."""
        try:
            with urllib.request.urlopen(url, context=self._ssl, timeout=5) as response:
                resources = json.loads(response.read()).get("resources") or []
        except (OSError, ssl.SSLError, ValueError):
            return False
        return any(r.get("name") == plural for r in resources)

    # -- clients --------------------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` authenticated as cluster admin."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` against this cluster (admin by default) and capture its output.

        Raises :class:`subprocess.CalledProcessError` (with stdout/stderr) when ``check`` is
        true and kubectl fails.
        """
        argv = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, output=result.stdout, stderr=result.stderr
            )
        return result

    def user_kubeconfig(self, user: str, groups: Sequence[str] = (), name: str = "") -> Path:
        """Write a kubeconfig for ``user``/``groups`` (client certificate issued by the CA).

        Useful to test RBAC: the user has only the permissions that roles bound to it grant.
        """
        if self._pki is None:
            raise RuntimeError("the cluster is not started")
        safe = name or "user-" + "".join(ch if ch.isalnum() else "-" for ch in user)
        cert, key = self._pki.issue(safe, user, list(groups))
        return _write_kubeconfig(
            self.workdir / f"{safe}.kubeconfig", self.server, self._pki.ca_cert, cert, key, user
        )

    def node_kubeconfig(self, node_name: str) -> Path:
        """Kubeconfig with the identity of a kubelet (``system:node:<name>``).

        The node authorizer and the NodeRestriction admission plugin then limit it exactly as
        they limit a real kubelet: its own Node, Lease and the pods bound to it.
        """
        return self.user_kubeconfig(
            f"system:node:{node_name}", ["system:nodes"], name=f"node-{node_name}"
        )

    # -- node agents ----------------------------------------------------------------------

    def start_node_agent(
        self,
        node_name: str = "agent-0",
        *,
        labels: Mapping[str, str] | None = None,
        capacity: Mapping[str, str] | None = None,
        taints: Sequence[str] = (),
        wait: bool = True,
        timeout: float = 60.0,
        cluster_dns: bool = False,
    ) -> NodeAgentProcess:
        """Start a node agent subprocess serving Node ``node_name``; pods there really run.

        The node carries the label ``hypersweep.io/node-agent=true`` plus ``labels``; taints are
        ``key[=value]:Effect`` strings. With ``wait`` it returns once the node is Ready and
        schedulable (the controller-manager removed the ``not-ready`` taint). With
        ``cluster_dns`` its pods get addresses of their own and resolve each other's DNS names
        (``<hostname>.<subdomain>.<namespace>.svc``) through a hosts file all such agents of
        this cluster share (:mod:`hypersweep.testing._cluster_dns`).
        """
        agent_dir = self.workdir / "node-agents" / node_name
        agent_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "hypersweep.testing._node_agent",
            f"--kubeconfig={self.node_kubeconfig(node_name)}",
            f"--node={node_name}",
            f"--workdir={agent_dir}",
        ]
        argv += [f"--label={k}={v}" for k, v in (labels or {}).items()]
        argv += [f"--capacity={k}={v}" for k, v in (capacity or {}).items()]
        argv += [f"--taint={t}" for t in taints]
        if cluster_dns:
            argv.append(f"--cluster-dns={self.workdir / 'cluster-dns' / 'hosts'}")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        # Make sure the agent imports this very package, even from a source checkout.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        component = _spawn(f"node-agent-{node_name}", argv, self.workdir / "logs", env)
        agent = NodeAgentProcess(node_name=node_name, workdir=agent_dir, component=component)
        with self._lock:
            self._agents.append(agent)
        if wait:
            deadline = time.monotonic() + timeout
            while not self._node_schedulable(node_name):
                if not agent.alive():
                    raise ClusterStartError(f"node agent {node_name} exited:\n{agent.log_tail()}")
                if time.monotonic() > deadline:
                    raise ClusterStartError(
                        f"node {node_name} not Ready after {timeout:.0f} s:\n{agent.log_tail()}"
                    )
                time.sleep(0.2)
        return agent

    def _node_schedulable(self, node_name: str) -> bool:
        """Ready=True and no ``node.kubernetes.io/*`` NoSchedule taint (stdlib-only check)."""
        url = f"{self.server}/api/v1/nodes/{node_name}"
        try:
            with urllib.request.urlopen(url, context=self._ssl, timeout=5) as response:
                node = json.loads(response.read())
        except (OSError, ssl.SSLError, ValueError):
            return False
        return _node_is_schedulable(node)


def _node_is_schedulable(node: Mapping[str, Any]) -> bool:
    """Whether a Node (as a JSON dict) is Ready and free of node-condition taints."""
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    blocked = any(str(t.get("key", "")).startswith("node.kubernetes.io/") for t in taints)
    return ready and not blocked


# --------------------------------------------------------------------------------------------
# Helpers on top of the kubernetes client
# --------------------------------------------------------------------------------------------


def _core(api: ApiClient | CoreV1Api) -> Any:
    """A CoreV1Api for ``api`` (an ApiClient or a CoreV1Api), typed loosely on purpose.

    The helpers send plain JSON dicts and read raw responses (``_preload_content=False``):
    that works the same across ``kubernetes`` client releases, whose model classes changed.
    """
    from kubernetes import client

    return api if isinstance(api, client.CoreV1Api) else client.CoreV1Api(api)


def _parse_taint(taint: str | Mapping[str, str]) -> dict[str, str]:
    """``key[=value]:Effect`` (kubectl syntax) or a mapping -> Node ``spec.taints`` item."""
    if isinstance(taint, Mapping):
        return {k: str(v) for k, v in taint.items()}
    key_value, sep, effect = taint.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"taint {taint!r} is not of the form key[=value]:Effect")
    key, _, value = key_value.partition("=")
    out = {"key": key, "effect": effect}
    if value:
        out["value"] = value
    return out


def create_node_pool(
    api: ApiClient | CoreV1Api,
    name: str,
    count: int,
    *,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[str | Mapping[str, str]] = (),
    capacity: Mapping[str, str | int] | None = None,
    wait: bool = True,
    timeout: float = 60.0,
) -> list[str]:
    """Create ``count`` kwok-simulated nodes ``<name>-0 .. <name>-<count-1>``.

    Nodes carry ``hypersweep.io/pool=<name>`` and ``labels``, the given ``taints``
    (``key[=value]:Effect`` or mappings) and ``capacity`` (merged over 8 CPUs, 32Gi and 110
    pods; e.g. ``{"nvidia.com/gpu": 8}``), also used as allocatable, so the real scheduler
    places pods exactly as it would on such machines. Pods bound there are driven by kwok:
    they become Running without running anything. With ``wait`` returns once every node is
    Ready and schedulable. Returns the node names.
    """
    core = _core(api)
    resources = {**_DEFAULT_POOL_CAPACITY, **{k: str(v) for k, v in (capacity or {}).items()}}
    names = [f"{name}-{i}" for i in range(count)]
    for node_name in names:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": {
                    "kubernetes.io/hostname": node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    POOL_LABEL: name,
                    **dict(labels or {}),
                },
                "annotations": {
                    KWOK_NODE_ANNOTATION: "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": {"taints": [_parse_taint(t) for t in taints]},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)},
        }
        core.create_node(body=body)
    if wait:
        wait_for_nodes_ready(core, names, timeout=timeout)
    return names


def wait_for_nodes_ready(
    api: ApiClient | CoreV1Api, names: Sequence[str], *, timeout: float = 60.0
) -> None:
    """Wait until each node is Ready and no longer carries a ``node.kubernetes.io/*`` taint."""
    core = _core(api)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for node_name in sorted(pending):
            response = core.read_node(name=node_name, _preload_content=False)
            if _node_is_schedulable(json.loads(response.data)):
                pending.discard(node_name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not Ready after {timeout:.0f} s: {sorted(pending)}")
        time.sleep(0.2)


def create_namespace(
    api: ApiClient | CoreV1Api,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create a namespace and wait for its ``default`` service account.

    Pods cannot be created in a namespace before the controller-manager made that service
    account, so tests that create a namespace and a pod right away would be flaky without this.
    """
    from kubernetes.client.exceptions import ApiException

    core = _core(api)
    metadata = {"name": name, "labels": dict(labels or {})}
    core.create_namespace(body={"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account(name="default", namespace=name)
            return name
        except ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def apply_data_claim(
    cluster: LocalCluster, namespace: str, data: Path, *, size: str = "1Gi"
) -> None:
    """Give ``namespace`` the sweeps' ``hypersweep-data`` claim (ReadWriteMany), bound to a
    hostPath volume on ``data``: the test node agent runs pods on this machine, so a folder here
    is the shared file system a cluster's ReadWriteMany class provides."""
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-data"},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "hostPath": {"path": str(data)},
            "claimRef": {"namespace": namespace, "name": "hypersweep-data"},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "hypersweep-data", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": f"{namespace}-data",
            "resources": {"requests": {"storage": size}},
        },
    }
    items = {"apiVersion": "v1", "kind": "List", "items": [volume, claim]}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(items))
