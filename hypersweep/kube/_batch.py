"""Many API calls at once, the way Kubernetes' own controllers make them.

A TrainJob's gang needs all of its pods, and creating them one after another costs one round
trip to the API server each. The Job and ReplicaSet controllers create pods in *slow-start*
batches instead (1, 2, 4, ... calls, each batch at once): a gang of ``n`` takes about
``log2(n)`` round trips, and when calls fail (a quota, an admission webhook refusing the
template), the first small batch fails alone rather than ``n`` calls at once. Deleting needs no
such care: every delete goes at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import TypeVar

T = TypeVar("T")


def slow_start(
    items: Sequence[T], call: Callable[[T], bool], executor: Executor, *, initial: int = 1
) -> list[T]:
    """Call ``call(item)`` for every item, in batches of doubling size, each batch concurrently.

    A call returns True when it did its work. After a batch in which a call returned False or
    raised, no further batch starts: the items whose call returned True are returned, or the
    first exception is raised once the whole batch has finished.
    """
    done: list[T] = []
    start, size = 0, min(initial, len(items))
    while size > 0:
        batch = items[start : start + size]
        ok = _wait([executor.submit(call, item) for item in batch])
        done.extend(item for item, succeeded in zip(batch, ok, strict=True) if succeeded)
        if not all(ok):
            break
        start += size
        size = min(2 * size, len(items) - start)
    return done


def all_at_once(items: Sequence[T], call: Callable[[T], object], executor: Executor) -> None:
    """Call ``call(item)`` for every item concurrently; raise the first exception after all end."""
    _wait([executor.submit(call, item) for item in items])


def _wait(futures: Sequence[Future[object]]) -> list[bool]:
    """Each future's result as a bool, once all are done; the first exception is raised."""
    error: BaseException | None = None
    results: list[bool] = []
    for future in futures:
        failure = future.exception()
        if failure is not None:
            error = error or failure
            results.append(False)
        else:
            results.append(bool(future.result()))
    if error is not None:
        raise error
    return results
