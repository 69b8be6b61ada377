"""Sweep files with a conditional space, several objectives and constraints, through the
``hypersweep`` command: run, status, best, plot, resume, and bad input refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import PYTHON, python_env

import hypersweep as hs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MULTI = """
name: mo-cli
objective: multi_objectives:constrained_two
metric: [f1, f2]
mode: [min, min]
constraints:
  memory_gb: {max: 5}
strategy: nsga2
n_trials: 40
max_concurrent: 2
seed: 0
space:
  x0: {type: float, low: 0, high: 1}
  x1: {type: float, low: 0, high: 1}
  x2: {type: float, low: 0, high: 1}
"""


def hypersweep(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``hypersweep`` command (its module where no script is installed)."""
    script = Path(sys.executable).parent / "hypersweep"
    command = [str(script)] if script.exists() else [PYTHON, "-m", "hypersweep._cli"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env={**python_env(), "COLUMNS": "200"},
        timeout=300,
    )


def test_the_conditional_example_file_runs_with_only_the_chosen_keys(run_dir: Path) -> None:
    for name in ("conditional.yaml", "conditional.py"):
        shutil.copy(EXAMPLES / name, run_dir / name)
    run = hypersweep("run", "conditional.yaml", "--no-live", "--n-trials", "10")
    assert run.returncode == 0, run.stderr
    assert "sweep conditional-cli: 10 completed" in run.stdout
    result = hs.load("conditional-cli")
    solvers = set()
    for trial in result.trials:
        optimizer = trial.config["optimizer"]
        solvers.add(optimizer["solver"])
        extra = "momentum" if optimizer["solver"] == "sgd" else "beta_1"
        assert set(optimizer) == {"solver", "lr", extra}
        assert set(trial.config) == {"optimizer", "hidden", "epochs"}
    assert solvers == {"sgd", "adam"}
    best = hypersweep("best", "conditional-cli", "--json")
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["config"] == result.best_config
    status = hypersweep("status", "conditional-cli")
    assert "optimizer.solver=sgd" in status.stdout and "optimizer.beta_1=" in status.stdout
    # The stored plain-data space rebuilds the conditional space: resume adds trials to it.
    more = hypersweep("run", "conditional.yaml", "--no-live", "--resume")  # the file's 12
    assert more.returncode == 0, more.stderr
    assert "sweep conditional-cli: 12 completed" in more.stdout
    for trial in hs.load("conditional-cli").trials:
        assert set(trial.config["optimizer"]) in (
            {"solver", "lr", "momentum"},
            {"solver", "lr", "beta_1"},
        )


def test_several_objectives_and_constraints_from_a_sweep_file(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(MULTI)
    run = hypersweep("run", "sweep.yaml", "--no-live")
    assert run.returncode == 0, run.stderr
    assert "sweep mo-cli: 40 completed" in run.stdout
    assert "Pareto front (min f1, min f2):" in run.stdout
    result = hs.load("mo-cli")
    assert result.metrics == ["f1", "f2"] and result.constraints == {"memory_gb": {"max": 5.0}}
    infeasible = sum(1 for t in result.trials if t.feasible is False)
    assert infeasible > 0
    assert f"{infeasible} infeasible (constraints: memory_gb <= 5)" in run.stdout

    best = hypersweep("best", "mo-cli", "--json")
    assert best.returncode == 0, best.stderr
    front = json.loads(best.stdout)
    assert front["metrics"] == ["f1", "f2"] and front["modes"] == ["min", "min"]
    assert [t["trial"] for t in front["front"]] == [t.number for t in result.best_trials]
    assert all(t["values"]["f1"] <= 0.5 for t in front["front"])  # memory_gb = 10 * f1 <= 5

    text = hypersweep("best", "mo-cli")
    assert f"Pareto front (min f1, min f2): {len(front['front'])} trials" in text.stdout

    status = hypersweep("status", "mo-cli")
    assert status.returncode == 0, status.stderr
    header = next(line for line in status.stdout.splitlines() if "trial" in line and "f1" in line)
    for column in ("f1", "f2", "front", "feasible"):
        assert column in header
    assert " no " in status.stdout and " yes " in status.stdout

    resume = hypersweep("resume", "mo-cli", "--no-live")  # from the stored spec alone
    assert resume.returncode == 0, resume.stderr
    assert "Pareto front (min f1, min f2):" in resume.stdout

    plot = hypersweep("plot", "mo-cli", "-o", "front.png")
    assert plot.returncode == 0, plot.stderr
    assert (run_dir / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_objective_fields_in_a_file_are_refused_naming_them(run_dir: Path) -> None:
    cases = {
        "early_stopping: asha\n": "early_stopping: no scheduler can rank trials on several",
        "constraints:\n  memory_gb: {max: high}\n": "constraints.memory_gb.max: expected a "
        "finite number",
    }
    for extra, message in cases.items():
        text = MULTI.replace("constraints:\n  memory_gb: {max: 5}\n", "") + extra
        (run_dir / "bad.yaml").write_text(text)
        check = hypersweep("validate", "bad.yaml")
        assert check.returncode == 2
        assert message in check.stderr, check.stderr
    (run_dir / "bad.yaml").write_text(
        MULTI.replace(
            "x2: {type: float, low: 0, high: 1}",
            "x2: {type: categorical, values: [{a: {type: float, low: 1, high: 0}}]}",
        )
    )
    check = hypersweep("validate", "bad.yaml")
    assert check.returncode == 2
    assert "space.x2[0].a: low (1) must be less than high (0)" in check.stderr, check.stderr


def test_a_define_by_run_sweep_is_resumed_from_python_not_the_cli(run_dir: Path) -> None:
    import multi_objectives

    def space(trial: object) -> dict[str, object]:
        return {"layers": [trial.suggest_int("units", 16, 256)]}  # type: ignore[attr-defined]

    hs.tune(
        space,
        multi_objectives.layers_loss,
        metric="loss",
        n_trials=2,
        name="dbr-cli",
        verbose=False,
    )
    resume = hypersweep("resume", "dbr-cli", "--no-live")
    assert resume.returncode == 2
    assert "space: sweep 'dbr-cli' was started from Python with a space function" in resume.stderr
    more = hs.tune(
        space,
        multi_objectives.layers_loss,
        metric="loss",
        n_trials=3,
        name="dbr-cli",
        resume=True,
        verbose=False,
    )
    assert more.counts() == {"completed": 3}
