"""MLflow: one parent run per sweep, one nested run per trial."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypersweep.integrations._background import BackgroundWorker, require
from hypersweep.orchestrator._callbacks import Callback, SweepInfo, TrialInfo

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult

SWEEP_TAG = "hypersweep.sweep"
ROLE_TAG = "hypersweep.role"
TRIAL_TAG = "hypersweep.trial"
STATE_TAG = "hypersweep.state"
BEST_TAG = "hypersweep.best"
BEST_TRIAL_TAG = "hypersweep.best_trial"
CHECKPOINT_TAG = "hypersweep.checkpoint"
ERROR_TAG = "hypersweep.error"
PARENT_TAG = "mlflow.parentRunId"

# MLflow's per-request limits of log_batch.
_MAX_METRICS, _MAX_PARAMS, _MAX_TAGS = 1000, 100, 100
_SWEEP = -1  # the key of the sweep's own run

# The callbacks of this process, so that a sweep resumed here first waits for the logging of
# its earlier run (whose runs it continues).
_CALLBACKS: weakref.WeakSet[MLflowCallback] = weakref.WeakSet()


def _now_ms() -> int:
    return int(time.time() * 1000)


class MLflowCallback(Callback):
    """Logs a sweep to MLflow: a parent run per sweep, a nested run per trial.

    Each trial's run has the trial's config as params, every report as step metrics, the final
    metrics, its state as the ``hypersweep.state`` tag and its latest checkpoint path; its status
    is FINISHED (completed or stopped early), FAILED, SCHEDULED while paused or KILLED when
    interrupted. A resumed or promoted trial continues its run. At the end, the best trial's run
    is tagged ``hypersweep.best=true`` and the parent run ``hypersweep.best_trial``.

    Logging runs on background threads (``threads``, each owning a share of the trials' runs,
    so one run's calls stay in order), batched per run: a trial costs three requests (create
    the run; one ``log_batch`` with its params, metrics and tags together, for a trial that
    ends within ``batch_seconds``, and one more per ``batch_seconds`` of a longer trial's
    reports; set its status), the floor of MLflow's REST API, and the sweep never waits for
    the tracking server. So ``tune()`` may
    return before the server has every run: :meth:`flush` (or
    :func:`hypersweep.integrations.flush`) waits for it, and so does the interpreter's exit
    (at most ``flush_timeout`` seconds). ``wait=True`` makes the sweep's end wait instead.

    Args:
        tracking_uri: the MLflow tracking URI; None uses MLflow's default (``MLFLOW_TRACKING_URI``).
        experiment_name: the experiment; defaults to the sweep's name.
        tags: extra tags for every run.
        flush_timeout: the most seconds the interpreter's exit (or the sweep's end, with
            ``wait``) waits for queued logging.
        threads: background threads sending to the tracking server.
        wait: the sweep's end waits until every run is logged.
        batch_seconds: how long a run's logging may wait to be sent with more (its status
            change sends it at once), so that a short trial costs one ``log_batch``.

    The MLflow client's line per ended run ("View run ... at") is turned off, unless
    ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set. If the tracking server fails a call
    (after MLflow's own retries, see ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), the error is logged
    and logging stops for this sweep; the sweep goes on.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        flush_timeout: float = 600.0,
        threads: int = 4,
        wait: bool = False,
        batch_seconds: float = 1.0,
    ) -> None:
        require("mlflow", "mlflow", "MLflowCallback")
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.flush_timeout = flush_timeout
        self.wait = wait
        self.batch_seconds = batch_seconds
        self._workers = [
            BackgroundWorker("mlflow-callback", exit_timeout=flush_timeout)
            for _ in range(max(1, threads))
        ]
        self._lock = threading.Lock()
        # Per worker: run key -> metrics/params/tags waiting to be sent, and whether a drain
        # of them is queued.
        self._pending: list[dict[int, dict[str, list[Any]]]] = [{} for _ in self._workers]
        self._since: list[dict[int, float]] = [{} for _ in self._workers]  # oldest item's time
        self._drain_queued = [False for _ in self._workers]
        self._timer_armed = [False for _ in self._workers]
        self._opened = threading.Event()
        # Each run's id is written by the worker that owns the run.
        self._client: Any = None
        self._experiment_id = ""
        self._runs: dict[int, str] = {}  # run key -> run id
        self._sweep: SweepInfo | None = None
        _CALLBACKS.add(self)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued run, param, metric and status reached the tracking server,
        at most ``timeout`` seconds; True if it all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        # A worker's call may queue a batch on another (the sweep's closing call tags the best
        # trial's run) after that one was flushed: go round until nothing waits.
        for _ in range(4):
            for shard, worker in enumerate(self._workers):  # what waits to be batched goes now
                worker.submit(functools.partial(self._drain, shard))
            for worker in self._workers:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                done = worker.flush(left) and done
            with self._lock:
                if not any(self._pending):
                    return done
        return done  # what is left waits for a run that never came (the server was down)

    # --- the sweep loop's hooks (driver thread): queue work, return at once ----------------

    def _worker(self, key: int) -> BackgroundWorker:
        return self._workers[key % len(self._workers)]

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        self._sweep = sweep
        self._opened.clear()
        self._worker(_SWEEP).submit(lambda: self._open(sweep))

    def on_trial_start(self, trial: TrialInfo) -> None:
        self._worker(trial.number).submit(lambda: self._start_trial(trial))
        self._log(trial.number, tags={STATE_TAG: "running"})

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        self._log(trial.number, metrics=dict(metrics), step=step)

    def on_checkpoint(self, trial: TrialInfo, path: str, step: int | None) -> None:
        self._log(trial.number, tags={CHECKPOINT_TAG: path})

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        self._log(trial.number, tags={STATE_TAG: "paused"})
        self._worker(trial.number).submit(lambda: self._set_status(trial.number, "SCHEDULED"))

    def on_trial_interrupt(self, trial: TrialInfo) -> None:
        self._log(trial.number, tags={STATE_TAG: "interrupted"})
        self._worker(trial.number).submit(
            lambda: self._set_status(trial.number, "KILLED", end=True)
        )

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        tags = {STATE_TAG: state}
        if error:
            tags[ERROR_TAG] = error[:5000]
        self._log(trial.number, metrics=dict(metrics), tags=tags)
        status = "FAILED" if state == "failed" else "FINISHED"
        self._worker(trial.number).submit(lambda: self._set_status(trial.number, status, end=True))

    def on_sweep_end(self, result: SweepResult) -> None:
        self._worker(_SWEEP).submit(lambda: self._finish(result))
        if self.wait:
            self.flush(self.flush_timeout)

    # --- batching ----------------------------------------------------------------------------

    def _log(
        self,
        key: int,
        *,
        metrics: dict[str, float] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        step: int = 0,
    ) -> None:
        """Queue metrics/params/tags of a run; one background drain sends what piled up."""
        from mlflow.entities import Metric, Param, RunTag

        timestamp = _now_ms()
        shard = key % len(self._workers)
        with self._lock:
            batch = self._pending[shard].setdefault(key, {"metrics": [], "params": [], "tags": []})
            for name, number in (metrics or {}).items():
                batch["metrics"].append(Metric(name, float(number), timestamp, step))
            for name, param in (params or {}).items():
                batch["params"].append(Param(name, str(param)[:6000]))
            for name, tag in (tags or {}).items():
                batch["tags"].append(RunTag(name, tag))
            self._since[shard].setdefault(key, time.monotonic())
            if self._drain_queued[shard]:
                return
            self._drain_queued[shard] = True
        self._workers[shard].submit(lambda: self._drain(shard, force=False))

    def _drain(self, shard: int, *, force: bool = True) -> None:
        """Send the shard's pending batches, one ``log_batch`` per run.

        Unless ``force`` (a run's status changes, a flush), a batch younger than
        ``batch_seconds`` waits for more (a short trial's params, metrics and tags then go in
        one request) and a timer drains it later.
        """
        now = time.monotonic()
        with self._lock:
            pending = self._pending[shard]
            waiting: dict[int, dict[str, list[Any]]] = {}
            if not force:
                since = self._since[shard]
                waiting = {
                    key: batch
                    for key, batch in pending.items()
                    if now - since.get(key, now) < self.batch_seconds
                }
                pending = {key: batch for key, batch in pending.items() if key not in waiting}
            self._pending[shard] = waiting
            for key in pending:
                self._since[shard].pop(key, None)
            self._drain_queued[shard] = False
            if waiting and not self._timer_armed[shard]:
                self._timer_armed[shard] = True
                timer = threading.Timer(self.batch_seconds, lambda: self._wake(shard))
                timer.daemon = True
                timer.start()
        for key, batch in pending.items():
            run_id = self._runs.get(key)
            if run_id is None:  # its run is created later in the queue: keep it for then
                with self._lock:
                    kept = self._pending[shard].setdefault(
                        key, {"metrics": [], "params": [], "tags": []}
                    )
                    for kind, items in batch.items():
                        kept[kind][:0] = items
                continue
            metrics, params, tags = batch["metrics"], batch["params"], batch["tags"]
            while metrics or params or tags:
                self._client.log_batch(
                    run_id,
                    metrics=metrics[:_MAX_METRICS],
                    params=params[:_MAX_PARAMS],
                    tags=tags[:_MAX_TAGS],
                    synchronous=True,
                )
                metrics = metrics[_MAX_METRICS:]
                params = params[_MAX_PARAMS:]
                tags = tags[_MAX_TAGS:]

    def _wake(self, shard: int) -> None:
        """The batching timer: drain what waited ``batch_seconds``."""
        with self._lock:
            self._timer_armed[shard] = False
            if self._drain_queued[shard] or not self._pending[shard]:
                return
            self._drain_queued[shard] = True
        self._workers[shard].submit(lambda: self._drain(shard, force=False))

    # --- the worker thread's side ------------------------------------------------------------

    def _open(self, sweep: SweepInfo) -> None:
        from mlflow import MlflowClient

        for other in list(_CALLBACKS):  # an earlier run of this sweep, still logging
            if other is not self and other._sweep is not None and other._sweep.name == sweep.name:
                other.flush(self.flush_timeout)

        # MLflow prints two lines per ended run; for hundreds of trials that floods the terminal.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        try:
            self._open_runs(sweep, MlflowClient(tracking_uri=self.tracking_uri))
        finally:
            self._opened.set()

    def _open_runs(self, sweep: SweepInfo, client: Any) -> None:
        self._client = client
        name = self.experiment_name or sweep.name
        experiment = self._client.get_experiment_by_name(name)
        self._experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment(name)
        )
        self._runs = {}
        if sweep.resumed:
            self._find_runs(sweep.name)
        if _SWEEP in self._runs:
            self._update(self._runs[_SWEEP], "RUNNING", end=False)
            return
        run = self._client.create_run(
            self._experiment_id,
            tags={**self.tags, SWEEP_TAG: sweep.name, ROLE_TAG: "sweep"},
            run_name=sweep.name,
        )
        self._runs[_SWEEP] = run.info.run_id
        settings = {
            key: value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            for key, value in sweep.settings.items()
            if value is not None and key not in ("name",)
        }
        self._log(_SWEEP, params=settings)

    def _find_runs(self, sweep: str) -> None:
        """The runs of a sweep logged before (a resumed sweep continues them)."""
        token = None
        while True:
            page = self._client.search_runs(
                [self._experiment_id],
                filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                if run.data.tags.get(ROLE_TAG) == "sweep":
                    self._runs[_SWEEP] = run.info.run_id
                elif TRIAL_TAG in run.data.tags:
                    self._runs[int(run.data.tags[TRIAL_TAG])] = run.info.run_id
            token = page.token
            if not token:
                return

    def _start_trial(self, trial: TrialInfo) -> None:
        self._opened.wait()
        if self._client is None or _SWEEP not in self._runs:
            return  # the sweep's run could not be opened (logged once)
        run_id = self._runs.get(trial.number)
        if run_id is not None:  # resumed, promoted or retried: continue its run
            self._update(run_id, "RUNNING", end=False)
            return
        tags = {**self.tags, SWEEP_TAG: trial.sweep, TRIAL_TAG: str(trial.number)}
        if _SWEEP in self._runs:
            tags[PARENT_TAG] = self._runs[_SWEEP]
        run = self._client.create_run(
            self._experiment_id, tags=tags, run_name=f"{trial.sweep}-trial-{trial.number}"
        )
        self._runs[trial.number] = run.info.run_id
        self._log(trial.number, params=trial.params)

    def _set_status(self, key: int, status: str, *, end: bool = False) -> None:
        self._drain(key % len(self._workers))  # what the run logged comes first
        run_id = self._runs.get(key)
        if run_id is not None:
            self._update(run_id, status, end=end)

    def _update(self, run_id: str, status: str, *, end: bool) -> None:
        """Set a run's status in one request (``set_terminated`` and ``update_run`` read the
        run first, doubling the requests per trial)."""
        from mlflow.entities import RunStatus

        store = getattr(getattr(self._client, "_tracking_client", None), "store", None)
        if store is None:  # another client layout: the public calls
            if end:
                self._client.set_terminated(run_id, status=status)
            else:
                self._client.update_run(run_id, status=status)
            return
        store.update_run_info(
            run_id,
            run_status=RunStatus.from_string(status),
            end_time=_now_ms() if end else None,
            run_name=None,
        )

    def _finish(self, result: SweepResult) -> None:
        """Close the sweep's run once every trial's run is logged (the best one gets a tag)."""
        own = self._worker(_SWEEP)
        for worker in self._workers:
            if worker is not own:  # calls queued before this one on its own worker already ran
                worker.flush(self.flush_timeout)
        self._close(result)

    def _close(self, result: SweepResult) -> None:
        best = None if result.multi_objective else result.best_trial
        parent_tags: dict[str, str] = {}
        if best is not None and best.number in self._runs:
            previous = None
            if _SWEEP in self._runs:
                previous = self._client.get_run(self._runs[_SWEEP]).data.tags.get(BEST_TRIAL_TAG)
            if previous is not None and int(previous) != best.number:
                self._log(int(previous), tags={BEST_TAG: "false"})
            self._log(best.number, tags={BEST_TAG: "true"})
            parent_tags[BEST_TRIAL_TAG] = str(best.number)
            if best.value is not None:
                self._log(_SWEEP, metrics={f"best_{result.metric}": best.value})
        parent_tags[STATE_TAG] = result.stopped_reason or "finished"
        self._log(_SWEEP, tags=parent_tags)
        status = "KILLED" if result.stopped_reason == "interrupted" else "FINISHED"
        self._set_status(_SWEEP, status, end=True)
