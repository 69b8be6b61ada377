"""Storage: the default journal file and a real PostgreSQL server, with drivers sharing a sweep."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, python_env
from postgres import find_bin_dir, postgres_server
from test_faults import run_kill_resume

import hypersweep as hs


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if find_bin_dir() is None:
        if os.environ.get("HYPERSWEEP_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (HYPERSWEEP_REQUIRE_POSTGRES=1) but not installed")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["journal", "postgres"])
def storage(request: pytest.FixtureRequest, run_dir: Path) -> str | None:
    if request.param == "journal":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


SHARED_DRIVER = textwrap.dedent(
    """
    import json, sys
    import hypersweep as hs
    import objectives

    result = hs.tune({{"x": hs.uniform(0, 1)}}, objectives.slow_steps, metric="loss",
                     n_trials={n}, max_concurrent=2, name={name!r}, resume=True,
                     storage={storage!r}, verbose=False)
    print(json.dumps(result.counts()))
    """
)


def test_two_drivers_share_one_sweep_exactly(run_dir: Path, storage: str | None) -> None:
    name = f"shared-{os.getpid()}-{storage is None}"
    n_trials = 12
    script = run_dir / "shared.py"
    script.write_text(SHARED_DRIVER.format(n=n_trials, name=name, storage=storage))
    env = {
        **python_env(),
        "HYPERSWEEP_TEST_MARKERS": str(run_dir / "markers"),
        "HYPERSWEEP_TEST_STEP": "0.05",
    }
    drivers = [
        subprocess.Popen([PYTHON, str(script)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [driver.communicate(timeout=180)[0] for driver in drivers]
    assert [driver.returncode for driver in drivers] == [0, 0], outputs
    result = hs.load(name, storage)
    assert result.counts() == {"completed": n_trials}
    assert sorted(t.number for t in result.trials) == list(range(n_trials))
    starts = {p.name: p.read_text().split() for p in (run_dir / "markers").glob("starts-*")}
    assert len(starts) == n_trials and all(s == ["0"] for s in starts.values())  # each ran once
    pids = {p.read_text() for p in (run_dir / "markers").glob("pid-*")}
    assert len(pids) >= 1


@pytest.mark.slow
def test_driver_sigkill_then_resume_on_postgres(run_dir: Path, postgres_url: str) -> None:
    run_kill_resume(run_dir, postgres_url)


def test_tune_on_postgres(postgres_url: str) -> None:
    # The test server trusts loopback, so any password is accepted: one in the URL must be
    # hidden wherever the result shows the storage.
    secret = "s3cret-pw"
    url = postgres_url.replace("postgres@", f"postgres:{secret}@", 1)
    result = hs.tune(
        {"x": hs.uniform(-5, 5)},
        "objectives:quadratic",
        metric="loss",
        n_trials=10,
        storage=url,
        name="pg-basic",
        early_stopping="median",
    )
    assert result.counts() == {"completed": 10}
    assert result.storage == "postgresql://***@" + postgres_url.split("@", 1)[1]
    assert secret not in repr(result)
    assert hs.load("pg-basic", postgres_url).best_value == result.best_value
