"""Run a Katib-style trial command and relay its metrics: no sidecar.

``python -m hypersweep.operators.katib_entrypoint -- COMMAND ARGS...`` is the primary container's
command of a Katib-shaped Sweep's trials (the translation wraps the original command). It runs
the command as a child process and collects its metrics as the Experiment's
``metricsCollectorSpec`` says (``$HYPERSWEEP_KATIB_COLLECTOR``): lines of its standard output
(StdOut: still printed, so ``kubectl logs`` shows them), lines appended to a file (File),
scalars appended to TF event files (TensorFlowEvent) or ``hypersweep.katib.report_metrics``
calls (Push). Each objective observation is reported to the
operator with its step, exactly like ``hypersweep.report`` in an objective.

Why relay in the trial rather than follow ``pods/log`` from the operator: a report carries its
step, and the trial's stored intermediate values are keyed by step, so an operator restart (or a
retried report) never counts a line twice and never misses one; a log follower restarted by a
new leader would have to find its place in the log again (``sinceTime`` has one-second
resolution), and the operator would need to read every trial pod's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from hypersweep.operators._katib import COLLECTOR_ENV
from hypersweep.operators._katib_metrics import MetricsRelay
from hypersweep.operators._tfevents import EventScalars, remove_event_files
from hypersweep.operators.trial_entrypoint import EXIT_MISCONFIGURED, run_trial

#: Set in the child's environment for Push: the file descriptor ``report_metrics`` writes to.
PUSH_FD_ENV = "HYPERSWEEP_KATIB_PUSH_FD"
_END = object()


def _pump_lines(stream: Any, events: queue.Queue[Any], echo: bool) -> None:
    for line in iter(stream.readline, ""):
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
        events.put(("line", line))
    events.put(_END)


def _tail_file(path: str, events: queue.Queue[Any], done: threading.Event) -> None:
    """Lines appended to ``path`` (which may not exist yet) until ``done``, then the rest."""
    position = 0
    pending = ""
    while True:
        finished = done.is_set()
        try:
            with open(path) as handle:
                handle.seek(position)
                chunk = handle.read()
                position = handle.tell()
        except FileNotFoundError:
            chunk = ""
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            events.put(("line", line))
        if finished:
            if pending:
                events.put(("line", pending))
            events.put(_END)
            return
        time.sleep(0.2)


def _tail_events(path: str, events: queue.Queue[Any], done: threading.Event) -> None:
    """TF-event scalars written under ``path`` until ``done``, then the rest."""
    scalars = EventScalars(path)
    while True:
        finished = done.is_set()
        found = scalars.read()
        if found:
            events.put(("scalars", found))
        if finished:
            events.put(_END)
            return
        time.sleep(0.2)


def relay_objective(command: list[str], settings: Mapping[str, Any]) -> Any:
    """The objective that runs ``command`` and returns its metrics."""
    import hypersweep as hs

    def objective(config: dict[str, Any]) -> dict[str, float]:
        relay = MetricsRelay(settings.get("filters") or [], settings.get("metrics") or {})
        kind = settings.get("kind", "StdOut")
        events: queue.Queue[Any] = queue.Queue()
        env = dict(os.environ)
        pass_fds: tuple[int, ...] = ()
        read_fd = write_fd = -1
        if kind == "File":
            # A fresh pod's metrics file starts empty; a retried trial must not read the
            # previous attempt's lines again.
            with contextlib.suppress(FileNotFoundError):
                os.remove(settings["path"])
        if kind == "TensorFlowEvent":
            remove_event_files(settings["path"])
        if kind == "Push":
            read_fd, write_fd = os.pipe()
            env[PUSH_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        child = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE if kind == "StdOut" else None,
            text=True,
            bufsize=1,
            pass_fds=pass_fds,
        )
        done = threading.Event()
        threads = []
        if kind == "StdOut":
            assert child.stdout is not None
            threads.append(threading.Thread(target=_pump_lines, args=(child.stdout, events, True)))
        elif kind == "File":
            threads.append(
                threading.Thread(target=_tail_file, args=(settings["path"], events, done))
            )
        elif kind == "TensorFlowEvent":
            threads.append(
                threading.Thread(target=_tail_events, args=(settings["path"], events, done))
            )
        elif kind == "Push":
            os.close(write_fd)
            reader = os.fdopen(read_fd, "r")
            threads.append(threading.Thread(target=_pump_lines, args=(reader, events, False)))
        for thread in threads:
            thread.daemon = True
            thread.start()
        try:
            open_streams = len(threads)
            while open_streams:
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    if kind in ("File", "TensorFlowEvent") and child.poll() is not None:
                        done.set()
                    continue
                if event is _END:
                    open_streams -= 1
                    continue
                if event[0] == "scalars":
                    for step, scalars in relay.feed_scalars(event[1]):
                        hs.report(step, **scalars)
                    continue
                line = event[1]
                metrics: dict[str, float] | None
                if kind == "Push":
                    try:
                        metrics = relay.feed_pushed(json.loads(line))
                    except ValueError:
                        continue
                else:
                    metrics = relay.feed_line(line)
                if metrics is not None:
                    hs.report(relay.step, **metrics)  # raises TrialPruned to stop early
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if code != 0:
            raise RuntimeError(f"the trial's command exited with code {code}")
        return relay.result()

    return objective


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m hypersweep.operators.katib_entrypoint -- COMMAND...\n")
        return EXIT_MISCONFIGURED
    settings = json.loads(os.environ.get(COLLECTOR_ENV) or "{}")
    return run_trial(relay_objective(argv, settings), dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
