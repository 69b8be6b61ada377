"""``hypersweep operator``: the process that runs the TrainJob and Sweep controllers.

One process serves trials' reports (``_server``) and, while it leads (``_leader``), runs the
TrainJob controller and the Sweep controller. Every candidate is ready (readiness does not wait
for the lease, so rolling upgrades and node drains proceed); the leader labels its own pod
``hypersweep.io/leader=true`` (``$POD_NAME`` in ``$POD_NAMESPACE``), which the operator's Service
selects, so trials' reports reach the leader alone. On SIGTERM it stops cleanly: sweeps are detached
(their trials keep running, to be adopted by the next leader), and the lease is released so the
next leader starts at once. If it loses the lease it exits with status 1, and its Deployment
starts it again as a candidate.

Commands:

* ``hypersweep operator run [options]``: run the operator (see ``--help``).
* ``hypersweep operator crds [--output-dir DIR]``: print (or write) the CRD manifests.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from hypersweep._metrics import operator_metrics
from hypersweep.kube._client import PODS, ApiError, Kube
from hypersweep.kube._names import COMPONENT, LEADER_LABEL
from hypersweep.kube._pools import GangAdmission
from hypersweep.kube._recorder import EventRecorder
from hypersweep.kube._server import ReportServer
from hypersweep.operators._crds import crd_manifests
from hypersweep.operators._leader import LeaderElector
from hypersweep.operators._sweep import LauncherFactory, SweepController
from hypersweep.operators._trainjob import Networking, TrainJobController

logger = logging.getLogger("hypersweep.operator")

EXIT_LOST_LEASE = 1


@dataclass
class OperatorOptions:
    """How the operator runs; every field is also a ``hypersweep operator run`` flag."""

    kubeconfig: str | None = None
    namespace: str | None = None
    data_dir: Path = Path("/var/lib/hypersweep")
    bind: str = "0.0.0.0"
    port: int = 8080
    report_url: str | None = None
    lease_namespace: str = "hypersweep-system"
    lease_name: str = COMPONENT
    lease_duration: float = 15.0
    identity: str | None = None
    replica_host: str | None = None
    workers: int = 8  # reconciles at once per controller (the Job controller runs 5)
    heartbeat_interval: float = 5.0
    lease_grace: float = 15.0
    #: Watch nodes (a replica on a deleted node restarts its gang; gang admission onto
    #: pools). Off for an operator with a Role only, which cannot grant nodes (the namespaced
    #: overlay passes ``--no-watch-nodes``).
    watch_nodes: bool = True


class Operator:
    """The operator process: report server, leader election and both controllers."""

    def __init__(
        self,
        options: OperatorOptions,
        launcher_factory: LauncherFactory,
        kube: Kube | None = None,
    ) -> None:
        self.options = options
        self.launcher_factory = launcher_factory
        self.kube = kube or Kube.from_config(options.kubeconfig)
        self.identity = options.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.ready = False
        self.leading = False
        self.lost = threading.Event()
        self.server = ReportServer(
            options.bind, options.port, ready=lambda: self.ready, leading=lambda: self.leading
        )

    @property
    def report_url(self) -> str:
        if self.options.report_url:
            return self.options.report_url.rstrip("/")
        pod_ip = os.environ.get("POD_IP") or "127.0.0.1"
        return f"http://{pod_ip}:{self.server.port}"

    def run(self, stop: threading.Event) -> int:
        """Serve until ``stop`` is set (0) or the lease is lost (1)."""
        options = self.options
        self.server.start()
        logger.info(
            "serving trial reports on port %d (trials use %s)", self.server.port, self.report_url
        )
        elector = LeaderElector(
            self.kube,
            options.lease_namespace,
            options.lease_name,
            self.identity,
            lease_duration=options.lease_duration,
            renew_deadline=options.lease_duration * 2 / 3,
            retry_period=max(0.5, options.lease_duration / 7),
        )
        self._label_pod(leader=False)  # a restarted container leads no more
        self.ready = True
        try:
            if not elector.acquire(stop):
                return 0
            operator_metrics().leader.set(1)

            def on_lost() -> None:
                operator_metrics().leader.set(0)
                self.lost.set()
                stop.set()

            keeper = threading.Thread(
                target=elector.keep, args=(stop, on_lost), name="lease", daemon=True
            )
            keeper.start()
            recorder = EventRecorder(self.kube, COMPONENT, self.identity)
            trainjobs = TrainJobController(
                self.kube,
                recorder,
                namespace=options.namespace,
                networking=Networking(replica_host=options.replica_host),
                workers=options.workers,
                # Gang restarts of trials that gang admission placed are admitted again.
                admission=lambda: admission,
                watch_nodes=options.watch_nodes,
            )
            # One watch per kind of object: admission and the sweeps' launchers read the
            # TrainJob controller's caches (admission watches the other pods itself).
            admission = GangAdmission(self.kube, nodes=trainjobs.nodes, trial_pods=trainjobs.pods)
            sweeps = SweepController(
                self.kube,
                recorder,
                launcher_factory=self.launcher_factory,
                server=self.server,
                report_url=self.report_url,
                data_dir=options.data_dir,
                namespace=options.namespace,
                heartbeat_interval=options.heartbeat_interval,
                lease_grace=options.lease_grace,
                workers=options.workers,
                admission=admission if options.watch_nodes else None,
                trainjobs=trainjobs.jobs,
                pools_allowed=options.watch_nodes,
            )
            trainjobs.start()
            sweeps.start()
            self.leading = True
            self._label_pod(leader=True)
            logger.info("controllers running")
            stop.wait()
            self.leading = False
            self._label_pod(leader=False)
            logger.info("stopping: sweeps are handed over with their trials running")
            sweeps.stop()
            trainjobs.stop()
            recorder.flush(5.0)  # the last events, written in the background
            if not self.lost.is_set():
                elector.release()
            return EXIT_LOST_LEASE if self.lost.is_set() else 0
        finally:
            self.ready = False
            self.server.stop()

    def _label_pod(self, *, leader: bool) -> None:
        """Put (or take off) the leader label on this operator's pod, which the Service
        selects; nothing outside a pod (no ``$POD_NAME``)."""
        pod, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not pod or not namespace:
            return
        value = "true" if leader else None
        try:
            self.kube.patch(PODS, namespace, pod, {"metadata": {"labels": {LEADER_LABEL: value}}})
        except ApiError as error:
            logger.error(
                "could not %s the label %s on pod %s/%s (trials reach the leader through it): %s",
                "set" if leader else "remove",
                LEADER_LABEL,
                namespace,
                pod,
                error.message,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypersweep operator", description="The Kubernetes operator for TrainJobs and Sweeps."
    )
    commands = parser.add_subparsers(dest="operator_command", required=True)
    defaults = OperatorOptions()
    run = commands.add_parser("run", help="run the controllers (leader-elected)")
    run.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)"
    )
    run.add_argument("--namespace", help="manage only this namespace (default: all)")
    run.add_argument(
        "--data-dir",
        default=os.environ.get("HYPERSWEEP_DATA_DIR", str(defaults.data_dir)),
        help="where the data volume is mounted: sweeps' journals and checkpoints",
    )
    run.add_argument("--bind", default=defaults.bind, help="address of the report server")
    run.add_argument("--port", type=int, default=defaults.port, help="port of the report server")
    run.add_argument(
        "--report-url",
        default=os.environ.get("HYPERSWEEP_REPORT_URL"),
        help="the URL at which trial pods reach this server (the operator's Service)",
    )
    run.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", defaults.lease_namespace),
        help="namespace of the leader-election Lease",
    )
    run.add_argument("--lease-name", default=defaults.lease_name)
    run.add_argument("--lease-duration", type=float, default=defaults.lease_duration)
    run.add_argument("--identity", default=os.environ.get("POD_NAME"), help="this candidate's name")
    run.add_argument(
        "--replica-host",
        help="address every replica by this host instead of its Service's DNS name (clusters "
        "whose pods share one network and have no cluster DNS)",
    )
    run.add_argument("--workers", type=int, default=defaults.workers)
    run.add_argument(
        "--watch-nodes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="watch nodes: gangs restart at once when a node is deleted, and spec.pools works "
        "(default: on; --no-watch-nodes for an operator whose Role cannot grant nodes)",
    )
    run.add_argument("--log-level", default="INFO")
    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.add_argument("--output-dir", help="write one file per CRD into this directory")
    return parser


def write_crds(directory: str | Path) -> list[Path]:
    """Write each CRD to ``<dir>/<group>_<plural>.yaml``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in crd_manifests():
        spec = crd["spec"]
        path = directory / f"{spec['group']}_{spec['names']['plural']}.yaml"
        path.write_text(crd_yaml(crd))
        written.append(path)
    return written


def crd_yaml(crd: dict[str, Any]) -> str:
    header = "# Generated by `hypersweep operator crds --output-dir deploy/crds`; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str] | None, launcher_factory: LauncherFactory) -> int:
    """Entry point of ``hypersweep operator``; the CLI passes the launcher that runs each
    Sweep's trials (the Kubernetes launcher), so that operators never import launchers."""
    args = build_parser().parse_args(argv)
    if args.operator_command == "crds":
        if args.output_dir:
            for path in write_crds(args.output_dir):
                print(path)
        else:
            sys.stdout.write("---\n".join(crd_yaml(crd) for crd in crd_manifests()))
        return 0
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    options = OperatorOptions(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        data_dir=Path(args.data_dir),
        bind=args.bind,
        port=args.port,
        report_url=args.report_url,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_duration=args.lease_duration,
        identity=args.identity,
        replica_host=args.replica_host,
        workers=args.workers,
        watch_nodes=args.watch_nodes,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Operator(options, launcher_factory).run(stop)


if __name__ == "__main__":
    sys.exit("run the operator as `hypersweep operator ...`")
