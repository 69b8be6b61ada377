"""Results can be looked at: the plot and optuna-dashboard on a stored sweep."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import objectives
from conftest import PYTHON, python_env

import hypersweep as hs


def _sweep() -> None:
    hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=8,
        max_concurrent=1,
        early_stopping={"name": "median", "n_startup_trials": 2},
        name="viewed",
        seed=0,
    )


def test_plot_writes_a_picture_of_the_sweep(run_dir: Path) -> None:
    _sweep()
    result = subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", "plot", "viewed", "-o", "viewed.png"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    image = (run_dir / "viewed.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dashboard_serves_the_sweep(run_dir: Path) -> None:
    _sweep()
    port = _free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "hypersweep._cli", "dashboard", "viewed", "--port", str(port)],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        assert "viewed" in body
    finally:
        server.terminate()
        server.wait(timeout=10)
