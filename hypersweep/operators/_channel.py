"""The trial side of reporting on Kubernetes: an HTTP ``Channel`` to the operator.

A trial pod reports straight to the operator (no sidecar, no log scraping): each message of
``hypersweep.report/checkpoint`` and the trial's outcome is one ``POST`` to
``$HYPERSWEEP_REPORT_URL/v1/namespaces/NS/sweeps/SWEEP/trials/N`` with the trial's own token
(``Authorization: Bearer $HYPERSWEEP_TRIAL_TOKEN``), from a Secret only this trial's pods mount.

The operator answers a message only once the sweep's control loop has handled it (a report gets
its early-stopping decision; a result is in storage), so a trial never exits with an outcome the
operator could still lose. When the operator is away (restarting, a new leader taking over) the
channel retries the same message (same session and sequence number, so that it is not counted
twice) until ``$HYPERSWEEP_REPORT_TIMEOUT`` seconds (default one hour) pass: the trial waits for
its operator instead of failing.

Standard library only: trial images need neither the ``kubernetes`` client nor Optuna.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote

logger = logging.getLogger("hypersweep.trial")

#: Seconds the operator holds a report open waiting for the decision before asking to retry.
LONG_POLL_SECONDS = 20.0


class ReportRefused(BaseException):
    """The operator refused the trial's token (it cannot report for this trial).

    A BaseException, like ``TrialPaused``, so that an objective's ``except Exception`` does not
    swallow it: the trial must end.
    """


class TrialGone(BaseException):
    """The operator no longer runs this attempt of the trial (it was stopped or replaced)."""


def trial_path(namespace: str, sweep: str, trial_number: int) -> str:
    """The URL path at which the operator accepts a trial's messages."""
    return (
        f"/v1/namespaces/{quote(namespace, safe='')}/sweeps/{quote(sweep, safe='')}"
        f"/trials/{int(trial_number)}"
    )


def encode_message(message: tuple[Any, ...]) -> dict[str, Any]:
    """A ``Channel`` message tuple as JSON-ready data."""
    kind = message[0]
    if kind == "report":
        return {"kind": kind, "step": int(message[1]), "metrics": dict(message[2])}
    if kind == "checkpoint":
        return {"kind": kind, "path": str(message[1]), "step": message[2]}
    if kind == "result":
        return {"kind": kind, "result": message[1]}
    if kind == "stopped":
        return {"kind": kind, "decision": str(message[1])}
    if kind == "error":
        return {"kind": kind, "message": str(message[1]), "traceback": str(message[2])}
    raise ValueError(f"unknown message kind {kind!r}")


class HttpChannel:
    """Sends one trial's messages to the operator, retrying until it answers.

    Args:
        url: the operator's base URL (``$HYPERSWEEP_REPORT_URL``).
        token: the trial's token.
        namespace, sweep, trial_number: which trial this is.
        attempt: which attempt of the trial (the operator ignores stale attempts).
        rank: this replica's rank; only rank 0's reports and outcome are the trial's.
        timeout: seconds to keep retrying one message while the operator is unreachable.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        namespace: str,
        sweep: str,
        trial_number: int,
        attempt: int = 0,
        rank: int = 0,
        timeout: float = 3600.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + trial_path(namespace, sweep, trial_number)
        self._token = token
        self.attempt = attempt
        self.rank = rank
        self.timeout = timeout
        self.session = uuid.uuid4().hex
        self._seq = 0

    def request(self, message: tuple[Any, ...]) -> Any:
        """Send ``message`` and return the operator's decision (for a report) or None."""
        self._seq += 1
        body = {
            "session": self.session,
            "seq": self._seq,
            "attempt": self.attempt,
            "rank": self.rank,
            "message": encode_message(message),
        }
        answer = self._post(json.dumps(body).encode())
        return answer.get("decision")

    def send(self, message: tuple[Any, ...]) -> None:
        """Send ``message``; returns once the operator has handled it."""
        self.request(message)

    def _post(self, data: bytes) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        delay = 0.25
        while True:
            retry_reason = ""
            try:
                return self._post_once(data)
            except _Retry as retry:
                retry_reason = str(retry)
                if retry.pending:
                    delay = 0.0  # a long poll that timed out: ask again at once
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                retry_reason = f"operator unreachable ({error})"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the operator did not answer for {self.timeout:.0f} s: {retry_reason}"
                )
            if delay:
                logger.info("retrying in %.1f s: %s", delay, retry_reason)
                time.sleep(delay)
            delay = min(max(delay * 2, 0.25), 5.0)

    def _post_once(self, data: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            self.endpoint,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._token}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=LONG_POLL_SECONDS + 15) as response:
                status = int(response.status)
                payload = response.read()
        except urllib.error.HTTPError as error:
            status = int(error.code)
            payload = error.read()
        try:
            answer: dict[str, Any] = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"error": payload.decode(errors="replace")[:200]}
        if status == 200:
            return answer
        if status == 202:
            raise _Retry("waiting for the decision", pending=True)
        if status in (401, 403):
            raise ReportRefused(answer.get("error") or f"the operator refused the token ({status})")
        if status == 410:
            raise TrialGone(answer.get("error") or "the operator no longer runs this trial")
        if status in (429, 500, 502, 503, 504):
            raise _Retry(answer.get("error") or f"HTTP {status}")
        raise RuntimeError(f"the operator refused the message: HTTP {status}: {answer}")


class _Retry(Exception):
    def __init__(self, reason: str, *, pending: bool = False) -> None:
        super().__init__(reason)
        self.pending = pending


class LocalChannel:
    """Decides ``continue`` to every report: an objective run by the entry point outside a sweep
    (no ``$HYPERSWEEP_REPORT_URL``), e.g. to try a trial image by hand."""

    def request(self, message: tuple[Any, ...]) -> Any:
        if message[0] == "report":
            logger.info("step %s: %s", message[1], message[2])
            return "continue"
        return None

    def send(self, message: tuple[Any, ...]) -> None:
        self.request(message)
