"""How the TrainJob controller writes a job's status, on the real API server: a patch that
sets the status, which other writers' changes to the job do not make fail."""

from __future__ import annotations

from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import Namespace, kubectl_json, trial_template

pytestmark = pytest.mark.k8s


def _requests(verb: str, resource: str) -> float:
    from hypersweep._metrics import operator_metrics

    value = operator_metrics().registry.get_sample_value(
        "hypersweep_operator_api_requests_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


def _trainjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": trial_template(["python", "-c", "pass"]),
    }


def test_a_status_write_survives_other_writers_and_never_reaches_another_job(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    """The launcher annotates a trial's TrainJob while the controller writes its status.
    Before, that made the controller's next status write (a replace at the resourceVersion it
    had read) fail with a conflict, then cost a read and a second write. Now the write goes
    through with one request, keeps the annotation, and leaves the status exactly as planned
    (a field dropped from the plan is dropped from the job). A gang's restart is still
    guarded by the version it was planned from, and a write meant for a deleted job never
    lands on a new job of the same name."""
    from hypersweep.kube._client import TRAINJOBS, ApiError, Kube
    from hypersweep.kube._recorder import EventRecorder
    from hypersweep.operators._trainjob import TrainJobController

    ns = namespace.name
    kube = Kube(cluster.api_client())
    controller = TrainJobController(kube, EventRecorder(kube), watch_nodes=False)
    try:
        job = kube.create(TRAINJOBS, ns, _trainjob("writes"))
        key = f"{ns}/writes"
        first = {
            "startTime": "2026-12-03T00:00:00Z",
            "restartCount": 0,
            "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1}},
            "conditions": [{"type": "Running", "status": "True", "reason": "Running"}],
        }
        written = controller._write_status(key, job, first)
        assert written["status"] == first

        # The launcher's outcome annotation moves the job past the version just written.
        kube.patch(TRAINJOBS, ns, "writes", {"metadata": {"annotations": {"test/by": "other"}}})
        reads = _requests("get", "trainjobs")
        second = {
            "restartCount": 0,
            "replicaStatuses": {"Master": {"succeeded": 1}, "Worker": {"active": 1}},
            "conditions": [
                {"type": "Running", "status": "False", "reason": "Succeeded"},
                {"type": "Succeeded", "status": "True", "reason": "Succeeded"},
            ],
            "completionTime": "2026-12-03T00:01:00Z",
        }
        written = controller._write_status(key, written, second)
        stored = kubectl_json(cluster, "get", "trainjob", "writes", "-n", ns)
        assert stored["status"] == second  # startTime and Master's "active" are gone
        assert stored["metadata"]["annotations"]["test/by"] == "other"
        assert written["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
        assert _requests("get", "trainjobs") == reads  # nothing read again

        # A restart planned from a version someone else has since changed does not land.
        kube.patch(TRAINJOBS, ns, "writes", {"metadata": {"annotations": {"test/by": "again"}}})
        with pytest.raises(ApiError) as refused:
            controller._write_status(key, written, {**second, "restartCount": 1}, guarded=True)
        assert refused.value.conflict
        stored = kubectl_json(cluster, "get", "trainjob", "writes", "-n", ns)
        assert stored["status"]["restartCount"] == 0

        # The job is deleted and another of the same name is created: the old job's write
        # is refused, and the new job's status stays as it is.
        cluster.kubectl("delete", "trainjob", "writes", "-n", ns, "--wait=true")
        kube.create(TRAINJOBS, ns, _trainjob("writes"))
        with pytest.raises(ApiError):
            controller._write_status(key, written, {**second, "observedGeneration": 9})
        stored = kubectl_json(cluster, "get", "trainjob", "writes", "-n", ns)
        assert stored["metadata"]["uid"] != job["metadata"]["uid"]
        assert "observedGeneration" not in (stored.get("status") or {})
    finally:
        controller.stop()
