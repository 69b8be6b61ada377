"""Elastic PyTorch gangs on a real Ray cluster started on this machine: ``Replicas(n=(2, 4))``.

A head node that runs no trials and two worker nodes of 2 CPUs; each replica asks for one CPU,
so 4 replicas fill the cluster. Trials run real actors and real gloo collectives; replicas are
lost by SIGKILL of their actor's process, or with the node that holds them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import elastic_worlds, ray_test_cluster, read_markers, require_module

ray = require_module("ray")

import ray_objectives
import replica_objectives
from ray.cluster_utils import Cluster

import hypersweep as hs
from hypersweep.launchers import RayLauncher
from hypersweep.testing import wait_until

pytestmark = pytest.mark.slow

NODE = {"num_cpus": 2, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_test_cluster(NODE) as cluster:
        yield cluster


def _launcher(markers: Path, **options: Any) -> RayLauncher:
    return RayLauncher(env={"HYPERSWEEP_TEST_MARKERS": str(markers)}, **options)


def _round(markers: Path, epoch: int, world: int) -> list[dict[str, Any]]:
    """The markers of ``epoch`` run with ``world`` replicas, in rank order."""
    return sorted(
        read_markers(markers, f"elastic-e{epoch}-w{world}-r*"), key=lambda data: data["rank"]
    )


def test_a_killed_actor_shrinks_the_gang_which_then_grows_back(
    cluster: Cluster, markers: Path
) -> None:
    # Rank 3's actor SIGKILLs itself in epoch 2. The other 3 go on from the epoch-1
    # checkpoint in new actors, and after their first checkpoint the gang is 4 again.
    result = hs.tune(
        {"kill_rank": hs.choice([3]), "kill_epoch": 2, "epochs": 5},
        replica_objectives.elastic_train,
        metric="loss",
        n_trials=1,
        max_retries=0,  # an elastic shrink is no retry: with none allowed, the trial still ends
        replicas=hs.Replicas(n=(2, 4)),
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 1}, result.trials[0].error
    trial = result.trials[0]
    assert trial.attempts == 1
    worlds = elastic_worlds(markers)
    assert worlds[1] == {4}  # admitted with all 4: the cluster had room
    assert worlds[2] == {4, 3}  # cut short with 4, then run with 3
    assert worlds[3] == {4} and worlds[4] == {4}  # grown back
    shrunk, regrown = _round(markers, 2, 3), _round(markers, 3, 4)
    assert [data["rank"] for data in shrunk] == [0, 1, 2]
    # The variables say the new world too, and each round runs in new processes.
    for data in shrunk + regrown:
        assert data["env"]["WORLD_SIZE"] == str(data["world_size"]), data
        assert data["env"]["RANK"] == str(data["rank"]), data
    first = {data["pid"] for data in _round(markers, 1, 4)}
    assert len(first) == 4
    assert not first & {data["pid"] for data in shrunk}
    assert not {data["pid"] for data in shrunk} & {data["pid"] for data in regrown}
    assert trial.metrics["world_size"] == 4.0
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3, 4]


def test_below_min_the_gang_is_retried_whole_and_counts_a_retry(
    cluster: Cluster, markers: Path
) -> None:
    # 2 replicas, min 2: losing one leaves 1, so the trial is retried with the full world.
    result = hs.tune(
        {"kill_rank": hs.choice([1]), "kill_epoch": 1, "epochs": 3},
        replica_objectives.elastic_train,
        metric="loss",
        n_trials=1,
        max_retries=1,
        replicas=hs.Replicas(n=(2, 2)),
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 1}, result.trials[0].error
    assert result.trials[0].attempts == 2
    assert elastic_worlds(markers) == {0: {2}, 1: {2}, 2: {2}}


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ended(outcome: dict[str, Any]) -> str:
    """Why a sweep that should still run ended: its trials' states and errors."""
    result = outcome.get("result")
    if result is None:
        return "the sweep ended without a result"
    return "; ".join(f"trial {t.number} {t.state}: {t.error}" for t in result.trials)


def test_a_lost_node_shrinks_the_gang_which_grows_back_when_a_node_joins(
    cluster: Cluster, markers: Path
) -> None:
    """The node of rank 3 leaves: the 2 replicas left go on; a node joins: 4 again."""
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        outcome["result"] = hs.tune(
            {"epochs": hs.choice([5])},
            ray_objectives.elastic_node_train,
            metric="loss",
            n_trials=1,
            max_retries=0,
            replicas=hs.Replicas(n=(2, 4)),
            launcher=_launcher(markers),
        )

    driver = threading.Thread(target=sweep)
    driver.start()
    wait_until(
        lambda: len(read_markers(markers, "elastic-wait-r*")) == 4 or not driver.is_alive(),
        timeout=240,
    )
    assert driver.is_alive(), _ended(outcome)
    waiting = read_markers(markers, "elastic-wait-r*")
    rank3 = next(data for data in waiting if data["rank"] == 3)
    lost = {data["rank"] for data in waiting if data["node"] == rank3["node"]}
    victim = next(node for node in cluster.worker_nodes if node.node_id == rank3["node"])
    cluster.remove_node(victim, allow_graceful=False)
    # A node's worker processes outlive its killed raylet for a moment: were they told to go
    # on before they were gone, the round of 4 would finish whole. On a real lost node they
    # are gone with it.
    doomed = [data["pid"] for data in waiting if data["node"] == rank3["node"]]
    wait_until(lambda: not any(_alive(pid) for pid in doomed), timeout=60)
    (markers / "node-removed").write_text("1")
    survivors = 4 - len(lost)
    wait_until(
        lambda: len(_round(markers, 2, survivors)) == survivors or not driver.is_alive(),
        timeout=240,
    )
    assert driver.is_alive(), _ended(outcome)
    # The smaller round waits for room: give it a node, and say so once Ray has placed the
    # trial's spare bundles on it (no placement group left waiting).
    cluster.add_node(**NODE)
    wait_until(
        lambda: all(
            group["state"] in ("CREATED", "REMOVED")
            for group in ray.util.placement_group_table().values()
        ),
        timeout=240,
    )
    (markers / "capacity-back").write_text("1")
    driver.join(timeout=300)
    assert not driver.is_alive()

    result = outcome["result"]
    assert result.counts() == {"completed": 1}, result.trials[0].error
    trial = result.trials[0]
    assert trial.attempts == 1
    worlds = elastic_worlds(markers)
    assert worlds[2] == {4, survivors}
    assert worlds[3] == {4} and worlds[4] == {4}
    assert rank3["node"] not in {data["node"] for data in _round(markers, 2, survivors)}
    assert rank3["node"] not in {data["node"] for data in _round(markers, 3, 4)}
    assert trial.metrics["world_size"] == 4.0
    # Leave the cluster as Ray sees it settled: the removed node known to be gone.
    wait_until(lambda: sum(node["Alive"] for node in ray.nodes()) == 3, timeout=180)


def test_the_gang_starts_with_min_when_only_min_can_be_placed(
    cluster: Cluster, markers: Path
) -> None:
    # 2 CPUs per replica: the two nodes hold 2 replicas, not 4. A fixed gang of 4 would wait
    # for ever; the elastic one starts with 2 and ends with 2.
    result = hs.tune(
        {"kill_rank": hs.choice([-1]), "kill_epoch": -1, "epochs": 2},
        replica_objectives.elastic_train,
        metric="loss",
        n_trials=1,
        max_retries=0,
        replicas=hs.Replicas(n=(2, 4), cpus_per_replica=2),
        launcher=_launcher(markers),
    )
    assert result.counts() == {"completed": 1}, result.trials[0].error
    assert elastic_worlds(markers) == {0: {2}, 1: {2}}
    assert result.trials[0].metrics["world_size"] == 2.0
