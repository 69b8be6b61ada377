"""The metrics relay of a Katib-shaped trial: standard library only, run from its source.

A Katib trial image has its training code and ``python3``, not hypersweep. The translation
therefore wraps the primary container's command as ``python3 -I -c <this file's source> --
COMMAND...``: this module runs COMMAND as a child process, collects its metrics as the
Experiment's ``metricsCollectorSpec`` says (``$HYPERSWEEP_KATIB_COLLECTOR``): lines of its
standard output (StdOut: still printed, so ``kubectl logs`` shows them), lines appended to a file
(File), scalars appended to TF event files (TensorFlowEvent, parsed here without TensorFlow or
protobuf) or ``hypersweep.katib.report_metrics`` calls (Push: that call is the one part that needs
hypersweep in the image), and reports each observation of the objective to the operator over the
same HTTP path and per-trial token as ``hypersweep.report`` (:mod:`hypersweep.operators._channel`).

Reports carry their step and the operator stores them keyed by step, so a restarted operator (or
a retried request) never counts a line twice. ``-I`` keeps the relay's imports to the standard
library: no ``PYTHONPATH``, no user site, not the working directory (where a training repository's
own ``json.py`` could shadow the standard one).

Nothing here may spell a Kubernetes variable reference (a dollar sign then an opening
parenthesis): the source is a word of the container's command, which Kubernetes expands.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

COLLECTOR_ENV = "HYPERSWEEP_KATIB_COLLECTOR"
#: Set in the child's environment for Push: the file descriptor ``report_metrics`` writes to.
PUSH_FD_ENV = "HYPERSWEEP_KATIB_PUSH_FD"
EXIT_ERROR = 1
EXIT_MISCONFIGURED = 2
EXIT_REFUSED = 3
_END = object()
_LONG_POLL_SECONDS = 20.0
_TF_RANKED_ROLES = ("chief", "master", "worker")


# --- metrics ---------------------------------------------------------------------------------


def parse_value(text: Any) -> float | None:
    """A metric value as a finite-or-not float; None if it is no number (an empty match)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class MetricsUnavailable(RuntimeError):
    """The trial ended without reporting its objective metric (Katib's MetricsUnavailable)."""


class MetricsRelay:
    """Collect the metrics a trial reports, as Katib's collectors do.

    Each observation of the objective metric is one report (step 1, 2, ...) carrying the latest
    value of every collected metric; the final result follows Katib's metric strategies.

    Args:
        filters: regular expressions with two groups, the metric's name and its value.
        strategies: metric name -> ``min``, ``max`` or ``latest``; the first is the objective.
    """

    def __init__(self, filters: Iterable[str], strategies: Mapping[str, str]) -> None:
        self.filters = [re.compile(pattern) for pattern in filters]
        self.strategies = dict(strategies)
        if not self.strategies:
            raise ValueError("the metrics relay needs the objective metric's name")
        self.objective = next(iter(self.strategies))
        self.latest: dict[str, float] = {}
        self.values: dict[str, float] = {}
        self.step = 0
        self.lines = 0

    def parse(self, line: str) -> list[tuple[str, float]]:
        """The (name, value) pairs of the collected metrics in one line."""
        found: list[tuple[str, float]] = []
        for pattern in self.filters:
            for match in pattern.finditer(line):
                name, value = match.group(1).strip(), parse_value(match.group(2))
                if name in self.strategies and value is not None:
                    found.append((name, value))
        return found

    def observe(self, pairs: Iterable[tuple[str, float]]) -> dict[str, float] | None:
        """Record observed metrics; the metrics to report (at ``self.step``) when the objective
        metric was among them, else None."""
        objective_seen = False
        for name, value in pairs:
            self.latest[name] = value
            strategy = self.strategies[name]
            current = self.values.get(name)
            if strategy == "latest" or current is None or not math.isfinite(current):
                self.values[name] = value
            elif math.isfinite(value):
                better = value < current if strategy == "min" else value > current
                if better:
                    self.values[name] = value
            objective_seen = objective_seen or name == self.objective
        if not objective_seen:
            return None
        self.step += 1
        return dict(self.latest)

    def feed_line(self, line: str) -> dict[str, float] | None:
        """One line of output (or of the metrics file): what to report, if anything."""
        self.lines += 1
        pairs = self.parse(line)
        return self.observe(pairs) if pairs else None

    def feed_pushed(self, metrics: Mapping[str, Any]) -> dict[str, float] | None:
        """One ``report_metrics`` call (Push): what to report, if anything."""
        pairs = []
        for name, value in metrics.items():
            number = parse_value(value)
            if name in self.strategies and number is not None:
                pairs.append((str(name), number))
        return self.observe(pairs) if pairs else None

    def metric_of_tag(self, tag: str) -> str | None:
        """The collected metric a TF-event tag records: the name itself or ``.../name``."""
        if tag in self.strategies:
            return tag
        last = tag.rsplit("/", 1)[-1]
        return last if last in self.strategies else None

    def feed_scalars(
        self, scalars: Iterable[tuple[int, str, float]]
    ) -> list[tuple[int, dict[str, float]]]:
        """TF-event scalars ``(step, tag, value)``: what to report, as (report step, metrics),
        one event step at a time."""
        by_step: dict[int, list[tuple[str, float]]] = {}
        for step, tag, value in scalars:
            name = self.metric_of_tag(tag)
            if name is not None:
                by_step.setdefault(step, []).append((name, value))
        reports = []
        for step in sorted(by_step):
            metrics = self.observe(by_step[step])
            if metrics is not None:
                reports.append((self.step, metrics))
        return reports

    def result(self) -> dict[str, float]:
        """The trial's final metrics; raises when the objective metric never appeared."""
        if self.objective not in self.values:
            raise MetricsUnavailable(
                f"the objective metric {self.objective!r} never appeared in the trial's "
                "metrics (check the collector's filter and what the command prints)"
            )
        return dict(self.values)


# --- TF event files: TFRecord framing around Event protobufs, decoded by hand ----------------

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """The (field number, wire type, value) of a protobuf message; a length-delimited value is
    its bytes, a fixed one its raw bytes, a varint its int."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position : position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
        elif wire == 5:
            value, position = data[position : position + 4], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _tensor_scalar(data: bytes) -> float | None:
    """A scalar ``TensorProto``'s value (TF2's ``tf.summary.scalar``): float or double."""
    dtype = 0
    content = b""
    values: list[float] = []
    for number, wire, value in _fields(data):
        if number == 1 and wire == 0:
            dtype = value
        elif number == 4 and wire == 2:
            content = value
        elif number == 5:  # float_val, packed or not
            values += struct.unpack(f"<{len(value) // 4}f", value) if wire == 2 else []
            values += struct.unpack("<f", value) if wire == 5 else ()
        elif number == 6:  # double_val
            values += struct.unpack(f"<{len(value) // 8}d", value) if wire == 2 else []
            values += struct.unpack("<d", value) if wire == 1 else ()
    if values:
        return float(values[0])
    form = {1: "<f", 2: "<d"}.get(dtype)  # DT_FLOAT, DT_DOUBLE
    if form and len(content) == struct.calcsize(form):
        return float(struct.unpack(form, content)[0])
    return None


def event_scalars(record: bytes) -> list[tuple[int, str, float]]:
    """The scalars ``(step, tag, value)`` of one serialized ``Event``."""
    step = 0
    values: list[bytes] = []
    for number, wire, value in _fields(record):
        if number == 2 and wire == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5 and wire == 2:  # summary
            values += [v for n, w, v in _fields(value) if n == 1 and w == 2]
    found = []
    for raw in values:
        tag, number_value = "", None
        for number, wire, value in _fields(raw):
            if number == 1 and wire == 2:
                tag = value.decode("utf-8", "replace")
            elif number == 2 and wire == 5:  # simple_value
                number_value = float(struct.unpack("<f", value)[0])
            elif number == 8 and wire == 2:  # tensor
                number_value = _tensor_scalar(value)
        if number_value is not None:
            found.append((step, tag, number_value))
    return found


class EventScalars:
    """The scalars ``(step, tag, value)`` appended to the event files of a directory (or one
    file) since the last :meth:`read`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._offsets: dict[Path, int] = {}

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.rglob("*") if p.is_file() and "tfevents" in p.name)

    def read(self) -> list[tuple[int, str, float]]:
        found: list[tuple[int, str, float]] = []
        for file in self.files():
            offset = self._offsets.get(file, 0)
            with open(file, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            position = 0
            while len(data) - position >= _HEADER:
                (length,) = struct.unpack("<Q", data[position : position + 8])
                end = position + _HEADER + length + _FOOTER
                if end > len(data):
                    break  # a record still being written
                found += event_scalars(data[position + _HEADER : end - _FOOTER])
                position = end
            self._offsets[file] = offset + position
        return found


def remove_event_files(path: str) -> None:
    """Event files left in ``path`` by an earlier attempt (a fresh pod would have none)."""
    for file in EventScalars(path).files():
        os.remove(file)


# --- reporting to the operator ---------------------------------------------------------------


class ReportRefused(Exception):
    """The operator refused the trial's token."""


class TrialGone(Exception):
    """The operator no longer runs this attempt of the trial."""


def replica_rank(env: Mapping[str, str]) -> int:
    """This replica's rank, from PyTorch's or TensorFlow's variables (as the trial entry point's
    ``replica_rank``): only rank 0's reports and outcome are the trial's."""
    if "RANK" in env:
        return int(env["RANK"])
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0
    config = json.loads(raw)
    cluster = config.get("cluster") or {}
    task = config.get("task") or {}
    role, index = str(task.get("type", "worker")), int(task.get("index", 0))
    offset = 0
    for candidate in (r for r in _TF_RANKED_ROLES if r in cluster):
        if candidate == role:
            return offset + index
        offset += len(cluster[candidate])
    return offset + 1 + index  # a parameter server or an evaluator


class Reporter:
    """Sends one trial's messages to the operator, retrying while it is away (the protocol of
    :class:`hypersweep.operators._channel.HttpChannel`); prints them when there is no sweep."""

    def __init__(self, env: Mapping[str, str]) -> None:
        url = env.get("HYPERSWEEP_REPORT_URL", "")
        self.endpoint = ""
        if url:
            self.endpoint = url.rstrip("/") + (
                f"/v1/namespaces/{quote(env.get('HYPERSWEEP_NAMESPACE', 'default'), safe='')}"
                f"/sweeps/{quote(env.get('HYPERSWEEP_SWEEP', ''), safe='')}"
                f"/trials/{int(env.get('HYPERSWEEP_TRIAL_NUMBER', '0'))}"
            )
        self.token = env.get("HYPERSWEEP_TRIAL_TOKEN", "")
        self.attempt = int(env.get("HYPERSWEEP_ATTEMPT", "0"))
        self.rank = replica_rank(env)
        self.timeout = float(env.get("HYPERSWEEP_REPORT_TIMEOUT", "3600"))
        self.session = uuid.uuid4().hex
        self.seq = 0

    def send(self, message: dict[str, Any]) -> Any:
        """Send ``message``; the operator's decision (for a report) once it has handled it."""
        if not self.endpoint:
            sys.stderr.write(f"[relay] outside a sweep: {json.dumps(message)}\n")
            return "continue"
        self.seq += 1
        body = {
            "session": self.session,
            "seq": self.seq,
            "attempt": self.attempt,
            "rank": self.rank,
            "message": message,
        }
        data = json.dumps(body).encode()
        deadline = time.monotonic() + self.timeout
        delay = 0.25
        while True:
            try:
                status, answer = self._post(data)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                status, answer = 503, {"error": f"operator unreachable ({error})"}
            if status == 200:
                return answer.get("decision")
            if status in (401, 403):
                raise ReportRefused(answer.get("error") or f"token refused ({status})")
            if status == 410:
                raise TrialGone(answer.get("error") or "the operator no longer runs this trial")
            if status not in (202, 429, 500, 502, 503, 504):
                raise RuntimeError(f"the operator refused the message: HTTP {status}: {answer}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not answer for {self.timeout:.0f} s")
            if status == 202:
                continue  # a long poll that timed out: ask again at once
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _post(self, data: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.endpoint,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=_LONG_POLL_SECONDS + 15) as response:
                status, payload = int(response.status), response.read()
        except urllib.error.HTTPError as error:
            status, payload = int(error.code), error.read()
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"error": payload.decode(errors="replace")[:200]}
        return status, answer


def _json_number(value: float) -> Any:
    return value if math.isfinite(value) else str(value)


# --- running the command ---------------------------------------------------------------------


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


class Stopped(Exception):
    """The operator decided to stop (or pause) the trial at a report."""

    def __init__(self, decision: str) -> None:
        super().__init__(decision)
        self.decision = decision


def relay(command: list[str], settings: Mapping[str, Any], reporter: Reporter) -> dict[str, Any]:
    """Run ``command``, report its metrics as they come, and return its final metrics.

    Raises :class:`Stopped` when the operator stops the trial (the command is killed), and
    RuntimeError when the command fails.
    """
    metrics_relay = MetricsRelay(settings.get("filters") or [], settings.get("metrics") or {})
    kind = settings.get("kind", "StdOut")
    events: queue.Queue[Any] = queue.Queue()
    env = dict(os.environ)
    pass_fds: tuple[int, ...] = ()
    read_fd = write_fd = -1
    if kind == "File":
        # A fresh pod's metrics file starts empty; a retried trial must not read the previous
        # attempt's lines again.
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
    if kind == "StdOut":
        thread = threading.Thread(target=_pump_lines, args=(child.stdout, events, True))
    elif kind == "File":
        thread = threading.Thread(target=_tail_file, args=(settings["path"], events, done))
    elif kind == "TensorFlowEvent":
        thread = threading.Thread(target=_tail_events, args=(settings["path"], events, done))
    else:  # Push
        os.close(write_fd)
        reader = os.fdopen(read_fd, "r")
        thread = threading.Thread(target=_pump_lines, args=(reader, events, False))
    thread.daemon = True
    thread.start()

    def report(step: int, metrics: Mapping[str, float]) -> None:
        clean = {name: _json_number(value) for name, value in metrics.items()}
        decision = reporter.send({"kind": "report", "step": step, "metrics": clean})
        if decision in ("stop", "pause"):
            raise Stopped(decision)

    try:
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                if kind in ("File", "TensorFlowEvent") and child.poll() is not None:
                    done.set()
                continue
            if event is _END:
                break
            if event[0] == "scalars":
                for step, scalars in metrics_relay.feed_scalars(event[1]):
                    report(step, scalars)
                continue
            found: dict[str, float] | None
            if kind == "Push":
                try:
                    found = metrics_relay.feed_pushed(json.loads(event[1]))
                except ValueError:
                    continue
            else:
                found = metrics_relay.feed_line(event[1])
            if found is not None:
                report(metrics_relay.step, found)
        code = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise
    if code != 0:
        raise RuntimeError(f"the trial's command exited with code {code}")
    return {name: _json_number(value) for name, value in metrics_relay.result().items()}


def main(argv: list[str] | None = None) -> int:
    """Relay one trial; returns the exit code (0 done or stopped, 1 the command failed or gave no
    objective metric, 2 misconfigured, 3 the operator refused the token)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python3 -I _katib_relay.py -- COMMAND...\n")
        return EXIT_MISCONFIGURED
    settings = json.loads(os.environ.get(COLLECTOR_ENV) or "{}")
    reporter = Reporter(os.environ)
    try:
        try:
            result = relay(argv, settings, reporter)
        except Stopped as stopped:
            reporter.send({"kind": "stopped", "decision": stopped.decision})
            return 0
        except (TrialGone, ReportRefused):
            raise
        except Exception as error:  # noqa: BLE001 - the command's failure is the trial's
            details = traceback.format_exc()
            sys.stderr.write(f"[relay] {error}\n")
            message = f"{type(error).__name__}: {error}"
            reporter.send({"kind": "error", "message": message, "traceback": details})
            return EXIT_ERROR
        reporter.send({"kind": "result", "result": result})
        return 0
    except TrialGone as gone:
        sys.stderr.write(f"[relay] {gone}\n")
        return 0
    except ReportRefused as refused:
        sys.stderr.write(f"[relay] the operator refused the trial's token: {refused}\n")
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
