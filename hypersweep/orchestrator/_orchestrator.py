"""The one control loop: claim a trial, sample its config, launch it, act on what it reports.

``tune()``, ``hypersweep run`` and the Kubernetes operator all run this loop; only the launcher
differs. The loop holds no state that storage does not also hold, so a killed driver is resumed
by another one (or itself, restarted) without losing or duplicating trials: see ``_storage``.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from hypersweep._errors import ConfigError
from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.orchestrator._callbacks import (
    CallbackDispatcher,
    SweepInfo,
    TrialInfo,
    make_callbacks,
)
from hypersweep.orchestrator._checkpoints import (
    copy_checkpoint,
    latest_checkpoint,
    resolve_location,
    trial_checkpoint_dir,
)
from hypersweep.orchestrator._events import (
    Checkpointed,
    Completed,
    Crashed,
    Errored,
    Event,
    Reported,
    Stopped,
    TrialAssignment,
)
from hypersweep.orchestrator._failures import fail_fast_count, fail_fast_error, migration_hint
from hypersweep.orchestrator._gc import gc_paused
from hypersweep.orchestrator._intermediate import IntermediateValues
from hypersweep.orchestrator._objective import ObjectiveRef
from hypersweep.orchestrator._result import SweepResult, TrialRecord
from hypersweep.orchestrator._spec import SweepSettings
from hypersweep.orchestrator._storage import (
    ATTEMPTS_ATTR,
    CHECKPOINT_ATTR,
    CLONED_FROM_ATTR,
    ERROR_ATTR,
    HISTORY_ATTR,
    INTERRUPTED_ATTR,
    OWNER_ATTR,
    PARENT_ATTR,
    PAUSED_ATTR,
    PROMOTED_ATTR,
    SEGMENTS_ATTR,
    SPEC_ATTR,
    SweepStore,
    default_run_dir,
    describe_storage,
    new_driver_id,
    open_storage,
)
from hypersweep.strategies import (
    Clone,
    Decision,
    OptunaPrunerScheduler,
    StrategyNotReady,
    constraint_violations,
    flatten_config,
    make_sampler,
    make_scheduler,
    sample_config,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

logger = logging.getLogger("hypersweep")

# Optuna raises this when a sampler calls study.stop() outside study.optimize().
_SAMPLER_STOP = "`Study.stop` is supposed to be invoked"
# User attributes of a trial: its constraint values (<= 0 where a bound holds), whether it met
# every bound, and, for a define-by-run space, the config the space function returned.
CONSTRAINTS_ATTR = "constraints"
FEASIBLE_ATTR = "feasible"
CONFIG_ATTR = "config"


def _has_checkpoint(trial: FrozenTrial) -> bool:
    return (
        trial.system_attrs.get(CHECKPOINT_ATTR) is not None
        or CLONED_FROM_ATTR in trial.system_attrs
    )


@dataclass
class RunningTrial:
    """A trial this driver is running, as the loop tracks it."""

    trial: optuna.Trial
    number: int
    config: dict[str, Any]
    attempt: int
    started: float
    reported_steps: set[int]
    history: list[dict[str, float]]
    latest: dict[str, float] = field(default_factory=dict)
    decision: str = "continue"
    promoted_at: list[int] = field(default_factory=list)
    segments: list[list[float]] = field(default_factory=list)  # earlier runs: [start, end]
    wall_started: float = 0.0  # time.time() when this run started
    # The first step of this run whose report the scheduler may answer other than "continue"
    # (its next rung, interval or pruning step); None: no later report. Reports before it
    # are recorded without asking the scheduler, and launchers need not make them wait.
    decide_from: int | None = 0

    @property
    def step(self) -> int | None:
        """The latest step reported, over every run of the trial."""
        return int(self.history[-1]["step"]) if self.history else None

    info: TrialInfo | None = None  # what callbacks are told about this attempt


@dataclass(frozen=True, slots=True)  # slots: one per trial, 100,000s in a sweep
class TrialView:
    """A trial as a progress display shows it.

    ``step`` is the latest step reported (where a paused or stopped trial stands), ``steps``
    how many reports it made (the resource it used) and ``promotions`` how often it was resumed
    from a pause.
    """

    number: int
    state: str
    config: dict[str, Any]
    latest: dict[str, float]
    value: float | None
    step: int | None = None
    steps: int = 0
    promotions: int = 0

    @classmethod
    def of(cls, running: RunningTrial, state: str, value: float | None = None) -> TrialView:
        """The view of a trial this driver runs (or just ran)."""
        return cls(
            running.number,
            state,
            running.config,
            running.latest,
            value,
            running.step,
            len(running.history),
            len(running.promoted_at),
        )


class Orchestrator:
    """Runs one sweep to its end with a launcher.

    Args:
        settings: validated sweep settings.
        objective: the objective, as the launcher's workers load it.
        launcher: where trials run.
        objective_reference: ``module:function`` to store with the sweep for ``resume``.
        heartbeat_interval: seconds between this driver's lease renewals.
        lease_grace: seconds after which another driver's silent lease counts as dead.
        resume_hint: how the caller resumes a sweep, for messages (``--resume`` in the CLI).
    """

    def __init__(
        self,
        settings: SweepSettings,
        objective: ObjectiveRef,
        launcher: Launcher,
        *,
        objective_reference: str | None = None,
        heartbeat_interval: float = 5.0,
        lease_grace: float = 30.0,
        resume_hint: str = "resume=True",
    ) -> None:
        assert settings.name is not None, "validate the settings first"
        self.settings = settings
        self.name: str = settings.name
        self.objective = objective
        self.launcher = launcher
        self.objective_reference = objective_reference
        self.heartbeat_interval = heartbeat_interval
        self.lease_grace = lease_grace
        self.resume_hint = resume_hint
        self.driver_id = new_driver_id()
        self.listeners: list[Callable[[Orchestrator], None]] = []
        self.stop_reason: str | None = None
        self.failure: Exception | None = None  # why the sweep failed as a whole (fail fast)
        self._logged_failures: set[str] = set()
        self.running: dict[int, RunningTrial] = {}
        self.views: dict[int, TrialView] = {}
        self.best: tuple[int, float] | None = None
        run_dir = default_run_dir(self.name)
        # A folder (made absolute) or an fsspec URL such as s3://bucket/prefix.
        self.checkpoint_dir = resolve_location(settings.checkpoint_dir or run_dir / "checkpoints")
        self.checkpoint_options = dict(settings.checkpoint_storage_options or {})
        self._waiting: list[FrozenTrial] = []
        self._ready: list[tuple[int, dict[str, Any]]] = []
        self._warned_no_checkpoint = False
        self._sampler_exhausted = False
        self._strategy_waits = False  # the strategy had no config: wait for a trial to end
        self._budget_exhausted = False
        self._hard_stop = False
        self._interrupt_requested = False
        self._started = 0.0
        self._next_heartbeat = 0.0
        self.callbacks = CallbackDispatcher(make_callbacks(settings.callbacks))
        self._open()

    # --- setup ---------------------------------------------------------------------------

    def _open(self) -> None:
        import optuna

        settings = self.settings
        self.storage = open_storage(settings.storage, self.name)
        self.storage_description = describe_storage(settings.storage, self.name)
        self.scheduler = make_scheduler(settings.early_stopping)
        self.scheduler.has_checkpoint = _has_checkpoint
        pruner = (
            self.scheduler.pruner
            if isinstance(self.scheduler, OptunaPrunerScheduler)
            else optuna.pruners.NopPruner()
        )
        sampler = make_sampler(
            settings.strategy,
            settings.space,
            settings.seed,
            parallel=(settings.max_concurrent or 2) > 1,
            metric=settings.metrics[0],
            mode=settings.modes[0],
            constraints_func=self._constraints_func() if self._needs_constraints_func() else None,
            state_dir=default_run_dir(self.name),  # a Ray Tune searcher's state, for resume
        )
        directions: list[Literal["minimize", "maximize"]] = [
            "minimize" if mode == "min" else "maximize" for mode in settings.modes
        ]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        created = False
        self.resumed = False
        try:
            self.study = optuna.create_study(
                storage=self.storage,
                study_name=self.name,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            if not settings.resume:
                raise ConfigError(
                    f"name: sweep {self.name!r} already exists in {self.storage_description}; "
                    f"pass {self.resume_hint} (or run 'hypersweep resume {self.name}') to "
                    "continue it, or choose another name"
                ) from None
            self.resumed = True
            self.study = optuna.load_study(
                study_name=self.name, storage=self.storage, sampler=sampler, pruner=pruner
            )
        self.store = SweepStore(self.storage, self.study._study_id)
        # Reports' values, written in one storage write per pass of the loop (or sooner).
        self.intermediate = IntermediateValues(self.study._storage)
        if created:
            # Slots first, spec last: a driver joining at the same time waits for the spec, so
            # it never mistakes a half-created budget for a smaller one.
            if settings.n_trials is not None:
                self.store.add_slots(settings.n_trials)
            self.store.storage.set_study_system_attr(
                self.store.study_id, SPEC_ATTR, settings.to_data(self.objective_reference)
            )
        else:
            self._check_resumable(directions)
        self.store.write_lease(self.driver_id)

    def _needs_constraints_func(self) -> bool:
        """Optuna 5 samplers read constraints stored with the trial (``set_constraint``);
        before that, a sampler sees them only through a ``constraints_func``."""
        import optuna

        return bool(self.settings.constraints) and not hasattr(optuna.Trial, "set_constraint")

    def _constraints_func(self) -> Callable[[FrozenTrial], list[float]]:
        """Optuna's ``constraints_func``: the values the loop stored when the trial ended."""
        constraints = self.settings.constraints or {}
        neutral = [0.0] * sum(len(bounds) for bounds in constraints.values())

        def constraints_func(trial: FrozenTrial) -> list[float]:
            # A trial stopped early before reporting the constrained metrics: no evidence.
            stored = trial.user_attrs.get(CONSTRAINTS_ATTR)
            return list(stored.values()) if stored else neutral

        return constraints_func

    def _check_resumable(self, directions: Sequence[str]) -> None:
        stored = self._wait_for_spec()
        created = [d.name.lower() for d in self.study.directions]
        if created != list(directions):
            raise ConfigError(
                f"mode: sweep {self.name!r} was created to {', '.join(created)}, "
                f"not to {', '.join(directions)}; keep the original mode to resume it"
            )
        if stored.get("metric") not in (None, self.settings.metric):
            raise ConfigError(
                f"metric: sweep {self.name!r} optimizes {stored['metric']!r}, not "
                f"{self.settings.metric!r}; keep the original metric to resume it"
            )
        wanted, budget = self.settings.n_trials, stored.get("n_trials")
        if wanted is not None and budget is not None and wanted > budget:
            logger.info("Adding %d trials to sweep %s", wanted - budget, self.name)
            self.store.add_slots(wanted - budget)
            self.store.storage.set_study_system_attr(
                self.store.study_id, SPEC_ATTR, {**stored, "n_trials": wanted}
            )

    def _wait_for_spec(self, timeout: float = 60.0) -> dict[str, Any]:
        """The stored spec; a driver that created the sweep an instant ago may still write it."""
        deadline = time.monotonic() + timeout
        while True:
            spec = self.store.spec()
            if spec is not None:
                return spec
            if time.monotonic() > deadline:
                return {}  # a study that plain Optuna created
            time.sleep(0.05)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> SweepResult:
        """Run until the budget is used, the timeout passes, or the sweep must stop.

        Raises KeyboardInterrupt after a clean stop on Ctrl-C: running trials are stopped and
        put back in the queue, so that ``resume`` continues them from their checkpoints.
        """
        self.launcher.start(
            SweepContext(
                self.name,
                self.objective,
                self.settings.metrics[0],
                self.settings.job,
                checkpoint_dir=str(self.checkpoint_dir),
            )
        )
        self._started = time.monotonic()
        self.callbacks.on_sweep_start(
            SweepInfo(
                self.name,
                self.settings.metric,
                self.settings.mode,
                self.settings.to_data(self.objective_reference),
                self.storage_description,
                self.resumed,
                self.result() if self.callbacks else None,
            )
        )
        restore_sigint = self._install_sigint_handler()
        try:
            self._heartbeat()
            while True:
                if self._interrupt_requested:
                    raise KeyboardInterrupt
                now = time.monotonic()
                if now >= self._next_heartbeat:
                    self._heartbeat()
                timeout = self.settings.timeout
                if self.stop_reason is None and timeout and now - self._started >= timeout:
                    self._stop("timeout", hard=False)
                if self.stop_reason is None:
                    self._fill_slots()
                if not self.running and (self.stop_reason is not None or self._all_done()):
                    break
                wait = min(0.5, max(0.0, self._next_heartbeat - time.monotonic()))
                for event in self.launcher.poll(wait):
                    self._handle(event)
                self.intermediate.flush()
                self._notify()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            raise
        finally:
            restore_sigint()
            self.intermediate.flush()
            self._release_running()
            self.launcher.shutdown()
            self.store.write_lease(self.driver_id, alive=False)
            self._notify()
            if self.callbacks:
                self.callbacks.on_sweep_end(self.result())
        saved = self._save_snapshot()
        if saved is None:
            return self.result()
        # The records just saved (or still current) are this result's: built once, not twice.
        return self._result_of(saved.trials, saved.queued)

    def _save_snapshot(self) -> SweepResult | None:
        """Save the sweep's results beside its journal, for a fast ``load``/``status``, and
        the storage's replay of the journal, for a fast restart (``resume``, another driver).

        Returns the results saved, or those of the snapshot already there if this driver wrote
        nothing they depend on (a resume with nothing left to run); None without a journal.
        """
        from hypersweep.orchestrator._journal import save_replay_snapshot
        from hypersweep.orchestrator._snapshot import journal_of, read_snapshot
        from hypersweep.orchestrator._tune import read_sweep

        journal = journal_of(self.settings.storage, self.name)
        if journal is None:
            return None
        try:
            # A driver that ran only a few trials leaves the next start a few lines to read.
            save_replay_snapshot(self.store.storage)
            saved = read_snapshot(journal, self.name)
            if saved is None:
                # The storage's trials are released as the records are built: this driver
                # reads no trial after this (its callbacks were told already).
                saved = read_sweep(
                    self.store.storage,
                    self.store.study_id,
                    self.name,
                    self.storage_description,
                    snapshot=journal,
                    release=True,
                )
        except OSError as error:  # the sweep is done; only the next load is slower
            logger.warning("Could not save the snapshot of sweep %s: %s", self.name, error)
            return None
        return saved

    def _install_sigint_handler(self) -> Callable[[], None]:
        """First Ctrl-C: stop cleanly between two storage writes. Second: stop now."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self._interrupt_requested:
                raise KeyboardInterrupt
            self._interrupt_requested = True
            logger.warning("Interrupted: stopping running trials (Ctrl-C again to force)")

        previous = signal.signal(signal.SIGINT, on_sigint)

        def restore() -> None:
            signal.signal(signal.SIGINT, previous)

        return restore

    def _notify(self) -> None:
        for listener in self.listeners:
            listener(self)

    def _stop(self, reason: str, *, hard: bool) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.warning("Sweep %s stops: %s", self.name, reason)
        if hard:
            self._hard_stop = True
            self._release_running()

    def _heartbeat(self) -> None:
        self.store.write_lease(self.driver_id)
        orphans = self.store.orphaned_trials(self.driver_id, self.lease_grace)
        for trial in orphans:
            logger.info("Trial %d lost its driver; queued to resume", trial.number)
            self.store.requeue(trial._trial_id)
        if orphans:
            self._waiting = []
        self._budget_exhausted = False
        self._strategy_waits = False
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval

    def _all_done(self) -> bool:
        import optuna

        states = optuna.trial.TrialState
        if self.settings.n_trials is None:
            return False
        left = [
            t
            for t in self.store.trials(states.WAITING, states.RUNNING)
            if t.params or t.state == states.RUNNING or not self._sampler_exhausted
        ]
        if any(t.state == states.RUNNING or t.system_attrs.get(PAUSED_ATTR) is None for t in left):
            return False
        self._finalize_paused(left)
        return True

    def _finalize_paused(self, paused: list[FrozenTrial]) -> None:
        """Paused trials that no promotion will resume end as stopped early."""
        import optuna

        at_step: dict[int, int] = {}
        for frozen in paused:
            if self.store.claim(frozen._trial_id):
                self._tell(
                    optuna.Trial(self.study, frozen._trial_id), optuna.trial.TrialState.PRUNED, None
                )
                step = int(frozen.system_attrs[PAUSED_ATTR])
                at_step[step] = at_step.get(step, 0) + 1
                view = self.views.get(frozen.number)
                if view is not None:
                    self.views[frozen.number] = replace(view, state="pruned")
                info = TrialInfo(self.name, frozen.number, dict(frozen.params), 0, True)
                self.callbacks.on_trial_end(info, "pruned", None, {}, None)
        if at_step:
            where = ", ".join(f"{n} at step {step}" for step, n in sorted(at_step.items()))
            logger.info(
                "%d paused trials stay stopped where they were paused (%s): no promotion is left",
                sum(at_step.values()),
                where,
            )

    # --- starting trials -----------------------------------------------------------------

    def _fill_slots(self) -> None:
        limit = self.settings.max_concurrent  # the sweep's limit binds every launcher
        while (
            (limit is None or len(self.running) < limit)
            and self.launcher.free_slots() > 0
            and self.stop_reason is None
            and not self._strategy_waits
        ):
            claimed = self._claim_next()
            if claimed is None:
                return
            self._start(*claimed)

    def _claim_next(self) -> tuple[int, dict[str, Any]] | None:
        """Claim the next trial to run.

        In order: clones prepared for population-based training, requeued trials (interrupted
        or orphaned), paused trials the scheduler promotes, then fresh slots of the budget.
        """
        if self._ready:
            return self._ready.pop(0)
        while True:
            self._refresh_waiting()
            head = self._waiting[0] if self._waiting else None
            if self.scheduler.can_pause and (head is None or not head.params):
                promoted = self._claim_promotion(final=head is None)
                if promoted is not None:
                    return promoted
            if head is None:
                if self.settings.n_trials is None:
                    return self.store.storage.create_new_trial(self.store.study_id), {}
                return None
            self._waiting.pop(0)
            if self.store.claim(head._trial_id):
                return head._trial_id, dict(head.system_attrs)

    def _refresh_waiting(self) -> None:
        """Reload queued trials (not paused ones) when the local copy ran out."""
        import optuna

        if self._waiting or self._budget_exhausted:
            return
        waiting = [
            t
            for t in self.store.trials(optuna.trial.TrialState.WAITING)
            if t.system_attrs.get(PAUSED_ATTR) is None and (t.params or not self._sampler_exhausted)
        ]
        # Requeued trials (they have params) resume before fresh slots start.
        self._waiting = sorted(waiting, key=lambda t: (not t.params, t.number))
        self._budget_exhausted = not self._waiting and self.settings.n_trials is not None

    def _paused_trials(self) -> list[FrozenTrial]:
        import optuna

        return [
            t
            for t in self.store.trials(optuna.trial.TrialState.WAITING)
            if t.system_attrs.get(PAUSED_ATTR) is not None
        ]

    def _claim_promotion(self, *, final: bool) -> tuple[int, dict[str, Any]] | None:
        paused = self._paused_trials()
        while paused:
            chosen = self.scheduler.choose_resume(self.study, paused, final=final)
            if chosen is None:
                return None
            if self.store.claim(chosen._trial_id):
                logger.info(
                    "Trial %d promoted from step %s: resuming from its checkpoint",
                    chosen.number,
                    chosen.system_attrs.get(PAUSED_ATTR),
                )
                return chosen._trial_id, dict(chosen.system_attrs)
            paused = [t for t in paused if t.number != chosen.number]
        return None

    def _claim_fresh(self) -> tuple[int, dict[str, Any]] | None:
        """A slot of the budget that never ran (for a clone)."""
        while True:
            self._refresh_waiting()
            fresh = [t for t in self._waiting if not t.params]
            if not fresh or self._sampler_exhausted:
                if self.settings.n_trials is None:
                    return self.store.storage.create_new_trial(self.store.study_id), {}
                return None
            self._waiting.remove(fresh[0])
            if self.store.claim(fresh[0]._trial_id):
                return fresh[0]._trial_id, dict(fresh[0].system_attrs)

    def _prepare_clone(self, clone: Clone) -> None:
        """Claim a fresh slot for ``clone``: its params fixed, the source's checkpoint copied."""
        claimed = self._claim_fresh()
        if claimed is None:
            return
        trial_id, attrs = claimed
        storage = self.store.storage
        storage.set_trial_system_attr(trial_id, OWNER_ATTR, self.driver_id)
        number = storage.get_trial(trial_id).number
        source = latest_checkpoint(
            trial_checkpoint_dir(self.checkpoint_dir, clone.source_trial), self.checkpoint_options
        )
        lineage: dict[str, Any] = {"fixed_params": clone.params, PARENT_ATTR: clone.source_trial}
        if source is not None:
            copy_checkpoint(
                source, trial_checkpoint_dir(self.checkpoint_dir, number), self.checkpoint_options
            )
            lineage[CLONED_FROM_ATTR] = source
        for key, value in lineage.items():
            storage.set_trial_system_attr(trial_id, key, value)
        logger.info("Trial %d starts from trial %d's checkpoint", number, clone.source_trial)
        self._ready.append((trial_id, {**attrs, **lineage}))

    def _start(self, trial_id: int, system_attrs: dict[str, Any]) -> None:
        import optuna

        storage = self.store.storage
        storage.set_trial_system_attr(trial_id, OWNER_ATTR, self.driver_id)
        if system_attrs.get(INTERRUPTED_ATTR):
            storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, False)
        promoted_at = list(system_attrs.get(PROMOTED_ATTR, []))
        if system_attrs.get(PAUSED_ATTR) is not None:
            storage.set_trial_system_attr(trial_id, PAUSED_ATTR, None)
            promoted_at.append(int(system_attrs[PAUSED_ATTR]))
            storage.set_trial_system_attr(trial_id, PROMOTED_ATTR, promoted_at)
        trial = optuna.Trial(self.study, trial_id)
        try:
            config = sample_config(self.settings.space, trial)
        except StrategyNotReady as not_ready:
            # Back to the queue, unstarted; claim no fresh trial until a running one ends.
            self.store.requeue(trial_id)
            self._strategy_waits = True
            if not_ready.exhausted:
                self._exhaust_sampler()
            return
        except Exception as error:  # noqa: BLE001 - a sampler error fails only this trial
            import traceback

            self._fail(trial, f"sampling failed: {error}", traceback.format_exc())
            return
        frozen = storage.get_trial(trial_id)
        if callable(self.settings.space) and CONFIG_ATTR not in frozen.user_attrs:
            # A function's config cannot be rebuilt from the parameters: keep it.
            storage.set_trial_user_attr(trial_id, CONFIG_ATTR, config)
        running = RunningTrial(
            trial=trial,
            number=trial.number,
            config=config,
            attempt=int(system_attrs.get(ATTEMPTS_ATTR, 0)),
            started=time.monotonic(),
            reported_steps=set(frozen.intermediate_values),
            history=list(system_attrs.get(HISTORY_ATTR, [])),
            promoted_at=promoted_at,
            segments=list(system_attrs.get(SEGMENTS_ATTR, [])),
            wall_started=time.time(),
        )
        self.running[trial.number] = running
        running.info = TrialInfo(
            self.name,
            running.number,
            config,
            running.attempt,
            resumed=bool(frozen.intermediate_values or system_attrs.get(INTERRUPTED_ATTR))
            or running.attempt > 0,
            params=flatten_config(config),
        )
        if system_attrs.get(PAUSED_ATTR) is not None:
            self.callbacks.on_trial_promote(running.info)
        self._launch(running)

    def _launch(self, running: RunningTrial) -> None:
        restore = latest_checkpoint(
            trial_checkpoint_dir(self.checkpoint_dir, running.number), self.checkpoint_options
        )
        running.decision = "continue"
        running.decide_from = 0  # a new run's first report is always decided
        self.views[running.number] = TrialView.of(running, "running")
        if running.info is not None:
            if running.info.attempt != running.attempt:  # a retry
                running.info = replace(running.info, attempt=running.attempt, resumed=True)
            self.callbacks.on_trial_start(running.info)
        self.launcher.launch(
            TrialAssignment(
                trial_number=running.number,
                config=running.config,
                sweep_name=self.name,
                checkpoint_dir=self.checkpoint_dir,
                restore_path=restore,
                attempt=running.attempt,
                keep_checkpoints=self.settings.keep_checkpoints,
                checkpoint_options=self.checkpoint_options,
            )
        )

    # --- events --------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        running = self.running.get(event.trial_number)
        if running is None:
            return  # a late message from a trial we already stopped
        if isinstance(event, Reported):
            self._on_report(running, event)
            return
        self.intermediate.flush()  # the values reported before it are stored before it
        if isinstance(event, Checkpointed):
            self.store.storage.set_trial_system_attr(
                running.trial._trial_id, CHECKPOINT_ATTR, event.path
            )
            self.callbacks.on_checkpoint(running.info, event.path, event.step)
        elif isinstance(event, Completed):
            self._on_completed(running, event.result)
        elif isinstance(event, Stopped):
            if event.decision == "pause":
                self._requeue(running, paused=True)
            else:
                self._finish(running, state="PRUNED")
        elif isinstance(event, Errored):
            self._fail(running.trial, event.message, event.traceback, running)
        elif isinstance(event, Crashed):
            self._on_crash(running, event.message)

    def _on_report(self, running: RunningTrial, event: Reported) -> None:
        running.latest = dict(event.metrics)
        self.callbacks.on_trial_result(running.info, event.step, running.latest)
        running.history.append({"step": float(event.step), **event.metrics})
        self.views[running.number] = TrialView.of(running, "running")
        decision = Decision.CONTINUE
        forward = getattr(self.study.sampler, "on_trial_result", None)  # Ray Tune searchers
        if forward is not None:
            forward(self.study, running.number, event.step, event.metrics)
        value = event.metrics.get(self.settings.metrics[0])
        if len(self.settings.metrics) > 1:
            value = None  # Optuna's intermediate values (for early stopping) are single-objective
            running.decide_from = None
        if value is not None and event.step not in running.reported_steps:
            running.reported_steps.add(event.step)
            self.intermediate.add(running.trial._trial_id, event.step, value)
            due = running.decide_from is not None and event.step >= running.decide_from
            if due and math.isfinite(value):
                self.intermediate.flush()  # a scheduler compares with every trial's values
                decision = self._decide(running, event.step)
                running.decide_from = self.scheduler.next_decision(running.number, event.step)
        running.decision = decision.value
        self.launcher.respond_until(running.number, decision.value, running.decide_from)

    def _decide(self, running: RunningTrial, step: int) -> Decision:
        frozen = self.store.storage.get_trial(running.trial._trial_id)
        decision = self.scheduler.on_report(self.study, frozen, step)
        stopped_for_want_of_checkpoint = (
            decision is not Decision.CONTINUE
            and self.scheduler.can_pause
            and not _has_checkpoint(frozen)
        )
        if stopped_for_want_of_checkpoint:
            # Resuming would retrain from zero; say so once and stop it instead.
            if not self._warned_no_checkpoint:
                self._warned_no_checkpoint = True
                logger.warning(
                    "Trial %d has no checkpoint to pause on, so it is stopped instead; call "
                    "hypersweep.checkpoint() before hypersweep.report() to let ASHA resume it",
                    running.number,
                )
            decision = Decision.STOP
        if decision is Decision.STOP:
            clone = self.scheduler.clone_for(self.study, frozen)
            if clone is not None:
                self._prepare_clone(clone)
        return decision

    def _on_completed(self, running: RunningTrial, result: Any) -> None:
        names = self.settings.metrics
        needed = [*names, *(self.settings.constraints or {})]
        if isinstance(result, dict):
            missing = [name for name in needed if name not in result]
            if missing:
                keys = ", ".join(map(str, result)) or "none"
                what = "metric" if len(missing) == 1 else "metrics"
                listed = ", ".join(map(repr, missing))
                message = f"objective returned a dict without the {what} {listed} (keys: {keys})"
                self._fail(running.trial, message, message, running)
                return
            metrics = result
        elif len(needed) > 1:
            message = (
                f"objective returned {result!r}; return a dict with the metrics "
                f"{', '.join(map(repr, needed))}"
            )
            self._fail(running.trial, message, message, running)
            return
        else:
            metrics = {names[0]: result}
        try:
            clean = {str(k): float(v) for k, v in metrics.items()}
        except (TypeError, ValueError):
            message = f"objective must return a number or a dict of numbers, got {result!r}"
            self._fail(running.trial, message, message, running)
            return
        for name in needed:
            if not math.isfinite(clean[name]):
                message = f"objective returned {clean[name]} for {name!r}"
                self._fail(running.trial, message, message, running)
                return
        if isinstance(result, dict):  # a bare number is the value itself: no extra write
            self.store.storage.set_trial_user_attr(running.trial._trial_id, "metrics", clean)
        values = [clean[name] for name in names]
        self._finish(
            running,
            state="COMPLETE",
            value=values[0] if len(values) == 1 else values,
            metrics=clean,
        )

    def _on_crash(self, running: RunningTrial, message: str) -> None:
        running.attempt += 1
        self.store.storage.set_trial_system_attr(
            running.trial._trial_id, ATTEMPTS_ATTR, running.attempt
        )
        if self._hard_stop or self.stop_reason == "interrupted":
            return
        if running.attempt <= self.settings.max_retries:
            logger.warning(
                "Trial %d: %s; retry %d of %d from its latest checkpoint",
                running.number,
                message,
                running.attempt,
                self.settings.max_retries,
            )
            self._launch(running)
            return
        reason = f"{message}; gave up after {running.attempt} attempts"
        self._fail(running.trial, reason, reason, running)

    # --- ending trials -------------------------------------------------------------------

    def _fail(
        self,
        trial: optuna.Trial,
        message: str,
        details: str,
        running: RunningTrial | None = None,
    ) -> None:
        import optuna

        hint = migration_hint(details)
        if hint is not None:
            details = f"{details.rstrip()}\nhint: {hint}"
        self.store.storage.set_trial_system_attr(trial._trial_id, ERROR_ATTR, details)
        if running is not None:
            self._finish(running, state="FAIL", message=message)
        else:
            self._tell(trial, optuna.trial.TrialState.FAIL, None)
            self.views[trial.number] = TrialView(trial.number, "failed", {}, {}, None)
        self._after_failure(trial.number, message, details)

    def _after_failure(self, number: int, message: str, details: str) -> None:
        """Log a failed trial once; stop the sweep at max_failed_trials, or fail fast.

        Without max_failed_trials, a sweep whose first finished trials all failed stops and
        fails with the first one's traceback (shown then, not logged for each trial before).
        """
        import optuna

        states = optuna.trial.TrialState
        limit = self.settings.max_failed_trials
        finished = self.store.trials(states.COMPLETE, states.PRUNED, states.FAIL)
        failed = sorted((t for t in finished if t.state == states.FAIL), key=lambda t: t.number)
        armed = limit is None and len(failed) == len(finished)
        if armed or details.strip() == message or message in self._logged_failures:
            logger.warning("Trial %d failed: %s", number, message)
        else:
            logger.warning("Trial %d failed: %s\n%s", number, message, details.rstrip())
        self._logged_failures.add(message)
        if limit is not None and len(failed) >= limit:
            self._stop(f"{len(failed)} trials failed (max_failed_trials={limit})", hard=True)
        elif armed and len(failed) >= fail_fast_count(self.settings.max_concurrent):
            first = failed[0]
            self.failure = fail_fast_error(
                self.name, len(failed), first.number, first.system_attrs.get(ERROR_ATTR, message)
            )
            self._stop(
                f"its first {len(failed)} trials failed and none succeeded (fail fast; "
                "max_failed_trials sets another limit)",
                hard=True,
            )

    def _finish(
        self,
        running: RunningTrial,
        *,
        state: str,
        value: float | list[float] | None = None,
        message: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        import optuna

        self.running.pop(running.number, None)
        self._strategy_waits = False
        trial_id = running.trial._trial_id
        if running.history:
            self.store.storage.set_trial_system_attr(trial_id, HISTORY_ATTR, running.history)
        feasible = self._record_feasibility(running, state)
        self._end_segment(running)
        self._tell(running.trial, optuna.trial.TrialState[state], value)
        view_state = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}[state]
        view = TrialView.of(running, view_state, value if isinstance(value, float) else None)
        if isinstance(value, list):  # no single value: show each objective's
            objectives = dict(zip(self.settings.metrics, value, strict=True))
            view = replace(view, latest={**view.latest, **objectives})
        self.views[running.number] = view
        self.callbacks.on_trial_end(
            running.info,
            view_state,
            value if not isinstance(value, list) else None,
            metrics or running.latest,
            message,
        )
        if isinstance(value, list):
            shown = ", ".join(
                f"{n}={v:.6g}" for n, v in zip(self.settings.metrics, value, strict=True)
            )
            infeasible = "" if feasible is not False else " (infeasible)"
            logger.info("Trial %d completed with %s%s", running.number, shown, infeasible)
        elif state == "COMPLETE" and value is not None and feasible is False:
            logger.info(
                "Trial %d completed with %s=%.6g but breaks a constraint",
                running.number,
                self.settings.metric,
                value,
            )
        elif state == "COMPLETE" and value is not None:
            better = self.best is None or (
                value < self.best[1] if self.settings.mode == "min" else value > self.best[1]
            )
            if better:
                self.best = (running.number, value)
            assert self.best is not None
            logger.info(
                "Trial %d completed with %s=%.6g; best is trial %d with %.6g",
                running.number,
                self.settings.metric,
                value,
                *self.best,
            )
        elif state == "PRUNED":
            logger.info("Trial %d stopped early at step %s", running.number, running.step)

    def _record_feasibility(self, running: RunningTrial, state: str) -> bool | None:
        """Store the trial's constraint values and whether it meets them (before ``tell``,
        where the samplers read them); None when the sweep has no constraints or the trial
        did not report the constrained metrics."""
        constraints = self.settings.constraints
        if not constraints or state == "FAIL":
            return None
        frozen = self.store.storage.get_trial(running.trial._trial_id)
        metrics = {**running.latest, **frozen.user_attrs.get("metrics", {})}
        try:
            violations = constraint_violations(constraints, metrics)
        except KeyError:
            return None
        feasible = all(v <= 0 for v in violations.values())
        if hasattr(running.trial, "set_constraint"):  # Optuna 5: where its samplers look
            for key, violation in violations.items():
                running.trial.set_constraint(key, violation)
        storage = self.store.storage
        storage.set_trial_user_attr(running.trial._trial_id, CONSTRAINTS_ATTR, violations)
        storage.set_trial_user_attr(running.trial._trial_id, FEASIBLE_ATTR, feasible)
        return feasible

    def _tell(self, trial: optuna.Trial, state: Any, value: float | list[float] | None) -> None:
        from optuna.study._tell import _tell_with_warning

        try:
            # ``Study.tell`` is this and a deep copy of the trial, which the loop never reads:
            # about a tenth of the driver's time per trivial trial.
            _tell_with_warning(study=self.study, trial=trial, value_or_values=value, state=state)
        except RuntimeError as error:
            if _SAMPLER_STOP not in str(error):
                raise
            self._exhaust_sampler()

    def _exhaust_sampler(self) -> None:
        """No new configs; requeued and paused trials still run to the end."""
        if not self._sampler_exhausted:
            logger.info("The strategy has no more configs to try")
        self._sampler_exhausted = True
        self._waiting = [t for t in self._waiting if t.params]

    def _requeue(self, running: RunningTrial, *, paused: bool) -> None:
        """Back to the queue: paused (the scheduler resumes it) or interrupted (resumed first)."""
        self.running.pop(running.number, None)
        self._strategy_waits = False
        trial_id = running.trial._trial_id
        storage = self.store.storage
        if running.history:
            storage.set_trial_system_attr(trial_id, HISTORY_ATTR, running.history)
        self._end_segment(running)
        if paused:
            steps = running.reported_steps or {0}
            storage.set_trial_system_attr(trial_id, PAUSED_ATTR, max(steps))
            logger.info(
                "Trial %d paused at step %d: not in its rung's top yet; it resumes if promoted",
                running.number,
                max(steps),
            )
        else:
            storage.set_trial_system_attr(trial_id, INTERRUPTED_ATTR, True)
        self.store.requeue(trial_id)
        if paused:
            self.callbacks.on_trial_pause(running.info, max(running.reported_steps or {0}))
        else:
            self.callbacks.on_trial_interrupt(running.info)
        state = "paused" if paused else "interrupted"
        self.views[running.number] = TrialView.of(running, state)

    def _end_segment(self, running: RunningTrial) -> None:
        """Record this run of the trial, so that its duration adds up every run."""
        running.segments.append([running.wall_started, time.time()])
        self.store.storage.set_trial_system_attr(
            running.trial._trial_id, SEGMENTS_ATTR, running.segments
        )

    def _release_running(self) -> None:
        """Stop every trial this driver runs and queue it to resume later."""
        self.intermediate.flush()
        for running in list(self.running.values()):
            self.launcher.stop(running.number)
            self._requeue(running, paused=False)

    # --- results -------------------------------------------------------------------------

    def result(self) -> SweepResult:
        """Every started trial of the sweep, from storage (all drivers' trials)."""
        import optuna

        self.intermediate.flush()

        records = []
        queued = 0
        with gc_paused():  # one record per trial, all kept
            for trial in self.store.trials():
                if trial.state == optuna.trial.TrialState.WAITING and not trial.params:
                    queued += 1
                    continue
                records.append(
                    TrialRecord.from_frozen(trial, self.settings.space, self.settings.metric)
                )
        return self._result_of(records, queued)

    def _result_of(self, records: list[TrialRecord], queued: int) -> SweepResult:
        return SweepResult(
            name=self.name,
            metric=self.settings.metric,
            mode=self.settings.mode,
            constraints=self.settings.constraints,
            trials=records,
            storage=self.storage_description,
            stopped_reason=self.stop_reason,
            queued=queued,
            space=self.settings.space,
        )
