"""Ray as the engine for sweeps that outgrow one machine: trials as placement groups of actors.

The orchestrator's loop, its storage, reporting and checkpoints are those of the local
launcher; only where trials run changes. Each trial attempt reserves a Ray placement group
with one bundle per replica (CPUs, GPUs and custom resources, accounted for by Ray), so a
multi-replica trial starts on all its bundles or waits, and each replica is an actor pinned to
its bundle (``_ray_gang``, ``_ray_actor``). The driver stays the only writer of the sweep's
storage: actors never touch it, they queue their reports, checkpoints and outcomes, and the
driver collects them with long-polling actor calls. Checkpoints are written by the trials
themselves under the sweep's ``checkpoint_dir``, which every node must reach: object storage
(``s3://bucket/prefix``, credentials in each node's environment), or a shared filesystem (NFS,
a ReadWriteMany volume); on one machine any folder will do.

Failures are the local launcher's: an actor that dies (killed, out of memory, its node removed
from the cluster) is reported as a crash, and the orchestrator retries the whole gang from the
trial's latest checkpoint, up to ``max_retries`` times. An elastic gang,
``Replicas(n=(min, max))``, starts once ``min`` replicas are placed and goes on with the
survivors of a loss while they are at least ``min``, growing back when the cluster has room
again (``_ray_elastic``).

Ray stays optional: nothing here imports it before :meth:`RayLauncher.start`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.launchers._ray_actor import TrialActor
from hypersweep.launchers._ray_elastic import ElasticRayAttempt
from hypersweep.launchers._ray_gang import (
    RayAttempt,
    RayReplica,
    SharedActor,
    describe_actor_error,
    kill_actor,
    remove_group,
)
from hypersweep.orchestrator._checkpoints import is_url
from hypersweep.orchestrator._events import Crashed, Errored, Event, TrialAssignment
from hypersweep.orchestrator._job import ReplicaId, TrainJob, dns_label
from hypersweep.orchestrator._ray_parameters import put_in_object_store

__all__ = ["PLACEMENT_STRATEGIES", "RayLauncher"]

logger = logging.getLogger("hypersweep")

PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

# Threads of a replica actor: the objective's own, one long-polling messages() call, and room
# for run(), decide() and prepare() calls to be served while the others wait.
_ACTOR_CONCURRENCY = 4


class RayLauncher(Launcher):
    """Runs trials on a Ray cluster: each attempt a placement group, each replica an actor.

    Args:
        address: the cluster to connect to: ``"auto"`` (a cluster started on this machine
            with ``ray start``, or ``RAY_ADDRESS``), ``"ray://host:10001"`` (Ray Client, e.g.
            a KubeRay head service), a GCS address, ``"local"`` to start a new Ray instance
            on this machine, or None for Ray's default (``RAY_ADDRESS`` or a cluster running
            on this machine if there is one, else a new instance). Ignored when Ray is already
            initialized in this process; the launcher then uses that connection and leaves it
            open.
        max_concurrent: trials running (or waiting for placement) at once; by default no
            limit but the cluster's: trials run as their placement groups are placed, so the
            sweep grows as nodes join (an autoscaler adds them) and shrinks as they leave.
        max_pending_trials: trials waiting for placement at once, the demand an autoscaler
            sees; by default ``max_concurrent`` when it is given, else 16.
        num_cpus: CPUs of each replica (of each trial, for trials without replicas); a
            replica's own ``cpus_per_replica`` takes precedence.
        num_gpus: GPUs of each replica, by Ray's accounting (Ray sets
            ``CUDA_VISIBLE_DEVICES``); a replica's ``gpus_per_replica`` takes precedence.
        resources: custom Ray resources of each replica, e.g. ``{"TPU": 1}`` or a node label
            resource that pins trials to a node pool.
        placement_strategy: how a trial's bundles spread over nodes: ``"PACK"`` (default,
            as few nodes as possible), ``"SPREAD"``, ``"STRICT_PACK"`` (one node) or
            ``"STRICT_SPREAD"`` (one node per replica).
        reuse_actors: keep the actor (and its one-bundle placement group) of a trial without
            replicas for the next trial, so that a trial costs a few actor calls, not a new
            Python process. Replicas of multi-replica trials are never reused: a process
            joins one ``torch.distributed`` group for its whole life.
        env: environment variables of every actor (set when the actor's process starts).
        runtime_env: a Ray runtime environment for the actors (``working_dir``, ``pip``...).
        init_kwargs: extra arguments for ``ray.init`` when the launcher connects.
        replica_grace: seconds the other replicas of a trial get to end by themselves once
            rank 0 has returned or stopped, before they are killed.
        pending_warning: seconds a trial may wait for a placement that the cluster cannot
            give (its bundles fit no set of live nodes) before a warning says so, repeated at
            that interval, as Ray Tune's insufficient-resources warning.
        pending_timeout: seconds after which such a trial fails, instead of waiting for the
            cluster to grow; None (default) waits as long as it takes.
        trials_per_actor: trials that share one actor (one Ray worker process), each in a
            thread of its own with its own reports and decisions: for light trials (I/O
            bound, or in numpy/sklearn/torch code that releases the GIL), so that hundreds
            run at once without a process each. The actor reserves ``num_cpus``,
            ``num_gpus`` and ``resources`` for each of its trials (a bundle of
            ``trials_per_actor`` times them), so they keep counting per trial. A lost actor
            fails (and retries) exactly the trials it ran. Default 1: an actor per trial.
            Needs ``reuse_actors`` and trials without replicas; a trial reports with
            ``hypersweep.report`` (Ray Tune's ``tune.report`` needs an actor of its own).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        max_concurrent: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        resources: Mapping[str, float] | None = None,
        placement_strategy: str = "PACK",
        reuse_actors: bool = True,
        env: Mapping[str, str] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        replica_grace: float = 5.0,
        max_pending_trials: int | None = None,
        pending_warning: float = 60.0,
        pending_timeout: float | None = None,
        trials_per_actor: int = 1,
    ) -> None:
        if placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"launcher.placement_strategy: expected one of {', '.join(PLACEMENT_STRATEGIES)}"
                f", got {placement_strategy!r}"
            )
        for field_name, count in (
            ("max_concurrent", max_concurrent),
            ("max_pending_trials", max_pending_trials),
            ("trials_per_actor", trials_per_actor),
        ):
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ConfigError(f"launcher.{field_name}: expected an integer >= 1, got {count!r}")
        for field_name, seconds in (
            ("pending_warning", pending_warning),
            ("pending_timeout", pending_timeout),
        ):
            if seconds is not None and (
                isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0
            ):
                raise ConfigError(
                    f"launcher.{field_name}: expected a positive number of seconds, got {seconds!r}"
                )
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise ConfigError(f"launcher.runtime_env: expected a mapping, got {runtime_env!r}")
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"launcher.{name}: expected a number >= 0, got {value!r}")
        if trials_per_actor > 1 and not reuse_actors:
            raise ConfigError(
                "launcher.trials_per_actor: an actor that runs several trials is kept for the "
                "next ones; set reuse_actors=True, or trials_per_actor=1"
            )
        self.address = address
        self.trials_per_actor = trials_per_actor
        self.max_concurrent = max_concurrent
        self.max_pending_trials = max_pending_trials or max_concurrent or 16
        self.pending_warning = float(pending_warning)
        self.pending_timeout = pending_timeout
        self.capacity = 0  # trials the live nodes hold at once, refreshed as nodes come and go
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.resources = {str(k): float(v) for k, v in (resources or {}).items()}
        self.placement_strategy = placement_strategy
        self.reuse_actors = reuse_actors
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.runtime_env = dict(runtime_env or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.replica_grace = replica_grace
        self._bundle(None, None)  # refuse a trial that asks for nothing, before anything starts
        self._context: SweepContext | None = None
        self._job: TrainJob | None = None
        self._owns_ray = False
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._attempts: dict[int, RayAttempt] = {}
        self._ending: list[RayAttempt] = []  # gangs whose outcome is known, still ending
        self._idle: list[RayReplica] = []  # warm actors (or slots) of trials without replicas
        self._shared: list[SharedActor] = []  # the live actors of trials_per_actor > 1
        self._backlog: list[Event] = []
        self._hosts: set[str] = set()
        self._warned_shared_dir = False
        self._slot_counter = 0
        self._sys_path: list[str] = []
        self._objective: Any = None  # the objective the actors run
        self._objective_payload: Any = None  # the objective in Ray's object store
        self._next_cluster_check = 0.0
        self._next_pending_warning = 0.0
        self._placeable_now = True

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RayLauncher:
        """The launcher a sweep file describes: ``launcher: {type: ray, address: auto, ...}``.

        Every key but ``type`` is an argument of :class:`RayLauncher`.
        """
        options = {key: value for key, value in spec.items() if key != "type"}
        if spec.get("type", "ray") != "ray":
            raise ConfigError(f"launcher.type: expected 'ray', got {spec.get('type')!r}")
        allowed = set(inspect.signature(cls).parameters)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                f"launcher.{unknown[0]}: unknown field; allowed fields are type, "
                f"{', '.join(sorted(allowed))}"
            )
        return cls(**options)

    def to_spec(self) -> dict[str, Any]:
        """This launcher as a sweep file's ``launcher:``; stored with the sweep so that
        ``hypersweep resume`` runs the rest of it on the same cluster.

        A launcher that connects to a Ray already initialized in this process is stored with
        that cluster's address. Values that are not plain data (objects in ``init_kwargs``)
        are left out, with a warning.
        """
        import json

        address = self.address
        ray = sys.modules.get("ray")
        if address is None and ray is not None and ray.is_initialized():
            address = ray.get_runtime_context().gcs_address
        spec: dict[str, Any] = {"type": "ray", "address": address}
        for name in inspect.signature(type(self)).parameters:
            if name == "address":
                continue
            value = getattr(self, name)
            if name == "max_pending_trials" and value == (self.max_concurrent or 16):
                continue  # the default, which follows max_concurrent
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                logger.warning(
                    "launcher.%s is not plain data: a resumed sweep runs without it", name
                )
                continue
            spec[name] = value
        return spec

    # --- start ---------------------------------------------------------------------------

    def start(self, context: SweepContext) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "launcher: RayLauncher needs Ray; pip install 'hypersweep[ray]'"
            ) from None
        if self.trials_per_actor > 1 and context.job is not None:
            raise ConfigError(
                "launcher.trials_per_actor: a trial with replicas runs each replica in an "
                "actor of its own; set trials_per_actor=1 for this sweep"
            )
        self._context = context
        self._job = context.job
        job_env = self._check_runtime_env(owns_connection=not ray.is_initialized())
        if not ray.is_initialized():
            init_kwargs = dict(self.init_kwargs)
            if job_env:
                init_kwargs["runtime_env"] = job_env
            ray.init(address=self.address, **init_kwargs)
            self._owns_ray = True
        # A shipped working_dir is the code to run: it goes before the driver's own paths,
        # which could hold a stale copy of the same modules on a node.
        self._sys_path = [entry or os.getcwd() for entry in sys.path]
        runtime_env = {} if job_env else dict(self.runtime_env)
        if self.env:
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **self.env}
        # Each trial of a shared actor runs its objective in a thread (a call) of its own.
        concurrency = _ACTOR_CONCURRENCY + self.trials_per_actor - 1
        self._actor_options = {"max_concurrency": concurrency, "max_restarts": 0}
        if runtime_env:
            self._actor_options["runtime_env"] = runtime_env
        self._actor_class = ray.remote(TrialActor)
        # Put once: each new actor reads it from the object store (Ray resolves the ref).
        # tune.with_parameters objects go in the object store once; the function that reads
        # them is put as it is, so that Ray tracks the references it holds.
        self._objective = context.objective
        function = put_in_object_store(context.objective)
        self._objective_payload = ray.put(context.objective if function is None else function)
        self._check_cluster(time.monotonic(), starting=True)
        self._check_shared_checkpoints()

    def _check_shared_checkpoints(self, timeout: float = 120.0) -> None:
        """Refuse a checkpoint folder that the nodes trials run on do not share with the driver.

        The trials write checkpoints there and the driver looks there for a retry's restore
        point: a folder only the driver sees (a laptop driver through Ray Client, a node
        without the shared mount) would silently retrain every retry from zero. The driver
        writes a marker file, and a task on each node that could run a trial looks for it.
        """
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self._context is not None
        folder = self._context.checkpoint_dir
        if folder is None or "://" in folder:
            return
        bundles = self._bundles()
        nodes = [
            node
            for node in ray.nodes()
            if node.get("Alive")
            and any(_fits(bundle, node.get("Resources") or {}) for bundle in bundles)
        ]
        if not nodes:
            return  # none can run a trial yet; the insufficient-resources warning says so
        Path(folder).mkdir(parents=True, exist_ok=True)
        marker = Path(folder) / f".hypersweep-shared-{uuid.uuid4().hex}"
        marker.write_bytes(b"")
        try:
            probe = ray.remote(num_cpus=0, max_retries=1)(os.path.exists)
            seen: list[bool] = ray.get(
                [
                    probe.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(
                            node["NodeID"], soft=False
                        ),
                        runtime_env=self._actor_options.get("runtime_env"),
                    ).remote(str(marker))
                    for node in nodes
                ],
                timeout=timeout,
            )
        except ray.exceptions.GetTimeoutError:
            logger.warning(
                "Could not check within %g s that the Ray nodes share checkpoint_dir %s with "
                "this driver; every node must reach it at the same path",
                timeout,
                folder,
            )
            return
        finally:
            marker.unlink(missing_ok=True)
        blind = [
            str(node.get("NodeManagerAddress"))
            for node, sees in zip(nodes, seen, strict=True)
            if not sees
        ]
        if blind:
            raise ConfigError(
                f"checkpoint_dir: {folder} is not shared between this driver and the Ray "
                f"node(s) {', '.join(blind)}: a file the driver wrote there is not seen by "
                "their workers, so checkpoints would be written where the driver cannot find "
                "them and retries would start from zero. Set checkpoint_dir= to a folder every "
                "node and the driver mount at the same path (NFS, a ReadWriteMany volume)"
            )

    def _check_runtime_env(self, *, owns_connection: bool) -> dict[str, Any]:
        """Validate ``runtime_env`` before the first trial; return it if it goes to ``ray.init``.

        Ray uploads local folders (``working_dir``, ``py_modules``) only for a whole job, in
        ``ray.init``; an actor's own runtime_env takes only remote URIs. So when this launcher
        connects, the runtime_env is the job's (every actor inherits it); when Ray is already
        connected, local folders are refused with the fix.
        """
        from ray.runtime_env import RuntimeEnv

        env = dict(self.runtime_env)
        local = _local_paths(env)
        for field_name, path in local:
            if not os.path.isdir(path) and not os.path.isfile(path):
                raise ConfigError(
                    f"launcher.runtime_env.{field_name}: {path!r} does not exist on this machine"
                )
        if local and not owns_connection:
            field_name, path = local[0]
            raise ConfigError(
                f"launcher.runtime_env.{field_name}: Ray ships a local folder ({path!r}) only "
                "with the whole job, and Ray is already connected in this process: pass "
                f"runtime_env={{{field_name!r}: ...}} to ray.init() instead, or give a remote "
                "URI (s3://bucket/code.zip)"
            )
        if local and "runtime_env" in self.init_kwargs:
            raise ConfigError(
                "launcher.runtime_env: give the runtime_env once, not also in init_kwargs"
            )
        # Ray's own checks of every other field (pip, conda, env_vars...), before anything runs.
        remote = {k: v for k, v in env.items() if k not in {name for name, _ in local}}
        try:
            RuntimeEnv(**remote)
        except Exception as error:  # noqa: BLE001 - Ray raises ValueError, TypeError...
            raise ConfigError(f"launcher.runtime_env: {error}") from None
        return env if local else {}

    def _bundles(self) -> list[dict[str, float]]:
        """The placement-group bundles of one attempt, in rank order."""
        if self._job is None:
            return [self._bundle(None, None)]
        job = self._job
        return [
            self._bundle(job.group_of(r.rank).resources.cpus, job.group_of(r.rank).resources.gpus)
            for r in job.replica_ids()
        ]

    def _actor_options_in(
        self, bundle: Mapping[str, float], group: Any, index: int
    ) -> dict[str, Any]:
        """Actor options that take ``bundle``'s resources from bundle ``index`` of ``group``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        return dict(
            self._actor_options,
            num_cpus=bundle.get("CPU", 0.0),
            num_gpus=bundle.get("GPU", 0.0),
            resources=custom or None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=index, placement_group_capture_child_tasks=True
            ),
        )

    def _bundle(self, cpus: float | None, gpus: int | None) -> dict[str, float]:
        bundle: dict[str, float] = {}
        cpu = self.num_cpus if cpus is None else float(cpus)
        gpu = self.num_gpus if gpus is None else float(gpus)  # 0 is a choice: no GPU
        if cpu:
            bundle["CPU"] = cpu
        if gpu:
            bundle["GPU"] = gpu
        bundle.update({name: amount for name, amount in self.resources.items() if amount})
        if not bundle:
            raise ConfigError("launcher: a trial must ask for some resource (num_cpus > 0)")
        return bundle

    def _check_cluster(self, now: float, *, starting: bool = False) -> None:
        """Follow the cluster as nodes join and leave; warn about trials it cannot place.

        Concurrency is not sized from the cluster: trials run as Ray places their groups.
        This only keeps ``capacity`` (for logs and tools) and says when a trial's bundles fit
        no set of live nodes, at start and then every ``pending_warning`` seconds while
        trials wait, as Ray Tune's insufficient-resources warning does.
        """
        import ray

        self._next_cluster_check = now + min(2.0, self.pending_warning)
        bundles = self._bundles()
        if self._job is not None and self._job.min_replicas is not None:
            bundles = bundles[: self._job.min_replicas]  # an elastic trial starts with min
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        self._hosts = {str(node.get("NodeManagerAddress")) for node in nodes}
        capacities = [dict(node.get("Resources") or {}) for node in nodes]
        needed: dict[str, float] = {}
        for bundle in bundles:
            for name, amount in bundle.items():
                needed[name] = needed.get(name, 0.0) + amount
        totals = {name: sum(c.get(name, 0.0) for c in capacities) for name in needed}
        capacity = min(math.floor(totals[name] / needed[name] + 1e-9) for name in needed)
        if capacity != self.capacity or starting:
            logger.info(
                "Ray cluster: %d node(s), room for %d trial(s) at once", len(nodes), capacity
            )
        self.capacity = capacity
        self._placeable_now = _placeable(bundles, capacities, self.placement_strategy)
        if self._placeable_now:
            self._next_pending_warning = 0.0
            return
        waiting = [a for a in self._attempts.values() if a.phase == "starting"]
        if starting or (waiting and now >= self._next_pending_warning):
            self._next_pending_warning = now + self.pending_warning
            timeout = (
                f"fails after {self.pending_timeout:g} s"
                if self.pending_timeout
                else "waits until the cluster grows (an autoscaler adds nodes) or forever"
            )
            logger.warning(
                "Insufficient resources: the Ray cluster (%s) cannot place a trial (%s, %s); "
                "%d trial(s) waiting; each %s. Lower the launcher's num_cpus/num_gpus/"
                "resources or the replicas, or add nodes",
                ", ".join(f"{name}: {totals[name]:g}" for name in needed) or "no nodes",
                " + ".join(_format_bundle(b) for b in bundles),
                self.placement_strategy,
                len(waiting),
                timeout,
            )

    # --- trials --------------------------------------------------------------------------

    def free_slots(self) -> int:
        """Room for trials: under ``max_concurrent``, and few enough waiting for placement.

        Trials whose placement groups wait are the demand an autoscaler sees, so up to
        ``max_pending_trials`` of them are kept; a warm actor between trials is room now.
        """
        assert self._context is not None, "start() first"
        used = len(self._attempts) + len(self._ending)
        pending = sum(1 for attempt in self._attempts.values() if attempt.phase == "starting")
        room = self.max_pending_trials - pending + len(self._idle)
        if self.max_concurrent is not None:
            room = min(room, self.max_concurrent - used)
        return max(0, room)

    def launch(self, assignment: TrialAssignment) -> None:
        assert self._context is not None, "start() first"
        self._warn_about_checkpoints(assignment)
        number = assignment.trial_number
        if assignment.attempt == 0:
            self._adopt_idle()  # trials already waiting (retries first) get warm actors first
        if self._job is None and self._idle:
            member = self._idle.pop()
            attempt = RayAttempt(assignment, None, [member], grace=self.replica_grace)
            if member.shared is not None:
                member.shared.owners[member.slot] = attempt
            attempt.run(self._objective, self._objective_payload)
            self._attempts[number] = attempt
            return
        try:
            attempt = (
                self._shared_attempt(assignment)
                if self.trials_per_actor > 1
                else self._new_attempt(assignment)
            )
        except Exception as error:  # noqa: BLE001 - reported as a crash, retried or failed
            self._backlog.append(Crashed(number, f"could not start the trial on Ray: {error}"))
            return
        self._attempts[number] = attempt
        if assignment.attempt > 0 and self.trials_per_actor == 1:
            self._queue_behind(attempt)

    def _shared_attempt(self, assignment: TrialAssignment) -> RayAttempt:
        """The attempt in a slot no trial has had yet, on a new shared actor if none is left.

        The slot's trial starts once the actor is placed (its ``prepare`` answers).
        """
        self._shared = [actor for actor in self._shared if not actor.dead]
        slot = None
        for shared in self._shared:
            if (slot := shared.next_slot()) is not None:
                break
        if slot is None:
            shared = self._new_shared_actor()
            self._shared.append(shared)
            slot = shared.next_slot()
        assert slot is not None
        member = RayReplica(ReplicaId(0, "trial", 0), shared.actor, shared=shared, slot=slot)
        attempt = RayAttempt(assignment, None, [member], grace=self.replica_grace)
        shared.owners[slot] = attempt
        attempt.prepare()
        return attempt

    def _new_shared_actor(self) -> SharedActor:
        """An actor with ``trials_per_actor`` slots, in a placement group of its own whose
        bundle is that many trials' resources."""
        from ray.util.placement_group import placement_group

        assert self._context is not None
        slots = self.trials_per_actor
        bundle = {name: amount * slots for name, amount in self._bundle(None, None).items()}
        self._slot_counter += 1
        # Unique in the cluster: another sweep of this name may still be ending its actors.
        suffix = f"{self._slot_counter}-{uuid.uuid4().hex[:6]}"
        label = f"hs-{self._context.sweep_name}-shared-{suffix}"
        group = placement_group([bundle], strategy=self.placement_strategy, name=label)
        options = self._actor_options_in(bundle, group, 0)
        actor = self._actor_class.options(name=label, **options).remote(
            self._sys_path, label, slots
        )
        return SharedActor(actor, group, slots)

    def _queue_behind(self, retry: RayAttempt) -> None:
        """Put the placement groups of new trials still waiting behind a retry's.

        Ray places waiting groups roughly in the order they were made; a trial that already
        ran (and may have a checkpoint) goes before trials that never started.
        """
        for number, attempt in list(self._attempts.items()):
            unplaced = all(member.info is None for member in attempt.replicas)
            if attempt is retry or attempt.phase != "starting" or not unplaced:
                continue
            if attempt.assignment.attempt > 0:
                continue
            attempt.kill()
            try:
                self._attempts[number] = self._new_attempt(attempt.assignment)
            except Exception as error:  # noqa: BLE001 - reported as a crash, retried or failed
                del self._attempts[number]
                self._backlog.append(Crashed(number, f"could not start the trial on Ray: {error}"))

    def _new_attempt(self, assignment: TrialAssignment) -> RayAttempt:
        """A placement group for the attempt, and an actor in each of its bundles."""
        job = self._job
        if job is not None and job.min_replicas is not None:
            return ElasticRayAttempt.admit(
                assignment, job, self._place, self._spawn, self.replica_grace
            )
        ranks = range(1 if job is None else job.world_size)
        group = self._place(assignment, ranks)
        replicas = self._spawn(assignment, job, [(group, index) for index in ranks], "")
        if job is None:
            # A warm slot: the actor keeps its placement group across trials.
            replicas[0].placement_group, group = group, None
        attempt = RayAttempt(
            assignment, job, replicas, placement_group=group, grace=self.replica_grace
        )
        attempt.prepare()
        return attempt

    def _place(self, assignment: TrialAssignment, ranks: range) -> Any:
        """A placement group with the bundles of these ranks (Ray places it when it can)."""
        from ray.util.placement_group import placement_group

        sweep = self._context.sweep_name if self._context else assignment.sweep_name
        bundles = self._bundles()[ranks.start : ranks.stop]
        self._slot_counter += 1
        name = dns_label(f"hypersweep-{sweep}-t{assignment.trial_number}-a{assignment.attempt}")
        return placement_group(
            bundles, strategy=self.placement_strategy, name=f"{name}-{self._slot_counter}"
        )

    def _spawn(
        self,
        assignment: TrialAssignment,
        job: TrainJob | None,
        slots: list[tuple[Any, int]],
        tag: str,
    ) -> list[RayReplica]:
        """An actor for each of the first ``len(slots)`` ranks, pinned to its slot's bundle.

        ``tag`` tells apart the actors of an elastic attempt's later rounds.
        """

        sweep = self._context.sweep_name if self._context else assignment.sweep_name
        number = assignment.trial_number
        bundles = self._bundles()
        ids = [ReplicaId(0, "trial", 0)] if job is None else job.replica_ids()
        replicas = []
        for replica_id, (group, index) in zip(ids, slots, strict=False):
            bundle = bundles[replica_id.rank]
            options = self._actor_options_in(bundle, group, index)
            # Named after its trial, so that `ray list actors` and the dashboard say which.
            label = _actor_name(sweep, number, assignment.attempt, replica_id, job)
            label += f"-{tag}" if tag else ""
            try:
                actor = self._actor_class.options(name=label, **options).remote(
                    self._sys_path, label
                )
            except ValueError:  # the name is still held by an actor being killed
                label = f"{label}-{self._slot_counter}"
                actor = self._actor_class.options(name=label, **options).remote(
                    self._sys_path, label
                )
            replicas.append(RayReplica(replica_id, actor))
        return replicas

    def _warn_about_checkpoints(self, assignment: TrialAssignment) -> None:
        if self._warned_shared_dir or len(self._hosts) < 2 or is_url(assignment.checkpoint_dir):
            return  # object storage (s3://...) is reached from every node
        self._warned_shared_dir = True
        logger.info(
            "Trials on %d Ray hosts checkpoint under %s: every node must reach this path "
            "(a shared filesystem); set checkpoint_dir= to a shared mount otherwise",
            len(self._hosts),
            assignment.checkpoint_dir,
        )

    # --- events --------------------------------------------------------------------------

    def poll(self, timeout: float) -> list[Event]:
        import ray

        self._adopt_idle()
        now = time.monotonic()
        if now >= self._next_cluster_check:
            self._check_cluster(now)
        events, self._backlog = self._backlog, []
        self._expire_pending(now, events)
        waiting: dict[Any, tuple[RayAttempt | None, RayReplica]] = {}
        for attempt in (*self._attempts.values(), *self._ending):
            for member in attempt.replicas:
                if member.pending is not None:
                    waiting[member.pending] = (attempt, member)
        for member in self._idle:
            if member.pending is not None:
                waiting[member.pending] = (None, member)
        hosts: dict[Any, SharedActor] = {}
        for shared in self._shared:
            shared.send_answers()  # what the last pass decided for its slots
            if shared.pending is None and shared.placed and not shared.dead:
                shared.poll()
            if shared.pending is not None:
                hosts[shared.pending] = shared
        if events:
            timeout = 0.0
        timeout = min(timeout, max(0.0, self._next_cluster_check - now))
        deadlines = [
            deadline
            for attempt in (*self._attempts.values(), *self._ending)
            if (deadline := attempt.next_deadline()) is not None
        ]
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
        if waiting or hosts:
            refs = [*waiting, *hosts]
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            values = _get_all(ready)
            for ref in ready:
                if ref in hosts:
                    self._on_shared_reply(hosts[ref], ref, events, values)
                    continue
                owner, member = waiting[ref]
                if member.pending is None or member.pending != ref:
                    continue  # superseded while handling an earlier reply (Ray Client hands
                    # back equal refs, not the same objects: compare, do not use "is")
                self._on_reply(owner, member, ref, events, values)
        elif timeout > 0:
            time.sleep(timeout)
        self._settle(events)
        return events

    def _on_reply(
        self,
        attempt: RayAttempt | None,
        member: RayReplica,
        ref: Any,
        events: list[Event],
        values: dict[Any, Any] | None = None,
    ) -> None:
        import ray

        kind = member.pending_kind
        member.pending = None
        try:
            # Fetched with the other replies of this poll, unless one of them failed.
            value = values[ref] if values is not None else ray.get(ref)
        except Exception as error:  # noqa: BLE001 - any failed call means the actor is lost
            if attempt is None:
                self._drop_idle(member, error)
            else:
                events.extend(attempt.on_death(member, error))
            return
        if attempt is None:  # a warm actor between trials: keep watching it
            member.poll()
            return
        if kind == "prepare":
            assert self._context is not None
            if member.shared is not None:
                member.shared.placed = True
            attempt.on_prepared(member, value, self._objective, self._objective_payload)
        else:
            events.extend(attempt.on_messages(member, value))

    def _on_shared_reply(
        self, shared: SharedActor, ref: Any, events: list[Event], values: dict[Any, Any] | None
    ) -> None:
        """Hand what a shared actor's slots said to their attempts, and poll it again."""
        import ray

        shared.pending = None
        try:
            value = values[ref] if values is not None else ray.get(ref)
        except Exception as error:  # noqa: BLE001 - any failed call means the actor is lost
            self._lose_shared(shared, error, events)
            return
        by_slot: dict[int, list[tuple[Any, ...]]] = {}
        for slot, message in value:
            by_slot.setdefault(slot, []).append(message)
        for slot, messages in by_slot.items():
            attempt = shared.owners.get(slot)
            if attempt is not None and attempt.phase != "done":
                events.extend(attempt.on_messages(attempt.replicas[0], messages))
                shared.unanswered += attempt.awaiting()
        if not shared.dead:
            shared.poll()

    def _lose_shared(self, shared: SharedActor, error: BaseException, events: list[Event]) -> None:
        """A shared actor died: each trial it ran crashes (and is retried); its warm slots go."""
        shared.end()
        for attempt in (*self._attempts.values(), *self._ending):
            for member in attempt.replicas[:1]:  # a shared actor's trials have no replicas
                if member.shared is shared and not member.dead:
                    events.extend(attempt.on_death(member, error))
        if any(member.shared is shared for member in self._idle):
            logger.info("A warm Ray actor was lost between trials: %s", describe_actor_error(error))
            self._idle = [member for member in self._idle if member.shared is not shared]

    def _drop_idle(self, member: RayReplica, error: BaseException) -> None:
        logger.info("A warm Ray actor was lost between trials: %s", describe_actor_error(error))
        self._idle.remove(member)
        if member.shared is not None:
            member.shared.end()  # its other slots learn it from their own calls
        kill_actor(member.actor)
        remove_group(member.placement_group)

    def _settle(self, events: list[Event]) -> None:
        """End attempts whose outcome is settled; keep warm actors; free what is done."""
        now = time.monotonic()
        for number, attempt in list(self._attempts.items()):
            events.extend(attempt.tick(now))
            if attempt.phase == "finishing":
                del self._attempts[number]
                self._ending.append(attempt)
            elif attempt.phase == "done":
                del self._attempts[number]
                self._retire(attempt)
        for attempt in list(self._ending):
            events.extend(attempt.tick(now))
            if attempt.phase == "done":
                self._ending.remove(attempt)
                self._retire(attempt)

    def _adopt_idle(self) -> None:
        """Run trials still waiting for placement on warm actors that stayed idle.

        Retries of trials that already ran go first, then the others in the order they were
        launched. A warm actor keeps its bundle, so a trial whose own placement group waits
        for resources (the cluster shrank, another job took CPUs) would otherwise wait for
        the very resources that the idle actors hold, while new trials took them.
        """
        assert self._context is not None
        if not self._idle or self.trials_per_actor > 1:
            return  # a shared actor's trials wait for its one placement group, not their own
        waiting = sorted(
            (
                attempt
                for attempt in self._attempts.values()
                if attempt.job is None
                and attempt.phase == "starting"
                and attempt.replicas[0].info is None
            ),
            key=lambda attempt: (attempt.assignment.attempt == 0, attempt.started),
        )
        for attempt in waiting:
            if not self._idle:
                return
            placing = attempt.replicas[0]
            kill_actor(placing.actor)
            remove_group(placing.placement_group)
            attempt.replicas = [self._idle.pop()]
            attempt.run(self._objective, self._objective_payload)

    def _expire_pending(self, now: float, events: list[Event]) -> None:
        """Fail trials that waited ``pending_timeout`` for a placement the cluster cannot give."""
        if self.pending_timeout is None or self._placeable_now:
            return
        for number, attempt in list(self._attempts.items()):
            if attempt.phase != "starting" or now - attempt.started < self.pending_timeout:
                continue
            if any(member.info is not None for member in attempt.replicas):
                continue
            attempt.kill()
            del self._attempts[number]
            message = (
                f"could not be placed on the Ray cluster within {self.pending_timeout:g} s "
                f"(pending_timeout): it asks for "
                f"{' + '.join(_format_bundle(b) for b in self._bundles())}, more than the "
                "live nodes have; lower the launcher's resources or add nodes"
            )
            events.append(Errored(number, message, message))

    def _retire(self, attempt: RayAttempt) -> None:
        """Keep a reusable actor warm for the next trial, or kill the attempt's actors."""
        if attempt.reusable and self.reuse_actors and attempt.job is None:
            member = attempt.replicas[0]
            if member.pending is None and not member.dead:
                member.poll()
            self._idle.append(member)
            return
        attempt.kill()

    def respond(self, trial_number: int, decision: str) -> None:
        self.respond_until(trial_number, decision, 0)

    def respond_until(self, trial_number: int, decision: str, decide_from: int | None) -> None:
        """Answer; a trial's reports before ``decide_from`` then go in batches, unanswered."""
        attempt = self._attempts.get(trial_number)
        if attempt is not None:
            attempt.respond(decision, decide_from)

    def stop(self, trial_number: int) -> None:
        attempt = self._attempts.pop(trial_number, None)
        if attempt is not None:
            attempt.kill()
        self._backlog = [e for e in self._backlog if e.trial_number != trial_number]

    def shutdown(self) -> None:
        for attempt in self._attempts.values():
            attempt.kill()
        self._attempts.clear()
        # Gangs whose rank 0 has finished are ending by themselves: let them, within their
        # grace period, so that the other ranks' last steps are not cut off.
        while self._ending and self._context is not None:
            self.poll(0.1)
        self._ending.clear()
        for member in self._idle:
            kill_actor(member.actor)
            remove_group(member.placement_group)
        self._idle.clear()
        for shared in self._shared:  # every live one, idle or not
            shared.end()
        self._shared.clear()
        self._backlog.clear()
        self._objective_payload = None
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False


def _get_all(refs: list[Any]) -> dict[Any, Any] | None:
    """The values of ready replies, fetched in one call; None if one of them failed (each is
    then fetched alone, to tell which actor was lost)."""
    import ray

    if len(refs) < 2:
        return None
    try:
        return dict(zip(refs, ray.get(refs), strict=True))
    except Exception:  # noqa: BLE001 - a lost actor's reply: see _on_reply
        return None


def _actor_name(
    sweep: str, number: int, attempt: int, replica: ReplicaId, job: TrainJob | None
) -> str:
    """``hs-<sweep>-t<N>``, with ``-a<attempt>`` for retries and ``-r<rank>`` for replicas."""
    name = f"hs-{sweep}-t{number}"
    if attempt:
        name += f"-a{attempt}"
    if job is not None:
        name += f"-r{replica.rank}"
    return name


def _local_paths(runtime_env: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, path)`` of the runtime_env's local folders and files, which Ray uploads."""
    found: list[tuple[str, str]] = []
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, (str, os.PathLike)) and "://" not in str(working_dir):
        found.append(("working_dir", os.fspath(working_dir)))
    for module in runtime_env.get("py_modules") or []:
        if isinstance(module, (str, os.PathLike)) and "://" not in str(module):
            found.append(("py_modules", os.fspath(module)))
    return found


def _format_bundle(bundle: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in bundle.items()) + "}"


def _fits(bundle: Mapping[str, float], capacity: Mapping[str, float]) -> bool:
    return all(capacity.get(name, 0.0) + 1e-9 >= amount for name, amount in bundle.items())


def _placeable(
    bundles: list[dict[str, float]], capacities: list[dict[str, float]], strategy: str
) -> bool:
    """Whether an empty cluster of ``capacities`` could place ``bundles`` with ``strategy``."""
    if strategy == "STRICT_PACK":
        total: dict[str, float] = {}
        for bundle in bundles:
            for name, amount in bundle.items():
                total[name] = total.get(name, 0.0) + amount
        return any(_fits(total, capacity) for capacity in capacities)
    if strategy == "STRICT_SPREAD":
        # One distinct node per bundle: a greedy match is enough for identical bundles.
        free = list(capacities)
        for bundle in bundles:
            match = next((c for c in free if _fits(bundle, c)), None)
            if match is None:
                return False
            free.remove(match)
        return True
    remaining = [dict(capacity) for capacity in capacities]
    for bundle in bundles:
        match = next((c for c in remaining if _fits(bundle, c)), None)
        if match is None:
            return False
        for name, amount in bundle.items():
            match[name] = match.get(name, 0.0) - amount
    return True
