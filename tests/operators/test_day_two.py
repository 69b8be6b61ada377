"""Manifests that survive day 2, on the test cluster: the namespaced overlay's operator (a Role
only, no node watching) runs a sweep; an upgrade starts the new operator alongside the old one,
which is Ready without leading, and takes over when the old one is deleted, the Service's
leader label moving with the lease; the rendered manifests pin imagePullPolicy, make the
storage class a setting, and let only trial pods reach the report port. (The test cluster has
no network plugin that enforces NetworkPolicy: the policy's rendering is tested, not its
enforcement.)"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from hypersweep.testing import LocalCluster

from .conftest import (
    OPERATOR_NAMESPACE,
    Namespace,
    OperatorProcess,
    kubectl_json,
    objective_command,
    render,
    trial_template,
    wait_until,
)
from .test_day_one import apply_sweep, trainjobs
from .test_sweep import sweep_status, wait_sweep

pytestmark = pytest.mark.k8s


def test_the_namespaced_overlay_runs_a_sweep_without_cluster_rights(
    cluster: LocalCluster, namespace: Namespace, tmp_path: Path
) -> None:
    objects = render("deploy/overlays/namespaced")
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=$(POD_NAMESPACE)" in args and "--no-watch-nodes" in args
    from hypersweep.operators._operator import build_parser

    parsed = build_parser().parse_args([a.replace("$(POD_NAMESPACE)", "ml") for a in args[1:]])
    assert parsed.namespace == "ml" and parsed.watch_nodes is False
    # Its ServiceAccount, Roles and bindings, in the test's namespace instead of "ml".
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for obj in rbac:
        obj["metadata"]["namespace"] = namespace.name
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespace.name
    items = {"apiVersion": "v1", "kind": "List", "items": rbac}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(items))
    user = f"system:serviceaccount:{namespace.name}:hypersweep-operator"
    kubeconfig = cluster.user_kubeconfig(
        user,
        ["system:serviceaccounts", f"system:serviceaccounts:{namespace.name}"],
        name=f"ns-{namespace.name}",
    )
    denied = cluster.kubectl("auth", "can-i", "list", "nodes", f"--as={user}", check=False)
    assert denied.stdout.strip() == "no"

    operator = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    operator.lease_namespace = namespace.name  # the Role grants leases there only
    operator.extra_args = ["--no-watch-nodes"]  # as the overlay's Deployment runs it
    operator.start()  # leads: it needs no node
    try:
        apply_sweep(cluster, namespace, "team", maxTrials=2, parallelism=2)
        status = wait_sweep(cluster, namespace, "team", operator)
        assert "Succeeded" in status["true"] and status["trials"]["succeeded"] == 2, status
        # A sweep with pools needs nodes: refused, saying why, instead of a crash.
        apply_sweep(
            cluster,
            namespace,
            "pooled",
            pools=[
                {
                    "name": "gpu",
                    "nodeSelector": {"hypersweep.io/pool": "gpu"},
                    "accelerator": {"resource": "nvidia.com/gpu", "perReplica": 1},
                }
            ],
        )
        status = wait_sweep(cluster, namespace, "pooled", operator)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "InvalidSpec" and "does not watch nodes" in failed["message"]
        log = operator.log_path.read_text()
        assert "403" not in log and "Forbidden" not in log, operator.log_tail()
    finally:
        operator.stop()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0  # not listening yet


def _placeholder_pod(cluster: LocalCluster, name: str) -> None:
    """A pod object standing for an operator pod (bound to no node, so nothing runs it)."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": OPERATOR_NAMESPACE,
            "labels": {"app.kubernetes.io/name": "hypersweep-operator"},
        },
        "spec": {
            "nodeName": "no-such-node",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "operator",
                    "image": "hypersweep",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    created = cluster.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    assert created.returncode == 0, created.stderr


class LeaderService:
    """What the operator's Service does for trial pods, in the test: a proxy to the operator
    process whose pod carries ``hypersweep.io/leader=true`` (looked up every 0.3 s)."""

    def __init__(self, cluster: LocalCluster, backends: dict[str, OperatorProcess]) -> None:
        self.cluster = cluster
        self.backends = backends
        self.leader: OperatorProcess | None = None
        self._stop = threading.Event()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = service.leader
                if target is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                request = urllib.request.Request(target.url + self.path, data=body, method="POST")
                for name in ("Content-Type", "Authorization"):
                    if self.headers.get(name):
                        request.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        code, data = int(response.status), response.read()
                except urllib.error.HTTPError as error:
                    code, data = int(error.code), error.read()
                except OSError:
                    code, data = 503, b"{}"
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            leaders = [
                process
                for pod, process in self.backends.items()
                if _leader_label(self.cluster, pod) == "true"
            ]
            self.leader = leaders[0] if len(leaders) == 1 else None

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()


def _leader_label(cluster: LocalCluster, name: str) -> str | None:
    pod = kubectl_json(cluster, "get", "pod", name, "-n", OPERATOR_NAMESPACE)
    labels: dict[str, Any] = pod["metadata"].get("labels") or {}
    return labels.get("hypersweep.io/leader")


def test_an_upgrade_runs_the_new_operator_alongside_the_old_one(
    cluster: LocalCluster,
    operator_kubeconfig: Path,
    namespace: Namespace,
    tmp_path: Path,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    old_pod, new_pod = f"operator-old-{suffix}", f"operator-new-{suffix}"
    for name in (old_pod, new_pod):
        _placeholder_pod(cluster, name)
    old = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "old.log")
    old.extra_env = {"POD_NAME": old_pod, "POD_NAMESPACE": OPERATOR_NAMESPACE}
    new = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "new.log")
    new.extra_env = {"POD_NAME": new_pod, "POD_NAMESPACE": OPERATOR_NAMESPACE}
    new.starts = 100  # another candidate's identity (test-operator-101)
    release = tmp_path / "release"
    service = LeaderService(cluster, {old_pod: old, new_pod: new})
    for process in (old, new):
        process.extra_args = [f"--report-url={service.url}"]  # trials reach the Service
    try:
        old.start()
        wait_until(lambda: _leader_label(cluster, old_pod) == "true", 30, "the leader label")
        template = trial_template(
            objective_command("wait_for_release"),
            {
                "HYPERSWEEP_TEST_MARKERS": str(namespace.markers),
                "HYPERSWEEP_TEST_RELEASE": str(release),
            },
        )
        apply_sweep(cluster, namespace, "upgrade", template=template, maxTrials=3, parallelism=2)
        wait_until(
            lambda: (
                (sweep_status(cluster, namespace, "upgrade").get("trials") or {}).get("running")
                == 2
            ),
            120,
            "two running trials",
        )

        # The per-trial view shows each running trial's latest value (its report of lr).
        def latest_shown() -> bool:
            jobs = trainjobs(cluster, namespace, "upgrade")
            shown = [
                (
                    j["metadata"]["annotations"],
                    json.loads(j["metadata"]["annotations"]["hypersweep.io/params"]),
                )
                for j in jobs
            ]
            return len(shown) == 2 and all(
                a.get("hypersweep.io/trial-state") == "running"
                and a.get("hypersweep.io/value") == f"{params['lr']:.6g}"
                for a, params in shown
            )

        wait_until(latest_shown, 60, "the running trials' latest values on their TrainJobs")
        # The new pod starts alongside: Ready (a rolling update may go on), not leading.
        new.start(wait=False)
        wait_until(lambda: _get(f"{new.url}/readyz") == 200, 60, "the new operator to be Ready")
        assert _get(f"{new.url}/leaderz") == 503 and _get(f"{old.url}/leaderz") == 200
        assert _leader_label(cluster, new_pod) is None
        # The old pod is deleted (SIGTERM): it hands over, and the new one leads at once.
        old.stop()
        assert _leader_label(cluster, old_pod) is None
        wait_until(new.ready, 30, "the new operator to lead")
        wait_until(lambda: _leader_label(cluster, new_pod) == "true", 30, "the label to move")
        release.touch()
        status = wait_sweep(cluster, namespace, "upgrade", new)
        assert "Succeeded" in status["true"] and status["trials"]["succeeded"] == 3, status
        assert len(trainjobs(cluster, namespace, "upgrade")) == 3
        # The trials running at the hand-over were adopted, not started again.
        starts = {
            path.name: sum(line.startswith("start") for line in path.read_text().splitlines())
            for path in namespace.markers.glob("trial-*.log")
        }
        assert starts == {f"trial-{n}.log": 1 for n in range(3)}, starts
    finally:
        new.stop()
        old.stop()
        service.close()
        for name in (old_pod, new_pod):
            cluster.kubectl(
                "delete", "pod", name, "-n", OPERATOR_NAMESPACE, "--wait=false", check=False
            )


def test_rendered_manifests_pin_pull_policy_storage_class_and_network_policy() -> None:
    for overlay in ("deploy/base", "deploy/overlays/namespaced", "deploy/overlays/ha"):
        objects = render(overlay)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["imagePullPolicy"] == "IfNotPresent"
        strategy = deployment["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        service = next(o for o in objects if o["kind"] == "Service")
        assert service["spec"]["selector"]["hypersweep.io/leader"] == "true"
        (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
        assert policy["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "hypersweep-operator"
        }
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
        (source,) = rule["from"]
        assert source["namespaceSelector"] == {}
        assert source["podSelector"]["matchExpressions"] == [
            {"key": "hypersweep.io/sweep", "operator": "Exists"}
        ]
    (pdb,) = [o for o in render("deploy/overlays/ha") if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "hypersweep-operator"}},
    }
    claims = [
        o for o in render("deploy/overlays/storage-class") if o["kind"] == "PersistentVolumeClaim"
    ]
    assert [c["spec"]["storageClassName"] for c in claims] == ["efs-sc"]
    assert (
        "storageClassName"
        not in next(o for o in render("deploy/base") if o["kind"] == "PersistentVolumeClaim")[
            "spec"
        ]
    )
