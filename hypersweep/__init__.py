"""hypersweep: hyperparameter sweeps and distributed training trials, from a laptop to Kubernetes.

Importing this package is light (no Optuna, torch, TensorFlow or Ray), so that objectives running
in workers can ``import hypersweep`` to report without paying for the driver's dependencies.
"""

from hypersweep._errors import ConfigError, SweepFailed
from hypersweep._version import __version__
from hypersweep.launchers import RayLauncher
from hypersweep.orchestrator import (
    Callback,
    Replicas,
    SweepResult,
    TrialContext,
    TrialPruned,
    TrialRecord,
    checkpoint,
    get_trial_context,
    load,
    report,
    restore,
    tune,
)
from hypersweep.strategies import choice, grid, loguniform, quniform, randint, uniform

__all__ = [
    "Callback",
    "ConfigError",
    "RayLauncher",
    "Replicas",
    "SweepFailed",
    "SweepResult",
    "TrialContext",
    "TrialPruned",
    "TrialRecord",
    "__version__",
    "checkpoint",
    "choice",
    "get_trial_context",
    "grid",
    "load",
    "loguniform",
    "quniform",
    "randint",
    "report",
    "restore",
    "tune",
    "uniform",
]
