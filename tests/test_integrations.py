"""The built-in trackers against the real things: an MLflow server, TensorBoard, W&B files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import objectives
import pytest
from conftest import free_port

import hypersweep as hs
from hypersweep import testing
from hypersweep.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

ASHA = {"name": "asha", "min_resource": 1, "max_resource": 9}


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend on loopback."""
    with testing.mlflow_server(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_mlflow_parent_and_nested_runs_read_back(
    mlflow_server: str, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    tracker = MLflowCallback(tracking_uri=mlflow_server, tags={"team": "vision"})
    result = hs.tune(
        {"x": hs.uniform(0, 1), "model": {"width": hs.choice([8, 16])}},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        name="tracked",
        early_stopping=ASHA,
        callbacks=[tracker],
        verbose=False,
    )
    assert tracker.flush(timeout=120)  # tune() does not wait for the tracking server
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hypersweep.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "loss" and parent.data.params["mode"] == "min"
    best = result.best_trial
    assert best is not None
    assert parent.data.tags["hypersweep.best_trial"] == str(best.number)
    assert parent.data.metrics["best_loss"] == pytest.approx(best.value)
    children = {
        int(r.data.tags["hypersweep.trial"]): r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(t.number for t in result.trials)  # one run per trial
    for trial in result.trials:
        run = children[trial.number]
        assert run.data.tags["team"] == "vision"
        assert run.data.tags["hypersweep.state"] == trial.state
        assert run.info.status == "FINISHED"
        assert float(run.data.params["x"]) == pytest.approx(trial.config["x"])
        assert int(run.data.params["model.width"]) == trial.config["model"]["width"]
        history = client.get_metric_history(run.info.run_id, "loss")
        steps = sorted({m.step for m in history})
        assert steps == sorted(trial.intermediate_values)  # every report, at its step
        assert "hypersweep.checkpoint" in run.data.tags
        assert run.data.tags.get("hypersweep.best") == (
            "true" if trial.number == best.number else None
        )
    # The best trial was paused and promoted twice: its one run continued, ending completed.
    best_run = children[best.number]
    assert best_run.data.metrics["loss"] == pytest.approx(best.value)
    assert len(client.get_metric_history(best_run.info.run_id, "loss")) >= 10

    # A resumed sweep continues the same parent run and adds runs for its new trials only.
    again = hs.tune(
        {"x": hs.uniform(0, 1), "model": {"width": hs.choice([8, 16])}},
        objectives.quadratic,
        metric="loss",
        n_trials=8,
        max_concurrent=1,
        name="tracked",
        resume=True,
        callbacks=[{"mlflow": {"tracking_uri": mlflow_server, "wait": True}}],
        verbose=False,
    )
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if r.data.tags.get("hypersweep.role") == "sweep"]) == 1
    trial_runs = [r for r in runs if "hypersweep.trial" in r.data.tags]
    assert sorted(int(r.data.tags["hypersweep.trial"]) for r in trial_runs) == list(range(8))
    new_best = again.best_trial
    assert new_best is not None
    tagged = [
        r.data.tags["hypersweep.trial"]
        for r in trial_runs
        if r.data.tags.get("hypersweep.best") == "true"
    ]
    assert tagged == [str(new_best.number)]  # the old best lost its tag if it lost its place


EXITING_SWEEP = """
import sys, time
import hypersweep as hs
from hypersweep.integrations import MLflowCallback

def objective(config):
    return (config["x"] - 0.5) ** 2

class LoopEnd(hs.Callback):
    def on_sweep_end(self, result):
        self.at = time.monotonic()

class BusyServer(MLflowCallback):
    # A shared tracking server answers slower than this test's own: 0.2 s more per new run,
    # so the logging is surely still in flight when tune() returns.
    def _start_trial(self, trial):
        time.sleep(0.2)
        super()._start_trial(trial)

tracker, loop_end = BusyServer(tracking_uri=sys.argv[1], threads=2), LoopEnd()
hs.tune({"x": hs.uniform(0, 1)}, objective, metric="loss", n_trials=int(sys.argv[2]),
        name="exiting", callbacks=[loop_end, tracker], verbose=False)
returned = time.monotonic()
queued = sum(worker._queue.unfinished_tasks for worker in tracker._workers)
print(f"tune() returned {returned - loop_end.at:.3f} s after the loop; {queued} calls queued")
# no flush(): the interpreter's exit sends the rest
"""


@pytest.mark.slow
def test_mlflow_logging_left_at_tune_return_is_sent_at_exit(
    mlflow_server: str, run_dir: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    trials = 40
    script = tmp_path / "exiting.py"
    script.write_text(EXITING_SWEEP)
    done = subprocess.run(
        [sys.executable, str(script), mlflow_server, str(trials)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    # tune() did not wait for the server: its runs were still being sent when it returned.
    assert "calls queued" in done.stdout and " 0 calls queued" not in done.stdout, done.stdout
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("exiting")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = [r for r in runs if r.data.tags.get("hypersweep.role") == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert "hypersweep.best_trial" in parent[0].data.tags
    children = [r for r in runs if "hypersweep.trial" in r.data.tags]
    assert sorted(int(r.data.tags["hypersweep.trial"]) for r in children) == list(range(trials))
    for run in children:  # every run complete: status, state, params and the final metric
        assert run.info.status == "FINISHED" and run.info.end_time is not None
        assert run.data.tags["hypersweep.state"] == "completed"
        assert "x" in run.data.params and "loss" in run.data.metrics


@pytest.mark.slow
def test_mlflow_sends_three_requests_per_trial_and_every_run_arrives(
    mlflow_server: str, run_dir: Path, tmp_path: Path
) -> None:
    """A trial costs the floor of MLflow's REST API: create its run, one log-batch (params,
    metrics and tags together), one status update; counted in the server's access log."""
    from mlflow import MlflowClient

    trials = 20
    log = tmp_path / "mlflow-server.log"  # where testing.mlflow_server logs
    before = len(log.read_text().splitlines())
    tracker = MLflowCallback(tracking_uri=mlflow_server)
    hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.quadratic,
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        name="counted",
        callbacks=[tracker],
        verbose=False,
    )
    assert tracker.flush(timeout=600)
    lines = log.read_text().splitlines()[before:]
    per_run = [line for line in lines if "/api/2.0/mlflow/runs/" in line]
    # The sweep's own run adds a create, a get, a log-batch or two and an update, and the best
    # trial's run its tag; a fourth request per trial would be 20 more.
    assert len(per_run) <= 3 * trials + 8, len(per_run)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("counted")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if "hypersweep.trial" in r.data.tags]
    assert sorted(int(r.data.tags["hypersweep.trial"]) for r in children) == list(range(trials))
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["hypersweep.state"] == "completed"
        assert "x" in run.data.params and "loss" in run.data.metrics


def test_mlflow_outage_does_not_stop_the_sweep(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on this port: every request fails, the sweep still completes, and the
    # failure is logged once. (No retries: MLflow's backoff would take minutes.)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = MLflowCallback(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.ERROR, logger="hypersweep"):
        result = hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=3,
            callbacks=[tracker],
            verbose=False,
        )
        # This sweep's own logging (another test's callbacks may still be sending theirs).
        assert tracker.flush(timeout=120)
    assert result.counts() == {"completed": 3}
    failures = [r for r in caplog.records if "mlflow-callback: logging failed" in r.getMessage()]
    assert len(failures) == 1


def test_tensorboard_scalars_and_hparams_read_back(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import api_pb2, metadata

    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    result = hs.tune(
        {"x": hs.uniform(0, 1), "opt": hs.choice(["adam", "sgd"])},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        name="board",
        early_stopping=ASHA,
        callbacks=[TensorBoardCallback(log_dir=str(run_dir / "tb"))],
        verbose=False,
    )
    root = run_dir / "tb" / "board"
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    for trial in result.trials:
        run = f"trial-{trial.number}"
        by_step = {e.step: e.value for e in multiplexer.Scalars(run, "loss")}
        for step, value in trial.intermediate_values.items():
            assert by_step[step] == pytest.approx(value)
    content = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content["."][metadata.EXPERIMENT_TAG])
    assert sorted(h.name for h in experiment.hparam_infos) == ["opt", "x"]
    assert [m.name.tag for m in experiment.metric_infos] == ["loss"]
    for trial in result.trials:
        tags = content[f"trial-{trial.number}"]
        start = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["x"].number_value == pytest.approx(trial.config["x"])
        assert start.hparams["opt"].string_value == trial.config["opt"]
        end = metadata.parse_session_end_info_plugin_data(tags[metadata.SESSION_END_INFO_TAG])
        assert end.status == api_pb2.STATUS_SUCCESS


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B run file (``run-<id>.wandb``): W&B's LevelDB-style log.

    The W&B SDK no longer ships a Python reader, so this reads the documented layout: a 7-byte
    header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a CRC-32,
    a 2-byte length and a type (1 full, 2 first, 3 middle, 4 last).
    """
    import struct
    import zlib

    data = path.read_bytes()
    if len(data) < 7:
        return  # the header is not written yet
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    block, position, pending = 32 * 1024, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):
            break  # a record still being written (wandb-core appends from its own process)
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if length == 0 and kind == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == checksum, "corrupt record"
        pending += chunk
        if kind in (1, 4):
            yield pending
            pending = b""


@pytest.mark.slow
def test_wandb_offline_runs_read_back(run_dir: Path) -> None:
    from wandb.proto import wandb_internal_pb2

    result = hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=2,
        max_concurrent=2,
        name="bees",
        callbacks=[WandbCallback(mode="offline", dir=str(run_dir / "wb"))],
        verbose=False,
    )
    # wandb-core writes the run files in its own process: wait until both runs' exit records
    # are there (finish() has returned for both), then read them.
    deadline = time.monotonic() + 120
    while True:
        seen = _read_wandb_runs(run_dir / "wb" / "wandb", wandb_internal_pb2)
        if len(seen) == 2 and all(info["exit"] is not None for info in seen.values()):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert sorted(seen) == [0, 1]
    for trial in result.trials:
        info = seen[trial.number]
        assert info["group"] == "bees" and info["id"] == f"bees-trial-{trial.number}"
        assert info["steps"] == list(range(10))
        assert info["config"]["quality"] == pytest.approx(trial.config["quality"])
        assert info["summary"]["hypersweep.state"] == "completed"
        assert info["summary"]["loss"] == pytest.approx(trial.value)
        assert info["exit"] == 0


def _read_wandb_runs(folder: Path, protos: Any) -> dict[int, dict[str, Any]]:
    """What the offline run files under ``folder`` hold so far, by trial number."""
    seen: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("offline-run-*/run-*.wandb")):
        info: dict[str, Any] = {"steps": [], "config": {}, "summary": {}, "exit": None}
        for data in wandb_records(path):
            record = protos.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info.update(
                    group=record.run.run_group, name=record.run.display_name, id=record.run.run_id
                )
                for item in record.run.config.update:
                    info["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                info["steps"].append(record.history.step.num)
            elif kind == "config":
                for item in record.config.update:
                    info["config"][item.key] = json.loads(item.value_json)
            elif kind == "summary":
                for item in record.summary.update:
                    info["summary"][item.key] = json.loads(item.value_json)
            elif kind == "exit":
                info["exit"] = record.exit.exit_code
        if "name" in info:
            seen[int(str(info["name"]).removeprefix("trial-"))] = info
    return seen


def test_readme_tracking_overhead_quotes_the_saved_benchmark() -> None:
    """The README's overhead table and figures read as benchmarks/results/ holds them."""
    import importlib.util
    import re

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "tracking_overhead", root / "benchmarks" / "tracking_overhead.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    payload = json.loads((root / "benchmarks/results/tracking_overhead.json").read_text())
    readme = (root / "README.md").read_text()
    block = re.search(
        r"<!-- tracking-overhead -->\n(.*?)\n<!-- /tracking-overhead -->", readme, re.S
    )
    assert block is not None, "README.md: no <!-- tracking-overhead --> block"
    assert block.group(1) == bench.readme_table(payload)
    section = readme[block.end() : readme.index("## Kubernetes", block.end())]
    intro = readme[readme.index("**Overhead.**") : block.start()]
    loads = [load for row in payload["load_avg_1m_at_start"].values() for load in row]
    assert f"{min(loads):.1f} to {max(loads):.1f}" in " ".join(intro.split())
    med, ratios, rate = payload["median_s"], payload["ratios"], payload["runs_logged_per_s"]
    figures = [
        f"{ratios['mlflow_loop_vs_none']:.2f}x",
        f"{ratios['mlflow_tune_return_vs_none']:.2f}x",
        f"{ratios['mlflow_logged_vs_none']:.2f}x",
        f"{rate['floor_threads']:.1f} runs/s",
        f"{med['floor_threads'] * 1000 / payload['arguments']['floor_trials']:.0f} ms a run",
        f"{med['none_wall'] * 1000 / payload['trials_per_row']['none_wall']:.0f} ms a trial",
        f"twice a {med['none_wall']:.1f} s sweep",
        f"{payload['mlflow_requests_per_trial']:.1f} requests per trial",
        f"{ratios['mlflow_logged_per_trial_vs_floor_threads_per_run']:.2f}x",
        f"{rate['floor_threads_workers_4']:.1f} runs/s with 4",
        f"{ratios['optuna_mlflow_vs_optuna_none']:.2f}x",
        f"{ratios['optuna_mlflow_per_trial_vs_hypersweep_mlflow_logged_per_trial']:.2f}x",
    ]
    text = " ".join(section.split())
    assert [f for f in figures if f not in text] == []
    assert "**met for the sweep loop**" in text and ratios["mlflow_loop_vs_none"] <= 2
    assert "**not met until the server holds every run**" in text
    assert ratios["mlflow_logged_vs_none"] > 2
    # The run against a 4-worker server, quoted in the paragraph after the table.
    four = json.loads((root / "benchmarks/results/tracking_overhead_workers4.json").read_text())
    assert four["arguments"]["workers"] == 4
    loads = [load for row in four["load_avg_1m_at_start"].values() for load in row]
    med, ratios, rate = four["median_s"], four["ratios"], four["runs_logged_per_s"]
    figures = [
        f"{min(loads):.1f} to {max(loads):.1f}",
        f"{med['none_wall']:.1f} s without callbacks",
        f"sweep loop took {ratios['mlflow_loop_vs_none']:.2f}x",
        f"after {ratios['mlflow_logged_vs_none']:.2f}x ({rate['mlflow_logged']:.1f} runs/s",
        f"{ratios['mlflow_logged_per_trial_vs_floor_threads_per_run']:.2f}x the threaded floor",
        f"was {rate['floor_threads']:.1f} runs/s",
        f"only {rate['floor_sequential']:.1f} runs/s",
        f"took {ratios['optuna_mlflow_vs_optuna_none']:.2f}x Optuna",
        f"trials at {med['none_wall'] * 1000 / four['trials_per_row']['none_wall']:.1f} ms",
    ]
    assert [f for f in figures if f not in text] == []
