"""Fixtures for tests against a real Kubernetes control plane (see hypersweep.testing).

One :class:`~hypersweep.testing.LocalCluster` is started per test session and shared. When
the control-plane binaries (or the ``kubernetes`` client) are missing, Kubernetes tests are
skipped with the command that builds them, unless ``HYPERSWEEP_REQUIRE_K8S=1``: then their
absence fails the run, so CI cannot silently stop testing Kubernetes (``skip_or_fail_k8s`` in
tests/conftest.py, which the operator tests use too).

CustomResourceDefinitions the tests need are installed when the cluster starts, before the
controller-manager (its garbage collector only notices resources created later at its 30 s
resync): :data:`TRIAL_CRD` and every ``*.yaml``/``*.json`` manifest in ``tests/k8s/crds/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import k8s_unavailable_reason, skip_or_fail_k8s

from hypersweep.testing import BUILD_COMMAND, LocalCluster, create_namespace

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

K8S_DIR = Path(__file__).resolve().parent
CRDS_DIR = K8S_DIR / "crds"
_started: list[LocalCluster] = []

#: A test-only CRD (``Trial`` in group ``test.hypersweep.io``) with a structural schema.
TRIAL_CRD_GROUP = "test.hypersweep.io"
TRIAL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"trials.{TRIAL_CRD_GROUP}"},
    "spec": {
        "group": TRIAL_CRD_GROUP,
        "scope": "Namespaced",
        "names": {"plural": "trials", "singular": "trial", "kind": "Trial"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["learningRate"],
                                "properties": {
                                    "learningRate": {"type": "number", "minimum": 0},
                                    "epochs": {"type": "integer", "minimum": 1},
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


def cluster_crds() -> list[dict[str, Any] | Path]:
    """CRDs installed at cluster start: the test CRD plus manifests in tests/k8s/crds/."""
    files = sorted(p for p in CRDS_DIR.glob("*") if p.suffix in (".yaml", ".yml", ".json"))
    return [TRIAL_CRD, *files]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"k8s: needs the local Kubernetes control plane ({BUILD_COMMAND})"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test in this directory is a Kubernetes test (select with ``-m k8s``)."""
    del config
    for item in items:
        if K8S_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.k8s)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long the shared cluster took to start (warm start, binaries built)."""
    for cluster in _started:
        if cluster.startup_seconds is not None:
            terminalreporter.write_line(
                f"local Kubernetes control plane started in {cluster.startup_seconds:.1f} s "
                f"({cluster.bin_dir})"
            )


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[LocalCluster]:
    """A ready local control plane (etcd, apiserver, controller-manager, scheduler, kwok)."""
    reason = k8s_unavailable_reason()
    if reason is not None:
        skip_or_fail_k8s(reason)
    with LocalCluster(crds=cluster_crds()) as cluster:
        _started.append(cluster)
        yield cluster


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster: LocalCluster) -> ApiClient:
    """An admin ``kubernetes.client.ApiClient`` for the shared cluster."""
    return k8s_cluster.api_client()


@pytest.fixture
def k8s_namespace(k8s_api: ApiClient) -> Iterator[str]:
    """A fresh namespace (with its default service account) removed after the test."""
    from kubernetes import client

    name = f"test-{uuid.uuid4().hex[:8]}"
    create_namespace(k8s_api, name)
    yield name
    client.CoreV1Api(k8s_api).delete_namespace(name)
