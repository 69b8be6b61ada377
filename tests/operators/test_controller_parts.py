"""The controllers' building blocks that need no cluster: slow-start batches of API calls, and
the expectations that keep a reconcile from acting on a cache older than its own writes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hypersweep.kube._batch import all_at_once, slow_start
from hypersweep.kube._expectations import Expectations, HeldStatuses, LatestWrites
from hypersweep.operators._trainjob import urgent_status_change


@pytest.fixture
def executor() -> Any:
    with ThreadPoolExecutor(8) as pool:
        yield pool


def test_slow_start_doubles_its_batches_and_runs_each_batch_at_once(executor: Any) -> None:
    lock = threading.Lock()
    running = 0
    widest: list[int] = []

    def call(item: int) -> bool:
        nonlocal running
        with lock:
            running += 1
            widest.append(running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return True

    done = slow_start(list(range(7)), call, executor)
    assert done == list(range(7))  # batches of 1, 2, 4
    assert max(widest) == 4


def test_slow_start_stops_after_a_batch_that_failed(executor: Any) -> None:
    calls: list[int] = []

    def call(item: int) -> bool:
        calls.append(item)
        return item != 1  # the second batch (1, 2) has a failure

    assert sorted(slow_start(list(range(8)), call, executor)) == [0, 2]
    assert sorted(calls) == [0, 1, 2]

    def broken(item: int) -> bool:
        raise RuntimeError(f"call {item} failed")

    with pytest.raises(RuntimeError, match="call 0 failed"):
        slow_start([0, 1, 2], broken, executor)


def test_all_at_once_finishes_every_call_before_raising(executor: Any) -> None:
    finished: list[int] = []

    def call(item: int) -> None:
        if item == 0:
            raise ValueError("first")
        time.sleep(0.05)
        finished.append(item)

    with pytest.raises(ValueError, match="first"):
        all_at_once([0, 1, 2], call, executor)
    assert sorted(finished) == [1, 2]


def test_expectations_hold_a_key_until_its_writes_are_seen() -> None:
    expectations = Expectations()
    assert expectations.pending("ns/job") is None
    expectations.expect("ns/job", creations=2, deletions=["uid-a"])
    assert expectations.pending("ns/job") is not None
    expectations.created("ns/job")
    expectations.created("ns/job")
    assert expectations.pending("ns/job") is not None  # the deletion is not seen yet
    expectations.deleted("ns/job", "uid-a")
    assert expectations.pending("ns/job") is None
    expectations.expect("ns/job")  # nothing expected: nothing held
    assert expectations.pending("ns/job") is None


def test_expectations_expire() -> None:
    expectations = Expectations(ttl=0.05)
    expectations.expect("ns/job", creations=1)
    left = expectations.pending("ns/job")
    assert left is not None and 0 < left <= 0.05
    time.sleep(0.06)
    assert expectations.pending("ns/job") is None


def test_latest_writes_are_kept_until_the_cache_shows_that_version() -> None:
    writes = LatestWrites()
    mine = {"metadata": {"name": "job", "resourceVersion": "12"}, "status": {"restartCount": 1}}
    writes.wrote("ns/job", mine)
    writes.observed("ns/job", {"metadata": {"name": "job", "resourceVersion": "11"}})
    assert writes.get("ns/job") is mine  # an older version arrived: the cache is behind
    writes.observed("ns/job", {"metadata": {"name": "job", "resourceVersion": "12"}})
    assert writes.get("ns/job") is None  # the cache has it now

    short = LatestWrites(ttl=0.05)
    short.wrote("ns/job", mine)
    time.sleep(0.06)
    assert short.get("ns/job") is None  # after a relist the exact version may never come


def test_held_statuses_are_written_together_once_the_period_is_over() -> None:
    held = HeldStatuses(period=0.2)
    job = {"metadata": {"name": "job", "uid": "u1"}, "status": {}}
    created = {"conditions": [{"type": "Created", "status": "True"}]}
    left = held.hold("ns/job", "u1", created)
    assert left is not None and 0 < left <= 0.2
    # The next reconcile starts from the held status (no second "created"), the same job only.
    assert held.overlay("ns/job", job)["status"] == created
    assert held.overlay("ns/job", {**job, "metadata": {"uid": "u2"}})["status"] == {}
    running = {"conditions": [*created["conditions"], {"type": "Running", "status": "True"}]}
    left = held.hold("ns/job", "u1", running)
    assert left is not None and left <= 0.2  # the period counts from the first held change
    assert held.overlay("ns/job", job)["status"] == running
    time.sleep(left + 0.01)
    assert held.hold("ns/job", "u1", running) is None  # due: the caller writes it
    held.wrote("ns/job")
    assert held.overlay("ns/job", job)["status"] == {}  # nothing held after the write
    assert held.hold("ns/job", "u1", running) is not None  # the period starts again
    held.forget("ns/job")
    assert held.overlay("ns/job", job)["status"] == {}
    # A job about to end keeps its change however long: it is written with the end.
    held.keep("ns/job", "u1", running)
    time.sleep(0.25)
    assert held.overlay("ns/job", job)["status"] == running
    held.wrote("ns/job")
    assert held.overlay("ns/job", job)["status"] == {}


def test_a_job_ending_restarting_stalling_or_suspended_is_written_at_once() -> None:
    def status(*true: str, **fields: Any) -> dict[str, Any]:
        return {"conditions": [{"type": t, "status": "True"} for t in true], **fields}

    created = status("Created", restartCount=0)
    # Created, counted and running can wait for the batch period...
    assert not urgent_status_change({}, created)
    assert not urgent_status_change(created, status("Created", "Running", restartCount=0))
    assert not urgent_status_change(
        created, {**created, "replicaStatuses": {"Worker": {"active": 4}}}
    )
    # ...what the sweep and users act on cannot.
    for urgent in ("Succeeded", "Failed", "Suspended", "Restarting", "Stalled"):
        assert urgent_status_change(created, status("Created", urgent, restartCount=0)), urgent
    assert urgent_status_change(created, status("Created", restartCount=1))
    assert urgent_status_change(created, {**created, "completionTime": "2026-12-02T00:00:00Z"})
    assert urgent_status_change(status("Suspended"), status())  # resumed


def test_a_deleted_trainjob_leaves_nothing_of_itself_in_the_controller() -> None:
    """What the TrainJob controller keeps per job (its parsed spec, the status it holds back,
    its last write, when its outcome was seen) goes with the job's deletion, so the
    controller's memory follows the live jobs, not every job a sweep ever ran."""
    import datetime as dt

    from hypersweep.kube._client import Kube
    from hypersweep.kube._recorder import EventRecorder
    from hypersweep.operators._trainjob import OUTCOME_ANNOTATION, TrainJobController

    kube = Kube(None)  # nothing here reaches an API server
    controller = TrainJobController(kube, EventRecorder(kube), watch_nodes=False)
    job = {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "namespace": "ns",
            "name": "trial-1",
            "uid": "u1",
            "generation": 1,
            "resourceVersion": "7",
            "annotations": {OUTCOME_ANNOTATION: "pruned"},
        },
        "spec": {
            "framework": "pytorch",
            "replicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "template": {"spec": {"containers": [{"name": "pytorch", "image": "x"}]}},
                }
            },
        },
    }
    controller._spec(job)
    controller._outcome_seen(job, dt.datetime.now(dt.timezone.utc))
    controller._held.keep("ns/trial-1", "u1", {"phase": "Running"})
    controller._written.wrote("ns/trial-1", job)
    controller._job_seen(
        "MODIFIED", {**job, "metadata": {**job["metadata"], "resourceVersion": "6"}}
    )
    assert controller._specs and controller._outcomes_seen and controller._written.get("ns/trial-1")
    controller._job_seen("DELETED", job)
    assert controller._specs == {} and controller._outcomes_seen == {}
    assert controller._written.get("ns/trial-1") is None
    assert controller._held.overlay("ns/trial-1", job) == job  # nothing held back any more
    controller.stop()
