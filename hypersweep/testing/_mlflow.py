"""A real MLflow tracking server on loopback, for the tracker tests and the overhead benchmark."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mlflow_server(workdir: Path, *, timeout: float = 180.0, workers: int = 1) -> Iterator[str]:
    """Run ``mlflow server`` (SQLite backend in ``workdir``, ``workers`` worker processes) on
    a free port of 127.0.0.1 and yield its URL once ``/health`` answers; stopped on exit.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` (its log named).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    mlflow = Path(sys.executable).parent / "mlflow"
    log_path = workdir / "mlflow-server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [
            str(mlflow) if mlflow.exists() else shutil.which("mlflow") or "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'mlflow.db'}",
            "--default-artifact-root",
            str(workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # MLflow's job runner (GenAI jobs, trace rollups; none of it tracking) would start
        # several more processes that import MLflow for many seconds on a small machine.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer in {timeout:g} s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
