"""Prometheus metrics of sweeps (``hypersweep run --metrics-port``) and of the operator.

Every metric is defined here, once, with the official ``prometheus_client``; the names are the
contract of ``deploy/monitoring/grafana-dashboard.json`` (a test checks every query of the
dashboard names one of :data:`METRIC_NAMES`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypersweep.orchestrator._callbacks import Callback, SweepInfo, TrialInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from hypersweep.orchestrator._result import SweepResult

TRIAL_STATES = ("running", "completed", "pruned", "failed", "paused", "interrupted")

METRIC_NAMES = (
    "hypersweep_trials",
    "hypersweep_trials_queued",
    "hypersweep_trials_started_total",
    "hypersweep_trial_reports_total",
    "hypersweep_operator_reconcile_duration_seconds",
    "hypersweep_operator_reconcile_errors_total",
    "hypersweep_operator_report_requests_total",
    "hypersweep_operator_report_latency_seconds",
    "hypersweep_operator_leader",
    "hypersweep_operator_pods_created_total",
    "hypersweep_operator_trainjob_restarts_total",
    "hypersweep_operator_admission_wait_seconds",
)
"""The names as Prometheus sees them (a histogram adds ``_bucket``, ``_sum``, ``_count``)."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        from hypersweep._errors import ConfigError

        raise ConfigError(
            "metrics: serving Prometheus metrics needs prometheus-client; "
            "pip install 'hypersweep[tracking]'"
        ) from None
    return prometheus_client


class SweepMetrics(Callback):
    """Trial metrics of the sweeps a driver runs, kept up to date from the loop's events.

    ``hypersweep_trials{sweep, state}`` counts the trials this driver has seen per state (the
    states of ``hypersweep status``); counters count trial starts and reports.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        prometheus = _prometheus()
        self.trials = prometheus.Gauge(
            "hypersweep_trials", "Trials by sweep and state", ["sweep", "state"], registry=registry
        )
        self.started = prometheus.Counter(
            "hypersweep_trials_started",
            "Trial launches (first starts, resumes, promotions and retries)",
            ["sweep"],
            registry=registry,
        )
        self.reports = prometheus.Counter(
            "hypersweep_trial_reports", "Reports of trials", ["sweep"], registry=registry
        )
        self.queued = prometheus.Gauge(
            "hypersweep_trials_queued",
            "Slots of the trial budget not started yet",
            ["sweep"],
            registry=registry,
        )
        self._states: dict[tuple[str, int], str] = {}
        self._queued: dict[str, int] = {}
        self._lock = threading.Lock()

    def _set(self, trial: TrialInfo, state: str) -> None:
        with self._lock:
            old = self._states.get((trial.sweep, trial.number))
            self._states[(trial.sweep, trial.number)] = state
            if old is not None:
                self.trials.labels(trial.sweep, old).dec()
            self.trials.labels(trial.sweep, state).inc()

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        for state in TRIAL_STATES:  # every series exists from the start, at 0
            self.trials.labels(sweep.name, state)
        self.started.labels(sweep.name)
        self.reports.labels(sweep.name)
        stored = sweep.stored
        with self._lock:
            self._queued[sweep.name] = stored.queued if stored is not None else 0
            self.queued.labels(sweep.name).set(
                self._queued[sweep.name]
            )  # trials of earlier runs of the sweep count too
            for trial in stored.trials if stored is not None else []:
                if (sweep.name, trial.number) not in self._states:
                    self._states[(sweep.name, trial.number)] = trial.state
                    self.trials.labels(sweep.name, trial.state).inc()

    def on_trial_start(self, trial: TrialInfo) -> None:
        self.started.labels(trial.sweep).inc()
        with self._lock:
            if (trial.sweep, trial.number) not in self._states:  # a slot of the budget starts
                left = self._queued[trial.sweep] = max(0, self._queued.get(trial.sweep, 0) - 1)
                self.queued.labels(trial.sweep).set(left)
        self._set(trial, "running")

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        self.reports.labels(trial.sweep).inc()

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        self._set(trial, "paused")

    def on_trial_interrupt(self, trial: TrialInfo) -> None:
        self._set(trial, "interrupted")

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        self._set(trial, state)

    def on_sweep_end(self, result: SweepResult) -> None:
        pass


class OperatorMetrics:
    """The operator's own metrics, beside the trial metrics of every sweep it runs."""

    def __init__(self) -> None:
        prometheus = _prometheus()
        self.registry = prometheus.CollectorRegistry()
        registry = self.registry
        self.sweeps = SweepMetrics(registry)
        self.reconcile_duration = prometheus.Histogram(
            "hypersweep_operator_reconcile_duration_seconds",
            "Time of one reconcile, by controller",
            ["controller"],
            registry=registry,
        )
        self.reconcile_errors = prometheus.Counter(
            "hypersweep_operator_reconcile_errors",
            "Reconciles that failed (retried later), by controller",
            ["controller"],
            registry=registry,
        )
        self.report_requests = prometheus.Counter(
            "hypersweep_operator_report_requests",
            "Trials' report requests, by HTTP status code",
            ["code"],
            registry=registry,
        )
        self.report_latency = prometheus.Histogram(
            "hypersweep_operator_report_latency_seconds",
            "Time to answer a trial's report request",
            registry=registry,
        )
        self.leader = prometheus.Gauge(
            "hypersweep_operator_leader", "1 while this operator leads", registry=registry
        )
        self.api_requests = prometheus.Counter(
            "hypersweep_operator_api_requests",
            "Requests this process sent to the Kubernetes API server, by verb and resource "
            "(verb as the API server counts it: get, list, watch, create, update, patch, delete)",
            ["verb", "resource"],
            registry=registry,
        )
        self.watch_events = prometheus.Counter(
            "hypersweep_operator_watch_events",
            "Events this process's watches received, by resource (bookmarks too)",
            ["resource"],
            registry=registry,
        )
        self.watch_bytes = prometheus.Counter(
            "hypersweep_operator_watch_bytes",
            "JSON bytes this process's watches decoded, by resource",
            ["resource"],
            registry=registry,
        )
        self.pods_created = prometheus.Counter(
            "hypersweep_operator_pods_created", "Pods the operator created", registry=registry
        )
        self.trainjob_restarts = prometheus.Counter(
            "hypersweep_operator_trainjob_restarts",
            "Gang restarts of TrainJobs",
            registry=registry,
        )
        self.admission_wait = prometheus.Histogram(
            "hypersweep_operator_admission_wait_seconds",
            "Time a trial's gang waited in gang admission before its pods could be created",
            # From a free pool (one pass, ~0.2 s) to a gang queued behind hours of training.
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        prometheus = _prometheus()
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST


_operator: OperatorMetrics | None = None
_operator_lock = threading.Lock()


def operator_metrics() -> OperatorMetrics:
    """The operator process's metrics (one set per process)."""
    global _operator
    with _operator_lock:
        if _operator is None:
            _operator = OperatorMetrics()
        return _operator


def serve_sweep_metrics(port: int, host: str = "0.0.0.0") -> tuple[SweepMetrics, Any]:
    """Serve the trial metrics of this process's sweeps at ``http://host:port/metrics``.

    Returns the callback to add to the sweep and the HTTP server (``shutdown()`` stops it).
    """
    prometheus = _prometheus()
    registry = prometheus.CollectorRegistry()
    metrics = SweepMetrics(registry)
    server, _thread = prometheus.start_http_server(port, addr=host, registry=registry)
    return metrics, server
