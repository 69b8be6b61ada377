"""deploy/: the manifests are generated from the code, render with kustomize, grant least
privilege (checked with ``kubectl auth can-i`` against the real API server), and the Dockerfile
stays in step with pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hypersweep.operators._crds import crd_manifests
from hypersweep.operators._operator import write_crds
from hypersweep.testing import find_binaries

from .conftest import REPO, render

needs_kubectl = pytest.mark.skipif(
    "kubectl" not in find_binaries().found, reason="kubectl is built by hack/k8s/build.sh"
)


def test_deploy_crds_are_generated_from_the_code(tmp_path: Path) -> None:
    for path in write_crds(tmp_path):
        committed = REPO / "deploy" / "crds" / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `hypersweep operator crds --output-dir deploy/crds`"
        )
    committed = [yaml.safe_load(p.read_text()) for p in (REPO / "deploy/crds").glob("*_*.yaml")]
    by_name = {crd["metadata"]["name"]: crd for crd in committed}
    assert by_name == {crd["metadata"]["name"]: crd for crd in crd_manifests()}


def _operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


@needs_kubectl
@pytest.mark.parametrize(
    "overlay", ["deploy/base", "deploy/overlays/namespaced", "deploy/overlays/ha"]
)
def test_kustomize_renders_a_hardened_operator(overlay: str) -> None:
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "ServiceAccount", "Service", "PersistentVolumeClaim"} <= kinds
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _operator_container(objects)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    if overlay.endswith("namespaced"):
        # Nothing cluster-wide: it does not watch nodes (test_least_privilege.py).
        assert not kinds & {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
        assert "--namespace=$(POD_NAMESPACE)" in container["args"]
        assert "--no-watch-nodes" in container["args"]
    else:
        assert "ClusterRole" in kinds
        assert {
            o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"
        } == {
            "trainjobs.hypersweep.io",
            "sweeps.hypersweep.io",
        }
    if overlay.endswith("ha"):
        assert deployment["spec"]["replicas"] == 2
        assert "PodDisruptionBudget" in kinds


def test_operator_flags_in_the_deployment_exist() -> None:
    from hypersweep.operators._operator import build_parser

    deployment = yaml.safe_load((REPO / "deploy/operator/deployment.yaml").read_text())
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args([a.replace("$(POD_NAMESPACE)", "ns") for a in args[1:]])
    assert parsed.operator_command == "run" and str(parsed.data_dir) == "/var/lib/hypersweep"


def test_dockerfile_is_in_step_with_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    python = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
    assert python is not None
    minimum = re.search(r">=\s*(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert minimum is not None
    assert (int(python[1]), int(python[2])) >= (int(minimum[1]), int(minimum[2]))
    extras = re.search(r"^ARG EXTRAS=(\S+)", dockerfile, re.MULTILINE)
    assert extras is not None
    assert set(extras[1].split(",")) <= set(pyproject["project"]["optional-dependencies"])
    assert "kubernetes" in extras[1]
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, re.MULTILINE)
    assert entry is not None and entry[1] in pyproject["project"]["scripts"]
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (REPO / copied).exists(), copied
    deployment = yaml.safe_load((REPO / "deploy/operator/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


def test_example_manifests_are_valid_resources() -> None:
    from hypersweep.operators._sweep import SweepController
    from hypersweep.operators._trainjob import JobSpec

    examples = sorted((REPO / "examples" / "k8s").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "TrainJob":
                JobSpec.from_spec(doc["spec"])
            elif doc["kind"] == "Sweep":
                doc["metadata"].update(namespace="ns", uid="0123456789", generation=1)
                controller = SweepController.__new__(SweepController)
                controller.data_dir = Path("/var/lib/hypersweep")
                controller.kube = None  # type: ignore[assignment]
                settings, _ = controller.settings_for(doc)
                assert settings.n_trials == doc["spec"]["maxTrials"]
