"""Taking results away: ``hypersweep export`` and ``to_dataframe()``, one row per trial."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas
import tomllib
import yaml
from conftest import PYTHON, hypersweep, python_env

import hypersweep as hs

ROOT = Path(__file__).resolve().parents[1]

SWEEP = {
    "name": "taken",
    "objective": "objectives:asha_curve",
    "metric": "loss",
    "n_trials": 6,
    "max_concurrent": 1,
    "seed": 0,
    "early_stopping": {"name": "asha", "min_resource": 1, "max_resource": 9, "reduction_factor": 3},
    "space": {
        "x": {"type": "float", "low": 0, "high": 1},
        "opt": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
    },
}


def _run_sweep(run_dir: Path) -> hs.SweepResult:
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    run = hypersweep("run", "sweep.yaml", "--no-live")
    assert run.returncode == 0, run.stderr
    return hs.load("taken")


_COLUMNS = {
    "number",
    "state",
    "value",
    "step",
    "promotions",
    "duration",
    "segments",
    "attempts",
    "parent",
    "error",
    "checkpoint",
    "config.x",
    "config.opt.lr",
    "metrics.loss",
}


def test_export_writes_one_row_per_trial_as_csv_json_and_parquet(run_dir: Path) -> None:
    result = _run_sweep(run_dir)
    by_number = {t.number: t for t in result.trials}

    assert hypersweep("export", "taken").returncode == 0  # csv by default, NAME.csv
    with open(run_dir / "taken.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6 and set(rows[0]) == _COLUMNS
    for row in rows:
        trial = by_number[int(row["number"])]
        assert row["state"] == trial.state and float(row["config.x"]) == trial.config["x"]
        assert int(row["promotions"]) == len(trial.promoted_at)
        assert float(row["duration"]) == trial.duration

    out = hypersweep("export", "taken", "--format", "json", "-o", "trials.json")
    assert out.returncode == 0 and "wrote 6 trials to trials.json" in out.stdout
    records = json.loads((run_dir / "trials.json").read_text())
    assert records == json.loads(json.dumps(result.to_records()))

    assert hypersweep("export", "taken", "--format", "parquet").returncode == 0
    frame = pandas.read_parquet(run_dir / "taken.parquet")
    assert len(frame) == 6 and set(frame.columns) == _COLUMNS
    assert sorted(frame["state"]) == sorted(t.state for t in result.trials)

    missing = hypersweep("export", "taken", "-o", "no/such/folder/t.csv")
    assert missing.returncode == 2 and "output: folder 'no/such/folder' does not exist" in (
        " ".join(missing.stderr.split())
    )


def test_parquet_without_pyarrow_names_the_extra(run_dir: Path) -> None:
    _run_sweep(run_dir)
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from hypersweep._cli import main\n"
        "sys.exit(main(['export', 'taken', '--format', 'parquet']))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=python_env(), timeout=60
    )
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and "pip install 'hypersweep[parquet]'" in text, text
    assert not (run_dir / "taken.parquet").exists()


def test_to_dataframe_has_the_same_rows(run_dir: Path) -> None:
    result = _run_sweep(run_dir)
    frame = result.to_dataframe()
    assert list(frame.columns) == list(result.to_records()[0])
    assert len(frame) == 6 and set(frame["number"]) == {t.number for t in result.trials}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_readme_install_command_brings_what_to_dataframe_and_the_quickstart_need() -> None:
    """The README's first command, then ``hs.load(...).to_dataframe()``, works."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"pip install -e '\.\[([\w,]+)\]'", readme)
    assert match, "the README's set-up command is gone"
    extras = match.group(1).split(",")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _requirement_names(project["dependencies"])
    for extra in extras:
        installed |= _requirement_names(project["optional-dependencies"][extra])
    # to_dataframe() imports pandas; the quickstart trains with scikit-learn.
    assert {"pandas", "scikit-learn", "optuna"} <= installed
    # ... and pandas stays out of `import hypersweep` (workers import it to report).
    code = "import sys, hypersweep; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
