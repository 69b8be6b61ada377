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
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from conftest import k8s_unavailable_reason, skip_or_fail_k8s

from hypersweep import testing
from hypersweep.testing import (
    LocalCluster,
    apply_data_claim,
    create_namespace,
    find_binaries,
    free_port,
    wait_until,
)

# The tests here import the shared helpers from this conftest, as before they were shared.
__all__ = ["free_port", "wait_until"]

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


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def render(path: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/...`` as a list of objects."""
    kubectl = find_binaries().directory / "kubectl"
    out = subprocess.run(
        [str(kubectl), "kustomize", str(REPO / path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def rbac_objects(path: str) -> list[dict[str, Any]]:
    """The ServiceAccounts, roles and bindings (and their Namespace) of ``deploy/...``."""
    return [doc for doc in render(path) if doc["kind"] in RBAC_KINDS]


def install_operator_rbac(cluster: LocalCluster) -> None:
    """Apply deploy/base's ServiceAccount and RBAC: the operator runs with exactly those."""
    rbac = rbac_objects("deploy/base")
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
    )


def operator_account_kubeconfig(cluster: LocalCluster) -> Path:
    """A kubeconfig with the operator ServiceAccount's identity and groups."""
    return cluster.user_kubeconfig(
        OPERATOR_USER,
        ["system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}"],
        name="operator-sa",
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reason = k8s_unavailable_reason()
    if reason is not None:
        skip_or_fail_k8s(reason)
    from hypersweep.operators import crd_manifests

    # The API server logs every request of the operator's ServiceAccount: the least-privilege
    # test derives the permissions it needs from that log (test_least_privilege.py).
    with LocalCluster(crds=crd_manifests(), audit_users=[OPERATOR_USER]) as started:
        started.start_node_agent("agent-0")
        install_operator_rbac(started)
        yield started


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: LocalCluster) -> Path:
    return operator_account_kubeconfig(cluster)


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


class OperatorProcess(testing.OperatorProcess):
    """``hypersweep operator run`` for one test namespace, as the ServiceAccount."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: Namespace,
        log_path: Path,
        lease_duration: float = 6.0,
    ) -> None:
        super().__init__(
            kubeconfig,
            namespace.name,
            namespace.data_dir,
            log_path,
            lease_duration=lease_duration,
            lease_namespace=OPERATOR_NAMESPACE,
            lease_name=f"operator-{namespace.name}",
        )
        self.namespace = namespace


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
