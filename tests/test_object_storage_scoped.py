"""Keys scoped to one sweep's prefix, on a real S3 server (SeaweedFS identities).

A sweep whose checkpoint location is ``s3://bucket/team-a/...`` runs with a key that SeaweedFS
lets read, write and list only under ``bucket/team-a/``: its trials checkpoint and restore, and
cannot read, list or write another sweep's prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import storage_objectives
from conftest import require_seaweedfs

import hypersweep as hs
from hypersweep.testing._s3 import S3Server, prefix_identity, s3_server

pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, S3Server]]:
    """The server's administrator, and a key that reaches only ``hypersweep/team-a/``."""
    require_seaweedfs()
    identity, key, secret = prefix_identity("team-a", "hypersweep/team-a")
    with s3_server(tmp_path_factory.mktemp("seaweedfs"), identities=[identity]) as admin:
        yield admin, S3Server(admin.endpoint_url, key, secret, admin.bucket)


def test_a_trial_with_a_prefix_key_reaches_its_prefix_only(
    scoped: tuple[S3Server, S3Server], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, team_a = scoped
    other = f"{admin.url}/team-b/sweep/trial-00000/checkpoint-000001/checkpoint.json"
    admin.filesystem().pipe_file(other.removeprefix("s3://"), b"{}")
    monkeypatch.setenv("HYPERSWEEP_TEST_OTHER", other)
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        storage_objectives.reach_other_prefix,
        metric="loss",
        n_trials=1,
        checkpoint_dir=f"{team_a.url}/team-a/sweep",
        checkpoint_storage_options=team_a.storage_options(),
    )
    (trial,) = result.trials
    assert trial.state == "completed", trial.error
    assert trial.checkpoint == f"{admin.url}/team-a/sweep/trial-00000/checkpoint-000001"
    assert trial.metrics["own_restored"] == 1.0
    assert trial.metrics["read_other"] == 0.0
    assert trial.metrics["list_other"] == 0.0
    assert trial.metrics["write_other"] == 0.0
    # The administrator's key is not so limited: the denials are the scoped key's.
    assert admin.filesystem().cat_file(other.removeprefix("s3://")) == b"{}"
