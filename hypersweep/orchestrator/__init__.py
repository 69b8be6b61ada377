"""The sweep loop, trial lifecycle, storage, and the trial-side reporting API."""

from hypersweep.orchestrator._callbacks import Callback, SweepInfo, TrialInfo
from hypersweep.orchestrator._job import (
    Entrypoint,
    ReplicaGroup,
    Replicas,
    Resources,
    RestartPolicy,
    TrainJob,
)
from hypersweep.orchestrator._reporting import (
    TrialContext,
    TrialPaused,
    TrialPruned,
    checkpoint,
    get_trial_context,
    report,
    restore,
)
from hypersweep.orchestrator._result import SweepResult, TrialRecord
from hypersweep.orchestrator._tune import load, tune

__all__ = [
    "Callback",
    "Entrypoint",
    "ReplicaGroup",
    "Replicas",
    "Resources",
    "RestartPolicy",
    "SweepInfo",
    "SweepResult",
    "TrainJob",
    "TrialContext",
    "TrialInfo",
    "TrialPaused",
    "TrialPruned",
    "TrialRecord",
    "checkpoint",
    "get_trial_context",
    "load",
    "report",
    "restore",
    "tune",
]
