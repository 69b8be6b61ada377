"""Checkpoints every rank of a multi-replica trial writes a part of, on a real S3 server.

Real gangs of worker processes (gloo process groups, ``torch.distributed.checkpoint``) write
their parts to SeaweedFS at once; the tests check what the bucket holds, that the checkpoint
is visible only once every part is complete (also when a rank is SIGKILLed mid-upload), and
that each rank restores its own part.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import storage_objectives
from conftest import require_seaweedfs

import hypersweep as hs
from hypersweep.orchestrator import _checkpoints, _rank_checkpoints
from hypersweep.testing._s3 import S3Server, s3_server

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require_seaweedfs()
    with s3_server(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running


@pytest.fixture
def s3(server: S3Server) -> S3Server:
    return server.new_bucket()


def _keys(s3: S3Server, prefix: str) -> list[str]:
    fs = s3.filesystem()
    root = f"{s3.bucket}/{prefix}".rstrip("/")
    return sorted(str(k)[len(root) + 1 :] for k in fs.find(root))


def _marker(markers: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((markers / f"{name}.json").read_text()))


def test_every_rank_writes_its_part_at_once_and_restores_its_own(
    s3: S3Server, markers: Path
) -> None:
    result = hs.tune(
        {"epochs": 3, "fail_rank": hs.choice([2])},
        storage_objectives.rank_parts_objects,
        metric="loss",
        n_trials=1,
        max_concurrent=1,
        max_retries=1,
        replicas=hs.Replicas(n=3),
        checkpoint_dir=f"{s3.url}/objects",
        checkpoint_storage_options=s3.storage_options(),
        keep_checkpoints=5,
    )
    (trial,) = result.trials
    assert trial.state == "completed", trial.error
    assert trial.attempts == 2
    # The parts were written at once: every rank began before any rank's call ended.
    # The retried gang's ranks each restored their own object of epoch 1.
    for rank in range(3):
        restored = _marker(markers, f"obj-a1-r{rank}")
        assert (restored["restored_rank"], restored["restored_epoch"]) == (rank, 1)
        assert restored["intact"]
    # One folder per checkpoint, each rank's part and marker in it, committed once.
    trial_dir = f"{s3.url}/objects/trial-00000"
    assert trial.checkpoint == f"{trial_dir}/checkpoint-000003"
    assert _keys(s3, "objects/trial-00000/checkpoint-000003") == [
        ".parts/rank-00000.json",
        ".parts/rank-00000.pkl",
        ".parts/rank-00001.json",
        ".parts/rank-00001.pkl",
        ".parts/rank-00002.json",
        ".parts/rank-00002.pkl",
        "checkpoint.json",
    ]
    options = s3.storage_options()
    for rank in range(3):
        part = _checkpoints.read_checkpoint(trial.checkpoint, options, rank=rank)
        assert (part["rank"], part["epoch"]) == (rank, 2)
    with pytest.raises(RuntimeError, match="no part of rank 3"):
        _checkpoints.read_checkpoint(trial.checkpoint, options, rank=3)


def test_a_rank_killed_mid_upload_never_leaves_a_checkpoint_to_restore(
    s3: S3Server, markers: Path
) -> None:
    pytest.importorskip("torch")
    result = hs.tune(
        {"epochs": 3, "kill_rank": hs.choice([1])},
        storage_objectives.rank_parts_dcp,
        metric="loss",
        n_trials=1,
        max_concurrent=1,
        max_retries=1,
        replicas=hs.Replicas(n=2),
        checkpoint_dir=f"{s3.url}/dcp",
        checkpoint_storage_options=s3.storage_options(),
        keep_checkpoints=5,
    )
    (trial,) = result.trials
    assert trial.state == "completed", trial.error
    assert trial.attempts == 2
    # Rank 1 died while its part of checkpoint 2 was uploading: the retried gang restored
    # checkpoint 1 (epoch 0), whole, on both ranks.
    first = f"{s3.url}/dcp/trial-00000/checkpoint-000001"
    for rank in range(2):
        restored = _marker(markers, f"dcp-a1-r{rank}")
        assert (restored["restored"], restored["start"]) == (first, 1)
        assert restored["intact"]
        assert restored["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "checkpoint.json"]
    # Checkpoint 2 was written again by the retried gang; the dead rank's leftovers are gone.
    keys = _keys(s3, "dcp/trial-00000")
    assert not [k for k in keys if "leftovers" in k], keys
    assert trial.checkpoint == f"{s3.url}/dcp/trial-00000/checkpoint-000003"
    # Every rank, of any world size, restores the whole merged folder.
    whole = _checkpoints.read_checkpoint(trial.checkpoint, s3.storage_options(), rank=5)
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(whole))
    assert _keys(s3, "dcp/trial-00000/checkpoint-000003") == [
        ".metadata",
        ".parts/rank-00000.json",
        ".parts/rank-00001.json",
        "__0_0.distcp",
        "__1_0.distcp",
        "checkpoint.json",
    ]


def test_rank_zero_names_the_ranks_whose_part_never_came(tmp_path: Path) -> None:
    """On a local folder too; a rank that does not call ``checkpoint(all_ranks=True)`` (or a
    part a killed gang left, with another token) is named, and nothing is committed."""
    where = _checkpoints.checkpoint_at(str(tmp_path / "trial-00000"), 1)
    _rank_checkpoints.write_part(where, {"r": 2}, rank=2, world_size=3, token="old")
    _rank_checkpoints.write_part(where, {"r": 0}, rank=0, world_size=3, token="now")
    with pytest.raises(TimeoutError, match=r"ranks \[1, 2\] did not write their part"):
        _rank_checkpoints.commit(where, world_size=3, token="now", step=0, timeout=0.3)
    assert _checkpoints.latest_checkpoint(str(tmp_path / "trial-00000")) is None
    _rank_checkpoints.write_part(where, {"r": 1}, rank=1, world_size=3, token="now")
    _rank_checkpoints.write_part(where, {"r": 2}, rank=2, world_size=3, token="now")
    _rank_checkpoints.commit(where, world_size=3, token="now", step=0, timeout=5)
    assert _checkpoints.latest_checkpoint(str(tmp_path / "trial-00000")) == where
    assert [_checkpoints.read_checkpoint(where, rank=r)["r"] for r in range(3)] == [0, 1, 2]
    # A trial's rank 0 waits 10 minutes (the README says so) before naming the missing ranks.
    timeout = inspect.signature(_rank_checkpoints.commit).parameters["timeout"].default
    assert timeout == 600.0
