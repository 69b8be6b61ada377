"""The operator as its own process, for tests and benchmarks that SIGKILL it and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from hypersweep.testing._waiting import free_port, wait_until


class OperatorProcess:
    """``hypersweep operator run`` for one namespace, in a subprocess of its own session.

    Args:
        kubeconfig: the credentials it runs with (e.g. its ServiceAccount's).
        namespace: the namespace it manages.
        data_dir: its data directory (where the data volume is, as the operator sees it).
        log_path: where its output is appended, each start marked.
        lease_duration: seconds of its leader lease (short: a SIGKILLed leader never releases
            it, and its successor waits it out).
        lease_namespace: where its Lease is; default ``namespace``.
        lease_name: the Lease's name; default the operator's own.
        identity: start ``n`` runs as ``<identity>-<n>``, as a new pod gets a new name.
        ready_path: what :meth:`ready` asks: ``/leaderz`` (leading, controllers running) or
            ``/readyz`` (serving; readiness does not wait for the lease).
        restart_on_exit: when it has exited by itself (it loses its lease on an overloaded
            machine), :meth:`ready` starts it again rather than failing.
        start_timeout: seconds :meth:`start` waits for it to be ready.

    :attr:`replica_host`, :attr:`extra_args` and :attr:`extra_env` go to the next start.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        data_dir: Path,
        log_path: Path,
        *,
        lease_duration: float = 6.0,
        lease_namespace: str | None = None,
        lease_name: str | None = None,
        identity: str = "test-operator",
        ready_path: str = "/leaderz",
        restart_on_exit: bool = False,
        start_timeout: float = 90.0,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace_name = namespace
        self.data_dir = data_dir
        self.log_path = log_path
        self.lease_duration = lease_duration
        self.lease_namespace = lease_namespace or namespace
        self.lease = lease_name
        self.identity = identity
        self.ready_path = ready_path
        self.restart_on_exit = restart_on_exit
        self.start_timeout = start_timeout
        self.port = free_port()
        #: Every replica at this host (pods share 127.0.0.1 on the node agent); None: the
        #: production addressing, by DNS name (a node agent in cluster-DNS mode resolves them).
        self.replica_host: str | None = "127.0.0.1"
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        self.starts += 1
        argv = [
            sys.executable,
            "-m",
            "hypersweep._cli",
            "operator",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace_name}",
            f"--data-dir={self.data_dir}",
            "--bind=127.0.0.1",
            f"--port={self.port}",
            f"--report-url={self.url}",
            f"--lease-namespace={self.lease_namespace}",
            *([f"--lease-name={self.lease}"] if self.lease else []),
            f"--lease-duration={self.lease_duration:g}",
            f"--identity={self.identity}-{self.starts}",
            *([f"--replica-host={self.replica_host}"] if self.replica_host else []),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        if wait:
            wait_until(self.ready, timeout=self.start_timeout, what="the operator to be ready")

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            if not self.restart_on_exit:
                raise AssertionError(f"the operator exited:\n{self.log_tail()}")
            self.start(wait=False)
            return False
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean hand-over, no lease release."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it had exited by itself
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, as a Deployment stops it (sweeps handed over, lease released)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
