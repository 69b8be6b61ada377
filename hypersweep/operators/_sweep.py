"""The Sweep controller: each Sweep runs the same orchestrator loop as ``tune()``.

A Sweep's spec becomes :class:`~hypersweep.orchestrator._spec.SweepSettings`, and a
:class:`SweepRunner` thread runs :class:`~hypersweep.orchestrator._orchestrator.Orchestrator`
with a :class:`~hypersweep.launchers.KubernetesLauncher` that runs each trial as a
TrainJob owned by the Sweep. Everything about the trials lives in the sweep's Optuna storage (a
journal file on the data volume, or a database URL from a Secret), never in the resource: the
status holds counts and the best trial only, so it stays small however many trials run. Only
the leading operator writes a sweep's journal (trial pods write checkpoints, never trial
records), so the journal's known trouble with several writers over NFS (optuna#5138) does not
arise on a shared ReadWriteMany volume.

Restart safety comes from the orchestrator's storage conventions plus the launcher's adoption:
the budget is ``maxTrials`` queued trials claimed atomically, a trial whose driver died is put
back in the queue (by lease), and relaunching it adopts the TrainJob of that trial if it still
runs. So an operator killed at any point and started again finishes the sweep with exactly
``maxTrials`` trials, none lost, none run twice at once. A clean stop (SIGTERM, losing the lead,
a changed spec) detaches the runner instead: its trials are queued to resume and their TrainJobs
keep running for the next runner to adopt.

A Sweep with ``spec.pools`` has its trials admitted onto GPU node pools by one
:class:`~hypersweep.kube._pools.GangAdmission` that every sweep of this operator shares (one
queue in arrival order, so sweeps sharing a pool take turns); trials waiting for room show as
``status.queuedTrials`` and the ``TrialsQueued`` condition, refused ones as ``Unschedulable``.

The reconcile is level-triggered like the TrainJob controller's: it compares the Sweep with the
runner it has (none, running, finished) and converges; the status is written from what storage
says. A changed spec (``maxTrials`` raised, ``parallelism``...) restarts the runner, which resumes
the same study: raising ``maxTrials`` of a finished sweep really continues it.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError
from hypersweep._metrics import operator_metrics
from hypersweep.kube._client import (
    SECRETS,
    SWEEPS,
    ApiError,
    JsonDict,
    Kube,
    object_key,
    split_key,
)
from hypersweep.kube._expectations import LatestWrites
from hypersweep.kube._informer import Controller, Informer, enqueue_self
from hypersweep.kube._jobspec import (
    JobSpec,
    SpecError,
    is_true,
    rfc3339,
    set_condition,
    true_conditions,
)
from hypersweep.kube._names import SWEEP_FINALIZER
from hypersweep.kube._pools import GangAdmission, parse_policy, parse_pools
from hypersweep.kube._recorder import EventRecorder
from hypersweep.kube._server import ReportServer
from hypersweep.kube._trial_jobs import (
    LauncherDetached,
    TrialJobDriver,
    one_line,
    suspend_unfinished_trainjobs,
)
from hypersweep.operators._checkpoint_store import sweep_checkpoints
from hypersweep.operators._crds import FRONT_LIMIT
from hypersweep.operators._katib import native_view
from hypersweep.operators._katib_status import katib_status
from hypersweep.operators._validation import (
    check_early_stopping,
    check_trial_parameters,
    strategy_for,
)
from hypersweep.orchestrator._checkpoints import delete_location, trial_checkpoint_dir
from hypersweep.orchestrator._objective import ObjectiveRef
from hypersweep.orchestrator._spec import SweepSettings
from hypersweep.orchestrator._storage import PAUSED_ATTR, describe_storage
from hypersweep.strategies import pareto_front

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hypersweep.orchestrator._orchestrator import Launcher, Orchestrator
    from hypersweep.orchestrator._result import SweepResult

logger = logging.getLogger("hypersweep.operator")

#: Builds a Sweep's launcher from the namespace and keyword options (those of
#: ``KubernetesLauncher``, which the process running the controller passes in).
LauncherFactory = Callable[..., "Launcher"]

DATA_VOLUME = "hypersweep-data"
GOAL_REACHED = "goal reached"
#: Seconds a running Sweep's changed counts wait to be written with the next ones (its trial
#: counts are refreshed every 2 s anyway); a condition that turns is written at once.
SWEEP_STATUS_BATCH_SECONDS = 2.0


def study_name(sweep: JsonDict) -> str:
    """The Optuna study of a Sweep: its name and uid, so a new Sweep of the same name starts
    afresh even where an old one's records were kept."""
    meta = sweep["metadata"]
    return f"{meta['name']}-{meta['uid'][:8]}"


def run_dir(data_dir: Path, sweep: JsonDict) -> Path:
    """Where a Sweep's journal and checkpoints live on the data volume."""
    return data_dir / sweep["metadata"]["namespace"] / study_name(sweep)


def summarize(orchestrator: Orchestrator) -> JsonDict:
    """The status fields that come from storage: trial counts and the best trial (or, with
    several objectives, the Pareto front's size and its first ``FRONT_LIMIT`` trials)."""
    import optuna

    from hypersweep.orchestrator._orchestrator import FEASIBLE_ATTR

    settings = orchestrator.settings
    states = optuna.trial.TrialState
    counts = dict.fromkeys(("pending", "running", "paused", "succeeded", "pruned", "failed"), 0)
    counts["total"] = settings.n_trials or 0
    if settings.constraints:
        counts["infeasible"] = 0
    best = None
    maximize = settings.modes[0] == "max"
    candidates: list[FrozenTrial] = []
    for trial in orchestrator.store.trials():
        if trial.state == states.WAITING:
            counts["paused" if trial.system_attrs.get(PAUSED_ATTR) is not None else "pending"] += 1
        elif trial.state == states.RUNNING:
            counts["running"] += 1
        elif trial.state == states.COMPLETE:
            counts["succeeded"] += 1
            if trial.user_attrs.get(FEASIBLE_ATTR) is False:
                counts["infeasible"] += 1
                continue
            values = trial.values or []
            if len(values) != len(settings.metrics) or not all(map(math.isfinite, values)):
                continue
            candidates.append(trial)
            value = values[0]
            if best is None or (value > best[1] if maximize else value < best[1]):
                best = (trial, value)
        elif trial.state == states.PRUNED:
            counts["pruned"] += 1
        elif trial.state == states.FAIL:
            counts["failed"] += 1
    summary: JsonDict = {"trials": counts}
    if len(settings.metrics) > 1:
        front = sorted(
            (candidates[i] for i in pareto_front([t.values for t in candidates], settings.modes)),
            key=lambda t: t.number,
        )
        summary["paretoFront"] = {
            "size": len(front),
            "trials": [
                {
                    "number": t.number,
                    "values": dict(zip(settings.metrics, t.values, strict=True)),
                    "params": {key: _plain(param) for key, param in t.params.items()},
                }
                for t in front[:FRONT_LIMIT]
            ],
        }
        return summary
    if best is not None:
        trial, value = best
        summary["bestTrial"] = {
            "number": trial.number,
            "value": value,
            "rounded": f"{value:.6g}",
            "params": {key: _plain(param) for key, param in trial.params.items()},
        }
    return summary


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def scrub(text: str, storage: Any) -> str:
    """``text`` without the storage URL's credentials (it comes from a Secret)."""
    if not isinstance(storage, str) or "://" not in storage:
        return text
    text = text.replace(storage, describe_storage(storage, ""))
    credentials = storage.split("://", 1)[1].rpartition("@")[0]
    password = credentials.partition(":")[2]
    return text.replace(password, "***") if password else text


def first_failure(result: SweepResult) -> str | None:
    """Why the lowest-numbered failed trial failed, in one line (a traceback's last line)."""
    for trial in sorted(result.trials, key=lambda t: t.number):
        if trial.state == "failed" and trial.error:
            return f"trial {trial.number}: {one_line(trial.error)}"
    return None


def goal_reached(summary: JsonDict, goal: float | None, mode: str) -> bool:
    best = summary.get("bestTrial")
    if goal is None or not best:
        return False
    value = float(best["value"])
    return value <= goal if mode == "min" else value >= goal


class SweepRunner:
    """One Sweep's orchestrator, running in a thread of its own.

    Args:
        key: ``namespace/name`` of the Sweep.
        sweep: the Sweep as read when the runner started.
        settings: the sweep's validated settings.
        make_launcher: builds the launcher, given the runner (for its ``trial_state``).
        on_change: called (from the runner's thread) when the status should be written again.
        goal: the objective's goal, if any.
    """

    def __init__(
        self,
        key: str,
        sweep: JsonDict,
        settings: SweepSettings,
        make_launcher: Callable[[SweepRunner], Launcher],
        on_change: Callable[[], None],
        *,
        goal: float | None = None,
        heartbeat_interval: float = 5.0,
        lease_grace: float = 15.0,
    ) -> None:
        self.key = key
        self.uid: str = sweep["metadata"]["uid"]
        self.generation = int(sweep["metadata"].get("generation", 1))
        self.settings = settings
        launcher = make_launcher(self)
        if not isinstance(launcher, TrialJobDriver):  # the status reads its trials' TrainJobs
            raise TypeError(f"a Sweep needs a launcher of TrainJobs, got {type(launcher).__name__}")
        self.launcher = launcher
        self.on_change = on_change
        self.goal = goal
        self.heartbeat_interval = heartbeat_interval
        self.lease_grace = lease_grace
        self.orchestrator: Orchestrator | None = None
        self.result: SweepResult | None = None
        self.error: str | None = None
        self.invalid = False
        self.detached = False
        self.summary: JsonDict = {}
        self._last_summary = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sweep-{key}", daemon=True)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        self._thread.start()

    def detach(self) -> None:
        """Stop driving the sweep, leaving its trials' TrainJobs running for the next runner."""
        self.launcher.detach()

    def join(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def trial_state(self, number: int) -> str | None:
        """The stored state of trial ``number`` (for trials a previous leader finished)."""
        orchestrator = self.orchestrator
        if orchestrator is None:
            return None
        for trial in orchestrator.store.trials():
            if trial.number == number:
                return str(trial.state.name)
        return None

    def _run(self) -> None:
        from hypersweep.orchestrator._orchestrator import Orchestrator

        # The operator's /metrics counts this sweep's trials by state.
        settings = replace(
            self.settings, callbacks=[*(self.settings.callbacks or []), operator_metrics().sweeps]
        )
        try:
            orchestrator = Orchestrator(
                settings,
                ObjectiveRef(display_name=f"Sweep {self.key}"),
                self.launcher,
                heartbeat_interval=self.heartbeat_interval,
                lease_grace=self.lease_grace,
            )
            self.orchestrator = orchestrator
            orchestrator.listeners.append(self._on_update)
            self._on_update(orchestrator, force=True)
            self.result = orchestrator.run()
        except LauncherDetached:
            self.detached = True
        except ConfigError as error:
            self.invalid = True
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - reported on the Sweep, then retried
            self.error = scrub(f"{type(error).__name__}: {error}", self.settings.storage)
            logger.error("sweep %s stopped with an error: %s", self.key, self.error)
        finally:
            if self.orchestrator is not None:
                try:
                    self.summary = summarize(self.orchestrator)
                except Exception:
                    logger.exception("sweep %s: could not read its trials", self.key)
            self._done.set()
            self.on_change()

    def _on_update(self, orchestrator: Orchestrator, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_summary < 2.0:
            return
        self._last_summary = now
        summary = summarize(orchestrator)
        if orchestrator.stop_reason is None and goal_reached(
            summary, self.goal, self.settings.modes[0]
        ):
            # No new trials; the running ones finish. ``stop_reason`` is how the loop stops.
            orchestrator.stop_reason = GOAL_REACHED
            logger.info("sweep %s reached its goal", self.key)
        if summary != self.summary:
            self.summary = summary
            self.on_change()


class SweepController:
    """Watches Sweeps and runs each one's orchestrator until it is done.

    Args:
        kube: the API client.
        recorder: where Events go.
        server: the report server trials reach.
        report_url: the URL of ``server`` as trial pods reach it.
        data_dir: the operator's mount of the data volume (journals and checkpoints).
        namespace: the namespace to manage; None for all.
        admission: the gang admission every sweep with pools shares (default: one made when
            the first such sweep starts).
        trainjobs: an informer of the TrainJobs (the TrainJob controller's), which the sweeps'
            launchers read their trials' states from; default: each launcher watches its own.
        launcher_factory: builds each sweep's launcher, which runs its trials as TrainJobs
            (:class:`~hypersweep.launchers.KubernetesLauncher`, given by the process that runs
            the controller: the operator does not import launchers).
    """

    def __init__(
        self,
        kube: Kube,
        recorder: EventRecorder,
        *,
        launcher_factory: LauncherFactory,
        server: ReportServer,
        report_url: str,
        data_dir: Path,
        namespace: str | None = None,
        heartbeat_interval: float = 5.0,
        lease_grace: float = 15.0,
        workers: int = 2,
        admission: GangAdmission | None = None,
        trainjobs: Informer | None = None,
        pools_allowed: bool = True,
    ) -> None:
        self.kube = kube
        self.launcher_factory = launcher_factory
        self.pools_allowed = pools_allowed
        self.recorder = recorder
        self.trainjobs = trainjobs
        self.server = server
        self.report_url = report_url
        self.data_dir = data_dir
        self.heartbeat_interval = heartbeat_interval
        self.lease_grace = lease_grace
        self.sweeps = Informer(kube, SWEEPS, namespace=namespace)
        self.controller = Controller("sweep", self.reconcile, workers=workers)
        self.sweeps.add_handler(self._seen)
        self.sweeps.add_handler(enqueue_self(self.controller.queue))
        # A reconcile reads the Sweep from the cache, or this controller's last write of it
        # until the cache shows that (a GET per reconcile cost a request per trial event).
        self._written = LatestWrites()
        self._status_written: dict[str, float] = {}  # key -> when its status was last written
        self._runners: dict[str, SweepRunner] = {}
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._swept: set[str] = set()  # finished sweeps whose leftover trials were stopped
        self._completed_jobs: dict[str, set[str]] = {}  # sweep uid -> its completed trials' jobs
        self._admission = admission  # shared by every sweep with pools

    def start(self, timeout: float = 60.0) -> None:
        self.sweeps.start()
        if not self.sweeps.wait_synced(timeout):
            raise TimeoutError("could not list sweeps")
        self.controller.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop reconciling and detach every runner (their trials keep running)."""
        self.controller.stop()
        self.sweeps.stop()
        self.controller.join(timeout)  # no reconcile may start a runner after this
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.detach()
        deadline = time.monotonic() + timeout
        for runner in runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        if self._admission is not None:
            self._admission.stop()

    def admission(self) -> GangAdmission:
        """The gang admission every sweep of this operator shares: one queue, one fairness."""
        with self._lock:
            if self._admission is None:
                self._admission = GangAdmission(self.kube)
            return self._admission

    def runner(self, key: str) -> SweepRunner | None:
        with self._lock:
            return self._runners.get(key)

    # --- reconcile -----------------------------------------------------------------------

    def _seen(self, kind: str, sweep: JsonDict) -> None:
        if kind == "DELETED":
            self._written.forget(object_key(sweep))
            self._status_written.pop(object_key(sweep), None)
        else:
            self._written.observed(object_key(sweep), sweep)

    def _latest(self, key: str) -> JsonDict | None:
        """The Sweep as this controller last saw or wrote it (a copy: a reconcile may keep it)."""
        namespace, name = split_key(key)
        cached = self.sweeps.get(namespace, name)
        if cached is None:
            return None
        # By uid: a write to a deleted Sweep says nothing about a new one of the same name.
        return copy.deepcopy(self._written.get(key, cached["metadata"].get("uid")) or cached)

    def _wrote(self, sweep: JsonDict) -> None:
        self._written.wrote(object_key(sweep), sweep)

    def reconcile(self, key: str) -> float | None:
        namespace, name = split_key(key)
        sweep = self._latest(key)
        runner = self.runner(key)
        if sweep is None:
            if runner is not None:
                runner.detach()
                if not runner.join(30.0):
                    return 1.0
                self._drop(key, runner)
            return None
        sweep.setdefault("apiVersion", SWEEPS.api_version)
        sweep.setdefault("kind", SWEEPS.kind)
        meta = sweep["metadata"]
        if runner is not None and runner.uid != meta["uid"]:
            runner.detach()  # a Sweep of the same name was deleted and made again
            if not runner.join(30.0):
                return 1.0
            self._drop(key, runner)
            runner = None
        if meta.get("deletionTimestamp"):
            return self._finalize(key, sweep, runner)
        finalizers = list(meta.get("finalizers") or [])
        if SWEEP_FINALIZER not in finalizers:
            patch = {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "finalizers": [*finalizers, SWEEP_FINALIZER],
                }
            }
            self._wrote(self.kube.patch(SWEEPS, namespace, name, patch))
            return None  # the update event brings us back
        generation = int(meta.get("generation", 1))
        status = sweep.get("status") or {}
        if runner is None:
            conditions = status.get("conditions") or []
            settled = is_true(conditions, "Succeeded") or is_true(conditions, "Failed")
            if settled and status.get("observedGeneration") == generation:
                if meta["uid"] not in self._swept:
                    # Once per process: a previous leader may have stopped before it could.
                    # Completed trials' pods may still be exiting: their jobs succeed by
                    # themselves.
                    completed = self._completed_jobs.pop(meta["uid"], set())
                    suspend_unfinished_trainjobs(self.kube, namespace, name, completed)
                    self._swept.add(meta["uid"])
                return None
            return self._start(key, sweep)
        if runner.generation != generation and not runner.done:
            logger.info("sweep %s changed: restarting its runner", key)
            runner.detach()
            return 0.5
        if runner.done:
            self._drop(key, runner)
            return self._finished(key, sweep, runner)
        due = self._write_status(
            sweep,
            runner.summary,
            running=True,
            queue=runner.launcher.admission_status(),
            stalled=runner.launcher.stalled_status(),
            batch=True,
        )
        return 10.0 if due is None else min(due, 10.0)

    def _drop(self, key: str, runner: SweepRunner) -> None:
        with self._lock:
            if self._runners.get(key) is runner:
                del self._runners[key]

    def _start(self, key: str, sweep: JsonDict) -> float | None:
        try:
            sweep = native_view(sweep)  # a Katib-shaped spec runs as its native translation
        except ConfigError as error:
            self._fail(sweep, "InvalidSpec", str(error))
            return None
        meta = sweep["metadata"]
        spec = sweep.get("spec") or {}
        try:
            settings, template = self.settings_for(sweep)
            checkpoints = sweep_checkpoints(self.kube, sweep, study_name(sweep))
            pools = parse_pools(spec.get("pools"), "spec.pools")
            if pools and not self.pools_allowed:
                raise ConfigError(
                    "spec.pools: this operator does not watch nodes (it runs for one namespace, "
                    "or with --no-watch-nodes), and gang admission onto pools counts their "
                    "room from nodes: run the cluster-wide operator, or leave pools out"
                )
            policy = parse_policy(spec.get("schedulingPolicy"), "spec.schedulingPolicy")
        except ConfigError as error:
            self._fail(sweep, "InvalidSpec", str(error))
            return None
        except ApiError as error:
            self.recorder.event(sweep, "Warning", "StorageUnavailable", error.message)
            return 10.0
        goal = (spec.get("objective") or {}).get("goal")
        # Checkpoints in a bucket: trial pods mount no volume at all.
        volumes, mounts = self._data_volume(spec) if checkpoints is None else ([], [])

        def make_launcher(runner: SweepRunner) -> Launcher:
            return self.launcher_factory(
                meta["namespace"],
                trial_template=template,
                max_concurrent=int(spec.get("parallelism") or 3),
                kube=self.kube,
                server=self.server,
                report_url=self.report_url,
                sweep=meta["name"],
                owner=sweep,
                volumes=volumes,
                volume_mounts=mounts,
                checkpoint_options=checkpoints.options if checkpoints else None,
                checkpoint_secret=checkpoints.secret if checkpoints else None,
                trial_state=runner.trial_state,
                pools=pools,
                scheduling_policy=policy,
                admission=self.admission() if pools else None,
                trainjobs=self.trainjobs,
                on_change=lambda: self.controller.queue.add(key),
                notify=lambda kind, reason, message: self.recorder.event(
                    sweep, kind, reason, message
                ),
            )

        runner = SweepRunner(
            key,
            sweep,
            settings,
            make_launcher,
            lambda: self.controller.queue.add(key),
            goal=float(goal) if goal is not None else None,
            heartbeat_interval=self.heartbeat_interval,
            lease_grace=self.lease_grace,
        )
        with self._lock:
            self._runners[key] = runner
        status = copy.deepcopy(sweep.get("status") or {})
        if not status.get("startTime"):
            self.recorder.event(
                sweep,
                "Normal",
                "Started",
                f"Sweep started: {settings.n_trials} trials, {settings.max_concurrent} at once",
            )
        else:
            self.recorder.event(sweep, "Normal", "Resumed", "Sweep resumed from its stored trials")
        runner.start()
        self._write_status(sweep, runner.summary, running=True)
        return 10.0

    def settings_for(self, sweep: JsonDict) -> tuple[SweepSettings, JsonDict]:
        """The sweep's settings and trial template; raises ConfigError naming the field."""
        sweep = native_view(sweep)
        meta = sweep["metadata"]
        spec = sweep.get("spec") or {}
        objective = spec.get("objective") or {}
        strategy = spec.get("strategy") or {}
        early = spec.get("earlyStopping") or {}
        check_early_stopping(early)
        early_stopping = None
        if early.get("name") not in (None, "none"):
            early_stopping = {"name": early["name"], **(early.get("settings") or {})}
        template = copy.deepcopy(spec.get("trialTemplate") or {})
        try:
            JobSpec.from_spec(template)
        except SpecError as error:
            raise ConfigError(f"spec.trialTemplate: {str(error).removeprefix('spec.')}") from None
        try:
            check_trial_parameters(template, spec.get("space") or {})
            sampler, seed = strategy_for(strategy, spec.get("space") or {})
        except ConfigError as error:
            text = str(error)
            raise ConfigError(text if text.startswith("spec.") else f"spec.{text}") from None
        directory = run_dir(self.data_dir, sweep)
        storage = self._storage_url(meta["namespace"], spec) or str(directory / "journal.log")
        checkpoints = sweep_checkpoints(self.kube, sweep, study_name(sweep))
        several = objective.get("metrics")
        settings = SweepSettings(
            space=spec.get("space") or {},
            metric=[str(m.get("name") or "") for m in several]
            if several
            else str(objective.get("metric") or ""),
            mode=[m.get("mode", "min") for m in several]
            if several
            else objective.get("mode", "min"),
            constraints=objective.get("constraints"),
            n_trials=spec.get("maxTrials"),
            max_concurrent=spec.get("parallelism", 3),
            strategy=sampler,
            early_stopping=early_stopping,
            storage=storage,
            name=study_name(sweep),
            resume=True,
            max_failed_trials=spec.get("maxFailedTrials"),
            max_retries=spec.get("maxRetries", 2),
            seed=seed,
            keep_checkpoints=spec.get("keepCheckpoints", 2),
            checkpoint_dir=checkpoints.url if checkpoints else str(directory / "checkpoints"),
            checkpoint_storage_options=checkpoints.operator_options if checkpoints else None,
            callbacks=spec.get("callbacks"),
        )
        try:
            return settings.validated(), template
        except ConfigError as error:
            raise ConfigError(f"spec.{error}") from None

    def _storage_url(self, namespace: str, spec: JsonDict) -> str | None:
        url = (spec.get("storage") or {}).get("url")
        if not url:
            return None
        ref = url["secretKeyRef"]
        secret = self.kube.get(SECRETS, namespace, ref["name"])
        encoded = ((secret or {}).get("data") or {}).get(ref["key"])
        if not encoded:
            raise ConfigError(f"spec.storage.url: Secret {ref['name']!r} has no key {ref['key']!r}")
        return base64.b64decode(encoded).decode().strip()

    def _data_volume(self, spec: JsonDict) -> tuple[list[JsonDict], list[JsonDict]]:
        claim = ((spec.get("storage") or {}).get("persistentVolumeClaim") or {}).get(
            "claimName", "hypersweep-data"
        )
        volumes = [{"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]
        mounts = [{"name": DATA_VOLUME, "mountPath": str(self.data_dir)}]
        return volumes, mounts

    # --- endings -------------------------------------------------------------------------

    def _finished(self, key: str, sweep: JsonDict, runner: SweepRunner) -> float | None:
        if runner.detached:
            return 0.1  # stopped for a spec change: start the next runner
        if runner.invalid:
            self._fail(sweep, "InvalidSpec", runner.error or "invalid sweep")
            return None
        if runner.error is not None:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            self.recorder.event(sweep, "Warning", "RunnerError", runner.error)
            self._write_status(sweep, runner.summary, running=False, error=runner.error)
            return min(5.0 * 2 ** (failures - 1), 300.0)
        self._failures.pop(key, None)
        queue = runner.launcher.admission_status()
        result = runner.result
        assert result is not None
        self._completed_jobs[runner.uid] = {
            runner.launcher.job_name(t.number) for t in result.trials if t.state == "completed"
        }
        summary = runner.summary
        counts = summary.get("trials") or {}
        text = (
            f"{counts.get('succeeded', 0)} trials succeeded, {counts.get('pruned', 0)} stopped "
            f"early, {counts.get('failed', 0)} failed"
        )
        best = summary.get("bestTrial")
        if best:
            text += f"; best is trial {best['number']} with {result.metric}={best['value']:.6g}"
        front = summary.get("paretoFront")
        if front:
            text += f"; the Pareto front has {front['size']} trials"
        reason = result.stopped_reason
        if reason is not None and "max_failed_trials" in reason:
            self._write_status(
                sweep,
                summary,
                running=False,
                queue=queue,
                outcome=("Failed", "MaxFailedTrialsReached", f"{reason}; {text}"),
            )
            self.recorder.event(sweep, "Warning", "Failed", f"{reason}; {text}")
        elif not counts.get("succeeded"):
            # However the budget ran out, a sweep without one completed trial did not succeed.
            why = first_failure(result)
            message = f"no trial completed ({text})" + (f"; first failure: {why}" if why else "")
            self._write_status(
                sweep,
                summary,
                running=False,
                queue=queue,
                outcome=("Failed", "NoTrialCompleted", message),
            )
            self.recorder.event(sweep, "Warning", "Failed", message)
        elif reason == GOAL_REACHED:
            self._write_status(
                sweep,
                summary,
                running=False,
                queue=queue,
                outcome=("Succeeded", "GoalReached", text),
            )
            self.recorder.event(sweep, "Normal", "Succeeded", f"Goal reached: {text}")
        else:
            self._write_status(
                sweep,
                summary,
                running=False,
                queue=queue,
                outcome=("Succeeded", "MaxTrialsReached", text),
            )
            self.recorder.event(sweep, "Normal", "Succeeded", text)
        return None

    def _fail(self, sweep: JsonDict, reason: str, message: str) -> None:
        status = sweep.get("status") or {}
        if not (
            is_true(status.get("conditions") or [], "Failed")
            and status.get("observedGeneration") == sweep["metadata"].get("generation")
        ):
            self.recorder.event(sweep, "Warning", reason, message)
        self._write_status(sweep, {}, running=False, outcome=("Failed", reason, message))

    def _finalize(self, key: str, sweep: JsonDict, runner: SweepRunner | None) -> float | None:
        """A deleted Sweep: stop its runner, delete its stored trials, release the finalizer."""
        if runner is not None:
            runner.detach()
            if not runner.join(30.0):
                return 1.0
            self._drop(key, runner)
        meta = sweep["metadata"]
        spec = sweep.get("spec") or {}
        directory = run_dir(self.data_dir, sweep)
        if spec.get("retain"):
            self._retain(key, sweep, directory)
            self._release(sweep)
            return None
        try:
            url = self._storage_url(meta["namespace"], spec)
        except ConfigError:
            url = None
        if url:
            import optuna

            try:
                optuna.delete_study(study_name=study_name(sweep), storage=url)
            except KeyError:
                pass
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        self._delete_checkpoints(key, sweep)
        logger.info("sweep %s deleted with its trials", key)
        self._release(sweep)
        return None

    def _delete_checkpoints(self, key: str, sweep: JsonDict, keep: str | None = None) -> None:
        """Delete the Sweep's prefix in its checkpoint bucket (but the trial folder ``keep``)."""
        try:
            checkpoints = sweep_checkpoints(self.kube, sweep, study_name(sweep))
            if checkpoints is not None:
                delete_location(checkpoints.url, checkpoints.operator_options, keep=keep)
        except Exception as error:  # noqa: BLE001 - a store we cannot reach keeps its data
            logger.warning("sweep %s: its checkpoints were not deleted: %s", key, error)
            self.recorder.event(
                sweep, "Warning", "CheckpointsKept", f"checkpoints not deleted: {error}"
            )

    def _retain(self, key: str, sweep: JsonDict, directory: Path) -> None:
        """``spec.retain``: keep the trial records (journal or database study) and the best
        trial's checkpoints; the other trials' checkpoints go (as Katib's ``retain`` keeps a
        finished trial's resources for inspection)."""
        best = ((sweep.get("status") or {}).get("bestTrial") or {}).get("number")
        checkpoints = directory / "checkpoints"
        keep = Path(trial_checkpoint_dir(checkpoints, int(best))).name if best is not None else None
        if checkpoints.is_dir():
            for child in checkpoints.iterdir():
                if child.name != keep:
                    shutil.rmtree(child, ignore_errors=True)
        self._delete_checkpoints(key, sweep, keep=keep)
        logger.info(
            "sweep %s deleted; its trial records and best checkpoint are kept in %s",
            key,
            directory,
        )
        self.recorder.event(
            sweep,
            "Normal",
            "Retained",
            f"trial records and the best trial's checkpoints kept (study {study_name(sweep)})",
        )

    def _release(self, sweep: JsonDict) -> None:
        """Remove this operator's finalizer: the Sweep goes, and its TrainJobs with it."""
        meta = sweep["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != SWEEP_FINALIZER]
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": finalizers}}
        self._wrote(self.kube.patch(SWEEPS, meta["namespace"], meta["name"], patch))

    # --- status --------------------------------------------------------------------------

    def _write_status(
        self,
        sweep: JsonDict,
        summary: JsonDict,
        *,
        running: bool,
        outcome: tuple[str, str, str] | None = None,
        error: str | None = None,
        queue: JsonDict | None = None,
        stalled: tuple[str, str] | None = None,
        batch: bool = False,
    ) -> float | None:
        """Write the status from the runner's view of storage; nothing if nothing changed.

        ``queue`` (sweeps with pools) gives ``queuedTrials`` and the ``TrialsQueued`` condition.
        With ``batch``, a change of counts and messages only (no condition turned true or
        false; not the first counts) waits until ``SWEEP_STATUS_BATCH_SECONDS`` have passed
        since the last write: the seconds until then are returned, and the next reconcile
        writes it.
        """
        meta = sweep["metadata"]
        old = sweep.get("status") or {}
        status: JsonDict = copy.deepcopy(old)
        conditions: list[JsonDict] = status.setdefault("conditions", [])
        stamp = rfc3339(dt.datetime.now(dt.timezone.utc))
        status["observedGeneration"] = int(meta.get("generation", 1))
        status["studyName"] = study_name(sweep)
        status.update(
            {k: v for k, v in summary.items() if k in ("trials", "bestTrial", "paretoFront")}
        )
        status.update(katib_status(sweep, status))  # Katib's names for the same facts
        set_condition(
            conditions, "Created", True, "SweepCreated", f"Sweep {meta['name']} is created.", stamp
        )
        if running:
            status.setdefault("startTime", stamp)
            status.pop("completionTime", None)
            set_condition(
                conditions, "Succeeded", False, "SweepRunning", "Sweep is running.", stamp
            )
            set_condition(conditions, "Failed", False, "SweepRunning", "Sweep is running.", stamp)
            set_condition(conditions, "Running", True, "SweepRunning", "Sweep is running.", stamp)
        elif error is not None:
            set_condition(conditions, "Running", False, "RunnerError", f"{error}; retrying", stamp)
        # Before the outcome: the last condition is the sweep's state.
        if queue is None and not running and "queuedTrials" in status:
            queue = {"queuedTrials": 0, "message": ""}
        if queue is not None:
            waiting = int(queue["queuedTrials"])
            status["queuedTrials"] = waiting
            if waiting:
                set_condition(
                    conditions,
                    "TrialsQueued",
                    True,
                    "InsufficientCapacity",
                    queue["message"],
                    stamp,
                )
            else:
                message = "No trial waits for capacity."
                set_condition(conditions, "TrialsQueued", False, "Admitted", message, stamp)
                # A False condition is no state: keep the last condition the sweep's own.
                queued = [c for c in conditions if c.get("type") == "TrialsQueued"]
                conditions[:] = queued + [c for c in conditions if c.get("type") != "TrialsQueued"]
        if stalled is not None:
            set_condition(conditions, "TrialsStalled", True, stalled[0], stalled[1], stamp)
        elif set_condition(
            conditions, "TrialsStalled", False, "PodsStarting", "No trial is stalled.", stamp
        ):
            # A False condition is no state: keep the last condition the sweep's own.
            moved = [c for c in conditions if c.get("type") == "TrialsStalled"]
            conditions[:] = moved + [c for c in conditions if c.get("type") != "TrialsStalled"]
        if queue is not None and queue.get("refused"):
            set_condition(conditions, "Unschedulable", True, "NoPoolFits", queue["refused"], stamp)
        if outcome is not None:
            kind, reason, message = outcome
            set_condition(conditions, "Running", False, reason, message, stamp)
            set_condition(conditions, kind, True, reason, message, stamp)
            status.setdefault("completionTime", stamp)
        if status == old:
            return None
        key = object_key(sweep)
        now = time.monotonic()
        # The first counts go at once: a sweep just applied shows them.
        if batch and "trials" in old and true_conditions(status) == true_conditions(old):
            left = self._status_written.get(key, -math.inf) + SWEEP_STATUS_BATCH_SECONDS - now
            if left > 0:
                return left
        body = {**sweep, "status": status}
        self._wrote(
            self.kube.replace(SWEEPS, meta["namespace"], meta["name"], body, subresource="status")
        )
        self._status_written[key] = now
        return None
