"""One description of a multi-replica training job, whatever runs it.

``Replicas`` is what a user writes (``tune(..., replicas=hs.Replicas(n=4))``). The orchestrator
turns it into a ``TrainJob``: plain data naming the framework, the replica roles and counts, the
entrypoint, the environment, the resources of each replica and the restart policy. The local
launcher turns a ``TrainJob`` into processes; a Kubernetes ``TrainJob`` resource or a Ray
placement group can be rendered from the same object (``to_dict``/``from_dict``), so that where a
trial runs does not change what it is. Nothing here starts anything or imports a framework.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from hypersweep._errors import ConfigError

Framework = Literal["pytorch", "tensorflow", "jax"]
FRAMEWORKS: tuple[str, ...] = ("pytorch", "tensorflow", "jax")

# Replica roles in rank order, as Kubeflow's PyTorchJob and TFJob name them (lower case). TF's
# parameter servers and evaluators take no part in MultiWorkerMirroredStrategy's collectives, so
# they are left out: every replica of a job here is a rank of one collective group.
ROLES: dict[str, tuple[str, ...]] = {
    "pytorch": ("master", "worker"),
    "tensorflow": ("chief", "worker"),
    "jax": ("worker",),  # JAXJob's only replica type; worker 0 hosts the coordinator
}

# The port each replica listens on inside a cluster, where every replica has its own address:
# PyTorchJob's ``pytorchjob-port``, TFJob's ``tfjob-port`` and JAXJob's ``jaxjob-port`` (the JAX
# coordinator's). Local replicas share one host and get allocated ports instead.
DEFAULT_PORTS: dict[str, int] = {"pytorch": 23456, "tensorflow": 2222, "jax": 6666}

RESTART_POLICIES: tuple[str, ...] = ("OnFailure", "ExitCode", "Never")

_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


def _fail(where: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}")


def _check_count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _check_env(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _fail(where, f"expected a mapping of strings to strings, got {value!r}")
    return dict(value)


def _check_cpus(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(where, f"expected a positive number of CPUs, got {value!r}")
    return float(value)


def _check_elastic(value: Any, where: str) -> tuple[int, int]:
    """``(min, max)`` of an elastic gang, as torchrun's ``--nnodes=min:max``."""
    if len(value) != 2:
        raise _fail(where, f"expected a number or (min, max), got {value!r}")
    low = _check_count(value[0], f"{where}[0]", 1)
    high = _check_count(value[1], f"{where}[1]", 1)
    if low > high:
        raise _fail(where, f"min {low} is above max {high}")
    return low, high


@dataclass(frozen=True)
class Replicas:
    """Run each trial as ``n`` replicas of the objective, one process each, as one gang.

    Args:
        n: replicas per trial (the world size), or ``(min, max)`` for an elastic PyTorch gang
            (torchrun's ``--nnodes=min:max``): it starts with ``max``; a lost replica does not
            stop the trial while ``min`` remain (the rest go on from the last checkpoint with
            the smaller world, without using a retry), and it grows back at the next
            checkpointed report.
        framework: ``"pytorch"`` (``MASTER_ADDR``, ``RANK``... as torchrun and PyTorchJob set
            them; gloo on CPU, NCCL on GPUs), ``"tensorflow"`` (``TF_CONFIG`` as TFJob sets
            it, for ``MultiWorkerMirroredStrategy``) or ``"jax"`` (the coordinator address,
            process count and id as Kubeflow's JAXJob and JAX runtime set them, so that
            ``jax.distributed.initialize()`` needs no arguments; gloo collectives on CPU).
        gpus_per_replica: GPUs given to each replica through ``CUDA_VISIBLE_DEVICES``; trials
            wait for free GPUs rather than share them. 0 hides every GPU from the replica, also
            where a launcher gives GPUs by default (``RayLauncher(num_gpus=1)``); None (the
            default) takes the launcher's default, none locally.
        cpus_per_replica: CPU threads per replica (``OMP_NUM_THREADS``); the default 1 is
            torchrun's, so that replicas do not oversubscribe the cores they share.
        env: extra environment variables of every replica.
        restart_policy: what a failed replica does to its trial: ``"OnFailure"`` (default, as
            PyTorchJob: any failure restarts the whole gang from the latest checkpoint, up to
            ``max_retries`` times), ``"ExitCode"`` (a replica killed by a signal restarts the
            gang, an exception fails the trial) or ``"Never"`` (any failure fails the trial).
    """

    n: int | tuple[int, int]
    framework: Framework = "pytorch"
    gpus_per_replica: int | None = None
    cpus_per_replica: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    restart_policy: str = "OnFailure"

    def validated(self, where: str = "replicas") -> Replicas:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        n = _check_elastic(self.n, f"{where}.n") if isinstance(self.n, (tuple, list)) else None
        if n is None:
            _check_count(self.n, f"{where}.n", 1)
        if self.framework not in FRAMEWORKS:
            raise _fail(
                f"{where}.framework",
                f"expected one of {', '.join(FRAMEWORKS)}, got {self.framework!r}",
            )
        if n is not None and self.framework != "pytorch":
            raise _fail(
                f"{where}.n",
                f"an elastic range (min, max) is for framework pytorch, not {self.framework}; "
                "give one number",
            )
        if self.gpus_per_replica is not None:
            _check_count(self.gpus_per_replica, f"{where}.gpus_per_replica", 0)
        cpus = _check_cpus(self.cpus_per_replica, f"{where}.cpus_per_replica")
        env = _check_env(self.env, f"{where}.env")
        if self.restart_policy not in RESTART_POLICIES:
            raise _fail(
                f"{where}.restart_policy",
                f"expected one of {', '.join(RESTART_POLICIES)}, got {self.restart_policy!r}",
            )
        return replace(self, n=n or self.n, cpus_per_replica=cpus, env=env)

    @property
    def max_n(self) -> int:
        """The most replicas a trial runs at once (``n``, or the top of its elastic range)."""
        return self.n[1] if isinstance(self.n, tuple) else self.n

    @classmethod
    def from_value(cls, value: Any, where: str = "replicas") -> Replicas:
        """A validated ``Replicas`` from itself, a mapping of its fields, or a replica count."""
        if isinstance(value, Replicas):
            return value.validated(where)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(n=value).validated(where)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                allowed = ", ".join(cls.__dataclass_fields__)
                raise _fail(f"{where}.{unknown[0]}", f"unknown field; allowed fields are {allowed}")
            if "n" not in value:
                raise _fail(f"{where}.n", "give the number of replicas per trial")
            return cls(**value).validated(where)
        raise _fail(where, f"expected hypersweep.Replicas or a mapping, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The plain-data form stored with a sweep and written in YAML."""
        return {
            "n": list(self.n) if isinstance(self.n, tuple) else self.n,
            "framework": self.framework,
            "gpus_per_replica": self.gpus_per_replica,
            "cpus_per_replica": self.cpus_per_replica,
            "env": dict(self.env),
            "restart_policy": self.restart_policy,
        }

    def to_job(self, name: str, *, backoff_limit: int) -> TrainJob:
        """The job every trial of a sweep runs: rank 0 is PyTorch's master or TF's worker 0.

        TensorFlow replicas are all workers, worker 0 acting as chief, as in TensorFlow's
        multi-worker tutorial and TFJob's default success policy; JAX replicas are all workers
        too (JAXJob's one role), worker 0 hosting the coordinator.
        """
        resources = Resources(cpus=self.cpus_per_replica, gpus=self.gpus_per_replica)
        n = self.max_n
        if self.framework == "pytorch":
            groups = [ReplicaGroup("master", 1, resources)]
            if n > 1:
                groups.append(ReplicaGroup("worker", n - 1, resources))
        else:
            groups = [ReplicaGroup("worker", n, resources)]
        return TrainJob(
            name=name,
            framework=self.framework,
            replicas=tuple(groups),
            env=dict(self.env),
            restart_policy=RestartPolicy(self.restart_policy, backoff_limit),
            min_replicas=self.n[0] if isinstance(self.n, tuple) else None,
        ).validated()


@dataclass(frozen=True)
class Resources:
    """What one replica needs: CPUs (threads locally, a request in Kubernetes) and GPUs."""

    cpus: float | None = None
    gpus: int | None = None  # None: the launcher's default (none but on RayLauncher(num_gpus=))
    memory: str | None = None  # a Kubernetes quantity ("4Gi"); not enforced locally

    def to_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory": self.memory}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "resources") -> Resources:
        memory = data.get("memory")
        if memory is not None and not isinstance(memory, str):
            raise _fail(f"{where}.memory", f"expected a quantity such as '4Gi', got {memory!r}")
        return cls(
            cpus=_check_cpus(data.get("cpus"), f"{where}.cpus"),
            gpus=None
            if data.get("gpus") is None
            else _check_count(data["gpus"], f"{where}.gpus", 0),
            memory=memory,
        )


@dataclass(frozen=True)
class ReplicaGroup:
    """``count`` replicas of one role, like a Kubeflow ``replicaSpecs`` entry."""

    role: str
    count: int
    resources: Resources = field(default_factory=Resources)
    env: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "count": self.count,
            "resources": self.resources.to_dict(),
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "replicas[0]") -> ReplicaGroup:
        if not isinstance(data, Mapping):
            raise _fail(where, f"expected a mapping, got {data!r}")
        resources = data.get("resources") or {}
        if not isinstance(resources, Mapping):
            raise _fail(f"{where}.resources", f"expected a mapping, got {resources!r}")
        return cls(
            role=str(data.get("role", "")),
            count=_check_count(data.get("count"), f"{where}.count", 1),
            resources=Resources.from_dict(resources, f"{where}.resources"),
            env=_check_env(data.get("env"), f"{where}.env"),
        )


@dataclass(frozen=True)
class RestartPolicy:
    """When a failed replica restarts its gang, and how many times (``backoff_limit``)."""

    policy: str = "OnFailure"
    backoff_limit: int = 2

    def restarts(self, *, killed_by_signal: bool) -> bool:
        """Whether a failure restarts the gang: Kubeflow's rule, where exit codes >= 128
        (signals: OOM, preemption) are retryable and 1-127 (the program's own error) are not."""
        if self.policy == "Never":
            return False
        if self.policy == "ExitCode":
            return killed_by_signal
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "backoff_limit": self.backoff_limit}


@dataclass(frozen=True)
class Entrypoint:
    """What each replica runs: a function (``module:function``; None: the sweep's objective,
    which the launcher ships) or, for container launchers, a command."""

    function: str | None = None
    command: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"function": self.function, "command": list(self.command)}


@dataclass(frozen=True)
class ReplicaId:
    """One replica of a job: its global rank, its role, and its index within the role."""

    rank: int
    role: str
    index: int

    @property
    def label(self) -> str:
        """``worker-1``: how Kubeflow names the replica's pod and service (after the job)."""
        return f"{self.role}-{self.index}"


@dataclass(frozen=True)
class TrainJob:
    """A multi-replica training job, independent of where it runs.

    Ranks follow the order of ``replicas`` (PyTorch's master, or TF's chief, is rank 0). Each
    replica is one process (one Kubernetes pod, ``nprocPerNode`` 1), so a replica's node rank
    and process rank are the same and ``LOCAL_RANK`` is 0: the GPUs it was given are its own.
    """

    name: str
    framework: Framework
    replicas: tuple[ReplicaGroup, ...]
    entrypoint: Entrypoint = field(default_factory=Entrypoint)
    env: Mapping[str, str] = field(default_factory=dict)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    port: int | None = None
    min_replicas: int | None = None  # elastic: the fewest replicas the job goes on with

    @property
    def world_size(self) -> int:
        return sum(group.count for group in self.replicas)

    @property
    def gpus(self) -> int:
        """GPUs the whole job needs at once."""
        return sum(group.count * (group.resources.gpus or 0) for group in self.replicas)

    @property
    def cluster_port(self) -> int:
        """The port replicas listen on where each has its own address (Kubernetes)."""
        return self.port if self.port is not None else DEFAULT_PORTS[self.framework]

    def replica_ids(self) -> list[ReplicaId]:
        """Every replica in rank order."""
        ids: list[ReplicaId] = []
        for group in self.replicas:
            for index in range(group.count):
                ids.append(ReplicaId(len(ids), group.role, index))
        return ids

    def group_of(self, rank: int) -> ReplicaGroup:
        """The replica group that rank ``rank`` belongs to."""
        for group in self.replicas:
            if rank < group.count:
                return group
            rank -= group.count
        raise IndexError(f"rank {rank} is outside a job of world size {self.world_size}")

    def for_trial(self, sweep_name: str, trial_number: int) -> TrainJob:
        """This job, named for one trial (a DNS label, as Kubernetes resource names must be)."""
        return replace(self, name=dns_label(f"{sweep_name}-trial-{trial_number}"))

    def validated(self) -> TrainJob:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""
        if self.framework not in FRAMEWORKS:
            raise _fail(
                "framework", f"expected one of {', '.join(FRAMEWORKS)}, got {self.framework!r}"
            )
        if not self.replicas:
            raise _fail("replicas", "give at least one replica group")
        roles = ROLES[self.framework]
        seen: list[str] = []
        for position, group in enumerate(self.replicas):
            where = f"replicas[{position}]"
            if group.role not in roles:
                raise _fail(
                    f"{where}.role",
                    f"a {self.framework} job has roles {', '.join(roles)}, got {group.role!r}",
                )
            if group.role in seen:
                raise _fail(f"{where}.role", f"role {group.role!r} is given twice")
            seen.append(group.role)
            _check_count(group.count, f"{where}.count", 1)
            if group.resources.gpus is not None:
                _check_count(group.resources.gpus, f"{where}.resources.gpus", 0)
        if [role for role in roles if role in seen] != seen:
            raise _fail("replicas", f"list the roles in rank order: {', '.join(roles)}")
        first = self.replicas[0]
        if first.role in ("master", "chief") and first.count != 1:
            raise _fail("replicas[0].count", f"a job has exactly one {first.role}")
        if self.restart_policy.policy not in RESTART_POLICIES:
            raise _fail(
                "restart_policy.policy",
                f"expected one of {', '.join(RESTART_POLICIES)}, "
                f"got {self.restart_policy.policy!r}",
            )
        _check_count(self.restart_policy.backoff_limit, "restart_policy.backoff_limit", 0)
        if self.port is not None:
            _check_count(self.port, "port", 1)
        if self.min_replicas is not None:
            _check_count(self.min_replicas, "min_replicas", 1)
            if self.framework != "pytorch" or self.min_replicas > self.world_size:
                raise _fail(
                    "min_replicas",
                    f"an elastic pytorch job goes on with 1 to {self.world_size} replicas, "
                    f"got {self.min_replicas} for a {self.framework} job",
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and YAML-safe) that :meth:`from_dict` reads back."""
        return {
            "name": self.name,
            "framework": self.framework,
            "replicas": [group.to_dict() for group in self.replicas],
            "entrypoint": self.entrypoint.to_dict(),
            "env": dict(self.env),
            "restart_policy": self.restart_policy.to_dict(),
            "port": self.port,
            "min_replicas": self.min_replicas,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainJob:
        """The job that :meth:`to_dict` wrote; errors name the field."""
        if not isinstance(data, Mapping):
            raise _fail("job", f"expected a mapping, got {type(data).__name__}")
        groups = data.get("replicas")
        if not isinstance(groups, list):
            raise _fail("replicas", f"expected a list of replica groups, got {groups!r}")
        entry = data.get("entrypoint") or {}
        restart = data.get("restart_policy") or {}
        return cls(
            name=str(data.get("name", "")),
            framework=data.get("framework"),  # type: ignore[arg-type]  # validated below
            replicas=tuple(
                ReplicaGroup.from_dict(group, f"replicas[{i}]") for i, group in enumerate(groups)
            ),
            entrypoint=Entrypoint(
                function=entry.get("function"), command=tuple(entry.get("command") or ())
            ),
            env=_check_env(data.get("env"), "env"),
            restart_policy=RestartPolicy(
                policy=restart.get("policy", "OnFailure"),
                backoff_limit=restart.get("backoff_limit", 2),
            ),
            port=data.get("port"),
            min_replicas=data.get("min_replicas"),
        ).validated()


def dns_label(text: str) -> str:
    """``text`` as a Kubernetes DNS label: lower case, letters, digits and '-', <= 63 chars."""
    label = _DNS_LABEL.sub("-", text.lower()).strip("-")[:63].rstrip("-")
    return label or "job"
