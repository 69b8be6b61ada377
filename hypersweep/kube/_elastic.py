"""A TrainJob's ``elasticPolicy``: an elastic PyTorch gang of ``minReplicas`` to
``maxReplicas`` pods, as Kubeflow's elastic PyTorchJob runs it.

The pods run the training script under torch's own elastic agent (``torchrun``, that is
``python -m torch.distributed.run``), which reads its arguments from ``PET_*`` variables: the
controller sets ``PET_RDZV_BACKEND`` (c10d), ``PET_RDZV_ENDPOINT`` (the master's address),
``PET_RDZV_ID``, ``PET_NNODES="min:max"`` and ``PET_MAX_RESTARTS``, exactly as Kubeflow does,
so a Kubeflow elastic PyTorchJob moves over by changing its apiVersion and kind.

torch's c10d rendezvous rather than rounds decided by the controller (as the local launcher's
``_elastic`` does): the agents in the pods are the ones that see a peer's worker die, and they
re-rendezvous by themselves in seconds, without a round trip through the API server; the
controller only keeps the pods there (it recreates a lost one, whose agent then joins the next
rendezvous and the gang grows back) and counts a restart when fewer than ``minReplicas``
remain. The master pod hosts the rendezvous store (``rdzvHost`` defaults to it, as in
Kubeflow): losing the master ends every agent's rendezvous, which is a counted restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Rendezvous backends torch's elastic agent has (Kubeflow's rdzvBackend values).
RDZV_BACKENDS = ("c10d", "etcd", "etcd-v2")
#: ``maxRestarts`` when not given. torchrun's own default, 0, would end every survivor's pod
#: at the first lost peer (its workers' collective breaks, which the agent counts as a failure).
DEFAULT_MAX_RESTARTS = 10


class ElasticPolicyError(ValueError):
    """An ``elasticPolicy`` the controller cannot run; the message names the field."""


@dataclass(frozen=True)
class ElasticPolicy:
    """``spec.elasticPolicy``, checked; unset fields take Kubeflow's defaults."""

    min_replicas: int
    max_replicas: int
    rdzv_backend: str = "c10d"
    rdzv_host: str | None = None
    rdzv_port: int | None = None
    rdzv_id: str | None = None
    rdzv_conf: tuple[tuple[str, str], ...] = ()
    max_restarts: int = DEFAULT_MAX_RESTARTS

    @property
    def nnodes(self) -> str:
        """torchrun's ``--nnodes``: ``min:max``."""
        return f"{self.min_replicas}:{self.max_replicas}"

    def env(
        self,
        *,
        job_name: str,
        rank: int,
        master_host: str,
        master_port: int,
        shared_host: str | None = None,
    ) -> dict[str, str]:
        """The ``PET_*`` variables of replica ``rank``: torchrun reads its arguments there.

        ``shared_host``: every pod shares that address (the operator's ``replica_host``), so
        torch cannot tell by its address which agent hosts the c10d store: the master's does
        (``is_host``), and each agent is reached at that host (``PET_LOCAL_ADDR``).
        """
        env = {
            "PET_RDZV_BACKEND": self.rdzv_backend,
            "PET_RDZV_ENDPOINT": f"{self.rdzv_host or master_host}:{self.rdzv_port or master_port}",
            "PET_RDZV_ID": self.rdzv_id or job_name,
            "PET_NNODES": self.nnodes,
            "PET_NPROC_PER_NODE": "1",
            "PET_MAX_RESTARTS": str(self.max_restarts),
            # A store of the round's own for the workers: torch keeps the first round's (on that
            # round's rank 0) otherwise, and after a membership change that makes another node
            # rank 0, ranks would meet through the last round's keys and wait on dead peers.
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        }
        conf = dict(self.rdzv_conf)
        if shared_host is not None and self.rdzv_backend == "c10d" and self.rdzv_host is None:
            conf.setdefault("is_host", "true" if rank == 0 else "false")
            env["PET_LOCAL_ADDR"] = shared_host
        if conf:
            env["PET_RDZV_CONF"] = ",".join(f"{key}={value}" for key, value in conf.items())
        return env


def parse_elastic_policy(
    data: Any, framework: str, replicas: int, where: str = "spec.elasticPolicy"
) -> ElasticPolicy | None:
    """The checked policy of a job of ``replicas`` pods (None when not given).

    ``minReplicas`` defaults to ``maxReplicas`` and ``maxReplicas`` to the replicas the job
    runs; the controller runs all of them while it can, so they must lie in ``[min, max]``.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise ElasticPolicyError(f"{where}: expected a mapping")
    if framework != "pytorch":
        raise ElasticPolicyError(
            f"{where}: elastic gangs are PyTorch's (torchrun); remove it for a {framework} job"
        )
    maximum = _count(data.get("maxReplicas", replicas), f"{where}.maxReplicas")
    minimum = _count(data.get("minReplicas", maximum), f"{where}.minReplicas")
    if minimum > maximum:
        raise ElasticPolicyError(
            f"{where}.minReplicas: {minimum} is more than maxReplicas ({maximum})"
        )
    if not minimum <= replicas <= maximum:
        raise ElasticPolicyError(
            f"{where}: the job runs {replicas} replicas (Master + Worker), outside "
            f"minReplicas..maxReplicas ({minimum}..{maximum}); give between them"
        )
    backend = data.get("rdzvBackend", "c10d")
    if backend not in RDZV_BACKENDS:
        raise ElasticPolicyError(
            f"{where}.rdzvBackend: expected one of {', '.join(RDZV_BACKENDS)}, got {backend!r}"
        )
    host = data.get("rdzvHost")
    if backend != "c10d" and not host:
        raise ElasticPolicyError(f"{where}.rdzvHost: give the {backend} server's host")
    conf = data.get("rdzvConf") or []
    if not isinstance(conf, list) or not all(
        isinstance(item, Mapping) and isinstance(item.get("key"), str) for item in conf
    ):
        raise ElasticPolicyError(
            f"{where}.rdzvConf: expected a list of {{key: ..., value: ...}} entries"
        )
    port = data.get("rdzvPort")
    restarts = data.get("maxRestarts")
    return ElasticPolicy(
        min_replicas=minimum,
        max_replicas=maximum,
        rdzv_backend=backend,
        rdzv_host=str(host) if host else None,
        rdzv_port=None if port is None else _count(port, f"{where}.rdzvPort"),
        rdzv_id=str(data["rdzvId"]) if data.get("rdzvId") else None,
        rdzv_conf=tuple((str(item["key"]), str(item.get("value", ""))) for item in conf),
        max_restarts=(
            DEFAULT_MAX_RESTARTS
            if restarts is None
            else _count(restarts, f"{where}.maxRestarts", 0)
        ),
    )


def _count(value: Any, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ElasticPolicyError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def elastic_policy_schema() -> dict[str, Any]:
    """The CRD schema of ``elasticPolicy`` (Kubeflow's PyTorchJob fields)."""
    return {
        "type": "object",
        "description": (
            "An elastic PyTorch gang (run the script under torchrun): a lost replica does not "
            "stop the job while minReplicas remain; it is recreated and joins at the next "
            "rendezvous. Restarts count toward backoffLimit only below minReplicas."
        ),
        "properties": {
            "minReplicas": {"type": "integer", "minimum": 1},
            "maxReplicas": {"type": "integer", "minimum": 1},
            "rdzvBackend": {"type": "string", "enum": list(RDZV_BACKENDS)},
            "rdzvHost": {"type": "string"},
            "rdzvPort": {"type": "integer", "minimum": 1},
            "rdzvId": {"type": "string"},
            "rdzvConf": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                },
            },
            "maxRestarts": {
                "type": "integer",
                "minimum": 0,
                "description": (
                    "torchrun's --max-restarts: restarts of a pod's workers after a failure "
                    f"(a lost peer is one) before the pod fails; default {DEFAULT_MAX_RESTARTS}."
                ),
            },
        },
    }
