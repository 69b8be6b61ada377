"""What a driver of trial TrainJobs and the Sweep controller share.

The Kubernetes launcher runs each trial as a TrainJob; the Sweep controller runs that launcher
under the orchestrator. Both stop a sweep's TrainJobs the same way, and both tell why a trial
failed in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Protocol, runtime_checkable

from hypersweep.kube import _names as names
from hypersweep.kube._client import TRAINJOBS, ApiError, JsonDict, Kube
from hypersweep.kube._jobspec import finished, with_suspend

logger = logging.getLogger("hypersweep")


class LauncherDetached(KeyboardInterrupt):
    """Raised by :meth:`KubernetesLauncher.poll` after :meth:`~KubernetesLauncher.detach`.

    A KeyboardInterrupt, so that the orchestrator stops as on Ctrl-C: it puts its running trials
    back in the queue, and another driver (the next operator leader) resumes them by adopting
    their TrainJobs, which were left running.
    """


@runtime_checkable
class TrialJobDriver(Protocol):
    """What the Sweep controller reads of the launcher it runs a Sweep with, besides the
    launcher interface that the orchestrator drives (the Kubernetes launcher has all of it)."""

    def job_name(self, trial_number: int) -> str:
        """The TrainJob of a trial, the same across attempts."""
        ...

    def admission_status(self) -> JsonDict | None:
        """The queue of trials waiting for gang admission, for the Sweep's status."""
        ...

    def stalled_status(self) -> tuple[str, str] | None:
        """(reason, message) of a running trial whose pods cannot start, if any."""
        ...

    def detach(self) -> None:
        """Stop driving the trials, leaving their TrainJobs running; the next ``poll`` raises
        :class:`LauncherDetached`."""
        ...


def suspend_trainjob(
    kube: Kube,
    job: Mapping[str, Any],
    outcome: str,
    *,
    final: bool = False,
    shown: Mapping[str, str] | None = None,
) -> None:
    """Suspend a trial's TrainJob and record why: its pods go, the job stays to look at.

    A job whose pods already exited after the decision (a paused trial's do) only gets the
    outcome annotation, so that ``kubectl`` still tells a pruned trial from a completed one.
    With ``final`` (the sweep has ended), a job suspended as ``paused`` becomes ``pruned``:
    no trial resumes any more, and the TrainJob controller finishes the job (its Service goes,
    its TTL applies).
    """
    meta = job["metadata"]
    recorded = (meta.get("annotations") or {}).get(names.OUTCOME_ANNOTATION)
    if final and (finished(job) or recorded in ("pruned", "failed", "stopped")):
        return  # ended (or ending: its pods are exiting), and its own outcome stands
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        if final and recorded in (None, "paused"):
            ending = "pruned" if recorded == "paused" else outcome
            ended = {names.OUTCOME_ANNOTATION: ending, names.TRIAL_STATE_ANNOTATION: ending}
            kube.patch(
                TRAINJOBS, meta["namespace"], meta["name"], {"metadata": {"annotations": ended}}
            )
        return
    if finished(job) and names.OUTCOME_ANNOTATION in (meta.get("annotations") or {}):
        return  # ended, and says why already
    annotations = {names.TRIAL_STATE_ANNOTATION: outcome, **(shown or {})}
    annotations[names.OUTCOME_ANNOTATION] = outcome
    patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
    if not finished(job):
        patch["spec"] = with_suspend(job.get("spec") or {}, True)
    kube.patch(TRAINJOBS, meta["namespace"], meta["name"], patch)


def suspend_unfinished_trainjobs(
    kube: Kube, namespace: str, sweep: str, keep: Collection[str] = ()
) -> None:
    """Suspend every TrainJob of a finished sweep that still runs (but those in ``keep``,
    trials whose result is in and whose pods are exiting): no trial pod outlives its sweep."""
    try:
        listing = kube.list(TRAINJOBS, namespace, label_selector=f"{names.SWEEP_LABEL}={sweep}")
        for job in listing.get("items") or []:
            if job["metadata"]["name"] not in keep:
                suspend_trainjob(kube, job, "stopped", final=True)
    except ApiError as error:
        logger.warning("could not stop the TrainJobs left by sweep %s: %s", sweep, error)


def one_line(text: str, limit: int = 300) -> str:
    """A readable line from an error: a traceback's last line, else the first one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
