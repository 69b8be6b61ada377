"""Elastic PyTorch gangs, ``Replicas(n=(min, max))``: real processes and gloo collectives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import replica_objectives
from conftest import elastic_worlds

import hypersweep as hs
from hypersweep.orchestrator._spec import parse_spec


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
    worlds = elastic_worlds(markers)
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
    assert elastic_worlds(markers) == {0: {2}, 1: {2}, 2: {2}}


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


def test_an_elastic_range_makes_the_kubernetes_trial_an_elastic_trainjob() -> None:
    """``Replicas(n=(2, 4))`` on Kubernetes: the trial's TrainJob has Kubeflow's elasticPolicy
    (min 2, max 4) and its replicas run the entry point under torchrun, whose rendezvous
    variables the TrainJob controller sets (tests/operators/test_trainjob_elastic.py)."""
    from hypersweep.kube._jobspec import JobSpec
    from hypersweep.launchers._kubernetes import (
        ELASTIC_ENTRYPOINT,
        default_template,
        with_elastic_policy,
    )
    from hypersweep.operators._trainjob import Networking, rendezvous_env

    job = hs.Replicas(n=(2, 4)).to_job("s", backoff_limit=3)
    template = with_elastic_policy(default_template(job, "trainer:1"), job)
    spec = JobSpec.from_spec(template)
    assert spec.elastic is not None
    assert (spec.elastic.min_replicas, spec.elastic.max_replicas) == (2, 4)
    assert sum(r.replicas for r in spec.replica_specs) == 4
    master = template["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"] == list(ELASTIC_ENTRYPOINT)
    env = rendezvous_env(spec, "s-trial-0", "ns", 3, Networking())
    assert env["PET_NNODES"] == "2:4" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == "s-trial-0-master-0.s-trial-0.ns.svc:23456"
    # A template's own policy wins; a fixed gang gets none.
    own = {**template, "elasticPolicy": {"minReplicas": 3, "maxReplicas": 4}}
    assert with_elastic_policy(own, job)["elasticPolicy"]["minReplicas"] == 3
    conf = [{"key": "last_call_timeout", "value": "2"}]
    partial = with_elastic_policy({**template, "elasticPolicy": {"rdzvConf": conf}}, job)
    assert partial["elasticPolicy"] == {"rdzvConf": conf, "minReplicas": 2, "maxReplicas": 4}
    fixed = hs.Replicas(n=4).to_job("s", backoff_limit=3)
    assert "elasticPolicy" not in with_elastic_policy(default_template(fixed, "t"), fixed)
