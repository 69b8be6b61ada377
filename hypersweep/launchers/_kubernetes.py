"""The Kubernetes launcher: each trial runs as a TrainJob, and reports to this process over HTTP.

The orchestrator loop is the same as for local workers; only where trials run differs. For each
attempt of a trial the launcher creates:

* a Secret ``<sweep>-trial-<n>-trial`` holding the trial's token (a fresh random secret per
  attempt) and its config, mounted and exposed to the trial's pods only;
* a TrainJob ``<sweep>-trial-<n>`` from the trial template, with the trial's parameters injected
  (``HYPERSWEEP_CONFIG``, the config file, ``${trialParameters.NAME}``), the reporting
  environment, and the objective reference when the template names no command.

The TrainJob controller runs its pods. Trials report through ``hypersweep.report`` over HTTP to
:class:`~hypersweep.kube._server.ReportServer` (the operator's, or one this launcher starts),
which hands each message to :meth:`KubernetesLauncher.handle_trial_message`: the token must be the
one of that very trial, so a trial cannot report for another. A message is answered only once
the orchestrator has handled it (a report gets its decision; a result is in storage).

Names are deterministic, so the launcher of a restarted operator finds the TrainJobs of the
trials it resumes: a TrainJob of the same trial and attempt that still runs is *adopted* (its
pods go on, and their retried messages arrive here); anything else of that name is deleted and
created again. A pruned trial's TrainJob ends as pruned once its ranks, told to stop, have exited
(their pods stay for ``kubectl logs``); a paused one is suspended (its pods are deleted, the job
stays to resume); interrupting the sweep deletes the TrainJobs of the trials it stopped.
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypersweep._errors import ConfigError
from hypersweep.kube import _names as names
from hypersweep.kube._batch import all_at_once
from hypersweep.kube._client import (
    SECRETS,
    TRAINJOBS,
    ApiError,
    JsonDict,
    Kube,
    owner_reference,
)
from hypersweep.kube._informer import Informer
from hypersweep.kube._jobspec import (
    COLLECTED_SOON_TTL,
    CONTAINER_NAMES,
    MAX_SWEEP_NAME,
    JobSpec,
    SpecError,
    condition,
    is_true,
    main_container,
)
from hypersweep.kube._pools import (
    GANG_APIS,
    Demand,
    GangAdmission,
    GangRequest,
    Pool,
    SchedulingPolicy,
    check_served,
    describe_demand,
    parse_policy,
    parse_pools,
    pod_requests,
)
from hypersweep.kube._server import ReportServer
from hypersweep.kube._tpu import SLICE_ANNOTATION, check_replicas
from hypersweep.kube._trial_jobs import (
    LauncherDetached,
    one_line,
    suspend_trainjob,
    suspend_unfinished_trainjobs,
)
from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.orchestrator._events import (
    Checkpointed,
    Completed,
    Crashed,
    Errored,
    Event,
    Reported,
    Stopped,
    TrialAssignment,
)
from hypersweep.orchestrator._job import TrainJob, dns_label
from hypersweep.strategies._space import flatten_config

logger = logging.getLogger("hypersweep")
T = TypeVar("T")

ENTRYPOINT = ("python", "-m", "hypersweep.operators.trial_entrypoint")
#: An elastic trial's replicas run the entry point under torch's elastic agent (torchrun), which
#: takes its rendezvous from the TrainJob's ``PET_*`` variables (``elasticPolicy``).
ELASTIC_ENTRYPOINT = ("python", "-m", "torch.distributed.run", "-m", ENTRYPOINT[-1])
_PARAMETER = re.compile(r"\$\{trialParameters\.([A-Za-z0-9_.\-]+)\}")
_LONG_POLL = 20.0
_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
#: Seconds between writes of a running trial's latest value on its TrainJob.
VALUE_INTERVAL = 10.0
_MAX_PICKLE = 96 * 1024  # one environment variable holds at most 128 KiB on Linux
_SPEC_KEYS = ("replicaSpecs", "pytorchReplicaSpecs", "tfReplicaSpecs", "jaxReplicaSpecs")
_ROLE_NAMES = {"master": "Master", "worker": "Worker", "chief": "Chief"}


@dataclass
class _Trial:
    """One attempt of a trial as this launcher tracks it."""

    number: int
    name: str
    attempt: int
    token: str
    created: float
    pending: deque[int] = field(default_factory=deque)  # rank 0's steps awaiting a decision
    decisions: dict[int, str] = field(default_factory=dict)
    latest_decided: int = -1
    outcome: str | None = None
    seen: dict[tuple[str, int], int | None] = field(default_factory=dict)  # message -> ticket
    job_seen: bool = False
    succeeded_at: float | None = None
    uid: str | None = None  # of this attempt's TrainJob, once written (or adopted)
    value: float | None = None  # the latest reported value of the sweep's metric
    value_shown: float | None = None  # the value last written on the TrainJob
    value_shown_at: float = 0.0
    first_value_at: float | None = None  # when its first value was reported


@dataclass
class _Queued:
    """A trial attempt waiting for its gang to be admitted onto a pool."""

    assignment: TrialAssignment
    name: str
    request: GangRequest


class KubernetesLauncher(Launcher):
    """Runs each trial as a TrainJob in ``namespace``; trials report to this process.

    Args:
        namespace: where trials' TrainJobs and Secrets are created.
        trial_template: the spec of each trial's TrainJob (``replicaSpecs``/``framework``,
            or Kubeflow's ``pytorchReplicaSpecs``/``tfReplicaSpecs``, and ``runPolicy``).
            Default: one replica of ``image`` running the sweep's objective (or, with
            ``tune(replicas=...)``, the replicas it describes).
        image: the trial image, for the default template.
        max_concurrent: trials running at once.
        kubeconfig: the kubeconfig to use; default: in-cluster, else ``~/.kube/config``.
        report_url: the URL at which trial pods reach this process; default: this pod's IP
            (``$POD_IP``) when running in a cluster.
        report_port: the port to listen on for trials' reports (0: any free port).
        sync_interval: seconds between checks of the TrainJobs' states (from a watch).
        pools: the node pools trials may use (:class:`~hypersweep.kube._pools.Pool` or
            their plain-data form, as in ``Sweep.spec.pools``). A trial starts only once one
            pool has room for all of its replicas at once (gang admission); until then it
            waits, and a trial that fits no pool even when empty fails.
        scheduling_policy: ``{"gang": "builtin" | "none" | "kueue" | "podGroup" | "workload",
            ...}``:
            who makes a trial's replicas start together (see ``Sweep.spec.schedulingPolicy``).

    Trials restore from checkpoints under the sweep's ``checkpoint_dir``: object storage
    (``s3://...``; ``checkpoint_options`` are its fsspec options without credentials, and
    every replica gets the variables of the Secret ``checkpoint_secret``, e.g.
    ``AWS_ACCESS_KEY_ID``), or a volume that trial pods mount at the same path (``volumes`` and
    ``volume_mounts``, added to every replica), as the operator does with its data volume.

    The operator also passes ``kube``, ``server``, ``sweep``, ``owner``, ``trial_state`` and
    ``trainjobs``, to share its client, server and TrainJob cache, own the trials by their
    Sweep, and answer trials that a previous leader finished.
    """

    def __init__(
        self,
        namespace: str = "default",
        *,
        trial_template: Mapping[str, Any] | None = None,
        image: str | None = None,
        max_concurrent: int = 4,
        kubeconfig: str | None = None,
        report_url: str | None = None,
        report_port: int = 0,
        sync_interval: float = 2.0,
        kube: Kube | None = None,
        server: ReportServer | None = None,
        sweep: str | None = None,
        owner: Mapping[str, Any] | None = None,
        volumes: Sequence[Mapping[str, Any]] = (),
        volume_mounts: Sequence[Mapping[str, Any]] = (),
        trial_state: Callable[[int], str | None] | None = None,
        pools: Sequence[Mapping[str, Any] | Pool] = (),
        scheduling_policy: Mapping[str, Any] | SchedulingPolicy | None = None,
        admission: GangAdmission | None = None,
        trainjobs: Informer | None = None,
        on_change: Callable[[], None] | None = None,
        notify: Callable[[str, str, str], None] | None = None,
        checkpoint_options: Mapping[str, Any] | None = None,
        checkpoint_secret: str | None = None,
    ) -> None:
        if (
            isinstance(max_concurrent, bool)
            or not isinstance(max_concurrent, int)
            or max_concurrent < 1
        ):
            raise ConfigError(f"max_concurrent: expected an integer >= 1, got {max_concurrent!r}")
        self.namespace = namespace
        self.max_concurrent = max_concurrent
        self.sync_interval = sync_interval
        self._template_given = copy.deepcopy(dict(trial_template)) if trial_template else None
        self._image = image
        self._kubeconfig = kubeconfig
        self._kube = kube
        self._report_url = report_url
        self._report_port = report_port
        self._server = server
        self._own_server = False
        self._sweep = sweep
        self._owner = dict(owner) if owner else None
        self._volumes = [dict(v) for v in volumes]
        self._volume_mounts = [dict(m) for m in volume_mounts]
        self._checkpoint_options = dict(checkpoint_options or {})
        self._checkpoint_secret = checkpoint_secret
        self._trial_state = trial_state
        self._pools = parse_pools(list(pools), "pools")
        self._policy = parse_policy(scheduling_policy, "scheduling_policy")
        self._admission = admission
        self._own_admission = False
        self._trainjobs = trainjobs  # the TrainJobs' states, watched (own one if None)
        self._own_trainjobs = False
        # Admitted trials' Secrets and TrainJobs are written in the background, so that the
        # orchestrator goes on launching; their outcomes are handled in its thread.
        self._creates: ThreadPoolExecutor | None = None
        self._writing: dict[str, tuple[_Trial, Future[ApiError | None]]] = {}  # by TrainJob
        self._may_exist: set[str] | None = None  # TrainJob names that may exist (None: any)
        self._inherited: set[str] = set()  # TrainJobs there before this launcher started
        self._on_change = on_change
        self._notify = notify
        self._demands: dict[str, list[Demand]] = {}
        self._queued: dict[int, _Queued] = {}
        self._queue_note = ""
        self._refused_note = ""
        self._stalled_note: tuple[str, str] | None = None  # a trial whose pods cannot start
        self._context: SweepContext | None = None
        self._template: JsonDict = {}
        self._spec_key = "replicaSpecs"
        self._cond = threading.Condition()
        self._trials: dict[int, _Trial] = {}
        self._ended: dict[int, _Trial] = {}
        self._queue: list[tuple[int, Event]] = []
        self._ticket = 0
        self._returned = 0
        self._handled = 0
        self._backlog: list[Event] = []
        # The last state of running trials' TrainJobs that were deleted (from the watch's
        # DELETED event): a job that finished and went (ttlSecondsAfterFinished) between two
        # checks is judged by how it ended, not as deleted.
        self._gone: dict[str, JsonDict] = {}
        # Clean-ups of ended trials (suspend the TrainJob, delete the Secret), by TrainJob
        # name, run at the next poll: they must reach the API before the trial is answered.
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._next_sync = 0.0
        self._detached = False
        self._started = False

    # --- properties ----------------------------------------------------------------------

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            self._kube = Kube.from_config(self._kubeconfig)
        return self._kube

    @property
    def sweep(self) -> str:
        """The sweep's name in Kubernetes (TrainJob names and labels, report URLs)."""
        assert self._sweep is not None, "start() first"
        return self._sweep

    def job_name(self, trial_number: int) -> str:
        """The TrainJob of a trial: ``<sweep>-trial-<n>``, the same across attempts."""
        return dns_label(f"{self.sweep}-trial-{trial_number}")

    # --- Launcher ------------------------------------------------------------------------

    def start(self, context: SweepContext) -> None:
        # A gang scheduler the cluster lacks fails the sweep now, not each of its trials; a
        # sweep without a gang API needs no cluster configuration yet.
        if self._policy.gang in GANG_APIS:
            check_served(self.kube, self._policy)
        self._context = context
        if self._sweep is None:
            self._sweep = dns_label(context.sweep_name)[:MAX_SWEEP_NAME].rstrip("-")
        self._template = self._trial_template(context)
        key = next(
            k
            for k in ("replicaSpecs", "pytorchReplicaSpecs", "tfReplicaSpecs", "jaxReplicaSpecs")
            if k in self._template
        )
        self._spec_key = key
        if self._pools:
            if self._admission is None:
                self._admission = GangAdmission(self.kube)
                self._own_admission = True
            self._admission.start()
            self._pools = self._tpu_slices(self._pools, self._admission.nodes.list())
            self._demands = {pool.name: self._gang_demand(pool) for pool in self._pools}
            # Two round trips per trial (Secret, TrainJob): enough at once to keep pace with
            # admission when hundreds of trials fit at the start of a sweep.
            self._creates = ThreadPoolExecutor(16, thread_name_prefix="launcher-create")
        if self._server is None:
            self._server = ReportServer(port=self._report_port).start()
            self._own_server = True
        if self._report_url is None:
            pod_ip = os.environ.get("POD_IP")
            if not pod_ip:
                raise ConfigError(
                    "report_url: trial pods report to this process; pass "
                    "KubernetesLauncher(report_url='http://HOST:PORT') with an address they can "
                    f"reach (this process listens on port {self._server.port})"
                )
            self._report_url = f"http://{pod_ip}:{self._server.port}"
        self._server.register(self.namespace, self.sweep, self)
        self._may_exist = self._existing_jobs()
        # Trials of an earlier driver (a killed operator): their clean-ups may have been lost.
        self._inherited = set(self._may_exist or ())
        if self._trainjobs is None:
            self._trainjobs = Informer(
                self.kube,
                TRAINJOBS,
                namespace=self.namespace,
                label_selector=f"{names.SWEEP_LABEL}={self.sweep}",
            )
            self._own_trainjobs = True
        self._trainjobs.add_handler(self._job_event)
        self._trainjobs.start()
        if not self._trainjobs.wait_synced():
            raise TimeoutError(f"could not list the TrainJobs of namespace {self.namespace}")
        self._started = True

    def _trial_template(self, context: SweepContext) -> JsonDict:
        if self._template_given is not None:
            template = self._template_given
        else:
            if not self._image:
                raise ConfigError(
                    "image: give the trial image (KubernetesLauncher(image=...)) or a "
                    "trial_template"
                )
            template = default_template(context.job, self._image)
        template = with_elastic_policy(template, context.job)
        try:
            JobSpec.from_spec(template)
        except SpecError as error:
            raise ConfigError(f"trial_template: {error}") from None
        objective = context.objective
        pickled = objective.pickled if objective.reference is None else None
        if pickled is not None and len(base64.b64encode(pickled)) > _MAX_PICKLE:
            raise ConfigError(
                "objective: the pickled function is too large to ship to trial pods; "
                "pass a 'module:function' reference importable in the trial image"
            )
        return template

    def free_slots(self) -> int:
        with self._cond:
            return max(0, self.max_concurrent - len(self._trials) - len(self._queued))

    def launch(self, assignment: TrialAssignment) -> None:
        number = assignment.trial_number
        name = self.job_name(number)
        with self._cond:
            # A trial that ended under this launcher (paused, say) never adopts its old
            # TrainJob: its pods are exiting even if the job's status does not say so yet.
            ended_here = self._ended.pop(number, None) is not None
            stale = [action for job, action in self._actions if job == name]
            self._actions = [(job, action) for job, action in self._actions if job != name]
        # The clean-ups of the attempt that ended go first: run later, they would suspend
        # the new TrainJob and delete the new Secret, which carry the same names.
        self._run_actions(stale)
        try:
            adopted = None if ended_here else self._adopt(name, assignment)
            if ended_here:
                self._delete_job(name)
        except ApiError as error:
            self._backlog.append(
                Crashed(number, f"could not read TrainJob {name}: {error.message}")
            )
            return
        if adopted is not None or not self._pools:
            self._create(number, name, assignment, adopted, None)
            return
        assert self._admission is not None
        request = GangRequest(f"{self.namespace}/{name}", self.sweep, self._pools, self._demands)
        fitting = tuple(
            pool
            for pool in self._pools
            if self._admission.fits_empty(pool, self._demands[pool.name])
        )
        if not fitting:
            self._refuse(number)
            return
        if self._policy.gang != "builtin":
            # No admission here: the pods go to the preferred pool that could ever hold them.
            self._create(number, name, assignment, None, max(fitting, key=lambda p: p.weight))
            return
        request.pools = fitting
        self._admission.submit(request)
        with self._cond:
            self._queued[number] = _Queued(assignment, name, request)
        self._admit()

    # --- gang admission ------------------------------------------------------------------

    def _tpu_slices(self, pools: Sequence[Pool], nodes: Sequence[JsonDict]) -> tuple[Pool, ...]:
        """The pools with each TPU pool's chips per host read from its nodes; refuses, before
        any trial starts, a gang that is not one replica per host of a slice."""
        out = tuple(pool.with_chips_per_host(nodes, f"pools[{i}]") for i, pool in enumerate(pools))
        for pool in out:
            if pool.tpu is None:
                continue
            if self._policy.gang != "builtin":
                raise ConfigError(
                    f"scheduling_policy.gang: pool {pool.name} is a TPU slice pool, whose gangs "
                    "are placed one whole slice at a time by the built-in gang admission; use "
                    "gang: builtin"
                )
            roles = self._template[self._spec_key]
            where = f"trial_template.{self._spec_key}." + (
                next(iter(roles)) if len(roles) == 1 else "*"
            )
            check_replicas(pool.tpu, self._replica_total(), f"{where}.replicas")
        return out

    def _gang_demand(self, pool: Pool) -> list[Demand]:
        return gang_demand(self._template, pool)

    def _refuse(self, number: int) -> None:
        """Fail a trial whose gang fits in none of the pools, even empty ones."""
        options = "; ".join(
            f"{pool.name}: {describe_demand(self._demands[pool.name], pool)}"
            for pool in self._pools
        )
        message = (
            f"trial {number} fits in no pool even when it is empty ({options}): every replica "
            "must fit on one node and all replicas in one pool at once"
        )
        logger.warning("sweep %s: %s", self.sweep, message)
        if self._notify is not None:
            self._notify("Warning", "Unschedulable", message)
        self._refused_note = message
        self._backlog.append(Errored(number, message, message))
        self._changed()

    def _admit(self) -> None:
        """Run an admission pass and create the TrainJobs of this launcher's admitted trials."""
        self._harvest()
        if not self._queued or self._admission is None:
            return
        self._admission.pump()
        with self._cond:
            admitted = [q for q in self._queued.values() if q.request.admitted is not None]
            for queued in admitted:
                del self._queued[queued.assignment.trial_number]
            waiting = len(self._queued)
            head = min(self._queued.values(), key=lambda q: q.request.seq, default=None)
        for queued in admitted:
            number = queued.assignment.trial_number
            pool = queued.request.admitted
            self._create(number, queued.name, queued.assignment, None, pool, wait=False)
        note = ""
        if head is not None:
            pool = head.request.pools[0]
            note = (
                f"{waiting} trial(s) wait for capacity: trial "
                f"{head.assignment.trial_number} needs "
                f"{describe_demand(head.request.demands[pool.name], pool)} on one of "
                f"{', '.join(p.name for p in head.request.pools)}, and none has room for all "
                "replicas at once"
            )
        if note != self._queue_note:
            if note and not self._queue_note and self._notify is not None:
                self._notify("Normal", "TrialsQueued", note)
            self._queue_note = note
            self._changed()
        elif admitted:
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def admission_status(self) -> JsonDict | None:
        """``{"queuedTrials": n, "message": ..., "refused": ...}`` for the Sweep's status (the
        last trial refused for fitting no pool, if any); None without pools."""
        if not self._pools:
            return None
        with self._cond:
            return {
                "queuedTrials": len(self._queued),
                "message": self._queue_note,
                "refused": self._refused_note,
            }

    def _withdraw(self, job_name: str) -> None:
        if self._admission is not None:
            self._admission.withdraw(f"{self.namespace}/{job_name}")

    def _create(
        self,
        number: int,
        name: str,
        assignment: TrialAssignment,
        adopted: tuple[str, str] | None,
        pool: Pool | None,
        *,
        wait: bool = True,
    ) -> None:
        """Create (or adopt: its token and uid) the TrainJob of one trial attempt; without
        ``wait``, in the background (see :meth:`_harvest`)."""
        token, uid = adopted or (_new_token(), None)
        trial = _Trial(number, name, assignment.attempt, token, time.monotonic(), uid=uid)
        with self._cond:
            self._trials[number] = trial
        if adopted is not None:
            logger.info("Trial %d: adopted its running TrainJob %s", number, name)
            return
        if wait or self._creates is None:
            try:
                error: BaseException | None = self._write_trial(trial, assignment, pool)
            except Exception as failure:  # noqa: BLE001 - as in the background: see _created
                error = failure
            self._created(trial, error)
        else:
            future = self._creates.submit(self._write_trial, trial, assignment, pool)
            self._writing[name] = (trial, future)

    def _write_trial(
        self, trial: _Trial, assignment: TrialAssignment, pool: Pool | None
    ) -> ApiError | None:
        """Write a trial attempt's Secret (and its gang's PodGroup or Workload) and TrainJob;
        the refusal, if any."""
        try:
            self._create_gang_objects(trial.name, trial.number)
            job = self._render_job(trial, assignment, pool)
            created = self.kube.create(TRAINJOBS, self.namespace, copy.deepcopy(job))
            # The Secret after its TrainJob, which owns it: the garbage collector deletes it
            # with the job (no delete of ours). A pod that starts first waits for it, as a
            # kubelet retries a missing Secret.
            try:
                if not self._write_secret(trial, assignment, created):
                    # A leftover Secret was there, which a pod may have started with (a stale
                    # token, every report refused): the job starts again, with the fresh one.
                    self.kube.delete(TRAINJOBS, self.namespace, trial.name, uid=_uid(created))
                    self._wait_gone(trial.name, _uid(created))
                    created = self.kube.create(TRAINJOBS, self.namespace, job)
                    if not self._write_secret(trial, assignment, created):
                        raise ApiError(409, f"Secret {self._secret_name(trial.name)} came back")
            except ApiError:
                # No job without its Secret: a relaunch creates both again.
                self.kube.delete(TRAINJOBS, self.namespace, trial.name, uid=_uid(created))
                raise
            uid = _uid(created)
            # The watch has 30 s to show the job from now, not from when its write was queued
            # (a thousand trials started at once queue their writes for minutes); set before
            # the uid, which is what makes a check (in another thread) look for the job.
            trial.created = time.monotonic()
            trial.uid = uid
        except ApiError as error:
            return error
        return None

    def _created(self, trial: _Trial, error: BaseException | None) -> None:
        """Handle the outcome of writing a trial's objects (in the orchestrator's thread).

        A refusal fails the trial; any other error (the API server unreachable) crashes it, to
        be retried: the relaunch replaces whatever of it was written.
        """
        if error is None:
            return
        self._withdraw(trial.name)
        with self._cond:
            if self._trials.get(trial.number) is not trial:
                return  # stopped meanwhile: no one waits for this attempt
            del self._trials[trial.number]
        reason = error.message if isinstance(error, ApiError) else str(error)
        message = f"could not create TrainJob {trial.name}: {reason}"
        if isinstance(error, ApiError) and error.status in (400, 403, 422):
            self._backlog.append(Errored(trial.number, message, message))
        else:
            self._backlog.append(Crashed(trial.number, message))

    def _harvest(self) -> None:
        """Handle the background writes that are done."""
        for name, (_, future) in list(self._writing.items()):
            if future.done():
                self._settle(name)

    def _settle(self, name: str | None = None) -> None:
        """Wait for the background writes of TrainJob ``name`` (of all if None) and handle
        them: before anything deletes or writes those objects again."""
        for job_name in [name] if name is not None else list(self._writing):
            writing = self._writing.pop(job_name, None)
            if writing is not None:
                trial, future = writing
                self._created(trial, future.exception() or future.result())

    def poll(self, timeout: float) -> list[Event]:
        if self._detached:
            raise LauncherDetached
        self._admit()
        with self._cond:
            actions, self._actions = [a for _, a in self._actions], []
        # First mark the TrainJobs of trials that stopped early (suspended if paused), then
        # answer them: a pod exits only after its job says why, so it does not end Succeeded.
        self._run_actions(actions)
        with self._cond:
            # The orchestrator handles every event of a poll before it polls again.
            self._handled = self._returned
            self._cond.notify_all()
        events, self._backlog = self._backlog, []
        deadline = time.monotonic() + (0.0 if events else timeout)
        with self._cond:
            while not self._queue and not self._detached:
                wake = min(deadline, self._next_sync)
                if self._queued:
                    wake = min(wake, time.monotonic() + 0.2)  # the next admission pass
                remaining = wake - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken, self._queue = self._queue, []
            if taken:
                self._returned = taken[-1][0]
        events.extend(event for _, event in taken)
        if time.monotonic() >= self._next_sync:
            events.extend(self._sync())
            self._show_values()
            self._next_sync = time.monotonic() + self.sync_interval
        return events

    def _run_actions(self, actions: Sequence[Callable[[], None]]) -> None:
        """Run the ended trials' clean-ups at once: each is an API call, and the sweep's loop
        (and each trial waiting for its answer) waits for them all; one after another, they
        made a trial wait seconds for its answer when many trials end together."""

        def run(action: Callable[[], None]) -> None:
            try:
                action()
            except ApiError as error:
                logger.warning("cleaning up a trial's TrainJob failed: %s", error)

        self._at_once(actions, run)

    def _at_once(self, items: Sequence[T], call: Callable[[T], None]) -> None:
        if self._creates is None or len(items) < 2:
            for item in items:
                call(item)
        else:
            all_at_once(items, call, self._creates)

    def respond(self, trial_number: int, decision: str) -> None:
        with self._cond:
            trial = self._trials.get(trial_number)
            if trial is None or not trial.pending:
                return
            step = trial.pending.popleft()
            trial.decisions[step] = decision
            trial.latest_decided = max(trial.latest_decided, step)
            self._cond.notify_all()

    def stop(self, trial_number: int) -> None:
        with self._cond:
            trial = self._trials.pop(trial_number, None)
            queued = self._queued.pop(trial_number, None)
            if trial is not None:
                self._gone.pop(trial.name, None)
            self._cond.notify_all()
        if queued is not None:
            self._withdraw(queued.name)
        if trial is None or self._detached:
            return  # detached: the TrainJob keeps running for the next driver to adopt
        self._delete_trial(trial.name)

    def shutdown(self) -> None:
        if not self._started:
            return
        self._started = False
        self._settle()
        with self._cond:
            leftover = list(self._trials.values())
            self._trials.clear()
            queued = list(self._queued.values())
            self._queued.clear()
            actions, self._actions = [a for _, a in self._actions], []
            finished_here = {t.name for t in self._ended.values() if t.outcome == "result"}
            # The orchestrator is done: every event it was given is handled, so trials
            # waiting for the answer to their last message get it and may exit.
            self._handled = self._ticket
            self._cond.notify_all()
        if not self._detached:
            self._run_actions(actions)
            for trial in leftover:
                self._delete_trial(trial.name)
            suspend_unfinished_trainjobs(self.kube, self.namespace, self.sweep, finished_here)
            self._delete_inherited_secrets()
        for waiting in queued:
            self._withdraw(waiting.name)
        if self._own_admission and self._admission is not None:
            self._admission.stop()
        if self._trainjobs is not None:
            self._trainjobs.remove_handler(self._job_event)
            if self._own_trainjobs:
                self._trainjobs.stop()
        if self._creates is not None:
            self._creates.shutdown()
        assert self._server is not None
        self._server.unregister(self.namespace, self.sweep, self, finished=not self._detached)
        if self._own_server:
            self._server.stop()

    def detach(self) -> None:
        """Stop driving the sweep but leave its TrainJobs running, for another driver to adopt.

        The orchestrator's next :meth:`poll` raises :class:`LauncherDetached`.
        """
        with self._cond:
            self._detached = True
            self._cond.notify_all()

    # --- TrainJobs and Secrets -----------------------------------------------------------

    def _delete_inherited_secrets(self) -> None:
        """Delete the Secrets of the trials an earlier driver ran, once the sweep is over.

        A driver deletes a trial's Secret after ending the trial; one SIGKILLed in between
        leaves it (with its token) behind. Only trials that were there before this driver
        started can have such a Secret, so only theirs are deleted (by name: the operator
        may not list Secrets).
        """
        for name in sorted(self._inherited):
            try:
                self.kube.delete(SECRETS, self.namespace, self._secret_name(name))
            except ApiError as error:
                logger.warning("could not delete the Secret of %s: %s", name, error)

    def _existing_jobs(self) -> set[str] | None:
        """The names of the sweep's TrainJobs now (None if they cannot be listed).

        A launcher drives its sweep alone (the operator's leader, or ``tune()``), so a trial
        whose TrainJob did not exist at the start has none until this launcher creates it:
        launching it needs no look-up, one round trip less per trial.
        """
        try:
            listing = self.kube.list(
                TRAINJOBS, self.namespace, label_selector=f"{names.SWEEP_LABEL}={self.sweep}"
            )
        except ApiError as error:
            logger.warning("could not list the sweep's TrainJobs: %s", error)
            return None
        return {job["metadata"]["name"] for job in listing.get("items") or []}

    def _adopt(self, name: str, assignment: TrialAssignment) -> tuple[str, str] | None:
        """The token and uid of this trial's TrainJob if it can be adopted; else delete what
        is there."""
        self._settle(name)
        if self._may_exist is not None and name not in self._may_exist:
            self._may_exist.add(name)  # it may from now on: this launcher creates it
            return None
        job = self.kube.get(TRAINJOBS, self.namespace, name)
        if job is None:
            return None
        meta = job["metadata"]
        run_policy = (job.get("spec") or {}).get("runPolicy") or {}
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        adoptable = (
            not meta.get("deletionTimestamp")
            and (meta.get("annotations") or {}).get(names.ATTEMPT_ANNOTATION)
            == str(assignment.attempt)
            and names.OUTCOME_ANNOTATION not in (meta.get("annotations") or {})
            and not run_policy.get("suspend")
            and not _finished(job)
            and (self._owner is None or self._owner["metadata"]["uid"] in owners)
        )
        token = self._read_token(name) if adoptable else None
        if token is None:
            self.kube.delete(
                TRAINJOBS, self.namespace, name, uid=meta["uid"], propagation="Foreground"
            )
            self._wait_gone(name, meta["uid"])
            return None
        return token, meta["uid"]

    def _delete_job(self, name: str) -> None:
        """Delete the TrainJob ``name`` if there is one, and wait until it is gone."""
        self._settle(name)
        job = self.kube.get(TRAINJOBS, self.namespace, name)
        if job is not None:
            # Foreground: the job goes only after its pods, whose names the next attempt reuses.
            self.kube.delete(
                TRAINJOBS,
                self.namespace,
                name,
                uid=job["metadata"]["uid"],
                propagation="Foreground",
            )
            self._wait_gone(name, job["metadata"]["uid"])

    def _wait_gone(self, name: str, uid: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.kube.get(TRAINJOBS, self.namespace, name)
            if job is None or job["metadata"]["uid"] != uid:
                return
            time.sleep(0.2)

    def _secret_name(self, job_name: str) -> str:
        return f"{job_name}-trial"

    def _read_token(self, job_name: str) -> str | None:
        secret = self.kube.get(SECRETS, self.namespace, self._secret_name(job_name))
        if secret is None:
            return None
        encoded = (secret.get("data") or {}).get(names.TOKEN_KEY)
        return base64.b64decode(encoded).decode() if encoded else None

    def _labels(self, trial_number: int) -> dict[str, str]:
        return {names.SWEEP_LABEL: self.sweep, names.TRIAL_LABEL: str(trial_number)}

    def _metadata(self, name: str, trial_number: int) -> JsonDict:
        meta: JsonDict = {
            "name": name,
            "namespace": self.namespace,
            "labels": self._labels(trial_number),
        }
        if self._owner is not None:
            meta["ownerReferences"] = [owner_reference(self._owner)]
        return meta

    def _secret_goes_with_job(self) -> bool:
        """Whether a finished trial's TrainJob is deleted soon (``ttlSecondsAfterFinished``
        at most a minute), taking the Secret it owns with it: then no delete of ours."""
        ttl = (self._template.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        return ttl is not None and int(ttl) <= COLLECTED_SOON_TTL

    def _write_secret(self, trial: _Trial, assignment: TrialAssignment, job: JsonDict) -> bool:
        """Write the trial attempt's Secret (its token, config and objective), owned by its
        TrainJob ``job``; False if one was there (deleted, not replaced: see the caller)."""
        assert self._context is not None
        data = {
            names.TOKEN_KEY: trial.token,
            names.CONFIG_KEY: json.dumps(assignment.config),
        }
        objective = self._context.objective
        if objective.reference is None and objective.pickled is not None:
            data[names.OBJECTIVE_KEY] = base64.b64encode(objective.pickled).decode()
        name = self._secret_name(trial.name)
        metadata = self._metadata(name, trial.number)
        metadata["ownerReferences"] = [owner_reference(job)]
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "stringData": data,
        }
        try:
            self.kube.create(SECRETS, self.namespace, body)
        except ApiError as error:
            if not error.conflict:
                raise
            # Left behind (by an earlier version, or not yet collected): deleted, for the
            # caller to write anew, so that the operator needs no "update" on Secrets.
            self.kube.delete(SECRETS, self.namespace, name)
            return False
        return True

    def _create_gang_objects(self, name: str, number: int) -> None:
        """The PodGroup (or Workload and PodGroup) that makes the trial's pods one gang for a
        gang-scheduling scheduler; nothing for the other scheduling policies."""
        controller = {"apiGroup": TRAINJOBS.group, "kind": TRAINJOBS.kind, "name": name}
        objects = self._policy.gang_objects(
            self._metadata(name, number), self._replica_total(), controller
        )
        for resource, body in objects:
            try:
                self.kube.create(resource, self.namespace, body)
            except ApiError as error:
                if error.conflict:
                    continue  # left by an earlier attempt: the same gang
                if error.not_found:
                    fix = (
                        "turn on the feature gates GenericWorkload and GangScheduling and "
                        "--runtime-config=scheduling.k8s.io/v1alpha2=true (Kubernetes 1.36+)"
                        if self._policy.gang == "workload"
                        else "install its scheduler first"
                    )
                    raise ApiError(
                        422,
                        f"{resource.kind}Unavailable",
                        {
                            "message": f"schedulingPolicy.gang={self._policy.gang}, but "
                            f"{body['apiVersion']} {resource.kind} is not served here: {fix}"
                        },
                    ) from None
                raise

    def _replica_total(self) -> int:
        return sum(int(r.get("replicas", 1)) for r in self._template[self._spec_key].values())

    def _render_job(
        self, trial: _Trial, assignment: TrialAssignment, pool: Pool | None = None
    ) -> JsonDict:
        """The trial's TrainJob: the template with the trial's parameters and environment,
        pointed at ``pool`` and labelled for the gang scheduler the policy names."""
        assert self._context is not None and self._report_url is not None
        spec = substitute_parameters(self._template, assignment.config)
        secret = self._secret_name(trial.name)
        objective = self._context.objective
        env: list[JsonDict] = [
            {"name": names.REPORT_URL_ENV, "value": self._report_url},
            {"name": names.NAMESPACE_ENV, "value": self.namespace},
            {"name": names.SWEEP_ENV, "value": self.sweep},
            {"name": names.TRIAL_ENV, "value": str(trial.number)},
            {"name": names.ATTEMPT_ENV, "value": str(trial.attempt)},
            {"name": names.CHECKPOINT_DIR_ENV, "value": assignment.checkpoint_dir},
            {"name": names.KEEP_CHECKPOINTS_ENV, "value": str(assignment.keep_checkpoints)},
            {
                "name": names.CHECKPOINT_OPTIONS_ENV,
                "value": json.dumps(self._checkpoint_options, sort_keys=True),
            },
            {
                "name": names.CONFIG_FILE_ENV,
                "value": f"{names.TRIAL_CONFIG_DIR}/{names.CONFIG_KEY}",
            },
            _secret_env(names.TOKEN_ENV, secret, names.TOKEN_KEY),
            _secret_env(names.CONFIG_ENV, secret, names.CONFIG_KEY),
        ]
        if objective.reference is not None:
            env.append({"name": names.OBJECTIVE_ENV, "value": objective.reference})
        elif objective.pickled is not None:
            env.append(_secret_env(names.OBJECTIVE_PICKLE_ENV, secret, names.OBJECTIVE_KEY))
        env += [{"name": k, "value": v} for k, v in assignment.env.items()]
        parsed = JobSpec.from_spec(spec)
        for replica_spec in spec[self._spec_key].values():
            pod = replica_spec["template"]["spec"]
            pod.setdefault("automountServiceAccountToken", False)  # trials need no API access
            # Defaults that pass the "restricted" Pod Security Standard; a template may differ.
            security = pod.setdefault("securityContext", {})
            security.setdefault("runAsNonRoot", True)
            security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
            pod["volumes"] = [
                *(pod.get("volumes") or []),
                {
                    "name": "hypersweep-trial",
                    "secret": {
                        "secretName": secret,
                        "items": [{"key": names.CONFIG_KEY, "path": names.CONFIG_KEY}],
                    },
                },
                *copy.deepcopy(self._volumes),
            ]
            main = main_container(parsed, pod["containers"])
            if not main.get("command") and not main.get("args"):
                main["command"] = list(ELASTIC_ENTRYPOINT if parsed.elastic else ENTRYPOINT)
            for container in pod["containers"]:
                # Ours come last so that a template cannot point a trial at another's identity.
                container["env"] = [*(container.get("env") or []), *copy.deepcopy(env)]
                if self._checkpoint_secret:  # the checkpoint store's credentials
                    container["envFrom"] = [
                        *(container.get("envFrom") or []),
                        {"secretRef": {"name": self._checkpoint_secret}},
                    ]
                container["volumeMounts"] = [
                    *(container.get("volumeMounts") or []),
                    {
                        "name": "hypersweep-trial",
                        "mountPath": names.TRIAL_CONFIG_DIR,
                        "readOnly": True,
                    },
                    *copy.deepcopy(self._volume_mounts),
                ]
                hardened = container.setdefault("securityContext", {})
                hardened.setdefault("allowPrivilegeEscalation", False)
                hardened.setdefault("capabilities", {"drop": ["ALL"]})
            if pool is not None:
                pool.apply(pod, main)
            # Pods say which sweep and trial they run: kubectl logs -l hypersweep.io/trial=N.
            pod_meta = replica_spec["template"].setdefault("metadata", {})
            pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **self._labels(trial.number)}
            replica_spec["template"] = self._policy.pod_template(
                replica_spec["template"], trial.name, self._replica_total()
            )
        metadata = self._metadata(trial.name, trial.number)
        metadata["annotations"] = {
            names.ATTEMPT_ANNOTATION: str(trial.attempt),
            names.TRIAL_STATE_ANNOTATION: "running",
            names.PARAMS_ANNOTATION: json.dumps(
                flatten_config(assignment.config), separators=(",", ":"), default=str
            ),
        }
        if pool is not None and self._policy.gang == "builtin":
            metadata["annotations"][names.POOL_ANNOTATION] = json.dumps(pool.to_dict())
            if pool.slice:  # a TPU gang's slice: its pods are pinned there (kube._tpu)
                metadata["annotations"][SLICE_ANNOTATION] = pool.slice
        metadata["labels"].update(self._policy.job_labels())
        return {
            "apiVersion": TRAINJOBS.api_version,
            "kind": "TrainJob",
            "metadata": metadata,
            "spec": spec,
        }

    def _delete_trial(self, job_name: str) -> None:
        self._settle(job_name)
        self._withdraw(job_name)
        try:
            self.kube.delete(TRAINJOBS, self.namespace, job_name)
            self.kube.delete(SECRETS, self.namespace, self._secret_name(job_name))
        except ApiError as error:
            logger.warning("could not delete TrainJob %s: %s", job_name, error)

    def _pause_job(self, job_name: str, shown: Mapping[str, str]) -> Callable[[], None]:
        """An action that suspends a paused trial's TrainJob (its pods go, the job stays to
        resume) and shows the trial's state on it."""

        def action() -> None:
            self._withdraw(job_name)
            # From the watched cache (no read per trial); the API server if it lacks the job.
            job = self._trainjobs.get(self.namespace, job_name) if self._trainjobs else None
            if job is None:
                job = self.kube.get(TRAINJOBS, self.namespace, job_name)
            if job is not None:
                suspend_trainjob(self.kube, job, "paused", shown=shown)
            # Its job stays suspended (no TTL): its Secret goes now.
            self.kube.delete(SECRETS, self.namespace, self._secret_name(job_name))

        return action

    def _forget_secret(
        self, job_name: str, shown: Mapping[str, str] | None = None
    ) -> Callable[[], None]:
        def action() -> None:
            self._withdraw(job_name)
            if shown:
                self._annotate(job_name, shown)
            if not self._secret_goes_with_job():
                self.kube.delete(SECRETS, self.namespace, self._secret_name(job_name))

        return action

    def _annotate(self, job_name: str, shown: Mapping[str, str]) -> None:
        """Show a trial's state on its TrainJob (for ``kubectl get trainjobs``)."""
        patch = {"metadata": {"annotations": dict(shown)}}
        try:
            self.kube.patch(TRAINJOBS, self.namespace, job_name, patch)
        except ApiError as error:
            if not error.not_found:
                raise

    def _metric_of(self, result: Any) -> float | None:
        metric = self._context.metric if self._context is not None else None
        value = result.get(metric) if isinstance(result, Mapping) else result
        try:
            return None if value is None or isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            return None

    @staticmethod
    def _shown(trial: _Trial, state: str) -> dict[str, str]:
        shown = {names.TRIAL_STATE_ANNOTATION: state}
        if trial.value is not None:
            shown[names.VALUE_ANNOTATION] = _show(trial.value)
        return shown

    def _show_values(self) -> None:
        """Write running trials' latest values on their TrainJobs, each at most every
        ``VALUE_INTERVAL`` seconds: one write per trial now and then, not one per report."""
        now = time.monotonic()
        due: list[tuple[str, float]] = []
        with self._cond:
            for trial in self._trials.values():
                value = trial.value
                if (
                    value is not None
                    and value != trial.value_shown
                    and trial.uid is not None
                    and trial.first_value_at is not None
                    # From VALUE_INTERVAL after its first report on: a trial that reports
                    # for less than that (however long its pods waited to start) shows its
                    # value only with its outcome, in the same write.
                    and now - max(trial.value_shown_at, trial.first_value_at) >= VALUE_INTERVAL
                ):
                    trial.value_shown, trial.value_shown_at = value, now
                    due.append((trial.name, value))

        def show(item: tuple[str, float]) -> None:
            name, value = item
            try:
                self._annotate(name, {names.VALUE_ANNOTATION: _show(value)})
            except ApiError as error:
                logger.warning("could not show trial %s's value: %s", name, error)

        self._at_once(due, show)

    def _sync(self) -> list[Event]:
        """Events that only the TrainJobs' states tell: a job that failed or vanished.

        The states come from the watched cache, not a list per check: listing every TrainJob
        of a large sweep each time cost more than anything else the operator did at scale.
        """
        with self._cond:
            if not self._trials:
                self._note_stalled(None)
                return []
        assert self._trainjobs is not None
        events: list[Event] = []
        now = time.monotonic()
        stuck: tuple[str, str] | None = None
        with self._cond:
            for trial in sorted(self._trials.values(), key=lambda t: t.number):
                if trial.outcome is not None:
                    continue
                if trial.uid is None and trial.name in self._writing:
                    continue  # not written yet
                job = self._trainjobs.get(self.namespace, trial.name)
                if job is not None and job["metadata"].get("uid") != trial.uid:
                    job = None  # an earlier attempt's, not gone from the cache yet
                if job is None:
                    job = self._gone.get(trial.name)
                    if job is None or not _finished(job):
                        # Deleted while it ran (by hand, or its Sweep's owner went), or never
                        # seen long after it was created.
                        if job is not None or trial.job_seen or now - trial.created > 30.0:
                            message = f"TrainJob {trial.name} was deleted"
                            events.append(Crashed(trial.number, message))
                            self._drop(trial)
                        continue
                trial.job_seen = True
                conditions = (job.get("status") or {}).get("conditions") or []
                if stuck is None and is_true(conditions, "Stalled"):
                    found = condition(conditions, "Stalled") or {}
                    stuck = (
                        str(found.get("reason")),
                        f"trial {trial.number}: {found.get('message')}",
                    )
                if is_true(conditions, "Failed"):
                    failed = condition(conditions, "Failed") or {}
                    message = (
                        f"TrainJob {trial.name} failed: "
                        f"{failed.get('reason')}: {failed.get('message')}"
                    )
                    events.append(Errored(trial.number, message, message))
                    self._drop(trial, failure=message)
                elif is_true(conditions, "Succeeded"):
                    if trial.succeeded_at is None:
                        trial.succeeded_at = now
                    elif now - trial.succeeded_at > 5.0:
                        message = (
                            f"TrainJob {trial.name} succeeded without reporting a result; run "
                            "the objective with 'python -m hypersweep.operators.trial_entrypoint'"
                        )
                        events.append(Errored(trial.number, message, message))
                        self._drop(trial, failure=message)
        self._note_stalled(stuck)
        return events

    def _note_stalled(self, stuck: tuple[str, str] | None) -> None:
        if stuck != self._stalled_note:
            self._stalled_note = stuck
            self._changed()

    def stalled_status(self) -> tuple[str, str] | None:
        """(reason, message) of the first running trial whose pods cannot start, if any: the
        Sweep's ``TrialsStalled`` condition."""
        return self._stalled_note

    def _job_event(self, kind: str, job: JsonDict) -> None:
        """Keep the last state of a running trial's TrainJob that was deleted (see ``_gone``)."""
        if kind != "DELETED":
            return
        meta = job["metadata"]
        number = (meta.get("labels") or {}).get(names.TRIAL_LABEL, "")
        with self._cond:
            # Only this launcher's running trials: the others' jobs go unremembered.
            trial = self._trials.get(int(number)) if number.isdigit() else None
            if trial is not None and trial.uid is not None and trial.uid == meta.get("uid"):
                self._gone[trial.name] = job

    def _drop(self, trial: _Trial, failure: str | None = None) -> None:
        """Forget a trial whose TrainJob ended without an outcome (called with the lock)."""
        self._trials.pop(trial.number, None)
        self._gone.pop(trial.name, None)
        trial.outcome = "lost"
        self._ended[trial.number] = trial
        shown = None
        if failure is not None:
            shown = self._shown(trial, "failed")
            shown[names.FAILURE_ANNOTATION] = one_line(failure)
        self._actions.append((trial.name, self._forget_secret(trial.name, shown)))
        self._cond.notify_all()

    # --- messages from trials (HTTP threads) ---------------------------------------------

    def handle_trial_message(
        self, trial_number: int, token: str, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """Handle one message of a trial; the token must be that trial's own."""
        try:
            session = str(payload["session"])
            seq = int(payload["seq"])
            attempt = int(payload.get("attempt", 0))
            rank = int(payload.get("rank", 0))
            message = dict(payload["message"])
            kind = str(message["kind"])
        except (KeyError, TypeError, ValueError):
            return 400, {"error": "malformed message"}
        with self._cond:
            if self._detached:
                return 503, {"error": "the operator is handing over"}
            trial = self._trials.get(trial_number)
            known = trial is not None or trial_number in self._ended
            if trial is None and known:
                return self._answer_ended(trial_number, token, session, seq)
        if trial is None:
            # Not ours (yet): a trial a previous leader finished may exit; others retry.
            state = self._trial_state(trial_number) if self._trial_state is not None else None
            if state in _FINISHED_STATES:
                return 410, {"error": "the trial has ended"}
            return 503, {"error": "the trial is not running here (yet)"}
        with self._cond:
            if self._trials.get(trial_number) is not trial:
                return 503, {"error": "the trial is being relaunched"}
            if not hmac.compare_digest(token.encode(), trial.token.encode()):
                logger.warning("Trial %d: a message with a wrong token was refused", trial_number)
                return 403, {"error": "wrong token for this trial"}
            if attempt != trial.attempt:
                return 410, {"error": f"attempt {attempt} of this trial is over"}
            key = (session, seq)
            if key in trial.seen:
                ticket = trial.seen[key]
            else:
                accepted = self._accept(trial, kind, rank, message)
                if isinstance(accepted, tuple):
                    return accepted
                ticket = trial.seen[key] = accepted
            if kind == "report":
                return self._await_decision(trial, int(message.get("step", 0)), rank)
            return self._await_handled(ticket)

    def _answer_ended(
        self, trial_number: int, token: str, session: str, seq: int
    ) -> tuple[int, dict[str, Any]]:
        """A message of a trial whose outcome is in (called with the lock)."""
        ended = self._ended[trial_number]
        if not hmac.compare_digest(token.encode(), ended.token.encode()):
            return 403, {"error": "wrong token for this trial"}
        if (session, seq) in ended.seen:
            return self._await_handled(ended.seen[(session, seq)])  # a retry of the last one
        return 410, {"error": "the trial has ended"}

    def _emit(self, event: Event) -> int:
        self._ticket += 1
        self._queue.append((self._ticket, event))
        self._cond.notify_all()
        return self._ticket

    def _accept(
        self, trial: _Trial, kind: str, rank: int, message: Mapping[str, Any]
    ) -> int | tuple[int, dict[str, Any]] | None:
        """Turn a new message into an event (rank 0) and return its ticket."""
        number = trial.number
        if kind == "report":
            step = int(message.get("step", 0))
            metrics = message.get("metrics") or {}
            if rank != 0 or trial.outcome is not None:
                return None
            try:
                clean = {str(k): float(v) for k, v in dict(metrics).items()}
            except (TypeError, ValueError):
                return 400, {"error": "metrics must be numbers"}
            trial.pending.append(step)
            if self._context is not None and self._context.metric in clean:
                trial.value = clean[self._context.metric]
                if trial.first_value_at is None:
                    trial.first_value_at = time.monotonic()
            return self._emit(Reported(number, step, clean))
        if rank != 0:
            return None  # only rank 0 speaks for the trial; a failing rank fails its TrainJob
        if kind == "checkpoint":
            at = message.get("step")
            return self._emit(
                Checkpointed(number, str(message.get("path")), None if at is None else int(at))
            )
        if trial.outcome is not None:
            return None
        if kind == "result":
            result = message.get("result")
            event: Event = Completed(number, result)
            final = self._metric_of(result)
            if final is not None:
                shown = {
                    names.TRIAL_STATE_ANNOTATION: "completed",
                    names.VALUE_ANNOTATION: _show(final),
                }
            else:  # the orchestrator fails it: the pods succeeded, the trial did not
                shown = self._shown(trial, "failed")
                metric = self._context.metric if self._context is not None else "?"
                keys = ", ".join(map(str, result)) if isinstance(result, Mapping) else "-"
                shown[names.FAILURE_ANNOTATION] = one_line(
                    f"the objective returned no number for the metric {metric!r} "
                    f"(returned: {keys if isinstance(result, Mapping) else repr(result)})"
                )
            action = self._forget_secret(trial.name, shown)
        elif kind == "stopped":
            decision = str(message.get("decision", "stop"))
            event = Stopped(number, decision)
            if decision == "pause":
                action = self._pause_job(trial.name, self._shown(trial, "paused"))
            else:
                # Not suspended: every rank was told to stop, and their pods exit by
                # themselves (their logs stay); the TrainJob controller ends the job as pruned.
                shown = self._shown(trial, "pruned")
                shown[names.OUTCOME_ANNOTATION] = "pruned"
                action = self._forget_secret(trial.name, shown)
        elif kind == "error":
            text = str(message.get("message"))
            event = Errored(number, text, str(message.get("traceback")))
            shown = self._shown(trial, "failed")
            shown[names.FAILURE_ANNOTATION] = one_line(text)
            shown[names.OUTCOME_ANNOTATION] = "failed"
            # Not suspended: its pods exit by themselves and stay for ``kubectl logs`` (as
            # cleanPodPolicy says); the TrainJob controller finishes the job, restarting nothing.
            action = self._forget_secret(trial.name, shown)
        else:
            return 400, {"error": f"unknown message kind {kind!r}"}
        trial.outcome = kind
        self._trials.pop(number, None)
        self._gone.pop(trial.name, None)
        self._ended[number] = trial
        self._actions.append((trial.name, action))
        return self._emit(event)

    def _await_handled(self, ticket: int | None) -> tuple[int, dict[str, Any]]:
        """Answer once the orchestrator has handled the message's event (called with the lock)."""
        deadline = time.monotonic() + _LONG_POLL
        while ticket is not None and self._handled < ticket:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._detached:
                return 202, {"retry": True}
            self._cond.wait(remaining)
        return 200, {}

    def _await_decision(self, trial: _Trial, step: int, rank: int) -> tuple[int, dict[str, Any]]:
        """The decision for ``step``, once rank 0's report of it is decided (with the lock)."""
        deadline = time.monotonic() + _LONG_POLL
        while True:
            if step in trial.decisions:
                return 200, {"decision": trial.decisions[step]}
            if self._trials.get(trial.number) is not trial:
                if trial.outcome in ("result", "stopped", "lost", "error"):
                    return 200, {"decision": "continue"}  # rank 0 has ended; let this rank end
                return 410, {"error": "the trial was stopped"}
            if rank != 0 and step < trial.latest_decided:
                return 200, {"decision": "continue"}  # rank 0 went past it without reporting it
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._detached:
                return 202, {"retry": True}
            self._cond.wait(remaining)


def _finished(job: Mapping[str, Any]) -> bool:
    """Whether a TrainJob had ended (Succeeded or Failed)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return is_true(conditions, "Succeeded") or is_true(conditions, "Failed")


def _show(value: float) -> str:
    """A metric value as the per-trial view shows it: 6 significant digits."""
    return f"{value:.6g}"


def _new_token() -> str:
    return secrets.token_urlsafe(32)


def _uid(obj: JsonDict) -> str:
    return str(obj["metadata"]["uid"])


def _secret_env(name: str, secret: str, key: str) -> JsonDict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def substitute_parameters(template: Mapping[str, Any], config: Mapping[str, Any]) -> JsonDict:
    """A copy of ``template`` with ``${trialParameters.NAME}`` replaced in every string, as
    Katib's trial templates do (nested parameters by dotted name)."""
    values = flatten_config(config)

    def replace(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                return match.group(0)
            value = values[name]
            return json.dumps(value) if isinstance(value, (bool, type(None))) else str(value)

        return _PARAMETER.sub(one, text)

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return replace(node)
        if isinstance(node, Mapping):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result: JsonDict = walk(copy.deepcopy(dict(template)))
    return result


def gang_demand(template: Mapping[str, Any], pool: Pool) -> list[Demand]:
    """What the replicas of a trial that gang admission admits request in ``pool`` (the
    template, pointed there): every replica, or an elastic gang's ``minReplicas`` (the others
    start when they fit)."""
    spec = copy.deepcopy(dict(template))
    parsed = JobSpec.from_spec(spec)
    key = next(k for k in _SPEC_KEYS if k in spec)
    demands: list[Demand] = []
    for replica_spec in spec[key].values():
        pod = replica_spec["template"]["spec"]
        pool.apply(pod, main_container(parsed, pod["containers"]))
        demands += [pod_requests(pod)] * int(replica_spec.get("replicas", 1))
    return demands[: parsed.elastic.min_replicas] if parsed.elastic else demands


def with_elastic_policy(template: Mapping[str, Any], job: TrainJob | None) -> JsonDict:
    """The template with ``Replicas(n=(min, max))`` as its ``elasticPolicy``'s replica range,
    where the template's own policy does not give one (its other fields stay)."""
    out = copy.deepcopy(dict(template))
    if job is not None and job.min_replicas is not None:
        policy = out["elasticPolicy"] = dict(out.get("elasticPolicy") or {})
        policy.setdefault("minReplicas", job.min_replicas)
        policy.setdefault("maxReplicas", job.world_size)
    return out


def default_template(job: TrainJob | None, image: str) -> JsonDict:
    """The trial TrainJob spec for ``tune()``: one replica of ``image``, or the replicas of
    ``job`` (from ``tune(replicas=...)``) with their resources and restart policy."""
    if job is None:
        single: JsonDict = {
            "name": CONTAINER_NAMES["generic"],
            "image": image,
            "command": list(ENTRYPOINT),
        }
        return {
            "framework": "generic",
            "replicaSpecs": {
                "Worker": {"replicas": 1, "template": {"spec": {"containers": [single]}}}
            },
        }
    replica_specs: JsonDict = {}
    for group in job.replicas:
        resources: dict[str, str] = {}
        if group.resources.cpus:
            resources["cpu"] = str(group.resources.cpus)
        if group.resources.memory:
            resources["memory"] = group.resources.memory
        if group.resources.gpus:
            resources["nvidia.com/gpu"] = str(group.resources.gpus)
        container: JsonDict = {
            "name": CONTAINER_NAMES[job.framework],
            "image": image,
            "command": list(ELASTIC_ENTRYPOINT if job.min_replicas else ENTRYPOINT),
            "env": [{"name": k, "value": v} for k, v in {**job.env, **group.env}.items()],
        }
        if resources:
            container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
        replica_specs[_ROLE_NAMES.get(group.role, group.role.capitalize())] = {
            "replicas": group.count,
            "restartPolicy": job.restart_policy.policy,
            "template": {"spec": {"containers": [container]}},
        }
    return {
        "framework": job.framework,
        "replicaSpecs": replica_specs,
        "runPolicy": {"backoffLimit": job.restart_policy.backoff_limit},
    }
