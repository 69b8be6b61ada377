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
