"""Storage: the default journal file and a real PostgreSQL server, with drivers sharing a sweep."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, python_env
from postgres import find_bin_dir, postgres_server
from test_faults import run_kill_resume

import hypersweep as hs
from hypersweep.orchestrator._storage import OWNER_ATTR, open_storage


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
    import json, os, sys, time
    from pathlib import Path
    import hypersweep as hs
    import objectives

    # Import what opening the storage needs first, so that the drivers really race on it.
    import cloudpickle, optuna, pydantic, sqlalchemy
    import optuna.storages._rdb.storage, optuna.storages.journal
    import hypersweep.launchers._local, hypersweep.orchestrator._orchestrator
    import hypersweep.orchestrator._spec, hypersweep.orchestrator._tune
    if "://" in str({storage!r}):
        sqlalchemy.create_engine({storage!r})  # imports the database driver
    # Start with the other drivers, at the same instant.
    Path(os.environ["HYPERSWEEP_TEST_MARKERS"], f"ready-{{os.getpid()}}").touch()
    go = Path(os.environ["HYPERSWEEP_TEST_GO"])
    while not go.exists():
        time.sleep(0.001)
    result = hs.tune({{"x": hs.uniform(0, 1)}}, objectives.waits_for_every_driver,
                     metric="loss", n_trials={n}, max_concurrent=2, name={name!r}, resume=True,
                     storage={storage!r}, strategy="random", seed=1, verbose=False)
    print(json.dumps(result.counts()))
    """
)


def run_drivers(run_dir: Path, storage: str | None, name: str, drivers: int, n_trials: int) -> None:
    """Start ``drivers`` drivers of one sweep at the same instant; check that each ran trials.

    The objective lets no trial end before every driver started one, so each driver must have
    opened the storage, created or joined the sweep, and claimed trials.
    """
    markers = run_dir / "markers"
    markers.mkdir(parents=True)
    go = run_dir / "go"
    script = run_dir / "shared.py"
    script.write_text(SHARED_DRIVER.format(n=n_trials, name=name, storage=storage))
    env = {
        **python_env(),
        "HYPERSWEEP_TEST_MARKERS": str(markers),
        "HYPERSWEEP_TEST_GO": str(go),
        "HYPERSWEEP_TEST_DRIVERS": str(drivers),
    }
    processes = [
        subprocess.Popen(
            [PYTHON, str(script)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(drivers)
    ]
    deadline = time.monotonic() + 120
    while len(list(markers.glob("ready-*"))) < drivers:
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()
    outputs = [process.communicate(timeout=180) for process in processes]
    assert [p.returncode for p in processes] == [0] * drivers, outputs
    result = hs.load(name, storage)
    assert result.counts() == {"completed": n_trials}
    assert sorted(t.number for t in result.trials) == list(range(n_trials))
    assert len({t.config["x"] for t in result.trials}) == n_trials  # one seed, no config twice
    starts = {p.name: p.read_text().split() for p in markers.glob("starts-*")}
    assert len(starts) == n_trials and all(s == ["0"] for s in starts.values())  # each ran once
    # Every driver claimed trials: by the workers' parent process and by the stored owner.
    driver_pids = {str(p.pid) for p in processes}
    ran_by = {m.name.split("-")[1] for m in markers.glob("driver-*")}
    assert ran_by == driver_pids
    opened = open_storage(storage, name)
    study_ids = [s._study_id for s in opened.get_all_studies() if s.study_name == name]
    assert len(study_ids) == 1  # one study, created once
    trials = opened.get_all_trials(study_ids[0], deepcopy=False)
    assert len(trials) == n_trials  # one budget, not one per driver
    owners = {t.system_attrs[OWNER_ATTR].split(":")[1] for t in trials}
    assert owners == driver_pids


def test_two_drivers_share_one_sweep_exactly(run_dir: Path, storage: str | None) -> None:
    name = f"shared-{os.getpid()}-{storage is None}"
    run_drivers(run_dir, storage, name, drivers=2, n_trials=12)


def _fresh_database(url: str, name: str) -> str:
    """A new, empty database on the server of ``url``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_four_drivers_start_together_on_fresh_storage(
    run_dir: Path, request: pytest.FixtureRequest, kind: str, repeat: int
) -> None:
    """Schema and study are created once when 4 drivers start at once on a new storage."""
    if kind == "postgres":
        base: str = request.getfixturevalue("postgres_url")
        storage: str | None = _fresh_database(base, f"fresh_{os.getpid()}_{repeat}")
    else:
        storage = str(run_dir / "fresh" / "journal.log")  # not even its folder exists yet
    run_drivers(run_dir, storage, "together", drivers=4, n_trials=8)


OPENER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import optuna.storages._rdb.storage, sqlalchemy
    from hypersweep.orchestrator._storage import open_storage

    url, go = sys.argv[1], Path(sys.argv[2])
    sqlalchemy.create_engine(url)  # imports the database driver before the race
    Path(f"{go}.{os.getpid()}").touch()
    while not go.exists():
        pass
    open_storage(url, "any")
    """
)


@pytest.mark.parametrize("repeat", range(3))
@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_six_processes_open_a_fresh_database_at_once(
    run_dir: Path, request: pytest.FixtureRequest, kind: str, repeat: int
) -> None:
    """The bare race on Optuna's schema creation, tighter than whole drivers make it."""
    if kind == "postgres":
        base: str = request.getfixturevalue("postgres_url")
        url = _fresh_database(base, f"open_{os.getpid()}_{repeat}")
    else:
        url = f"sqlite:///{run_dir / 'fresh.db'}"
    script = run_dir / "opener.py"
    script.write_text(OPENER)
    go = run_dir / "go"
    processes = [
        subprocess.Popen(
            [PYTHON, str(script), url, str(go)],
            env=python_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    deadline = time.monotonic() + 120
    while len(list(run_dir.glob("go.*"))) < 6:  # all ready, spinning on the go file
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.01)
    go.touch()
    errors = [process.communicate(timeout=120)[1] for process in processes]
    assert [p.returncode for p in processes] == [0] * 6, errors
    opened = open_storage(url, "any")
    assert opened.get_all_studies() == []  # a working, empty schema


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


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_grid_sweep_on_a_database_tries_every_config_once(
    request: pytest.FixtureRequest, run_dir: Path, kind: str
) -> None:
    # The grid sampler writes a trial's parameters before anything reads the sweep's trials:
    # the sweep's slots and the study must go through one storage, not two with their own caches.
    url = (
        f"sqlite:///{run_dir / 'grid.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    result = hs.tune(
        {"a": hs.choice([1, 2, 3]), "b": hs.choice(["good", "bad"])},
        "objectives:categorical",
        metric="loss",
        n_trials=6,
        storage=url,
        name=f"grid-{kind}",
        strategy="grid",
        verbose=False,
    )
    assert result.counts() == {"completed": 6}
    assert sorted((t.config["a"], t.config["b"]) for t in result.trials) == [
        (a, b) for a in (1, 2, 3) for b in ("bad", "good")
    ]
