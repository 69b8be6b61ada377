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
    operator: OperatorProcess,
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    lease = kubectl_json(cluster, "get", "lease", operator.lease, "-n", OPERATOR_NAMESPACE)
    assert lease["spec"]["holderIdentity"] == "test-operator-1"
    standby = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "standby.log")
    standby.starts = 1  # its identity becomes test-operator-2
    standby.start(wait=False)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert operator.ready() and not standby.ready()
            time.sleep(0.2)
        stopped = time.monotonic()
        operator.stop()  # SIGTERM: hands over and releases the lease
        wait_until(standby.ready, 30, "the standby to lead")
        assert time.monotonic() - stopped < 6, "the released lease was taken at once"
        lease = kubectl_json(cluster, "get", "lease", operator.lease, "-n", OPERATOR_NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "test-operator-2"
        assert lease["spec"]["leaseTransitions"] >= 1
    finally:
        standby.stop()
