"""One operator leads at a time (a coordination.k8s.io Lease); a cleanly stopped leader hands
over at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hypersweep.testing import LocalCluster

from .conftest import OPERATOR_NAMESPACE, Namespace, OperatorProcess, kubectl_json, wait_until

pytestmark = pytest.mark.k8s


def test_only_the_lease_holder_is_ready(
    cluster: LocalCluster,
    namespace: Namespace,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    # A lease far longer than the bound below: a standby that took the lease only once it
    # expired (the release lost) would need over LEASE seconds and fail the bound.
    lease_seconds = 60.0
    leader = OperatorProcess(
        operator_kubeconfig, namespace, tmp_path / "leader.log", lease_duration=lease_seconds
    )
    leader.start()
    standby = OperatorProcess(
        operator_kubeconfig, namespace, tmp_path / "standby.log", lease_duration=lease_seconds
    )
    standby.lease = leader.lease
    standby.starts = 1  # its identity becomes test-operator-2
    try:
        lease = kubectl_json(cluster, "get", "lease", leader.lease, "-n", OPERATOR_NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "test-operator-1"
        assert lease["spec"]["leaseDurationSeconds"] == int(lease_seconds)
        standby.start(wait=False)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert leader.ready() and not standby.ready()
            time.sleep(0.2)
        stopped = time.monotonic()
        leader.stop()  # SIGTERM: hands over and releases the lease
        wait_until(standby.ready, lease_seconds, "the standby to lead")
        # The standby retries every lease/7 s; it must win on its next try, not on expiry.
        took = time.monotonic() - stopped
        assert took < lease_seconds / 2, f"the released lease was taken after {took:.1f} s"
        lease = kubectl_json(cluster, "get", "lease", leader.lease, "-n", OPERATOR_NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "test-operator-2"
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        standby.stop()
        leader.stop()


def _lease_requests(verb: str) -> float:
    from hypersweep._metrics import operator_metrics

    registry = operator_metrics().registry
    value = registry.get_sample_value(
        "hypersweep_operator_api_requests_total", {"verb": verb, "resource": "leases"}
    )
    return value or 0.0


def test_the_leader_renews_with_one_request_and_steps_down_when_another_took_the_lease(
    cluster: LocalCluster, namespace: Namespace
) -> None:
    import threading

    from hypersweep.kube._client import LEASES, Kube
    from hypersweep.operators._leader import LeaderElector

    kube = Kube(cluster.api_client())
    leader = LeaderElector(
        kube, namespace.name, "renewals", "a", lease_duration=3, renew_deadline=2, retry_period=0.1
    )
    stop, lost = threading.Event(), threading.Event()
    assert leader.acquire(stop)
    reads, writes = _lease_requests("get"), _lease_requests("patch")
    keeper = threading.Thread(target=leader.keep, args=(stop, lost.set), daemon=True)
    keeper.start()
    wait_until(lambda: _lease_requests("patch") - writes >= 5, 30, "five renewals")
    # Each renewal writes the lease it last wrote, without reading it first.
    assert _lease_requests("get") == reads
    assert not lost.is_set()
    # Someone else holds the lease now: the next renewal conflicts, reads the lease, sees
    # another holder and does not overwrite it; past the renew deadline the leader steps down.
    lease = kube.get(LEASES, namespace.name, "renewals")
    assert lease is not None
    kube.patch(LEASES, namespace.name, "renewals", {"spec": {"holderIdentity": "b"}})
    assert lost.wait(30), "the leader did not step down"
    assert _lease_requests("get") > reads
    lease = kube.get(LEASES, namespace.name, "renewals")
    assert lease is not None and lease["spec"]["holderIdentity"] == "b"
    assert not leader.leading
    stop.set()
    keeper.join(10)
