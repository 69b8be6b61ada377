"""The controllers' building blocks that need no cluster: slow-start batches of API calls, and
the expectations that keep a reconcile from acting on a cache older than its own writes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hypersweep.kube._expectations import Expectations, LatestWrites
from hypersweep.operators._batch import all_at_once, slow_start


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
