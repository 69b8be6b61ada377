"""A sweep whose trials are JAX TrainJobs (``jaxReplicaSpecs``) on the test cluster: the pods
run the trial entrypoint, and the objective calls ``jax.distributed.initialize()`` with no
arguments."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import hypersweep as hs
from hypersweep.testing import LocalCluster

from .conftest import Namespace, OperatorProcess, free_port, kubectl_json

pytestmark = pytest.mark.k8s


def _jax_template(port: int) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "jax",
        "image": "hypersweep:test",
        "command": [sys.executable, "-m", "hypersweep.operators.trial_entrypoint"],
        "ports": [{"name": "jaxjob-port", "containerPort": port}],
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    }
    worker = {"replicas": 2, "template": {"spec": {"containers": [container]}}}
    return {"jaxReplicaSpecs": {"Worker": worker}}


def test_jax_trials_run_as_trainjobs_and_initialize_without_arguments(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    from hypersweep.kube._client import Kube
    from hypersweep.launchers import KubernetesLauncher

    report_port = free_port()
    launcher = KubernetesLauncher(
        namespace.name,
        trial_template=_jax_template(free_port(span=2)),
        max_concurrent=1,
        kube=Kube(cluster.api_client()),
        report_url=f"http://127.0.0.1:{report_port}",
        report_port=report_port,
    )

    def objective(config: dict[str, Any]) -> float:  # shipped to the pods by value
        import jax
        import numpy as np
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        import hypersweep

        jax.distributed.initialize()
        mesh = Mesh(np.array(jax.devices()), ("p",))
        mine = np.array([[jax.process_index() + config["x"]]], dtype=np.float32)
        stacked = jax.make_array_from_process_local_data(NamedSharding(mesh, P("p")), mine)
        summed = jax.jit(
            jax.shard_map(lambda b: jax.lax.psum(b, "p"), mesh=mesh, in_specs=P("p"), out_specs=P())
        )(stacked)
        total = float(np.asarray(summed.addressable_data(0))[0, 0])
        hypersweep.report(0, loss=total)
        return total

    result = hs.tune(
        {"x": hs.choice([10.0])},
        objective,
        metric="loss",
        n_trials=1,
        name="jax-trials",
        launcher=launcher,
        storage=str(tmp_path / "journal.log"),
    )
    assert result.counts() == {"completed": 1}, result.trials[0].error
    assert result.trials[0].value == 0 + 10 + 1 + 10  # both processes' shares, summed
    jobs = kubectl_json(
        cluster, "get", "trainjobs", "-n", namespace.name, "-l", "hypersweep.io/sweep=jax-trials"
    )["items"]
    assert len(jobs) == 1 and "jaxReplicaSpecs" in jobs[0]["spec"]
