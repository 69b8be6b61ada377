"""Katib's status names for a Sweep's facts, so scripts written for Experiments keep working.

``status.currentOptimalTrial`` (``bestTrialName``, ``parameterAssignments``,
``observation.metrics``) and the ``trialsSucceeded``/``trialsFailed``... counts are written next
to the Sweep's own ``bestTrial`` and ``trials`` for every Sweep, Katib-shaped or native.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypersweep.orchestrator._job import dns_label

JsonDict = dict[str, Any]

#: Katib's count fields and the Sweep's counts they are.
_COUNTS = {
    "trialsSucceeded": "succeeded",
    "trialsFailed": "failed",
    "trialsRunning": "running",
    "trialsPending": "pending",
    "trialsEarlyStopped": "pruned",
}


def _metric_name(spec: Mapping[str, Any]) -> str | None:
    objective = spec.get("objective") or {}
    name = objective.get("objectiveMetricName") or objective.get("metric")
    return str(name) if name else None


def _text(value: Any) -> str:
    """Katib's values are strings: numbers as Go prints them, not as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def katib_status(sweep: Mapping[str, Any], status: Mapping[str, Any]) -> JsonDict:
    """The Katib-named status fields derived from the Sweep's ``status`` (as about to be
    written)."""
    out: JsonDict = {}
    counts = status.get("trials") or {}
    for katib, ours in _COUNTS.items():
        if ours in counts:
            out[katib] = int(counts[ours])
    best = status.get("bestTrial")
    metric = _metric_name(sweep.get("spec") or {})
    if best and metric:
        name = (sweep.get("metadata") or {}).get("name", "")
        value = _text(best["value"])
        out["currentOptimalTrial"] = {
            "bestTrialName": dns_label(f"{name}-trial-{best['number']}"),
            "parameterAssignments": [
                {"name": key, "value": _text(param)}
                for key, param in (best.get("params") or {}).items()
            ],
            "observation": {
                "metrics": [{"name": metric, "latest": value, "min": value, "max": value}]
            },
        }
    return out
