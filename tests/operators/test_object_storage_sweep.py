"""A Sweep with no PersistentVolume at all: trial records in a database whose URL is in a
Secret, checkpoints in a bucket (a real SeaweedFS S3 server) whose credentials are in another
Secret. ASHA pauses and promotes trials through the bucket, and deleting the Sweep deletes its
prefix."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_seaweedfs

from hypersweep.testing import LocalCluster, create_namespace
from hypersweep.testing._s3 import S3Server, s3_server

from .conftest import (
    OPERATOR_NAMESPACE,
    SECRETS_BINDING,
    Namespace,
    OperatorProcess,
    kubectl_json,
    objective_command,
    render,
    trial_template,
    wait_until,
)
from .objectives import ASHA_QUALITY
from .test_sweep import wait_sweep

pytestmark = pytest.mark.k8s
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require_seaweedfs()
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running


def test_the_object_storage_overlay_has_no_volume_claim() -> None:
    objects = render("deploy/overlays/object-storage")
    assert "PersistentVolumeClaim" not in {o["kind"] for o in objects}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert all("persistentVolumeClaim" not in v for v in volumes), volumes
    assert {"name": "data", "emptyDir": {}} in volumes


def _secret(cluster: LocalCluster, namespace: str, name: str, data: dict[str, str]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def test_a_sweep_with_no_persistent_volume_checkpoints_in_a_bucket(
    cluster: LocalCluster,
    operator_kubeconfig: Path,
    server: S3Server,
    tmp_path: Path,
) -> None:
    s3 = server.new_bucket()
    name = f"obj-{uuid.uuid4().hex[:8]}"
    create_namespace(cluster.api_client(), name)
    cluster.kubectl(
        "create",
        "rolebinding",
        SECRETS_BINDING,
        "-n",
        name,
        f"--clusterrole={SECRETS_BINDING}",
        f"--serviceaccount={OPERATOR_NAMESPACE}:hypersweep-operator",
    )
    # No data claim in this namespace: the operator's data dir is its own scratch folder.
    namespace = Namespace(name, tmp_path / "scratch", tmp_path / "markers")
    namespace.data_dir.mkdir()
    namespace.markers.mkdir()
    _secret(cluster, name, "sweep-database", {"url": f"sqlite:///{tmp_path / 'sweeps.db'}"})
    _secret(
        cluster,
        name,
        "checkpoint-credentials",
        {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
    )
    operator = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log")
    operator.start()
    try:
        body = {
            "apiVersion": "hypersweep.io/v1alpha1",
            "kind": "Sweep",
            "metadata": {"name": "bucket"},
            "spec": {
                "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
                "objective": {"metric": "loss", "mode": "min"},
                "strategy": {"name": "random", "settings": {"seed": 7}},
                "earlyStopping": {
                    "name": "asha",
                    "settings": {"min_resource": 1, "max_resource": 9, "reduction_factor": 3},
                },
                "maxTrials": 6,
                "parallelism": 1,
                "storage": {
                    "url": {"secretKeyRef": {"name": "sweep-database", "key": "url"}},
                    "checkpoints": {
                        "url": f"{s3.url}/sweeps",
                        "options": {"endpoint_url": s3.endpoint_url},
                        "secretRef": {"name": "checkpoint-credentials"},
                    },
                },
                "trialTemplate": trial_template(
                    objective_command("asha_curve"),
                    {"HYPERSWEEP_TEST_MARKERS": str(namespace.markers)},
                ),
            },
        }
        cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(body))
        # Beside it, a retained Sweep of 2 trials (qualities 0.5 and 0.9: trial 1 is best).
        kept_markers = tmp_path / "kept-markers"
        kept_markers.mkdir()
        kept = json.loads(json.dumps(body))
        kept["metadata"]["name"] = "kept"
        kept["spec"].pop("earlyStopping")
        kept["spec"].update(maxTrials=2, parallelism=2, retain=True)
        kept["spec"]["trialTemplate"] = trial_template(
            objective_command("asha_curve"), {"HYPERSWEEP_TEST_MARKERS": str(kept_markers)}
        )
        cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(kept))
        status = wait_sweep(cluster, namespace, "bucket", operator, timeout=400)
        assert "Succeeded" in status["true"], status
        assert status["trials"]["succeeded"] == 1 and status["trials"]["pruned"] == 5, status
        best = status["bestTrial"]["number"]
        assert ASHA_QUALITY[best] == 0.9
        # Promoted twice: its pod started again from the steps its bucket checkpoints held.
        marks = (namespace.markers / f"trial-{best}.log").read_text().split("\n")
        starts = [line.split()[0] for line in marks if line]
        assert starts == ["start-step0", "start-step2", "start-step4"]
        restored_from = [line.split()[2] for line in marks if line.startswith("start-step2")]
        assert restored_from[0].startswith(f"{s3.url}/sweeps/{name}/")

        # No claim, no volume: trial pods mount only their own Secret and get the credentials
        # Secret as variables.
        assert not kubectl_json(cluster, "get", "pvc", "-n", name)["items"]
        for job in kubectl_json(cluster, "get", "trainjobs", "-n", name)["items"]:
            for replica in job["spec"]["replicaSpecs"].values():
                pod = replica["template"]["spec"]
                assert all("persistentVolumeClaim" not in v for v in pod.get("volumes", []))
                container = pod["containers"][0]
                assert {"secretRef": {"name": "checkpoint-credentials"}} in container["envFrom"]
                assert not any("AWS_SECRET" in json.dumps(e) for e in container["env"])
                # ...and never the database URL, nor its Secret.
                assert "sweeps.db" not in json.dumps(pod), pod
                assert "sweep-database" not in json.dumps(pod), pod
        prefix = f"{s3.bucket}/sweeps/{name}/{status['studyName']}"
        fs = s3.filesystem()
        stored = [str(k) for k in fs.find(prefix)]
        assert any(k.endswith("/checkpoint.json") for k in stored), stored
        assert not list(namespace.data_dir.rglob("checkpoint.json"))

        # retain: deleting the Sweep keeps its best trial's folder in the bucket, and only it.
        kept_status = wait_sweep(cluster, namespace, "kept", operator, timeout=400)
        assert kept_status["bestTrial"]["number"] == 1, kept_status
        kept_prefix = f"{s3.bucket}/sweeps/{name}/{kept_status['studyName']}"

        def kept_folders() -> set[str]:
            """The trial folders holding a complete checkpoint (an emptied folder may still be
            listed by SeaweedFS)."""
            found = [str(k) for k in s3.filesystem().find(kept_prefix)]
            done = [k[len(kept_prefix) + 1 :] for k in found if k.endswith("/checkpoint.json")]
            return {k.split("/")[0] for k in done}

        assert kept_folders() == {"trial-00000", "trial-00001"}
        cluster.kubectl("delete", "sweep", "kept", "-n", name, "--timeout=120s")
        wait_until(lambda: kept_folders() == {"trial-00001"}, 60, "only the best trial's folder")

        cluster.kubectl("delete", "sweep", "bucket", "-n", name, "--timeout=120s")
        # (SeaweedFS may keep listing the emptied prefix itself as a folder: nothing under it.)
        wait_until(
            lambda: not [k for k in s3.filesystem().find(prefix) if k.startswith(f"{prefix}/")],
            60,
            "the Sweep's prefix to be deleted",
        )
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
