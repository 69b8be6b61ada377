"""Weights & Biases: a run per trial, grouped by sweep; offline mode works."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypersweep.integrations._background import BackgroundWorker, require
from hypersweep.orchestrator._callbacks import Callback, SweepInfo, TrialInfo

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult


def run_id(sweep: str, number: int) -> str:
    """The W&B run id of a trial: stable, so a resumed trial continues its run."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep}-trial-{number}")[:128]


class WandbCallback(Callback):
    """Logs each trial as a W&B run in the group of its sweep.

    The run has the trial's config, every report at its step, the final metrics in its
    summary, and the state as ``summary["hypersweep.state"]``; a resumed trial continues its
    run (its id is ``<sweep>-trial-<n>``). The runs are created and logged on a background
    thread, so starting a W&B run never holds up the sweep.

    Args:
        project: the W&B project; defaults to the sweep's name.
        entity: the W&B entity (team or user).
        mode: ``"online"``, ``"offline"`` (sync later with ``wandb sync``) or ``"disabled"``;
            None uses W&B's default (``WANDB_MODE``).
        dir: where W&B writes its run files; defaults to the sweep's run folder.
        tags: tags of every run.
        init_timeout: seconds W&B may take to start a run (its service process) before the
            callback gives up logging for the sweep.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        tags: list[str] | None = None,
        init_timeout: float = 600.0,
    ) -> None:
        require("wandb", "wandb", "WandbCallback")
        self.init_timeout = init_timeout
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = dir
        self.tags = list(tags or [])
        self._worker = BackgroundWorker("wandb-callback")
        self._runs: dict[int, Any] = {}  # only the worker thread touches it
        self._sweep: SweepInfo | None = None

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        self._sweep = sweep

    def on_trial_start(self, trial: TrialInfo) -> None:
        self._worker.submit(lambda: self._start(trial))

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        values = dict(metrics)
        self._worker.submit(lambda: self._with_run(trial.number, "log", values, step=step))

    def on_checkpoint(self, trial: TrialInfo, path: str, step: int | None) -> None:
        self._worker.submit(lambda: self._summary(trial.number, {"hypersweep.checkpoint": path}))

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        self._worker.submit(lambda: self._end(trial.number, {"hypersweep.state": "paused"}, 0))

    def on_trial_interrupt(self, trial: TrialInfo) -> None:
        self._worker.submit(lambda: self._end(trial.number, {"hypersweep.state": "interrupted"}, 0))

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        summary: dict[str, Any] = {**metrics, "hypersweep.state": state}
        if error:
            summary["hypersweep.error"] = error[:5000]
        exit_code = 1 if state == "failed" else 0
        self._worker.submit(lambda: self._end(trial.number, summary, exit_code))

    def on_sweep_end(self, result: SweepResult) -> None:
        self._worker.flush()

    # --- the worker thread's side ------------------------------------------------------------

    def _start(self, trial: TrialInfo) -> None:
        import wandb

        from hypersweep.orchestrator._storage import default_run_dir

        directory = self.dir or str(default_run_dir(trial.sweep))
        self._runs[trial.number] = wandb.init(
            project=self.project or trial.sweep,
            entity=self.entity,
            mode=self.mode,  # type: ignore[arg-type]
            dir=directory,
            id=run_id(trial.sweep, trial.number),
            name=f"trial-{trial.number}",
            group=trial.sweep,
            tags=self.tags,
            config=trial.params,
            resume="allow",
            reinit="create_new",
            # W&B's 90 s to start its service process is not enough on a loaded machine; a
            # failed start would give up the logging of the whole sweep.
            settings=wandb.Settings(
                console="off", x_disable_stats=True, silent=True, init_timeout=self.init_timeout
            ),
        )

    def _with_run(self, number: int, method: str, *args: Any, **kwargs: Any) -> None:
        run = self._runs.get(number)
        if run is not None:
            getattr(run, method)(*args, **kwargs)

    def _summary(self, number: int, values: dict[str, Any]) -> None:
        run = self._runs.get(number)
        if run is not None:
            run.summary.update(values)

    def _end(self, number: int, summary: dict[str, Any], exit_code: int) -> None:
        run = self._runs.pop(number, None)
        if run is not None:
            run.summary.update(summary)
            run.finish(exit_code=exit_code)
