"""Shared fixtures: every test runs in its own folder with its own sweeps."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hypersweep.testing import free_port, wait_until

__all__ = ["free_port", "wait_until"]  # one of each for every test, from hypersweep.testing

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run each test in a fresh folder, with sweeps stored under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYPERSWEEP_RUNS_DIR", str(tmp_path / "runs"))
    yield tmp_path


def python_env() -> dict[str, str]:
    """The environment for a driver started as a subprocess: it imports the tests' objectives."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


# The installed console script, so that CLI tests run the command a user runs.
HYPERSWEEP = str(Path(sys.executable).with_name("hypersweep"))


def hypersweep(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``hypersweep ARGS`` to its end, output captured as text."""
    return subprocess.run(
        [HYPERSWEEP, *args],
        capture_output=True,
        text=True,
        env={**python_env(), **(env or {})},
        timeout=timeout,
    )


def require_module(name: str) -> ModuleType:
    """Import ``name``, or skip the test when it is not installed.

    Under ``HYPERSWEEP_REQUIRE_RAY=1`` (set by ``hack/test.sh``) a missing Ray or Ray Tune
    search library fails instead: the suite must not pass by skipping what it claims to test.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if os.environ.get("HYPERSWEEP_REQUIRE_RAY") == "1":
            pytest.fail(f"HYPERSWEEP_REQUIRE_RAY=1 but {name} is missing: {error}", pytrace=False)
        pytest.skip(f"{name} is not installed: {error}")


#: Debian's headless Chromium, for tests that look at a page as a person would.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def need_chromium() -> None:
    """Skip without Chromium, or fail under ``HYPERSWEEP_REQUIRE_BROWSER=1`` (hack/test.sh)."""
    if CHROMIUM is None:
        message = "headless Chromium is not installed: apt-get install -y chromium"
        if os.environ.get("HYPERSWEEP_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (HYPERSWEEP_REQUIRE_BROWSER=1)")
        pytest.skip(message)


def k8s_unavailable_reason() -> str | None:
    """Why Kubernetes tests cannot run here (no control-plane binaries, no ``kubernetes``
    client), or None when they can."""
    from hypersweep.testing import find_binaries

    check = find_binaries()
    if not check.ok:
        return check.describe()
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return "the `kubernetes` Python client is not installed (`pip install kubernetes`)"
    return None


def skip_or_fail_k8s(reason: str) -> None:
    """Skip a Kubernetes test, or fail it under ``HYPERSWEEP_REQUIRE_K8S=1`` (hack/test.sh):
    the suite must not pass by skipping what it claims to test."""
    if os.environ.get("HYPERSWEEP_REQUIRE_K8S", "") == "1":
        pytest.fail(f"HYPERSWEEP_REQUIRE_K8S=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_seaweedfs() -> None:
    """Skip an object-storage test when SeaweedFS is not built, or fail it under
    ``HYPERSWEEP_REQUIRE_S3=1`` (hack/test.sh)."""
    from hypersweep.testing._s3 import weed_binary

    if weed_binary() is None:
        message = "SeaweedFS is not built: bash hack/seaweedfs/build.sh"
        if os.environ.get("HYPERSWEEP_REQUIRE_S3") == "1":
            pytest.fail(f"HYPERSWEEP_REQUIRE_S3=1 but {message}", pytrace=False)
        pytest.skip(message)


@contextlib.contextmanager
def ray_test_cluster(worker_node: dict[str, Any], workers: int = 2) -> Iterator[Any]:
    """A Ray cluster on this machine: a head node that runs no trials (no CPUs) and
    ``workers`` nodes of ``worker_node``'s resources, with this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    # Fixed metrics-agent ports: a raylet then does not wait for its agent to write one (on
    # a loaded machine that wait timed out and the node died starting).
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": 100 * 2**20,
            "include_dashboard": False,
            "metrics_agent_port": free_port(),
        },
    )
    for _ in range(workers):
        cluster.add_node(**{"metrics_agent_port": free_port(), **worker_node})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def markers(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder where test objectives leave JSON markers (``HYPERSWEEP_TEST_MARKERS``)."""
    path = run_dir / "markers"
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(path))
    return path


def read_markers(markers: Path, pattern: str) -> list[dict[str, Any]]:
    """The markers matching ``pattern``, sorted by name."""
    return [json.loads(p.read_text()) for p in sorted(markers.glob(f"{pattern}.json"))]


def elastic_worlds(markers: Path) -> dict[int, set[int]]:
    """Epoch -> the world sizes an elastic objective's epoch ran with (``elastic-e*`` markers,
    a round that was cut short included)."""
    seen: dict[int, set[int]] = {}
    for data in read_markers(markers, "elastic-e*-w*-r*"):
        seen.setdefault(data["epoch"], set()).add(data["world_size"])
    return seen


def alive_pids(pids: list[int]) -> list[int]:
    """The processes among ``pids`` that still run (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # The state follows the command name, which may itself hold spaces.
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive
