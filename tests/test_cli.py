"""The hypersweep command on YAML sweeps: run, status, best, resume, and bad input refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from conftest import PYTHON, python_env

SWEEP = """
name: cli-sweep
objective: objectives:quadratic
metric: loss
n_trials: 6
max_concurrent: 2
seed: 1
space:
  x: {type: float, low: -5, high: 5}
  y: {type: float, low: -5, high: 5}
"""


def hypersweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "hypersweep._cli", *args],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )


def test_run_status_best(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP)
    run = hypersweep("run", "sweep.yaml", "--no-live")
    assert run.returncode == 0, run.stderr
    assert "sweep cli-sweep: 6 completed" in run.stdout
    assert "best trial" in run.stdout

    status = hypersweep("status", "cli-sweep")
    assert status.returncode == 0
    assert status.stdout.count("completed") >= 6

    best = hypersweep("best", "cli-sweep", "--json")
    assert best.returncode == 0
    data = json.loads(best.stdout)
    assert set(data["config"]) == {"x", "y"} and data["value"] >= 0

    again = hypersweep("run", "sweep.yaml", "--no-live")
    assert again.returncode == 2 and "already exists" in again.stderr

    more = hypersweep("run", "sweep.yaml", "--no-live", "--resume", "--n-trials", "8")
    assert more.returncode == 0 and "8 completed" in more.stdout


def test_the_live_table_runs(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP)
    run = hypersweep("run", "sweep.yaml")
    assert run.returncode == 0, run.stderr
    assert "cli-sweep" in run.stderr and "completed" in run.stderr  # the table is drawn
    assert (run_dir / "runs" / "cli-sweep" / "logs").is_dir()


def test_resume_by_name_uses_the_stored_spec(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP.replace("n_trials: 6", "n_trials: 3"))
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    resumed = hypersweep("resume", "cli-sweep", "--no-live")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 completed" in resumed.stdout
    assert hypersweep("resume", "nope", "--no-live").returncode == 2


def test_bad_yaml_is_refused_with_the_field_named(run_dir: Path) -> None:
    cases = [
        ({"n_trials": -1}, "n_trials: Input should be greater than or equal to 1"),
        ({"strategy": "bayes"}, "strategy: unknown strategy 'bayes'"),
        ({"mode": "up"}, "mode: Input should be 'min' or 'max'"),
        ({"n_trails": 3}, "n_trails: unknown field"),
        (
            {"space": {"x": {"type": "float", "low": 2, "high": 1}}},
            "space.x: low (2) must be less than high",
        ),
        ({"early_stopping": {"name": "asha", "rungs": 3}}, "early_stopping: invalid settings"),
        ({"objective": "objectives:nope"}, "objective: 'objectives' has no function 'nope'"),
    ]
    for change, message in cases:
        (run_dir / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(SWEEP), **change}))
        result = hypersweep("run", "bad.yaml", "--no-live")
        assert result.returncode == 2, (change, result.stderr)
        assert message in " ".join(result.stderr.split()), (change, result.stderr)
        assert "Traceback" not in result.stderr
    (run_dir / "broken.yaml").write_text("name: [unclosed\n")
    result = hypersweep("validate", "broken.yaml")
    assert result.returncode == 2 and "not valid YAML at line" in result.stderr
    assert not (run_dir / "runs").exists()


def test_the_quickstart_yaml_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    result = hypersweep("validate", str(example))
    assert result.returncode == 0, result.stderr
