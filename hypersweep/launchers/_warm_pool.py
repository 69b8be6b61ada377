"""Warm replica workers for multi-replica trials: started once, lent to gang after gang.

A replica's cost before its first collective is mostly its Python start and ``import torch``
(seconds on a small machine), paid again by every trial and every gang restart if each gang
starts its own processes. The pool keeps worker processes (``_warm_worker``) that imported the
framework ahead of time and lends them to gangs. What a process joins stays per trial: each
replica gets a fresh environment (rendezvous variables, ``CUDA_VISIBLE_DEVICES``), a fresh
c10d store on a newly allocated port, and so a fresh process group.

A lent worker comes back in one of two ways. Its replica ended (returned, pruned, raised, or
aborted because a peer died): it resets itself and says whether it can serve again; it is
reused if so, replaced if not (CUDA initialised, reset failed, or no answer within
``reset_timeout``). Or it died or was killed: it is replaced. A gang restart after a replica
loss therefore reuses the survivors' processes.

Beyond the gangs' replicas the pool keeps ``spares`` ready workers (torch imported), so that
the replica a gang restart needs in place of a lost one is lent at once rather than started
cold on the restart's path. A lost worker's successor is started when it is lost and becomes
the next spare while the restarted gang runs. Spares are started only once every worker
started before them is ready, so that they never slow down the import of a gang waiting for
its replicas. Workers are lent ready ones first, the latest returned first (a spare waits).

Only PyTorch gangs use the pool. A TensorFlow process keeps one collective context for its
life (its cluster is fixed at first use), so TF replicas start afresh for every gang.
"""

from __future__ import annotations

import json
import time
from multiprocessing.connection import Connection, wait

from hypersweep.launchers._process import Worker

WARM_FRAMEWORKS = frozenset({"pytorch"})


class WarmPool:
    """Worker processes with ``framework`` imported, ``size`` of them kept started.

    Args:
        framework: the trial's framework (``pytorch``).
        env: the environment the processes start with; each replica's own environment
            replaces it when it runs.
        size: processes kept started (idle, lent or coming back): the replicas of all the
            gangs that may run at once.
        spares: ready processes kept beyond ``size``, to replace lost replicas at once.
        reset_timeout: seconds a returned worker has to report that it reset itself.
    """

    def __init__(
        self,
        framework: str,
        env: dict[str, str],
        size: int,
        *,
        spares: int = 1,
        reset_timeout: float = 10.0,
    ) -> None:
        if framework not in WARM_FRAMEWORKS:
            raise ValueError(f"no warm workers for {framework} replicas")
        self.framework = framework
        self.size = size
        self.spares = spares
        self.reset_timeout = reset_timeout
        self._ready: set[Worker] = set()  # said it imported the framework
        # Threads while importing: one, as for a replica that did not ask for more.
        self._env = {"OMP_NUM_THREADS": "1", **env}
        self._idle: list[Worker] = []  # ready for a replica (or still importing)
        self._returning: dict[Worker, float] = {}  # -> deadline for its reset answer
        self._lent: set[Worker] = set()
        self.started = 0  # processes started over the pool's life (for tests and tooling)
        self.closed = False

    # --- lending -------------------------------------------------------------------------

    def fill(self) -> None:
        """Start processes until ``size`` are started, then the spares once all are ready.

        They import while nobody waits.
        """
        while not self.closed and self._count() < self.size:
            self._idle.append(self._start())
        while not self.closed and self._count() < self.size + self.spares:
            if any(worker not in self._ready for worker in (*self._idle, *self._lent)):
                return  # a spare's import would slow down the workers still importing
            self._idle.append(self._start())

    def note_ready(self, worker: Worker) -> None:
        """``worker`` said it is ready (a lent worker says it to its gang)."""
        self._ready.add(worker)
        self.fill()

    def acquire(self, count: int, wait_s: float | None = None) -> list[Worker]:
        """``count`` workers for a gang: ready idle ones, then returning, importing, new ones.

        Workers that are coming back from a gang are waited for up to ``wait_s`` (default
        ``reset_timeout``): reusing a process that is resetting beats starting one.
        """
        self._collect(0.0)
        deadline = time.monotonic() + (self.reset_timeout if wait_s is None else wait_s)
        while self._returning and len(self._ready_idle()) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._collect(left)
        ready = self._ready_idle()
        # The latest returned first: the workers of the gang that just ended, not a spare.
        order = [w for w in reversed(ready)] + [w for w in self._idle if w not in ready]
        taken = order[:count]
        self._idle = [worker for worker in self._idle if worker not in taken]
        taken.extend(self._start() for _ in range(count - len(taken)))
        self._lent.update(taken)
        self.fill()  # the spares taken are started again (once the gang's workers are ready)
        return taken

    def give_back(self, worker: Worker, reset: tuple[bool, str] | None) -> None:
        """A lent worker whose replica ended; ``reset`` is its answer if it came already."""
        self._lent.discard(worker)
        if reset is None:
            self._returning[worker] = time.monotonic() + self.reset_timeout
        elif reset[0] and not self.closed:
            self._ready.add(worker)
            self._idle.append(worker)
        else:
            self._replace(worker)

    def discard(self, worker: Worker) -> None:
        """Kill a lent worker (it died, or its replica did not end) and start its successor."""
        if worker in self._lent:
            self._lent.discard(worker)
            self._replace(worker)
        else:
            worker.kill()

    def shutdown(self) -> None:
        """Stop every process of the pool (lent ones are their gangs' to kill).

        They are killed, not asked to exit: an idle worker holds nothing of a trial, and one
        still importing (a spare) would only read the request once its import is done, while
        the sweep's end waited for it.
        """
        self.closed = True
        for worker in (*self._idle, *self._returning):
            worker.kill()
        self._idle.clear()
        self._returning.clear()
        self._ready.clear()

    def ready_idle_pids(self) -> list[int]:
        """The processes ready and waiting to be lent: the spares (for tests and tooling)."""
        return [worker.process.pid for worker in self._ready_idle()]

    # --- internals -----------------------------------------------------------------------

    def _count(self) -> int:
        return len(self._idle) + len(self._returning) + len(self._lent)

    def _start(self) -> Worker:
        self.started += 1
        return Worker(self._env, module="hypersweep.launchers._warm_worker", args=[self.framework])

    def _replace(self, worker: Worker) -> None:
        worker.kill()
        self._ready.discard(worker)
        self.fill()

    def _ready_idle(self) -> list[Worker]:
        """The idle workers that are ready, after reading what idle workers said.

        An idle worker says only that it is ready; one whose socket ends died, and is replaced.
        """
        live = []
        for worker in self._idle:
            try:
                while not worker.connection.closed and worker.connection.poll(0):
                    if worker.connection.recv()[0] == "ready":
                        self._ready.add(worker)
            except (EOFError, OSError):
                worker.kill()
                self._ready.discard(worker)
                continue
            live.append(worker)
        if len(live) < len(self._idle):
            self._idle = live
            self.fill()
        return [worker for worker in self._idle if worker in self._ready]

    def _collect(self, timeout: float) -> None:
        """Take in the reset answers of returning workers, waiting up to ``timeout``."""
        if not self._returning:
            return
        for ready in wait([worker.connection for worker in self._returning], timeout):
            worker = next(w for w in self._returning if w.connection is ready)
            del self._returning[worker]
            answer = _read_reset(worker.connection)
            if answer is not None and answer[0] and not self.closed:
                self._ready.add(worker)
                self._idle.append(worker)
            else:
                self._replace(worker)
        now = time.monotonic()
        for worker, deadline in list(self._returning.items()):
            if now >= deadline:
                del self._returning[worker]
                self._replace(worker)


def _read_reset(connection: object) -> tuple[bool, str] | None:
    """The worker's ``("reset", reusable, why)``, skipping what its last replica still said."""
    assert isinstance(connection, Connection)
    try:
        while True:
            message = connection.recv()
            if message[0] == "reset":
                return bool(message[1]), str(message[2])
            if not connection.poll(1.0):
                return None
    except (EOFError, OSError):
        return None


def sys_path_of(env: dict[str, str]) -> str:
    """The ``sys.path`` entries a worker adds before loading an objective (JSON)."""
    return env.get("HYPERSWEEP_SYS_PATH", json.dumps([]))
