"""The TrainJob spec model, shared by the TrainJob controller and the Kubernetes launcher.

:class:`JobSpec` parses and checks a TrainJob's ``spec`` (Kubeflow's PyTorchJob/TFJob shape:
``replicaSpecs`` by role, ``runPolicy``); a spec the controller cannot run raises
:class:`SpecError`, naming the field. The helpers read and write the ``status.conditions`` of
Kubernetes objects, as the TrainJob and Sweep controllers and the launcher all do.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypersweep.kube._client import JsonDict
from hypersweep.kube._elastic import ElasticPolicy, ElasticPolicyError, parse_elastic_policy
from hypersweep.orchestrator._job import DEFAULT_PORTS, ReplicaGroup, TrainJob

PYTORCH_ROLES = ("Master", "Worker")
TENSORFLOW_ROLES = ("Chief", "Master", "Worker", "PS", "Evaluator")
JAX_ROLES = ("Worker",)  # JAXJob's one replica type; worker 0 hosts the coordinator
FRAMEWORKS = ("pytorch", "tensorflow", "jax", "generic")
RESTART_POLICIES = ("OnFailure", "Never", "ExitCode", "Always")
CLEAN_POD_POLICIES = ("All", "Running", "None")
#: A finished job whose ``ttlSecondsAfterFinished`` is at most this is collected soon: what it
#: owns (its Services, a trial's Secret) goes with it rather than by a delete of ours, and its
#: end gets no Normal Event (the Event would outlive the job by an hour).
COLLECTED_SOON_TTL = 60
DEFAULT_BACKOFF_LIMIT = 3
#: Seconds a TrainJob's pod may stay unable to start before the job fails (runPolicy).
DEFAULT_STALLED_TIMEOUT = 300

#: Longest names: ``<sweep>-trial-<n>`` (n < 1,000,000) fits a TrainJob name, and
#: ``<trainjob>-evaluator-<i>`` a 63-character DNS label (pod and service names).
MAX_TRAINJOB_NAME = 48
MAX_SWEEP_NAME = 35

#: Container names and port names Kubeflow uses, by framework.
CONTAINER_NAMES = {
    "pytorch": "pytorch",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "generic": "main",
}
PORT_NAMES = {
    "pytorch": "pytorchjob-port",
    "tensorflow": "tfjob-port",
    "jax": "jaxjob-port",
    "generic": "job-port",
}
GENERIC_PORT = 29500

_ROLE_ORDER = {"pytorch": PYTORCH_ROLES, "tensorflow": TENSORFLOW_ROLES, "jax": JAX_ROLES}
#: Kubeflow's per-framework replica maps, each implying its framework.
_IMPLIED_FRAMEWORKS = {
    "pytorchReplicaSpecs": "pytorch",
    "tfReplicaSpecs": "tensorflow",
    "jaxReplicaSpecs": "jax",
}


class SpecError(ValueError):
    """A TrainJob spec the controller cannot run; the message names the field."""


# --- the spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSpec:
    """``replicaSpecs.<role>``: ``replicas`` pods of one role from one template."""

    role: str
    replicas: int
    restart_policy: str
    template: JsonDict

    @property
    def label(self) -> str:
        """The role as it appears in names and labels: ``Worker`` -> ``worker``."""
        return self.role.lower()


@dataclass(frozen=True)
class Replica:
    """One replica pod: its rank, its role's spec and its index within the role."""

    rank: int
    spec: ReplicaSpec
    index: int

    def pod_name(self, job_name: str) -> str:
        return f"{job_name}-{self.spec.label}-{self.index}"


@dataclass(frozen=True)
class JobSpec:
    """A TrainJob's spec, parsed and checked, with Kubeflow's aliases resolved."""

    framework: str
    replica_specs: tuple[ReplicaSpec, ...]
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: str = "Running"
    suspend: bool = False
    success_policy: str = ""
    stalled_timeout_seconds: int = DEFAULT_STALLED_TIMEOUT
    #: ``elasticPolicy``: an elastic PyTorch gang (see :mod:`hypersweep.kube._elastic`).
    elastic: ElasticPolicy | None = None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> JobSpec:
        """Parse ``TrainJob.spec`` (or a Sweep's ``trialTemplate``); raises :class:`SpecError`."""
        if not isinstance(spec, Mapping):
            raise SpecError("spec: expected a mapping")
        given = [key for key in ("replicaSpecs", *_IMPLIED_FRAMEWORKS) if key in spec]
        if len(given) != 1:
            raise SpecError(
                "spec: give exactly one of replicaSpecs, pytorchReplicaSpecs, tfReplicaSpecs "
                "or jaxReplicaSpecs"
            )
        key = given[0]
        implied = _IMPLIED_FRAMEWORKS.get(key)
        framework = spec.get("framework") or implied
        if framework not in FRAMEWORKS:
            raise SpecError(
                f"spec.framework: expected one of {', '.join(FRAMEWORKS)}, got {framework!r}"
            )
        if implied is not None and framework != implied:
            raise SpecError(f"spec.framework: {key} needs framework {implied}")
        replica_specs = _parse_replica_specs(spec[key], framework, f"spec.{key}")
        run = spec.get("runPolicy") or {}
        clean = run.get("cleanPodPolicy", "Running")
        if clean not in CLEAN_POD_POLICIES:
            raise SpecError(
                f"spec.runPolicy.cleanPodPolicy: expected one of {', '.join(CLEAN_POD_POLICIES)}"
            )
        try:
            elastic = parse_elastic_policy(
                spec.get("elasticPolicy"), framework, sum(r.replicas for r in replica_specs)
            )
        except ElasticPolicyError as error:
            raise SpecError(str(error)) from None
        return cls(
            framework=framework,
            replica_specs=replica_specs,
            backoff_limit=_count(
                run.get("backoffLimit", DEFAULT_BACKOFF_LIMIT), "spec.runPolicy.backoffLimit", 0
            ),
            active_deadline_seconds=_optional_count(
                run.get("activeDeadlineSeconds"), "spec.runPolicy.activeDeadlineSeconds", 1
            ),
            ttl_seconds_after_finished=_optional_count(
                run.get("ttlSecondsAfterFinished"), "spec.runPolicy.ttlSecondsAfterFinished", 0
            ),
            clean_pod_policy=clean,
            suspend=bool(run.get("suspend", False)),
            stalled_timeout_seconds=_count(
                run.get("stalledTimeoutSeconds", DEFAULT_STALLED_TIMEOUT),
                "spec.runPolicy.stalledTimeoutSeconds",
                0,
            ),
            success_policy=str(spec.get("successPolicy") or ""),
            elastic=elastic,
        )

    def replicas(self) -> list[Replica]:
        """Every replica in rank order (PyTorch's master, or TF's chief, is rank 0)."""
        out: list[Replica] = []
        for replica_spec in self.replica_specs:
            for index in range(replica_spec.replicas):
                out.append(Replica(len(out), replica_spec, index))
        return out

    def role(self, role: str) -> ReplicaSpec | None:
        for replica_spec in self.replica_specs:
            if replica_spec.role == role:
                return replica_spec
        return None

    @property
    def host_network(self) -> bool:
        return any(bool(r.template.get("spec", {}).get("hostNetwork")) for r in self.replica_specs)

    def port(self) -> int:
        """The port replicas listen on: the main container's port named as Kubeflow names it."""
        wanted = PORT_NAMES[self.framework]
        for replica_spec in self.replica_specs:
            for container in replica_spec.template.get("spec", {}).get("containers") or []:
                for port in container.get("ports") or []:
                    if port.get("name") == wanted and port.get("containerPort"):
                        return int(port["containerPort"])
        if self.framework == "generic":
            return GENERIC_PORT
        return DEFAULT_PORTS[self.framework]

    def description(self, name: str, port: int) -> TrainJob:
        """The framework-independent job description that the rendezvous builders read.

        Roles are lower case, as in :mod:`hypersweep.orchestrator._job`. A generic job is
        described with PyTorch's framework, which only matters for the env builders that
        generic jobs do not use.
        """
        groups = tuple(ReplicaGroup(r.label, r.replicas) for r in self.replica_specs if r.replicas)
        if self.framework == "tensorflow":
            return TrainJob(name=name, framework="tensorflow", replicas=groups, port=port)
        if self.framework == "jax":
            return TrainJob(name=name, framework="jax", replicas=groups, port=port)
        return TrainJob(name=name, framework="pytorch", replicas=groups, port=port)


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _optional_count(value: Any, where: str, minimum: int) -> int | None:
    return None if value is None else _count(value, where, minimum)


def _parse_replica_specs(data: Any, framework: str, where: str) -> tuple[ReplicaSpec, ...]:
    if not isinstance(data, Mapping) or not data:
        raise SpecError(f"{where}: give at least one replica role")
    allowed = _ROLE_ORDER.get(framework)
    specs: dict[str, ReplicaSpec] = {}
    for role, body in data.items():
        at = f"{where}.{role}"
        if allowed is not None and role not in allowed:
            raise SpecError(
                f"{where}: {framework} replica roles are {', '.join(allowed)}, got {role!r}"
            )
        if not isinstance(body, Mapping):
            raise SpecError(f"{at}: expected a mapping")
        policy = body.get("restartPolicy", "OnFailure")
        if policy not in RESTART_POLICIES:
            raise SpecError(f"{at}.restartPolicy: expected one of {', '.join(RESTART_POLICIES)}")
        template: Any = body.get("template")
        containers = (
            (template or {}).get("spec", {}).get("containers")
            if isinstance(template, Mapping)
            else None
        )
        if not containers:
            raise SpecError(f"{at}.template.spec.containers: give at least one container")
        specs[role] = ReplicaSpec(
            role=role,
            replicas=_count(body.get("replicas", 1), f"{at}.replicas", 0),
            restart_policy=policy,
            template=copy.deepcopy(dict(template)),
        )
    if framework == "pytorch":
        if "Master" not in specs:
            raise SpecError(f"{where}: a PyTorch job needs a Master replica (rank 0)")
        if specs["Master"].replicas != 1:
            raise SpecError(f"{where}.Master.replicas: a PyTorch job has exactly one Master")
    if framework == "tensorflow" and "Chief" in specs and specs["Chief"].replicas > 1:
        raise SpecError(f"{where}.Chief.replicas: a TensorFlow job has at most one Chief")
    if sum(s.replicas for s in specs.values()) == 0:
        raise SpecError(f"{where}: the job has no replicas")
    if allowed is not None:
        order = [role for role in allowed if role in specs]
    else:
        order = sorted(specs, key=lambda role: (role not in ("Master", "Chief"), role))
    return tuple(specs[role] for role in order)


# --- rendering ----------------------------------------------------------------------------


def main_container(spec: JobSpec, containers: Sequence[JsonDict]) -> JsonDict:
    """The container that runs the training code: named like Kubeflow's, else the first."""
    wanted = CONTAINER_NAMES[spec.framework]
    return next((c for c in containers if c.get("name") == wanted), containers[0])


# --- status helpers -----------------------------------------------------------------------


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def condition(conditions: Sequence[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def is_true(conditions: Sequence[Mapping[str, Any]], kind: str) -> bool:
    found = condition(conditions, kind)
    return found is not None and found.get("status") == "True"


def true_conditions(status: Mapping[str, Any]) -> frozenset[str]:
    """The types of a status's conditions that are True: the object's state, without the
    reasons, messages and times that change along with it."""
    return frozenset(
        str(c.get("type")) for c in status.get("conditions") or [] if c.get("status") == "True"
    )


def set_condition(
    conditions: list[JsonDict], kind: str, status: bool, reason: str, message: str, now: str
) -> bool:
    """Set a condition; returns True when its status changed.

    A condition that turns True moves to the end of the list, so the last one is the latest
    state (the ``State`` printer column). A False condition is only recorded where the type
    was there before.
    """
    value = "True" if status else "False"
    for index, existing in enumerate(conditions):
        if existing.get("type") != kind:
            continue
        if existing.get("status") != value:
            updated = {
                **existing,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "lastUpdateTime": now,
            }
            del conditions[index]
            if status:
                conditions.append(updated)
            else:
                conditions.insert(index, updated)
            return True
        if existing.get("reason") != reason or existing.get("message") != message:
            existing.update(reason=reason, message=message, lastUpdateTime=now)
        return False
    if status:
        conditions.append(
            {
                "type": kind,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "lastUpdateTime": now,
            }
        )
        return True
    return False


def with_suspend(spec: Mapping[str, Any], suspend: bool) -> JsonDict:
    """A copy of a TrainJob spec with ``runPolicy.suspend`` set."""
    out = copy.deepcopy(dict(spec))
    out["runPolicy"] = {**(out.get("runPolicy") or {}), "suspend": suspend}
    return out


def finished(job: Mapping[str, Any]) -> bool:
    """Whether a TrainJob has ended: its ``Succeeded`` or ``Failed`` condition is true."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return is_true(conditions, "Succeeded") or is_true(conditions, "Failed")
