"""The trial side of the Ray launcher: an actor that runs trial attempts in one Ray worker.

The actor is the Ray counterpart of a local worker process (``_worker``): it loads the objective
once, runs one attempt at a time in each of its slots (one slot, or ``trials_per_actor``), and
speaks the same messages (``report``, ``checkpoint``, ``result``, ``stopped``, ``error``). Only
the transport differs. A local worker writes to a socket; this actor puts messages in a queue
that the driver drains with a long-polling :meth:`TrialActor.messages` call, and gets
decisions through :meth:`TrialActor.decide` (:meth:`TrialActor.decide_many` for several
slots). Every call goes from the driver to the actor, so it works wherever Ray's own calls do
(``ray://`` clients included) and needs no route from the cluster back to the driver. The
objective runs in a thread of its own, so the actor keeps answering calls while the trial
trains.

A replica of a multi-replica trial learns its rendezvous environment only once every replica
of its gang has been placed: :meth:`TrialActor.prepare` reports where it runs (and, for rank 0
of a PyTorch gang, reserves the port of the ``torch.distributed`` store), then
:meth:`TrialActor.run` sets the environment and starts the objective.

This module imports nothing of Ray at import time; the launcher turns :class:`TrialActor` into
a Ray actor class.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Protocol, cast

from hypersweep.orchestrator._events import TrialAssignment
from hypersweep.orchestrator._objective import Objective, ObjectiveRef

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from hypersweep.launchers._resources import HeldPort

Message = tuple[Any, ...]

# How the actor holds a port for the rendezvous: rank 0 of a PyTorch gang serves the c10d store
# on a listening socket; a TensorFlow replica reserves the port its gRPC server binds later.
PORT_LISTEN = "listen"
PORT_RESERVE = "reserve"


def urgent(message: Message) -> bool:
    """Whether the driver must get ``message`` now: all but reports that await no answer."""
    return message[0] != "report" or bool(message[3])


class _Outbox(Protocol):
    def put(self, item: Message) -> None: ...


class _SlotOutbox:
    """A slot's outbox in the outbox its actor shares among slots: messages go tagged with
    the slot, so that one ``messages`` call returns what every slot said, in order."""

    def __init__(self, shared: queue.Queue[Message], slot: int) -> None:
        self._shared = shared
        self._slot = slot

    def put(self, item: Message) -> None:
        self._shared.put((self._slot, item))


class _QueueConnection:
    """The two methods of a ``Connection`` that ``run_assignment`` uses, over two queues.

    A report waits for the driver's answer only from the step at which a decision can be due
    (``decide_from``, which each answer updates: the scheduler's next rung, PBT interval or
    pruning step; 0 at first, so the first report always waits). Reports before it go in the
    outbox, flagged as awaiting nothing, and the trial goes on at once; they reach the driver
    in order with the next batch, ahead of anything the trial says after them.

    What a retry would not report again is never left only in the outbox, where an actor's
    death would lose it: before a checkpoint is written, :meth:`flush` waits until the driver
    has every report so far, and a report at or before the checkpoint's step waits for its
    answer.
    """

    def __init__(self, outbox: _Outbox, decisions: queue.Queue[Message]) -> None:
        self._outbox = outbox
        self._decisions = decisions
        self.decide_from: int | None = 0  # None: no later report can be decided
        self._answered: Message | None = None
        self._unacknowledged = False  # reports in the outbox that no answer has covered yet
        self._checkpointed: int | None = None  # the step of a checkpoint sent since then
        self.cancelled = False  # the driver gave the trial up: its next report stops it

    def send(self, message: Message) -> None:
        if self.cancelled:
            if message[0] == "report":
                self._answered = ("decision", "stop")
            return
        if message[0] == "report":
            step = message[1]
            waits = (self.decide_from is not None and step >= self.decide_from) or (
                self._checkpointed is not None and step <= self._checkpointed
            )
            self._outbox.put((*message, waits))
            if waits:
                self._unacknowledged = False
                self._checkpointed = None
            else:
                self._answered = ("decision", "continue")
                self._unacknowledged = True
            return
        if message[0] == "checkpoint" and message[2] is not None:
            self._checkpointed = int(message[2])
        self._outbox.put(message)

    def flush(self) -> None:
        """Wait until the driver has received every report sent so far."""
        if self._unacknowledged and not self.cancelled:
            self._outbox.put(("sync",))
            self._decisions.get()  # the driver's acknowledgement
            self._unacknowledged = False

    def recv(self) -> Message:
        if self._answered is not None:
            answer, self._answered = self._answered, None
            return answer
        kind, decision, self.decide_from = self._decisions.get()
        return (kind, decision)


class _Slot:
    """One trial at a time in an actor: its messages to the driver and their answers."""

    def __init__(self, outbox: _Outbox) -> None:
        self.outbox = outbox
        self.decisions: queue.Queue[Message] = queue.Queue()
        self.connection: _QueueConnection | None = None


class TrialActor:
    """Runs trial attempts, one at a time in each of its slots, and queues what they say.

    An actor has one slot unless the launcher's ``trials_per_actor`` gives it more: each slot
    then runs its own trial in its own thread, with its own messages and decisions, so that
    light trials (I/O bound, or in code that releases the GIL) share one Ray worker process.
    Every method that concerns a trial takes its ``slot``; the slots share one outbox, so the
    driver collects what all of them said with one ``messages`` call per actor.

    Args:
        sys_path: the driver's ``sys.path``; entries that exist on this node are added, so
            that objectives importable in the driver are importable here (on one machine, or
            on nodes that mount the same paths). Where Ray shipped a ``working_dir``, they go
            after it: the shipped code wins over a stale copy at the driver's path.
        label: the actor's name (``hs-<sweep>-t<N>``), also the prefix of its output lines.
    """

    def __init__(self, sys_path: list[str], label: str = "TrialActor", slots: int = 1) -> None:
        import ray

        shipped = bool((ray.get_runtime_context().runtime_env or {}).get("working_dir"))
        entries = [e for e in sys_path if e and e not in sys.path and os.path.isdir(e)]
        if shipped:
            sys.path.extend(entries)
        else:
            sys.path[:0] = entries
        self._label = label
        self._shared = slots > 1  # trials run side by side in this process
        self._outbox: queue.Queue[Message] = queue.Queue()
        self._slots = [
            _Slot(_SlotOutbox(self._outbox, slot) if self._shared else self._outbox)
            for slot in range(slots)
        ]
        self._objectives: dict[str, Objective | str] = {}
        self._held: HeldPort | None = None

    def prepare(self, hold_port: str | None = None) -> dict[str, Any]:
        """Where this replica runs (node id, IP, its GPUs) and, if asked, a port held for it."""
        import ray

        from hypersweep.launchers._resources import PortAllocator

        if hold_port is not None and self._held is None:
            self._held = PortAllocator().allocate("0.0.0.0", listen=hold_port == PORT_LISTEN)
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "gpus": [str(gpu) for gpu in ray.get_gpu_ids()],
            "port": self._held.port if self._held is not None else None,
        }

    def run(
        self,
        objective: ObjectiveRef | Objective | None,
        key: str,
        assignment: TrialAssignment,
        env: dict[str, str],
        replica: tuple[int, int] | None = None,
        serve_store: bool = False,
        slot: int = 0,
    ) -> None:
        """Start an attempt in a thread and return at once; its messages follow in the queue.

        ``objective`` is sent once per actor (None afterwards: the cached ``key`` is used).
        ``replica`` is ``(rank, world_size)`` for a replica of a multi-replica trial.
        """
        state = self._slots[slot]
        if objective is not None and key not in self._objectives:
            try:
                # The function itself where the driver put it so (tune.with_parameters).
                loaded = objective.load() if isinstance(objective, ObjectiveRef) else objective
                self._objectives[key] = loaded
            except Exception:  # noqa: BLE001 - reported with the trial that needs it
                self._objectives[key] = traceback.format_exc()
        while not state.decisions.empty():  # nothing stale from an earlier attempt
            state.decisions.get_nowait()
        if not self._shared:  # the trials of a shared actor print under the actor's name
            self._tag_output(f"hs-{assignment.sweep_name}-t{assignment.trial_number}")
        os.environ.update(env)
        state.connection = _QueueConnection(state.outbox, state.decisions)
        threading.Thread(
            target=self._run,
            args=(state, key, assignment, replica, serve_store),
            name=f"hypersweep-trial-{assignment.trial_number}",
            daemon=True,
        ).start()

    def __repr__(self) -> str:
        # Ray prefixes the actor's output lines with its repr (``(hs-sweep-t3 pid=...)``).
        return self._label

    def _tag_output(self, label: str) -> None:
        """Prefix this actor's output lines with the trial it runs now (warm actors run many).

        Ray's log monitor takes a line ``:actor_name:<label>`` as the new prefix of the lines
        that follow, the way it learns an actor's repr.
        """
        if label == self._label:
            return
        self._label = label
        for stream in (sys.stdout, sys.stderr):
            print(f":actor_name:{label}", file=stream, flush=True)

    def _run(
        self,
        state: _Slot,
        key: str,
        assignment: TrialAssignment,
        replica: tuple[int, int] | None,
        serve_store: bool,
    ) -> None:
        from hypersweep.launchers._worker import run_assignment

        objective = self._objectives.get(key, "the objective was never sent to this actor")
        if isinstance(objective, str):
            state.outbox.put(("error", "the objective could not be loaded", objective))
            return
        context: dict[str, Any] = {}
        store = None
        if replica is not None:
            context = {"rank": replica[0], "world_size": replica[1]}
            if serve_store:
                try:
                    store = self._serve_store(replica[1])
                except Exception as error:  # noqa: BLE001 - reported as this replica's error
                    message = f"could not serve torch.distributed's store: {error}"
                    state.outbox.put(("error", message, traceback.format_exc()))
                    return
        assert state.connection is not None
        try:
            run_assignment(
                cast("Connection", state.connection),
                objective,
                assignment,
                shared_process=self._shared,
                **context,
            )
        finally:
            del store

    def _serve_store(self, world_size: int) -> Any:
        """Serve the gang's c10d store on the held listening socket (which it takes over)."""
        from hypersweep.launchers._worker import serve_torch_store

        assert self._held is not None, "prepare(hold_port='listen') first"
        descriptor = self._held.socket.detach()
        self._held = None
        return serve_torch_store(descriptor, world_size)

    def messages(self, timeout: float, linger: float = 0.0) -> list[Message]:
        """Wait up to ``timeout`` seconds for messages and return all that are queued.

        Reports that await no answer are held up to ``linger`` seconds after the first, to go
        in fewer, larger batches; any other message (a report that waits, a checkpoint, the
        trial's end) returns the batch at once. An actor with several slots returns
        ``(slot, message)`` pairs, every slot's messages in the order the slot sent them.
        """
        outbox = self._outbox
        is_urgent = (lambda item: urgent(item[1])) if self._shared else urgent
        try:
            batch = [outbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        flush = is_urgent(batch[0])
        deadline = time.monotonic() + linger
        while True:
            try:
                message = outbox.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if flush or left <= 0:
                    return batch
                try:
                    message = outbox.get(timeout=left)
                except queue.Empty:
                    return batch
            batch.append(message)
            flush = flush or is_urgent(message)

    def decide(self, decision: str, decide_from: int | None = 0, slot: int = 0) -> None:
        """Answer the running attempt's pending report; ``decide_from`` is the first step
        whose report waits for the next answer (0: every report; None: none will)."""
        self._slots[slot].decisions.put(("decision", decision, decide_from))

    def decide_many(self, answers: list[tuple[int, str, int | None]]) -> None:
        """:meth:`decide` for several slots in one call: ``(slot, decision, decide_from)``."""
        for slot, decision, decide_from in answers:
            self.decide(decision, decide_from, slot)

    def acknowledge(self, slot: int = 0) -> None:
        """Tell the running attempt's :meth:`_QueueConnection.flush` that its reports arrived."""
        self._slots[slot].decisions.put(("ack", None, None))

    def cancel(self, slot: int) -> None:
        """Give up a slot's trial without killing the actor (its other slots run on).

        A thread cannot be killed: the trial stops at its next report, or ends by itself;
        what it says after this is dropped, and the slot is not given another trial.
        """
        state = self._slots[slot]
        if state.connection is not None:
            state.connection.cancelled = True
        state.decisions.put(("decision", "stop", None))  # a report waiting now stops too
