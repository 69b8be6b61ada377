"""What a controller waits to see in its caches after its own writes.

A controller reads from informer caches, which lag the API server by a watch event. Right after
it creates a job's pods, a reconcile that runs before the cache shows them would create them
again (and fail), count a partial gang in the status, or delete a pod again that is already
going. client-go's controllers guard against this with *expectations* (the Job and ReplicaSet
controllers' ``ControllerExpectations``): before writing, the controller records what it
expects to observe; the informer's handlers tick the observations off; a reconcile of a key
whose expectations are not met waits for them (the events that meet them queue the key again).
Expectations expire, so that a watch event lost for good never stalls a job for longer.

:class:`Expectations` does that for pod creations (counted: a new pod's uid is unknown before it
exists) and deletions (by uid). :class:`LatestWrites` does the same for the controller's own
status writes: the object the API server returned, until the cache holds that version, so a
reconcile never decides on a status older than its own last write, without reading the object
from the API server each time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypersweep.kube._client import JsonDict

#: Seconds after which unmet expectations no longer hold a reconcile back.
TTL = 30.0


@dataclass
class _Expected:
    creations: int = 0
    deletions: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.monotonic)


class Expectations:
    """Pod creations and deletions of each controller key not yet seen by the informer.

    Thread-safe: reconciles record them, informer handlers observe them.
    """

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._expected: dict[str, _Expected] = {}

    def expect(self, key: str, *, creations: int = 0, deletions: Iterable[str] = ()) -> None:
        """Record writes about to be made (before making them: their events may come first)."""
        uids = set(deletions)
        if not creations and not uids:
            return
        with self._lock:
            expected = self._expected.setdefault(key, _Expected())
            expected.creations += creations
            expected.deletions.update(uids)
            expected.since = time.monotonic()

    def created(self, key: str) -> None:
        """One expected pod was seen (or its creation failed: it will never be seen)."""
        with self._lock:
            expected = self._expected.get(key)
            if expected is not None and expected.creations > 0:
                expected.creations -= 1

    def deleted(self, key: str, uid: str) -> None:
        """The pod ``uid`` was seen going (or its deletion failed)."""
        with self._lock:
            expected = self._expected.get(key)
            if expected is not None:
                expected.deletions.discard(uid)

    def pending(self, key: str) -> float | None:
        """None when the key's expectations are met (or expired); else the seconds until they
        expire."""
        with self._lock:
            expected = self._expected.get(key)
            if expected is None:
                return None
            left = expected.since + self.ttl - time.monotonic()
            if (expected.creations <= 0 and not expected.deletions) or left <= 0:
                del self._expected[key]
                return None
            return left

    def forget(self, key: str) -> None:
        with self._lock:
            self._expected.pop(key, None)


class LatestWrites:
    """The objects a controller last wrote, by key, until its informer shows that version.

    Watch events come in resource-version order, so until the informer delivers the version
    written, its cached object is older than the write; after that, the cache is as new or
    newer. Entries also expire (``ttl``): after a relist the exact version may never be
    delivered, and the cache is newer then anyway.

    The watch event of a write may come before the write's answer: the versions the informer
    delivered lately are remembered, and a write that it already delivered is not kept (kept,
    it would hide every later change, a deletion above all, until it expired).
    """

    #: Versions remembered per object: more than a write's answer can lag behind its event.
    RECENT = 16

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._written: dict[str, tuple[JsonDict, float]] = {}
        self._delivered: dict[str, deque[str]] = {}

    def wrote(self, key: str, obj: JsonDict) -> None:
        version = obj["metadata"].get("resourceVersion")
        with self._lock:
            if version is not None and version in self._delivered.get(key, ()):
                self._written.pop(key, None)  # the cache shows it already, or newer
                return
            self._written[key] = (obj, time.monotonic())

    def observed(self, key: str, obj: JsonDict) -> None:
        """The informer delivered ``obj``: the cache has caught up if it is the written one,
        or if it is another object of that name (the written one was deleted)."""
        meta = obj["metadata"]
        with self._lock:
            recent = self._delivered.setdefault(key, deque(maxlen=self.RECENT))
            recent.append(str(meta.get("resourceVersion")))
            written = self._written.get(key)
            if written is None:
                return
            seen = written[0]["metadata"]
            if seen.get("resourceVersion") == meta.get("resourceVersion") or (
                seen.get("uid") != meta.get("uid")
            ):
                del self._written[key]

    def get(self, key: str, uid: str | None = None) -> JsonDict | None:
        """The last object written under ``key`` if the cache may not show it yet; with
        ``uid``, only if it is that object (not a deleted one of the same name)."""
        with self._lock:
            written = self._written.get(key)
            if written is None:
                return None
            stale = uid is not None and written[0]["metadata"].get("uid") != uid
            if stale or time.monotonic() - written[1] > self.ttl:
                del self._written[key]
                return None
            return written[0]

    def forget(self, key: str) -> None:
        with self._lock:
            self._written.pop(key, None)
            self._delivered.pop(key, None)


class HeldStatuses:
    """Status changes a controller holds back for a moment, to write them together.

    Like the Job controller's pod-update batch period: the changes a new job goes through in
    its first second (created, its pods counted, running) are one status write, not one
    each. A reconcile that holds a change keeps it here; the next reconcile of the key starts
    from it (:meth:`overlay`), so it neither decides on an older status nor announces a
    transition again, and the held status is written once ``period`` has passed since the
    key's last write (or its first held change). What the caller deems urgent is written at
    once, with whatever is held.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # key -> its last write, or its first held change
        self._held: dict[str, tuple[str | None, JsonDict]] = {}  # key -> uid, status

    def overlay(self, key: str, obj: JsonDict) -> JsonDict:
        """``obj`` with the status held for it, if any (the same object: by uid)."""
        with self._lock:
            held = self._held.get(key)
        if held is None or held[0] != obj["metadata"].get("uid"):
            return obj
        return {**obj, "status": held[1]}

    def hold(self, key: str, uid: str | None, status: JsonDict) -> float | None:
        """Hold ``status`` for the key: the seconds until it is due, or None if it is due now
        (then the caller writes it, and calls :meth:`wrote`)."""
        now = time.monotonic()
        with self._lock:
            left = self._since.setdefault(key, now) + self.period - now
            if left <= 0:
                return None
            self._held[key] = (uid, status)
            return left

    def keep(self, key: str, uid: str | None, status: JsonDict) -> None:
        """Hold ``status`` for the key however long, until the caller writes (something
        urgent, with it)."""
        with self._lock:
            self._since.setdefault(key, time.monotonic())
            self._held[key] = (uid, status)

    def wrote(self, key: str) -> None:
        """The key's status was written: nothing is held, and the period starts again."""
        with self._lock:
            self._held.pop(key, None)
            self._since[key] = time.monotonic()

    def forget(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)
            self._since.pop(key, None)
