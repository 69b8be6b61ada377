"""Checkpoints on object storage: a real S3 server (SeaweedFS) reached through s3fs.

Every sweep here checkpoints to ``s3://<bucket>/...`` only; the tests check what the bucket
holds, that nothing is written to a local checkpoint folder, and that pausing, promotion, PBT
cloning, retries after SIGKILL and a Ray cluster work through the bucket alone.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import objectives
import pytest
import storage_objectives
from conftest import PYTHON, python_env, require_seaweedfs

import hypersweep as hs
from hypersweep.orchestrator import _checkpoints
from hypersweep.strategies import PBT
from hypersweep.testing._s3 import S3Server, s3_server

pytest.importorskip("s3fs")

ASHA = {"name": "asha", "min_resource": 1, "max_resource": 9, "reduction_factor": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the module; each test gets its own bucket."""
    require_seaweedfs()
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running


@pytest.fixture
def s3(server: S3Server) -> S3Server:
    return server.new_bucket()


def _keys(s3: S3Server, prefix: str = "") -> list[str]:
    fs = s3.filesystem()
    root = f"{s3.bucket}/{prefix}".rstrip("/")
    return sorted(str(k)[len(s3.bucket) + 1 :] for k in fs.find(root))


def _no_local_checkpoints(run_dir: Path) -> None:
    assert not list(run_dir.rglob("checkpoint.json")), "a checkpoint was written locally"


def test_the_build_script_pins_the_version_the_fixture_expects() -> None:
    from hypersweep.testing._s3 import SEAWEEDFS_VERSION

    script = (Path(__file__).parents[1] / "hack" / "seaweedfs" / "build.sh").read_text()
    assert f'SEAWEEDFS_VERSION="{SEAWEEDFS_VERSION}"' in script


def test_checkpoints_in_the_bucket_commit_prune_copy_and_delete(s3: S3Server) -> None:
    options = s3.storage_options()
    trial = _checkpoints.trial_checkpoint_dir(f"{s3.url}/sweep", 3)
    assert _checkpoints.latest_checkpoint(trial, options) is None
    state = {"weights": np.arange(10_000, dtype=np.float32), "step": 0}
    paths = [
        _checkpoints.write_checkpoint(trial, {**state, "step": i}, step=i, keep=2, options=options)
        for i in range(3)
    ]
    assert paths[-1] == f"{s3.url}/sweep/trial-00003/checkpoint-000003"
    # keep_checkpoints=2: the first is gone from the bucket, marker and data alike.
    assert _keys(s3, "sweep") == [
        "sweep/trial-00003/checkpoint-000002/checkpoint.json",
        "sweep/trial-00003/checkpoint-000002/state.pkl",
        "sweep/trial-00003/checkpoint-000003/checkpoint.json",
        "sweep/trial-00003/checkpoint-000003/state.pkl",
    ]
    assert _checkpoints.latest_checkpoint(trial, options) == paths[-1]
    restored = _checkpoints.read_checkpoint(paths[-1], options)
    assert restored["step"] == 2 and np.array_equal(restored["weights"], state["weights"])
    assert _checkpoints.checkpoint_step(paths[-1], options) == 2
    # A PBT clone copies inside the store.
    other = _checkpoints.trial_checkpoint_dir(f"{s3.url}/sweep", 4)
    copied = _checkpoints.copy_checkpoint(paths[-1], other, options)
    assert _checkpoints.latest_checkpoint(other, options) == copied
    assert _checkpoints.read_checkpoint(copied, options)["step"] == 2
    # Deleting a sweep's prefix, keeping the best trial's folder.
    _checkpoints.delete_location(f"{s3.url}/sweep", options, keep="trial-00004")
    assert {k.split("/")[1] for k in _keys(s3, "sweep")} == {"trial-00004"}


def test_a_folder_checkpoint_uploads_as_a_unit_and_restores_as_a_folder(
    s3: S3Server, tmp_path: Path
) -> None:
    options = s3.storage_options()
    folder = tmp_path / "hf"
    (folder / "shards").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden": 8}')
    np.save(folder / "shards" / "rank-0.npy", np.ones(100))
    trial = _checkpoints.trial_checkpoint_dir(s3.url, 0)
    path = _checkpoints.write_checkpoint(trial, str(folder), step=5, keep=1, options=options)
    assert _keys(s3) == [
        "trial-00000/checkpoint-000001/checkpoint.json",
        "trial-00000/checkpoint-000001/config.json",
        "trial-00000/checkpoint-000001/shards/rank-0.npy",
    ]
    restored = Path(_checkpoints.read_checkpoint(path, options))
    assert restored.is_dir() and not str(restored).startswith("s3")
    assert (restored / "config.json").read_text() == '{"hidden": 8}'
    assert np.array_equal(np.load(restored / "shards" / "rank-0.npy"), np.ones(100))


HALF_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from pathlib import Path
    from hypersweep.orchestrator import _checkpoints
    url, endpoint, key, secret, folder = sys.argv[1:]
    options = {{"endpoint_url": endpoint, "key": key, "secret": secret}}
    trial = _checkpoints.trial_checkpoint_dir(url, 0)
    _checkpoints.write_checkpoint(trial, {{"step": 1}}, step=1, keep=5, options=options)
    print("first", flush=True)
    # The second checkpoint is a folder of {files} files of 4 MiB: killed while uploading.
    Path(folder).mkdir()
    for i in range({files}):
        np.save(Path(folder) / f"part-{{i:03d}}.npy", np.full(2**19, i, dtype=np.float64))
    _checkpoints.write_checkpoint(trial, folder, step=2, keep=5, options=options)
    print("second", flush=True)
    """
)


def test_a_half_written_checkpoint_is_never_restored(s3: S3Server, tmp_path: Path) -> None:
    options = s3.storage_options()
    script = tmp_path / "writer.py"
    script.write_text(HALF_WRITER.format(files=60))
    writer = subprocess.Popen(
        [
            PYTHON,
            str(script),
            s3.url,
            s3.endpoint_url,
            s3.access_key,
            s3.secret_key,
            str(tmp_path / "folder"),
        ],
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "first"
    deadline = time.monotonic() + 120
    while not any(k.startswith("trial-00000/checkpoint-000002/") for k in _keys(s3)):
        assert writer.poll() is None, "the writer ended before it could be killed"
        assert time.monotonic() < deadline, "the second checkpoint never started uploading"
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    second = [k for k in _keys(s3) if k.startswith("trial-00000/checkpoint-000002/")]
    assert second and "trial-00000/checkpoint-000002/checkpoint.json" not in second
    trial = _checkpoints.trial_checkpoint_dir(s3.url, 0)
    latest = _checkpoints.latest_checkpoint(trial, options)
    assert latest == f"{s3.url}/trial-00000/checkpoint-000001"
    assert _checkpoints.read_checkpoint(latest, options) == {"step": 1}
    # The next checkpoint goes after it, and removes the unfinished folder.
    newest = _checkpoints.write_checkpoint(trial, {"step": 3}, step=3, keep=5, options=options)
    assert newest == f"{s3.url}/trial-00000/checkpoint-000003"
    assert not any(k.startswith("trial-00000/checkpoint-000002/") for k in _keys(s3))


def test_asha_pauses_and_promotes_through_the_bucket(
    s3: S3Server, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = run_dir / "markers"
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(markers))
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        early_stopping=ASHA,
        name="asha-s3",
        checkpoint_dir=f"{s3.url}/asha",
        checkpoint_storage_options=s3.storage_options(),
        keep_checkpoints=1,
    )
    best = next(t for t in result.trials if objectives.ASHA_QUALITY[t.number] == 0.9)
    assert best.state == "completed" and max(best.intermediate_values) == 9
    starts = [int(s) for s in (markers / f"starts-{best.number}").read_text().split()]
    assert starts == [0, 2, 4]  # resumed twice, from the bucket
    assert best.checkpoint is not None and best.checkpoint.startswith(f"{s3.url}/asha/")
    assert result.counts() == {"completed": 1, "pruned": 5}
    # keep_checkpoints=1: one complete checkpoint per trial is left in the bucket.
    markers_in_bucket = [k for k in _keys(s3, "asha") if k.endswith("checkpoint.json")]
    assert len(markers_in_bucket) == 6
    _no_local_checkpoints(run_dir)


def test_pbt_clones_through_the_bucket(s3: S3Server, run_dir: Path) -> None:
    result = hs.tune(
        {"lr": hs.loguniform(0.01, 1.0)},
        objectives.lr_schedule_toy,
        metric="loss",
        n_trials=16,
        max_concurrent=4,
        strategy="random",
        seed=1,
        early_stopping=PBT(perturbation_interval=4, quantile_fraction=0.25, seed=1),
        checkpoint_dir=f"{s3.url}/pbt",
        checkpoint_storage_options=s3.storage_options(),
    )
    clones = [t for t in result.trials if t.parent is not None]
    assert clones, "PBT never exploited a better trial"
    stored = hs.load(result.name)
    for clone in clones:
        assert clone.parent != clone.number
        if clone.intermediate_values:
            assert min(clone.intermediate_values) > 0  # continued from the parent's state
    sources = [t.system_attrs.get("hypersweep:cloned_from") for t in _frozen(stored.name)]
    assert any(s and s.startswith(f"{s3.url}/pbt/trial-") for s in sources)
    _no_local_checkpoints(run_dir)


def _frozen(name: str) -> list:
    import optuna

    from hypersweep.orchestrator._storage import open_storage

    study = optuna.load_study(study_name=name, storage=open_storage(None, name))
    return study.get_trials(deepcopy=False)


DRIVER = textwrap.dedent(
    """
    import os
    import hypersweep as hs
    import objectives

    hs.tune({{"x": hs.uniform(0, 1)}}, objectives.asha_curve, metric="loss",
            n_trials=6, max_concurrent=1, name="asha-kill", resume=True, verbose=False,
            early_stopping={{"name": "asha", "min_resource": 1, "max_resource": 9,
                            "reduction_factor": 3}},
            checkpoint_dir="{url}")
    """
)


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_resumes_from_the_bucket(s3: S3Server, run_dir: Path) -> None:
    """Credentials from the environment (AWS_*), as on a cluster."""
    markers = run_dir / "markers"
    env = {
        **python_env(),
        **s3.env(),
        "HYPERSWEEP_TEST_MARKERS": str(markers),
        "HYPERSWEEP_TEST_STEP": "0.1",
    }
    script = run_dir / "driver.py"
    script.write_text(DRIVER.format(url=f"{s3.url}/kill"))
    driver = subprocess.Popen([PYTHON, str(script)], env=env)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline
        try:
            if hs.load("asha-kill").counts().get("paused", 0) >= 2:
                break
        except hs.ConfigError:
            pass
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert subprocess.run([PYTHON, str(script)], env=env, timeout=300).returncode == 0
    result = hs.load("asha-kill")
    assert result.counts() == {"completed": 1, "pruned": 5}
    best = min(result.trials, key=lambda t: t.value if t.value is not None else 9)
    assert objectives.ASHA_QUALITY[best.number] == 0.9
    starts = [int(s) for s in (markers / f"starts-{best.number}").read_text().split()]
    assert starts[-1] == 4  # promoted from its rung-3 checkpoint, read from the bucket
    _no_local_checkpoints(run_dir)


def test_an_asynchronous_checkpoint_returns_before_its_upload_ends(
    s3: S3Server, run_dir: Path
) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        storage_objectives.asynchronous_probe,
        metric="loss",
        n_trials=1,
        checkpoint_dir=f"{s3.url}/async",
        checkpoint_storage_options=s3.storage_options(),
    )
    (trial,) = result.trials
    assert trial.state == "completed", trial.error
    metrics = trial.metrics
    assert metrics["visible_at_return"] == 0.0  # still uploading when checkpoint() returned
    assert metrics["snapshot_kept"] == 1.0  # the state as it was at the call
    assert metrics["waited"] == 1.0
    # Both are in the bucket, complete, and the driver recorded the last one.
    assert trial.checkpoint == f"{s3.url}/async/trial-00000/checkpoint-000002"
    done = [k for k in _keys(s3, "async") if k.endswith("checkpoint.json")]
    assert len(done) == 2


def test_a_folder_checkpoint_resumes_a_retried_trial_from_the_bucket(
    s3: S3Server, run_dir: Path
) -> None:
    """A trial is paused by ASHA after its folder checkpoint and resumed from the bucket."""
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        storage_objectives.folder_checkpoint,
        metric="loss",
        n_trials=4,
        max_concurrent=1,
        early_stopping={
            "name": "asha",
            "min_resource": 1,
            "max_resource": 3,
            "reduction_factor": 3,
        },
        checkpoint_dir=f"{s3.url}/folders",
        checkpoint_storage_options=s3.storage_options(),
    )
    assert result.counts().get("failed", 0) == 0, [t.error for t in result.trials]
    resumed = [t for t in result.trials if max(t.intermediate_values, default=-1) == 3]
    assert resumed, "no trial ran to its end"
    # Some trial was paused and promoted: it restarted past step 0 from its restored folder
    # (the objective checks the restored shards are those of its last step).
    assert any(h.get("start", 0) > 0 for t in result.trials for h in t.history)
    assert any(f"{s3.url}/folders/trial-" in (t.checkpoint or "") for t in resumed)
    keys = _keys(s3, "folders")
    assert any(k.endswith("/shards/rank-1.npy") for k in keys)
    _no_local_checkpoints(run_dir)


def test_a_sweep_file_takes_a_bucket_and_its_options(s3: S3Server, run_dir: Path) -> None:
    from hypersweep.orchestrator._spec import parse_spec

    settings = parse_spec(
        {
            "objective": "objectives:quadratic",
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "metric": "loss",
            "n_trials": 1,
            "checkpoint_dir": f"{s3.url}/file",
            "checkpoint_storage_options": {"endpoint_url": s3.endpoint_url},
        },
        "sweep.yaml",
    ).to_settings()
    assert settings.checkpoint_dir == f"{s3.url}/file"
    assert settings.checkpoint_storage_options == {"endpoint_url": s3.endpoint_url}
    with pytest.raises(hs.ConfigError, match="checkpoint_storage_options: expected a mapping"):
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
            checkpoint_dir=f"{s3.url}/x",
            checkpoint_storage_options=["endpoint_url"],  # type: ignore[arg-type]
        )


STREAMER = textwrap.dedent(
    """
    import resource, sys, numpy as np
    from hypersweep.orchestrator import _checkpoints
    url, endpoint, key, secret = sys.argv[1:]
    options = {"endpoint_url": endpoint, "key": key, "secret": secret}
    state = {"weights": np.ones(2**28 // 8)}  # 256 MiB
    trial = _checkpoints.trial_checkpoint_dir(url, 0)
    # A small checkpoint first: the S3 client's imports and connections are not the state's.
    _checkpoints.write_checkpoint(trial, {"warm": 1}, step=0, keep=1, options=options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path = _checkpoints.write_checkpoint(trial, state, step=0, keep=1, options=options)
    saved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del state
    restored = _checkpoints.read_checkpoint(path, options)
    assert restored["weights"].sum() == 2**28 // 8
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((saved - before) // 1024, (loaded - before) // 1024)
    """
)


def test_a_large_state_streams_to_and_from_the_bucket(s3: S3Server, tmp_path: Path) -> None:
    """Peak memory while saving or restoring 256 MiB grows by a few 16 MiB parts, not by
    the state (a whole copy would add 256 MiB)."""
    script = tmp_path / "streamer.py"
    script.write_text(STREAMER)
    out = subprocess.run(
        [PYTHON, str(script), s3.url, s3.endpoint_url, s3.access_key, s3.secret_key],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    saving_mib, loading_mib = int(out[0]), int(out[1])
    assert saving_mib < 128, f"saving 256 MiB raised peak memory by {saving_mib} MiB"
    # Restoring frees the saved state first; the restored state is the only new copy.
    assert loading_mib < 128, f"restoring raised peak memory by {loading_mib} MiB"


def test_a_marker_committed_by_another_process_is_read_despite_cached_listings(
    s3: S3Server,
) -> None:
    """A reader that listed the trial while a checkpoint was unfinished (s3fs then caches the
    listing of every folder it walked) still reads the checkpoint once another writer commits
    it, as the driver and a worker that restores trial after trial do."""
    options = s3.storage_options()
    trial = _checkpoints.trial_checkpoint_dir(f"{s3.url}/cache", 0)
    _checkpoints.write_checkpoint(trial, {"step": 1}, step=1, keep=5, options=options)
    writer = s3.filesystem()  # another process's client: none of the reader's cache
    unfinished = f"{s3.bucket}/cache/trial-00000/checkpoint-000002"
    writer.pipe_file(f"{unfinished}/state.pkl", pickle.dumps({"step": 2}))
    latest = _checkpoints.latest_checkpoint(trial, options)  # lists, caches both folders
    assert latest == f"{s3.url}/cache/trial-00000/checkpoint-000001"
    writer.pipe_file(f"{unfinished}/checkpoint.json", b'{"step": 2, "kind": "object"}')
    second = f"{s3.url}/cache/trial-00000/checkpoint-000002"
    assert _checkpoints.checkpoint_step(second, options) == 2
    assert _checkpoints.read_checkpoint(second, options) == {"step": 2}
    assert _checkpoints.latest_checkpoint(trial, options) == second
