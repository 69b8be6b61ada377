"""The controllers' plumbing against a real API server: an informer's label index follows
every change, pods are cached without what no controller reads, and events recorded in the
background are written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hypersweep.kube._client import PODS, Kube, Resource
from hypersweep.kube._informer import Informer
from hypersweep.kube._recorder import EventRecorder
from hypersweep.testing import LocalCluster

from .conftest import Namespace, kubectl_json, wait_until

pytestmark = pytest.mark.k8s

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
JOB = "hypersweep.io/job-name"


@pytest.fixture
def kube(cluster: LocalCluster) -> Kube:
    return Kube.from_config(str(cluster.kubeconfig))


@pytest.fixture
def informer(kube: Kube, namespace: Namespace) -> Iterator[Informer]:
    watched = Informer(kube, CONFIGMAPS, namespace=namespace.name, label_selector=JOB, index=JOB)
    watched.start()
    assert watched.wait_synced(30)
    yield watched
    watched.stop()


def _config_map(namespace: str, name: str, job: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {JOB: job, **labels}},
    }


def _names(informer: Informer, namespace: str, **labels: str) -> list[str]:
    return sorted(obj["metadata"]["name"] for obj in informer.list(namespace, labels))


def test_the_informer_index_follows_creates_relabels_and_deletes(
    kube: Kube, namespace: Namespace, informer: Informer
) -> None:
    ns = namespace.name
    for name, job in (("a-0", "a"), ("a-1", "a"), ("b-0", "b")):
        kube.create(CONFIGMAPS, ns, _config_map(ns, name, job, role="worker"))
    wait_until(lambda: len(informer.list()) == 3, 10, "the informer to see 3 objects")
    assert _names(informer, ns, **{JOB: "a"}) == ["a-0", "a-1"]
    assert _names(informer, ns, **{JOB: "a", "role": "worker"}) == ["a-0", "a-1"]
    assert _names(informer, ns, **{JOB: "a", "role": "master"}) == []
    assert _names(informer, "elsewhere", **{JOB: "a"}) == []

    kube.patch(CONFIGMAPS, ns, "a-1", {"metadata": {"labels": {JOB: "b"}}})
    wait_until(lambda: _names(informer, ns, **{JOB: "b"}) == ["a-1", "b-0"], 10, "the relabel")
    assert _names(informer, ns, **{JOB: "a"}) == ["a-0"]

    kube.delete(CONFIGMAPS, ns, "a-0")
    wait_until(lambda: _names(informer, ns, **{JOB: "a"}) == [], 10, "the delete")
    assert _names(informer, ns) == ["a-1", "b-0"]  # no index label: every object is looked at


def test_events_recorded_in_the_background_are_written(
    kube: Kube, cluster: LocalCluster, namespace: Namespace
) -> None:
    ns = namespace.name
    subject = kube.create(CONFIGMAPS, ns, _config_map(ns, "subject", "a"))
    recorder = EventRecorder(kube, host="test")
    for index in range(5):
        recorder.event(subject, "Normal", "Tested", f"event {index}")
    assert recorder.flush(10.0)
    events = kubectl_json(
        cluster, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=subject"
    )["items"]
    assert sorted(e["message"] for e in events) == [f"event {i}" for i in range(5)]
    assert recorder.dropped == 0


def test_the_pod_informer_caches_pods_without_what_no_controller_reads(
    kube: Kube, namespace: Namespace
) -> None:
    """managedFields and a pod's environment, commands and volumes are dropped on the way in;
    what the controllers read (labels, owner, node, containers' resources, phase) stays."""
    ns = namespace.name
    pods = Informer(kube, PODS, namespace=ns, label_selector=JOB, index=JOB)
    pods.start()
    try:
        assert pods.wait_synced(30)
        container = {
            "name": "main",
            "image": "x",
            "command": ["train"],
            "env": [{"name": "BULK", "value": "x" * 4096}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            "resources": {"requests": {"cpu": "10m"}},
        }
        kube.create(
            PODS,
            ns,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p-0", "labels": {JOB: "p"}},
                "spec": {
                    "nodeSelector": {"hypersweep.io/none": "none"},  # stays pending
                    "containers": [container],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        )
        assert (kube.get(PODS, ns, "p-0") or {})["metadata"].get("managedFields")
        wait_until(lambda: pods.get(ns, "p-0") is not None, 10, "the informer to see the pod")
        cached = pods.get(ns, "p-0")
        assert cached is not None
        assert "managedFields" not in cached["metadata"]
        assert cached["metadata"]["labels"][JOB] == "p"
        assert cached["spec"]["containers"] == [
            {"name": "main", "image": "x", "resources": {"requests": {"cpu": "10m"}}}
        ]
        assert "volumes" not in cached["spec"]
        assert cached["spec"]["nodeSelector"] == {"hypersweep.io/none": "none"}
        assert cached["status"]["phase"] == "Pending"
        assert [p["metadata"]["name"] for p in pods.list(ns, {JOB: "p"})] == ["p-0"]
    finally:
        pods.stop()
