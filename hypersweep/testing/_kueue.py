"""Kueue for the test cluster, built from the Go module proxy.

``bash hack/kueue/build.sh`` builds Kueue's manager (``sigs.k8s.io/kueue`` ``cmd/kueue``) into
``~/.cache/hypersweep/kueue/<version>/bin`` and copies its CRDs and webhook manifests from the
same module.

:func:`start_kueue` runs it as a process against a :class:`LocalCluster`, with the pod
integration (plain pods and pod groups, what a ``kueue`` Sweep's replicas are) enabled. The test
cluster has no Service routing, so the API server reaches Kueue's webhooks through
``clientConfig.url: https://127.0.0.1:<port>/...`` instead of the Services of Kueue's install.

Kueue's internal certificate management stays on (without it the manager insists on metrics
certificates mounted at ``/etc/kueue/metrics/certs``): it keeps the webhook certificates in a
Secret and injects its CA into the webhook configurations and conversion webhooks. The
certificate it would generate names only the in-cluster Service DNS name, which does not match
``127.0.0.1``, so we create that Secret first with a CA and a serving certificate that names both;
the rotator validates it, keeps it, and injects the CA as usual.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hypersweep.testing._k8s import ClusterStartError, _Component, _openssl, _spawn
from hypersweep.testing._waiting import free_port

if TYPE_CHECKING:
    from hypersweep.testing._k8s import LocalCluster

__all__ = [
    "KUEUE_BUILD_COMMAND",
    "KUEUE_VERSION",
    "KueueProcess",
    "kueue_binaries_dir",
    "missing_kueue_binaries",
    "start_kueue",
]

#: The Kueue release hack/kueue/build.sh builds (its KUEUE_VERSION must match).
KUEUE_VERSION = "v0.17.0"
KUEUE_BUILD_COMMAND = "bash hack/kueue/build.sh"
KUEUE_NAMESPACE = "kueue-system"
_SERVICE = "kueue-webhook-service"  # Kueue derives the webhook configurations' names from it
_SECRET = "kueue-webhook-server-cert"
_BINARY = "kueue"
_WEBHOOKS = "webhook/manifests.yaml"
_CRDS = "crds"
#: CRDs whose conversion webhook Kueue's cert rotator injects its CA into (it waits for all).
_CONVERTED = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def kueue_binaries_dir() -> Path:
    """Where ``hack/kueue/build.sh`` puts its outputs (``$HYPERSWEEP_CACHE/kueue/<ver>/bin``)."""
    root = os.environ.get("HYPERSWEEP_CACHE") or str(Path.home() / ".cache" / "hypersweep")
    return Path(root) / "kueue" / KUEUE_VERSION / "bin"


def missing_kueue_binaries() -> list[str]:
    """Which of the build's outputs (manager, CRDs, webhook manifests) are missing."""
    wanted = (_BINARY, f"{_CRDS}/kueue.x-k8s.io_workloads.yaml", _WEBHOOKS)
    return [name for name in wanted if not (kueue_binaries_dir() / name).exists()]


@dataclass
class KueueProcess:
    """Kueue's manager running for a cluster; :meth:`stop` removes its webhooks again."""

    cluster: LocalCluster
    component: _Component
    webhook_port: int

    def log_tail(self, lines: int = 40) -> str:
        return self.component.log_tail(lines)

    def create_queue(
        self, namespace: str, name: str, quota: Mapping[str, str | int], *, flavor: str = ""
    ) -> None:
        """A ResourceFlavor, a ClusterQueue ``name`` whose only flavor has ``quota`` (resource ->
        nominal quota) and a LocalQueue ``name`` in ``namespace`` pointing at it."""
        flavor = flavor or f"{name}-flavor"
        objects = [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor},
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": name},
                "spec": {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": list(quota),
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [
                                        {"name": r, "nominalQuota": str(q)}
                                        for r, q in quota.items()
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": name},
            },
        ]
        self.cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )

    def stop(self) -> None:
        """End the manager, then remove its webhook configurations (they would refuse queued
        pods with nobody to answer)."""
        if self.component.alive():
            self.component.process.terminate()
            try:
                self.component.process.wait(15)
            except subprocess.TimeoutExpired:
                self.component.process.kill()
        self.cluster.kubectl(
            "delete",
            "mutatingwebhookconfiguration/kueue-mutating-webhook-configuration",
            "validatingwebhookconfiguration/kueue-validating-webhook-configuration",
            "--ignore-not-found",
            check=False,
        )


def _webhooks(source: Path, port: int) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, cut to what this manager serves (its own API and pods:
    a webhook for a framework that is not enabled has no handler and, failing closed, would
    refuse every such object in the cluster) and pointed at ``https://127.0.0.1:<port>``.

    The pod webhooks see only pods that ask for a queue, so the rest of the cluster's pods do not
    depend on this process."""
    out = []
    for doc in yaml.safe_load_all(source.read_text()):
        if not doc:
            continue
        kind = doc["kind"].removesuffix("WebhookConfiguration").lower()  # mutating, validating
        kept = []
        for hook in doc["webhooks"]:
            rules = hook.get("rules") or []
            groups = {g for r in rules for g in r.get("apiGroups", [])}
            resources = {x for r in rules for x in r.get("resources", [])}
            pods = groups == {""} and resources == {"pods"}
            if "kueue.x-k8s.io" not in groups and not pods:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
            if pods:
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": _QUEUE_LABEL, "operator": "Exists"}]
                }
            kept.append(hook)
        doc["metadata"] = {"name": f"kueue-{kind}-webhook-configuration"}
        doc["webhooks"] = kept
        out.append(doc)
    return out


def _crds(directory: Path, port: int) -> Iterator[dict[str, Any]]:
    """Kueue's CRDs, with the conversion webhooks its install adds, at ``127.0.0.1:<port>``."""
    for path in sorted(directory.glob("*.yaml")):
        crd: dict[str, Any] = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in _CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"https://127.0.0.1:{port}/convert"},
                    "conversionReviewVersions": ["v1"],
                },
            }
        yield crd


def _install_crds(cluster: LocalCluster, crds: list[dict[str, Any]], timeout: float) -> None:
    """Apply server-side (Kueue's Workload CRD is too large for the last-applied annotation of
    a client-side apply) and wait until every CRD is established and served."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=hypersweep-test",
        "-f", "-", input=body, timeout=timeout,
    )  # fmt: skip
    names = [f"customresourcedefinition/{c['metadata']['name']}" for c in crds]
    cluster.kubectl(
        "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names,
        timeout=timeout + 10,
    )  # fmt: skip
    wanted = {c["spec"]["names"]["plural"] for c in crds}
    deadline = time.monotonic() + timeout
    while True:
        listed = cluster.kubectl(
            "api-resources", "--api-group=kueue.x-k8s.io", "-o", "name", check=False
        ).stdout.split()
        if wanted <= {name.split(".", 1)[0] for name in listed}:
            return
        if time.monotonic() > deadline:
            raise ClusterStartError(f"Kueue's CRDs are not served: {sorted(wanted)} vs {listed}")
        time.sleep(0.2)


def _certificates(directory: Path) -> dict[str, bytes]:
    """A CA (RSA, PKCS#1 key: the form Kueue's rotator reads back) named ``kueue-ca`` and a
    serving certificate for both the Service DNS name Kueue checks and ``127.0.0.1``."""
    directory.mkdir(parents=True, exist_ok=True)
    dns = f"{_SERVICE}.{KUEUE_NAMESPACE}.svc"
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=DNS:{dns},IP:127.0.0.1\n"
    )
    steps: list[tuple[str, ...]] = [
        ("genrsa", "-traditional", "-out", "ca.key", "2048"),
        ("req", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "3650",
         "-subj", "/O=kueue/CN=kueue-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
         "-addext", "subjectAltName=DNS:kueue-ca"),
        ("genrsa", "-traditional", "-out", "tls.key", "2048"),
        ("req", "-new", "-key", "tls.key", "-out", "tls.csr", "-subj", f"/CN={dns}"),
        ("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-set_serial", "1", "-days", "3650", "-extfile", "server.ext", "-out", "tls.crt"),
    ]  # fmt: skip
    for step in steps:
        _openssl(*step, cwd=directory)
    return {
        name: (directory / name).read_bytes() for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")
    }


def start_kueue(cluster: LocalCluster, *, timeout: float = 120.0) -> KueueProcess:
    """Install Kueue's CRDs and webhooks and run its manager against ``cluster``.

    It stops with the cluster (call :meth:`KueueProcess.stop` to stop it sooner and remove its
    webhooks). It authenticates with the cluster's admin credentials (a test harness component,
    not something under test). Ready means its ``/readyz`` answers: the CA is injected and the
    webhook server serves.
    """
    missing = missing_kueue_binaries()
    if missing:
        raise ClusterStartError(
            f"missing {', '.join(missing)} in {kueue_binaries_dir()}: run {KUEUE_BUILD_COMMAND}"
        )
    bins = kueue_binaries_dir()
    workdir = cluster.workdir / "kueue"
    certs = workdir / "certs"
    webhook_port, health_port = free_port(), free_port()
    pem = _certificates(certs)
    _install_crds(cluster, list(_crds(bins / _CRDS, webhook_port)), timeout)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": _SECRET, "namespace": KUEUE_NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in pem.items()},
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}}
    objects = [namespace, secret, *_webhooks(bins / _WEBHOOKS, webhook_port)]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": _SERVICE,
            "webhookSecretName": _SECRET,
        },
        "integrations": {"frameworks": ["pod"]},
    }
    config_path = workdir / "config.json"  # JSON is YAML
    config_path.write_text(json.dumps(config, indent=2))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    component = _spawn(
        "kueue",
        [
            str(bins / _BINARY),
            f"--config={config_path}",
            # The on-demand visibility API would need an APIService and a fixed port.
            "--feature-gates=VisibilityOnDemand=false",
        ],
        cluster.workdir / "logs",
        env,
    )
    cluster._add(component)
    process = KueueProcess(cluster=cluster, component=component, webhook_port=webhook_port)
    deadline = time.monotonic() + timeout
    while True:
        if not component.alive():
            raise ClusterStartError(f"kueue exited:\n{component.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{health_port}/readyz", timeout=2
            ) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise ClusterStartError(f"kueue is not ready:\n{component.log_tail(80)}")
        time.sleep(0.2)
