"""``tune()``: run a sweep on the embedded default (local worker processes, a journal file)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hypersweep.orchestrator._objective import reference_of, resolve_objective
from hypersweep.orchestrator._result import SweepResult, TrialRecord

if TYPE_CHECKING:
    from pathlib import Path

    import optuna

    from hypersweep.launchers._base import Launcher
    from hypersweep.orchestrator._callbacks import Callback
    from hypersweep.orchestrator._job import Replicas
    from hypersweep.orchestrator._orchestrator import Orchestrator


def _ensure_log_handler() -> None:
    """Print trial results like Optuna does, unless the application set up logging itself."""
    logger = logging.getLogger("hypersweep")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[hypersweep %(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def tune(
    space: dict[str, Any] | Callable[[optuna.Trial], dict[str, Any]],
    objective: Callable[[dict[str, Any]], Any] | str,
    *,
    metric: str | list[str],
    mode: str | list[str] = "min",
    constraints: dict[str, dict[str, float]] | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    max_concurrent: int | None = None,
    strategy: str | optuna.samplers.BaseSampler | Any = "tpe",
    early_stopping: str | dict[str, Any] | optuna.pruners.BasePruner | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
    name: str | None = None,
    resume: bool = False,
    max_failed_trials: int | None = None,
    max_retries: int = 2,
    seed: int | None = None,
    keep_checkpoints: int = 2,
    checkpoint_dir: str | None = None,
    checkpoint_storage_options: Mapping[str, Any] | None = None,
    replicas: Replicas | dict[str, Any] | None = None,
    launcher: Launcher | None = None,
    verbose: bool = True,
    on_update: Callable[[Orchestrator], None] | None = None,
    callbacks: Sequence[Callback | Mapping[str, Any] | str] | None = None,
) -> SweepResult:
    """Run a hyperparameter sweep and return every trial's result.

    Args:
        space: parameter names to domains (``uniform``, ``choice``...) or constants; nested
            dicts allowed, and ``choice([{...}, {...}])`` among sub-spaces (a trial's config
            holds only the chosen one's keys). Or a function that takes an Optuna trial and
            returns the config (define-by-run), called in the driver.
        objective: ``objective(config) -> float | dict``, or a ``"module:function"`` reference.
            It runs in worker processes; inside it call ``hypersweep.report`` to record
            intermediate metrics and ``hypersweep.checkpoint``/``restore`` to save and resume.
        metric: the metric to optimize (the returned float, or this key of the returned dict),
            or a list of metrics to optimize together (see ``SweepResult.best_trials``).
        mode: ``"min"`` or ``"max"``, or one per metric.
        constraints: bounds on metrics the objective returns, e.g.
            ``{"memory_gb": {"max": 16}}``: trials that break one are infeasible, never best.
        n_trials: how many trials in all, across every driver and resume.
        timeout: seconds after which no new trial starts.
        max_concurrent: trials at once; defaults to the number of CPUs.
        strategy: ``"tpe"`` (default), ``"random"``, ``"grid"``, ``"cmaes"``, ``"gp"``,
            ``"qmc"``, ``"nsga2"``, ``"nsga3"``, any ``optuna.samplers.BaseSampler``, or a Ray Tune
            ``Searcher`` (e.g. ``HyperOptSearch``, ``ConcurrencyLimiter``-wrapped).
        early_stopping: None, ``"median"``, ``"asha"``, ``"hyperband"``, a mapping
            ``{"name": "asha", **settings}``, or any ``optuna.pruners.BasePruner``.
        storage: None for ``./hypersweep-runs/<name>/journal.log``; an Optuna storage URL
            (e.g. ``postgresql://...``), a journal file path, or a storage object.
        name: the sweep's name (generated if None).
        resume: continue (or join) the sweep ``name``: finished trials are kept, interrupted
            ones resume from their checkpoints.
        max_failed_trials: stop the sweep once this many trials failed. Unset, the sweep
            stops (fail fast) if its first 3 finished trials (or ``max_concurrent``) all failed.
        max_retries: retries of a trial whose worker died (signal, OOM), from its checkpoint.
        seed: seed of the strategy. Trial ``n`` draws its randomness from ``(seed, n)``, so a
            resumed or shared sweep proposes what an uninterrupted one would, not its first
            configs again; a proposal that another trial already has is replaced by an unused
            config while the space has one.
        keep_checkpoints: checkpoints kept per trial.
        checkpoint_dir: where checkpoints go; defaults to the sweep's folder. A folder every
            worker reaches, or an fsspec URL: ``s3://bucket/prefix`` (``pip install
            'hypersweep[s3]'``), ``gs://``, ``az://``, ``file://``.
        checkpoint_storage_options: fsspec options of ``checkpoint_dir``, e.g.
            ``{"endpoint_url": "http://minio:9000", "key": ..., "secret": ...}``; unset, the
            filesystem reads its usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...).
        replicas: run every trial as several replicas of the objective (distributed
            training), e.g. ``hs.Replicas(n=4, framework="pytorch")``: one process per rank,
            with the rendezvous environment of torchrun or TFJob set, started and stopped
            together. Rank 0's reports are the trial's; ``max_retries`` bounds the restarts
            of the whole gang from the latest checkpoint.
        launcher: where trials run; defaults to ``LocalLauncher(max_concurrent)``.
        verbose: log what happens to trials (completed, stopped early, paused, promoted), a
            progress line every 10 seconds, and a short summary at the end.
        on_update: called with the orchestrator after each step (progress displays).
        callbacks: experiment trackers and monitors, called in this process (never in the
            trials): :class:`hypersweep.Callback` objects such as
            ``hypersweep.integrations.MLflowCallback()``, or built-ins by name with their
            arguments, e.g. ``[{"mlflow": {"tracking_uri": "http://..."}}, "tensorboard"]``.
            A callback that raises is logged once and the sweep goes on.

    Raises:
        ConfigError: invalid input, before anything starts.
        SweepFailed: the first finished trials (3, or ``max_concurrent`` if more) all failed
            and none succeeded, with ``max_failed_trials`` unset; the message holds the first
            failure's traceback. The trials stay in storage.
        KeyboardInterrupt: on Ctrl-C, after running trials were stopped and queued to resume.
    """
    from hypersweep.launchers._local import LocalLauncher
    from hypersweep.orchestrator._orchestrator import Orchestrator
    from hypersweep.orchestrator._spec import SweepSettings

    settings = SweepSettings(
        space=space,
        metric=metric,
        mode=mode,
        constraints=constraints,
        n_trials=n_trials,
        timeout=timeout,
        max_concurrent=max_concurrent,
        strategy=strategy,
        early_stopping=early_stopping,
        storage=storage,
        name=name,
        resume=resume,
        max_failed_trials=max_failed_trials,
        max_retries=max_retries,
        seed=seed,
        keep_checkpoints=keep_checkpoints,
        checkpoint_dir=checkpoint_dir,
        checkpoint_storage_options=checkpoint_storage_options,
        replicas=replicas,
        callbacks=callbacks,
        launcher=launcher.to_spec() if launcher is not None else None,  # for resume
    ).validated()
    objective_ref = resolve_objective(objective)
    if verbose:
        _ensure_log_handler()
    orchestrator = Orchestrator(
        settings,
        objective_ref,
        launcher or LocalLauncher(max_concurrent),
        objective_reference=reference_of(objective),
    )
    if on_update is not None:
        orchestrator.listeners.append(on_update)
    result = _run_verbose(orchestrator) if verbose else orchestrator.run()
    if orchestrator.failure is not None:
        raise orchestrator.failure
    return result


def _run_verbose(orchestrator: Orchestrator) -> SweepResult:
    """Run with a start line, progress lines every 10 s and a summary at the end."""
    from hypersweep._progress import ProgressLines, log_summary

    logger = logging.getLogger("hypersweep")
    logger.info("Sweep %s starts; storage: %s", orchestrator.name, orchestrator.storage_description)
    orchestrator.listeners.append(ProgressLines(logger.info, interval=10.0).update)
    started = time.monotonic()
    try:
        result = orchestrator.run()
    except KeyboardInterrupt:
        logger.warning(
            "Sweep %s interrupted; continue it with tune(..., name=%r, resume=True)",
            orchestrator.name,
            orchestrator.name,
        )
        raise
    log_summary(result, logger, time.monotonic() - started)
    return result


def load(name: str, storage: str | optuna.storages.BaseStorage | None = None) -> SweepResult:
    """Read a stored sweep's results (running or finished) without running anything.

    A sweep in a journal file is read from the snapshot beside it while the journal has not
    changed since the snapshot was written (see ``_snapshot``), else from the journal, which
    then writes the snapshot again if no trial is running. Reading the journal starts from its
    replay snapshot, when one matches, and reads only the lines after it.
    """
    from dataclasses import replace

    from hypersweep._errors import ConfigError
    from hypersweep.orchestrator._snapshot import journal_of, read_snapshot
    from hypersweep.orchestrator._storage import describe_storage, open_storage

    if storage is None:
        from hypersweep.orchestrator._storage import default_run_dir

        if not (default_run_dir(name) / "journal.log").is_file():
            raise ConfigError(
                f"name: no sweep {name!r} under {default_run_dir(name).parent}; pass "
                "--storage for sweeps stored elsewhere"
            )
    journal = journal_of(storage, name)
    if journal is not None:
        cached = read_snapshot(journal, name)
        if cached is not None:
            return replace(cached, storage=describe_storage(storage, name))
    from hypersweep.orchestrator._journal import save_replay_snapshot  # imports Optuna

    opened = open_storage(storage, name)
    try:
        study_id = opened.get_study_id_from_name(name)
    except KeyError:
        raise ConfigError(f"name: no sweep {name!r} in {describe_storage(storage, name)}") from None
    result = read_sweep(opened, study_id, name, describe_storage(storage, name), snapshot=journal)
    # Many lines read past the replay snapshot (a sweep still running): save it again.
    save_replay_snapshot(opened)
    return result


def read_sweep(
    opened: optuna.storages.BaseStorage,
    study_id: int,
    name: str,
    description: str,
    *,
    snapshot: Path | None = None,
    release: bool = False,
) -> SweepResult:
    """A sweep's results from its open storage; with ``snapshot`` (its journal file), saved
    beside it when no trial is running, for the next ``load`` to read. With ``release``, the
    storage's trials are dropped from memory as their records are built (a driver that ends:
    see ``_journal.release_replay``)."""
    import optuna

    from hypersweep.orchestrator._gc import gc_paused
    from hypersweep.orchestrator._journal import FlockJournalFileBackend, release_replay
    from hypersweep.orchestrator._snapshot import write_snapshot
    from hypersweep.orchestrator._storage import SweepStore
    from hypersweep.strategies import parse_space

    store = SweepStore(opened, study_id)
    trials = store.trials()
    # What the trials were read from: every journal byte up to here, and nothing after.
    backend = getattr(opened, "_backend", None)
    size = backend.bytes_read if isinstance(backend, FlockJournalFileBackend) else None
    spec = store.spec() or {}
    space = parse_space(spec["space"]) if spec.get("space") else None
    directions = opened.get_study_directions(study_id)
    modes = ["min" if d == optuna.study.StudyDirection.MINIMIZE else "max" for d in directions]
    if isinstance(backend, FlockJournalFileBackend) and backend.bytes_read != size:
        size = None  # written to meanwhile: the spec may be newer than the trials
    if release and release_replay(opened):
        trials.reverse()  # popped from the end, in order, each freed once read
    else:
        trials = trials[::-1]  # the storage keeps them
    records = []
    queued = 0
    with gc_paused():  # one record per trial, all kept
        while trials:
            trial = trials.pop()
            if trial.state == optuna.trial.TrialState.WAITING and not trial.params:
                queued += 1
            else:
                records.append(TrialRecord.from_frozen(trial, space, spec.get("metric")))
    result = SweepResult(
        name=name,
        metric=spec.get("metric", "value"),
        mode=modes[0] if len(modes) == 1 else modes,
        trials=records,
        storage=description,
        queued=queued,
        constraints=spec.get("constraints"),
        space=space,
    )
    if snapshot is not None and size is not None and not any(r.state == "running" for r in records):
        write_snapshot(snapshot, name, result, size)
    return result
