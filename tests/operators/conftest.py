"""Fixtures for the operator tests: a real control plane with the hypersweep CRDs.

* ``cluster`` (session): a :class:`~hypersweep.testing.LocalCluster` started with the CRDs (so
  that garbage collection knows them from the start), a node agent that really runs pods, and
  the RBAC of ``deploy/base`` (namespace, ServiceAccount, roles and bindings).
* ``operator_kubeconfig`` (session): credentials with the operator ServiceAccount's identity, so
  every test's operator runs with exactly the permissions ``deploy/`` grants it.
* ``namespace``: a fresh namespace whose ``hypersweep-data`` claim is bound to a folder of the
  test's temporary directory (a hostPath PersistentVolume: pods on the node agent and the
  operator see the same files, as the operator and trial pods share the volume in a cluster).
* ``operator``: ``hypersweep operator run`` as a subprocess for that namespace, which a test may
  SIGKILL and start again.

Without the control-plane binaries these tests are skipped (failed under
``HYPERSWEEP_REQUIRE_K8S=1``), like ``tests/k8s``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from hypersweep.testing import LocalCluster, apply_data_claim, create_namespace, find_binaries

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OPERATOR_NAMESPACE = "hypersweep-system"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:hypersweep-operator"
#: The ClusterRole of deploy/base granting Secrets, and the RoleBinding name it is bound with.
SECRETS_BINDING = "hypersweep-operator-secrets"
RBAC_KINDS = (
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
)
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def free_port(span: int = 1) -> int:
    """A port ``p`` such that ``p .. p+span-1`` are free on 127.0.0.1 now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + span > 65535:
            continue
        try:
            for offset in range(1, span):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free ports")


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def render(path: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/...`` as a list of objects."""
    kubectl = find_binaries().directory / "kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _unavailable() -> str | None:
    check = find_binaries()
    if not check.ok:
        return check.describe()
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the `kubernetes` Python client is not installed"
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("HYPERSWEEP_REQUIRE_K8S") == "1":
            pytest.fail(f"HYPERSWEEP_REQUIRE_K8S=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from hypersweep.operators import crd_manifests

    # The API server logs every request of the operator's ServiceAccount: the least-privilege
    # test derives the permissions it needs from that log (test_least_privilege.py).
    with LocalCluster(crds=crd_manifests(), audit_users=[OPERATOR_USER]) as started:
        started.start_node_agent("agent-0")
        rbac = [doc for doc in render("deploy/base") if doc["kind"] in RBAC_KINDS]
        started.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
        )
        yield started


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: LocalCluster) -> Path:
    return cluster.user_kubeconfig(
        OPERATOR_USER,
        ["system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}"],
        name="operator-sa",
    )


@dataclass
class Namespace:
    name: str
    data_dir: Path
    markers: Path


@pytest.fixture
def namespace(cluster: LocalCluster, tmp_path: Path) -> Iterator[Namespace]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    markers = tmp_path / "markers"
    data.mkdir()
    markers.mkdir()
    create_namespace(cluster.api_client(), name)
    # As deploy/base says for a namespace where sweeps run: Secrets are granted per namespace.
    cluster.kubectl(
        "create",
        "rolebinding",
        SECRETS_BINDING,
        "-n",
        name,
        f"--clusterrole={SECRETS_BINDING}",
        f"--serviceaccount={OPERATOR_NAMESPACE}:hypersweep-operator",
    )
    apply_data_claim(cluster, name, data)
    wait_until(
        lambda: (
            kubectl_json(cluster, "get", "pvc", "hypersweep-data", "-n", name)
            .get("status", {})
            .get("phase")
            == "Bound"
        ),
        what="the data claim to bind",
    )
    yield Namespace(name, data, markers)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"{name}-data", "--wait=false", check=False)


class OperatorProcess:
    """``hypersweep operator run`` for one namespace, as the ServiceAccount, in a subprocess."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: Namespace,
        log_path: Path,
        lease_duration: float = 6.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.lease_duration = lease_duration
        self.namespace = namespace
        self.log_path = log_path
        self.port = free_port()
        self.lease = f"operator-{namespace.name}"
        self.lease_namespace = OPERATOR_NAMESPACE
        #: Every replica at this host (pods share 127.0.0.1 on the node agent); None: the
        #: production addressing, by DNS name (a node agent in cluster-DNS mode resolves them).
        self.replica_host: str | None = "127.0.0.1"
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        self.starts += 1
        argv = [
            sys.executable,
            "-m",
            "hypersweep.operators._operator",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace.name}",
            f"--data-dir={self.namespace.data_dir}",
            "--bind=127.0.0.1",
            f"--port={self.port}",
            f"--report-url={self.url}",
            f"--lease-namespace={self.lease_namespace}",
            f"--lease-name={self.lease}",
            f"--lease-duration={self.lease_duration:g}",
            f"--identity=test-operator-{self.starts}",
            *([f"--replica-host={self.replica_host}"] if self.replica_host else []),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        if wait:
            wait_until(self.ready, timeout=90, what="the operator to lead")

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{self.log_tail()}")
        try:
            # /leaderz: leading, with controllers running (/readyz does not wait for the lease).
            with urllib.request.urlopen(f"{self.url}/leaderz", timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean hand-over, no lease release."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
def operator(
    cluster: LocalCluster, operator_kubeconfig: Path, namespace: Namespace, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def trial_template(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A one-replica PyTorch trial template running ``command`` on the node agent."""
    container: dict[str, Any] = {
        "name": "pytorch",
        "image": "hypersweep:test",
        "command": command,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
    }
    return {
        "framework": "pytorch",
        "replicaSpecs": {
            "Master": {"replicas": 1, "template": {"spec": {"containers": [container]}}}
        },
    }


def objective_command(function: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hypersweep.operators.trial_entrypoint",
        f"{HERE / 'objectives.py'}:{function}",
    ]


#: Tests that read the audit log of the whole session: run last (pytest_collection_modifyitems).
RUN_LAST = "run_last"
_DESELECTED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{RUN_LAST}: runs after every other test of the session")


def pytest_deselected(items: list[pytest.Item]) -> None:
    _DESELECTED.extend(item.nodeid for item in items if "tests/operators/" in item.nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker(RUN_LAST) is not None)


def operator_suite_deselected() -> list[str]:
    """Operator tests collected but not selected in this session (``-k``, ``-m``...)."""
    return list(_DESELECTED)
