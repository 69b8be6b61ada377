"""Elastic PyTorch gangs, ``Replicas(n=(min, max))``: real processes and gloo collectives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import replica_objectives

import hypersweep as hs
from hypersweep.orchestrator._spec import parse_spec


def _worlds(markers: Path) -> dict[int, set[int]]:
    """Epoch -> the world sizes it ran with (a round that was cut short included)."""
    seen: dict[int, set[int]] = {}
    for path in markers.glob("elastic-e*-w*-r*.json"):
        data = json.loads(path.read_text())
        seen.setdefault(data["epoch"], set()).add(data["world_size"])
    return seen


def _ranks(markers: Path, epoch: int, world: int) -> list[int]:
    found = markers.glob(f"elastic-e{epoch}-w{world}-r*.json")
    return sorted(json.loads(p.read_text())["rank"] for p in found)


def _pids(markers: Path, epoch: int, world: int) -> set[int]:
    found = markers.glob(f"elastic-e{epoch}-w{world}-r*.json")
    return {json.loads(p.read_text())["pid"] for p in found}


def test_a_lost_replica_shrinks_the_gang_which_then_grows_back(markers: Path) -> None:
    # 4 replicas; rank 3 dies in epoch 2. The other 3 go on from the epoch-1 checkpoint, and
    # after their first checkpoint (epoch 2) the gang is 4 again.
    result = hs.tune(
        {"kill_rank": hs.choice([3]), "kill_epoch": 2, "epochs": 5},
        replica_objectives.elastic_train,
        metric="loss",
        n_trials=1,
        max_retries=0,  # an elastic shrink is no retry: with none allowed, the trial still ends
        replicas=hs.Replicas(n=(2, 4)),
    )
    assert result.counts() == {"completed": 1}
    trial = result.trials[0]
    assert trial.attempts == 1
    worlds = _worlds(markers)
    assert worlds[0] == {4} and worlds[1] == {4}
    assert worlds[2] == {4, 3}  # cut short with 4, then run with 3
    assert _ranks(markers, 2, 3) == [0, 1, 2]
    assert worlds[3] == {4} and worlds[4] == {4}  # grown back
    # The variables say the new world too, so code that reads WORLD_SIZE/RANK follows it.
    for epoch, world in ((2, 3), (3, 4)):
        for path in markers.glob(f"elastic-e{epoch}-w{world}-r*.json"):
            data = json.loads(path.read_text())
            assert data["env"]["WORLD_SIZE"] == str(world), data
            assert data["env"]["RANK"] == str(data["rank"]), data
    # Each membership change restarted every replica's process, survivors included.
    first, shrunk, regrown = (_pids(markers, e, w) for e, w in ((0, 4), (2, 3), (3, 4)))
    assert len(first) == 4 and len(shrunk) == 3 and len(regrown) == 4
    assert not first & shrunk and not shrunk & regrown
    assert trial.metrics["world_size"] == 4.0
    reported = trial.intermediate_values
    assert sorted(reported) == [0, 1, 2, 3, 4]


def test_below_min_the_gang_restarts_whole_and_counts_a_retry(markers: Path) -> None:
    # 2 replicas, min 2: losing one leaves 1, so the trial is retried with the full world.
    result = hs.tune(
        {"kill_rank": hs.choice([1]), "kill_epoch": 1, "epochs": 3},
        replica_objectives.elastic_train,
        metric="loss",
        n_trials=1,
        max_retries=1,
        replicas=hs.Replicas(n=(2, 2)),
    )
    assert result.counts() == {"completed": 1}
    assert result.trials[0].attempts == 2
    assert _worlds(markers) == {0: {2}, 1: {2}, 2: {2}}


def test_elastic_ranges_are_checked_before_anything_starts() -> None:
    with pytest.raises(hs.ConfigError, match=r"replicas\.n: min 4 is above max 2"):
        hs.Replicas(n=(4, 2)).validated()
    with pytest.raises(hs.ConfigError, match=r"replicas\.n: an elastic range .* framework pytorch"):
        hs.Replicas(n=(2, 4), framework="tensorflow").validated()
    with pytest.raises(hs.ConfigError, match=r"replicas\.n\[0\]: expected an integer >= 1"):
        hs.Replicas(n=(0, 4)).validated()
    base = {"objective": "m:f", "metric": "loss", "n_trials": 1, "space": {"x": 1.0}}
    with pytest.raises(hs.ConfigError, match=r"replicas\.n: Input should be a valid integer"):
        parse_spec({**base, "replicas": {"n": [2, 4]}})  # a sweep file takes one number
    job = hs.Replicas(n=(2, 4)).validated().to_job("t", backoff_limit=1)
    assert (job.world_size, job.min_replicas) == (4, 2)
    assert type(job).from_dict(job.to_dict()) == job


def test_elastic_ranges_are_refused_by_the_kubernetes_launcher_before_it_starts(
    run_dir: Path,
) -> None:
    from hypersweep.launchers import KubernetesLauncher

    # A kubeconfig that does not exist: the range is refused before any connection is tried.
    launcher = KubernetesLauncher("default", kubeconfig=str(run_dir / "no-kubeconfig"))
    with pytest.raises(
        hs.ConfigError, match=r"replicas\.n: an elastic range .* not on KubernetesLauncher"
    ):
        hs.tune(
            {"kill_rank": hs.choice([0]), "kill_epoch": 0, "epochs": 1},
            replica_objectives.elastic_train,
            metric="loss",
            n_trials=1,
            replicas=hs.Replicas(n=(2, 4)),
            launcher=launcher,
        )
