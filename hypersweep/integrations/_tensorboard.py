"""TensorBoard: an event folder per trial with step scalars, and the HParams plugin's data."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersweep.integrations._background import require
from hypersweep.orchestrator._callbacks import Callback, SweepInfo, TrialInfo

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult


def _hparam_value(value: Any) -> Any:
    """The HParams plugin keeps numbers, strings and booleans; anything else as text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardCallback(Callback):
    """Writes TensorBoard event files: ``log_dir/<sweep>/trial-<n>/`` per trial.

    Each trial's folder has its reports as scalars at their steps, its final metrics, and the
    HParams plugin's session data (config at the start, status at the end); the sweep's folder
    has the HParams experiment (every parameter and metric), so TensorBoard's HParams view
    compares the trials. Written with TensorBoard's own writer (no TensorFlow needed); a
    resumed trial adds a new event file to its folder.

    Args:
        log_dir: the root folder; defaults to ``./hypersweep-runs/<sweep>/tensorboard`` (the
            sweep's run folder).
    """

    def __init__(self, log_dir: str | None = None) -> None:
        require("tensorboard", "tensorboard", "TensorBoardCallback")
        self.log_dir = log_dir
        self._root = Path(".")
        self._writers: dict[int, Any] = {}
        self._steps: dict[int, int] = {}
        self._params: dict[str, set[type]] = {}
        self._metrics: set[str] = set()

    def on_sweep_start(self, sweep: SweepInfo) -> None:
        from hypersweep.orchestrator._storage import default_run_dir

        base = Path(self.log_dir) / sweep.name if self.log_dir else None
        self._root = base or default_run_dir(sweep.name) / "tensorboard"
        self._root.mkdir(parents=True, exist_ok=True)

    def on_trial_start(self, trial: TrialInfo) -> None:
        from tensorboard.plugins.hparams import plugin_data_pb2

        writer = self._writer(trial.number)
        info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time(), group_name="")
        for name, raw in trial.params.items():
            value = _hparam_value(raw)
            self._params.setdefault(name, set()).add(type(value))
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = float(value)
            else:
                info.hparams[name].string_value = value
        self._write_plugin(writer, "session_start_info", info, step=0)

    def on_trial_result(self, trial: TrialInfo, step: int, metrics: Mapping[str, float]) -> None:
        self._steps[trial.number] = max(step, self._steps.get(trial.number, step))
        self._scalars(self._writer(trial.number), metrics, step)

    def on_trial_pause(self, trial: TrialInfo, step: int) -> None:
        self._close(trial.number)

    def on_trial_interrupt(self, trial: TrialInfo) -> None:
        self._close(trial.number)

    def on_trial_end(
        self,
        trial: TrialInfo,
        state: str,
        value: float | None,
        metrics: Mapping[str, float],
        error: str | None,
    ) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        writer = self._writer(trial.number)
        step = self._steps.get(trial.number, 0)
        self._scalars(writer, metrics, step)
        status = {
            "completed": api_pb2.STATUS_SUCCESS,
            "pruned": api_pb2.STATUS_SUCCESS,  # stopped early is a normal end
            "failed": api_pb2.STATUS_FAILURE,
        }[state]
        info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self._write_plugin(writer, "session_end_info", info, step=step)
        self._close(trial.number)

    def on_sweep_end(self, result: SweepResult) -> None:
        from tensorboard.plugins.hparams import api_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        for number in list(self._writers):
            self._close(number)
        experiment = api_pb2.Experiment(time_created_secs=time.time())
        for name, types in sorted(self._params.items()):
            kind = api_pb2.DATA_TYPE_STRING
            if types <= {int, float}:
                kind = api_pb2.DATA_TYPE_FLOAT64
            elif types == {bool}:
                kind = api_pb2.DATA_TYPE_BOOL
            experiment.hparam_infos.add(name=name, type=kind)
        for tag in sorted(self._metrics):
            experiment.metric_infos.add(name=api_pb2.MetricName(tag=tag))
        writer = EventFileWriter(str(self._root))
        self._write_plugin(writer, "experiment", experiment, step=0)
        writer.close()

    # --- writing -------------------------------------------------------------------------------

    def _writer(self, number: int) -> Any:
        writer = self._writers.get(number)
        if writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            writer = EventFileWriter(str(self._root / f"trial-{number}"))
            self._writers[number] = writer
        return writer

    def _close(self, number: int) -> None:
        writer = self._writers.pop(number, None)
        if writer is not None:
            writer.close()

    def _scalars(self, writer: Any, metrics: Mapping[str, float], step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary()
        for tag, value in metrics.items():
            self._metrics.add(tag)
            summary.value.add(tag=tag, simple_value=float(value))
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write_plugin(self, writer: Any, kind: str, message: Any, step: int) -> None:
        """One of the HParams plugin's summaries (experiment, session start or end)."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2

        data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION)
        getattr(data, kind).CopyFrom(message)
        tag = {
            "experiment": metadata.EXPERIMENT_TAG,
            "session_start_info": metadata.SESSION_START_INFO_TAG,
            "session_end_info": metadata.SESSION_END_INFO_TAG,
        }[kind]
        summary = summary_pb2.Summary()
        summary.value.add(
            tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
        )
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
