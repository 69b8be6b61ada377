"""A real gang scheduler for the test cluster, built from the Go module proxy.

``bash hack/gang/build.sh`` builds, into ``~/.cache/hypersweep/gang/bin``,
``kube-scheduler-coscheduling`` (kube-scheduler with the coscheduling plugin of
kubernetes-sigs/scheduler-plugins) and takes its PodGroup CRD (``scheduling.x-k8s.io``) from
the same module.

:func:`start_coscheduler` runs it as a second scheduler of a :class:`LocalCluster`
(``schedulerName: scheduler-plugins-scheduler``, the name a ``podGroup`` Sweep's pods ask for),
next to the cluster's default scheduler, as scheduler-plugins' "as a second scheduler" install
does.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hypersweep.testing._k8s import ClusterStartError, _Component, _spawn
from hypersweep.testing._waiting import free_port

if TYPE_CHECKING:
    from hypersweep.testing._k8s import LocalCluster

__all__ = [
    "COSCHEDULER_NAME",
    "GANG_BUILD_COMMAND",
    "gang_binaries_dir",
    "missing_gang_binaries",
    "start_coscheduler",
]

#: The scheduler name a ``podGroup`` Sweep's pods ask for by default.
COSCHEDULER_NAME = "scheduler-plugins-scheduler"
GANG_BUILD_COMMAND = "bash hack/gang/build.sh"
_COSCHEDULER_BINARY = "kube-scheduler-coscheduling"
_PODGROUP_CRD = "crds/podgroups.yaml"


def gang_binaries_dir() -> Path:
    """Where ``hack/gang/build.sh`` puts its outputs (``$HYPERSWEEP_GANG_CACHE/bin``)."""
    root = os.environ.get("HYPERSWEEP_GANG_CACHE") or str(
        Path.home() / ".cache" / "hypersweep" / "gang"
    )
    return Path(root) / "bin"


def missing_gang_binaries(*names: str) -> list[str]:
    """Which of the outputs ``names`` (default: the coscheduler and its CRD) are missing."""
    wanted = names or (_COSCHEDULER_BINARY, _PODGROUP_CRD)
    return [name for name in wanted if not (gang_binaries_dir() / name).exists()]


@dataclass
class Coscheduler:
    """The coscheduling scheduler running for a cluster."""

    component: _Component
    name: str

    def log_tail(self, lines: int = 40) -> str:
        return self.component.log_tail(lines)


def start_coscheduler(
    cluster: LocalCluster,
    *,
    scheduler_name: str = COSCHEDULER_NAME,
    permit_waiting_seconds: int = 10,
    timeout: float = 90.0,
) -> Coscheduler:
    """Install the PodGroup CRD and start kube-scheduler with the coscheduling plugin.

    The profile is the one scheduler-plugins ships (``manifests/coscheduling``): Coscheduling at
    every extension point and as the queue sort, so a PodGroup's pods are tried together and
    held at Permit until ``minMember`` of them fit, else none is bound. It stops with the
    cluster. It authenticates with the cluster's admin credentials (the test harness's own
    component, not something under test).
    """
    missing = missing_gang_binaries()
    if missing:
        raise ClusterStartError(
            f"missing {', '.join(missing)} in {gang_binaries_dir()}: run {GANG_BUILD_COMMAND}"
        )
    bins = gang_binaries_dir()
    cluster.install_crds([bins / _PODGROUP_CRD])
    workdir = cluster.workdir / "coscheduler"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": False},
        "clientConnection": {"kubeconfig": str(cluster.kubeconfig)},
        "profiles": [
            {
                "schedulerName": scheduler_name,
                "plugins": {
                    "multiPoint": {"enabled": [{"name": "Coscheduling"}]},
                    "queueSort": {
                        "enabled": [{"name": "Coscheduling"}],
                        "disabled": [{"name": "*"}],
                    },
                },
                "pluginConfig": [
                    {
                        "name": "Coscheduling",
                        "args": {"permitWaitingTimeSeconds": permit_waiting_seconds},
                    }
                ],
            }
        ],
    }
    config_path = workdir / "config.json"  # JSON is YAML: the scheduler reads either
    config_path.write_text(json.dumps(config, indent=2))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    component = _spawn(
        "coscheduler",
        [
            str(bins / _COSCHEDULER_BINARY),
            f"--config={config_path}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'certs'}",
        ],
        cluster.workdir / "logs",
        env,
    )
    cluster._add(component)
    deadline = time.monotonic() + timeout
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    while True:
        if not component.alive():
            raise ClusterStartError(f"the coscheduler exited:\n{component.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/healthz", timeout=2, context=insecure
            ) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ClusterStartError(f"the coscheduler is not healthy:\n{component.log_tail()}")
        time.sleep(0.2)
    return Coscheduler(component=component, name=scheduler_name)
