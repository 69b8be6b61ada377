"""The core install stays light, and the public API is what the docs promise."""

from __future__ import annotations

import subprocess
import sys

import hypersweep


def test_import_does_not_load_heavy_frameworks() -> None:
    code = (
        "import sys, hypersweep; "
        "print(sorted(m for m in ('optuna','torch','tensorflow','ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api() -> None:
    for name in (
        "tune",
        "uniform",
        "loguniform",
        "randint",
        "quniform",
        "choice",
        "grid",
        "report",
        "checkpoint",
        "restore",
        "TrialPruned",
        "SweepResult",
        "load",
        "ConfigError",
    ):
        assert hasattr(hypersweep, name), name
