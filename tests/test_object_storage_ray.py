"""A Ray cluster whose nodes share nothing but a bucket: ASHA pauses a trial on one node and
promotes it wherever Ray places it, restoring from the real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ray_test_cluster, require_module, require_seaweedfs

ray = require_module("ray")
pytest.importorskip("s3fs")

import objectives
import storage_objectives
from ray.cluster_utils import Cluster

import hypersweep as hs
from hypersweep.launchers import RayLauncher
from hypersweep.testing._s3 import S3Server, s3_server

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require_seaweedfs()
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node without CPUs for trials, and two worker nodes of one CPU each."""
    with ray_test_cluster(NODE) as cluster:
        yield cluster


def test_a_ray_cluster_pauses_and_promotes_through_the_bucket(
    cluster: Cluster, server: S3Server, run_dir: Path
) -> None:
    s3 = server.new_bucket()
    markers = run_dir / "markers"
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        storage_objectives.ray_asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=2,
        early_stopping={
            "name": "asha",
            "min_resource": 1,
            "max_resource": 9,
            "reduction_factor": 3,
        },
        checkpoint_dir=f"{s3.url}/ray",
        checkpoint_storage_options=s3.storage_options(),
        launcher=RayLauncher(env={"HYPERSWEEP_TEST_MARKERS": str(markers)}),
    )
    assert result.counts().get("failed", 0) == 0, [t.error for t in result.trials]
    best = min(result.trials, key=lambda t: t.value if t.value is not None else 9)
    assert objectives.ASHA_QUALITY[best.number] == 0.9
    assert best.state == "completed" and max(best.intermediate_values) == 9
    starts = [
        json.loads(line)
        for path in sorted(markers.glob("starts-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    # Paused trials were promoted, and each resumed run restored from the bucket, whichever
    # node it ran on; the first run of a trial restored nothing.
    resumed = [start for start in starts if start["step"] > 0]
    assert resumed, "no trial was paused and promoted"
    for start in starts:
        if start["step"] == 0:
            assert start["restore"] is None
        else:
            assert start["restore"].startswith(f"{s3.url}/ray/trial-"), start
    assert len({start["node"] for start in starts}) == 2  # trials ran on both worker nodes
    assert not list(run_dir.rglob("checkpoint.json")), "a checkpoint was written locally"
