"""The CustomResourceDefinitions of ``TrainJob`` and ``Sweep`` (group ``hypersweep.io``).

The schemas are structural, with defaults, so that the API server fills in what a user leaves out
and ``kubectl explain`` documents every field. What can be checked without running code is
checked by the API server itself, through OpenAPI constraints and CEL rules
(``x-kubernetes-validations``): an invalid resource is refused at ``kubectl apply`` with the field
named, instead of being accepted and failing later in the controller. The controllers still
validate everything again (e.g. a search space's nested parameters, which CEL cannot see), and
report what they refuse as a ``Failed`` condition with reason ``InvalidSpec``.

``TrainJob`` has the shape of Kubeflow's PyTorchJob and TFJob: ``replicaSpecs`` keyed by role,
each with ``replicas``, ``restartPolicy`` and a pod ``template``, and a ``runPolicy``. A Kubeflow
manifest ports by changing ``apiVersion`` and ``kind``: ``pytorchReplicaSpecs`` and
``tfReplicaSpecs`` are accepted as they are and imply the framework. Each replica's pod
``template`` has core/v1 PodTemplateSpec's structural schema (``podtemplatespec.schema.json``,
generated from the API server's OpenAPI by ``hack/podtemplate_schema.py``), as Kubeflow's CRDs
embed it: a misspelt pod field is refused at ``kubectl apply`` as well.

The manifests under ``deploy/crds/`` are generated from this module
(``hypersweep operator crds --output-dir deploy/crds``); a test keeps them in step.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

from hypersweep.kube._elastic import elastic_policy_schema
from hypersweep.kube._jobspec import (
    CLEAN_POD_POLICIES,
    DEFAULT_BACKOFF_LIMIT,
    DEFAULT_STALLED_TIMEOUT,
    FRAMEWORKS,
    JAX_ROLES,
    MAX_SWEEP_NAME,
    MAX_TRAINJOB_NAME,
    PYTORCH_ROLES,
    RESTART_POLICIES,
    TENSORFLOW_ROLES,
)
from hypersweep.kube._names import GROUP, VERSION
from hypersweep.strategies import EARLY_STOPPING_NAMES, SWEEP_STRATEGY_NAMES

JsonDict = dict[str, Any]

DEFAULT_CLAIM = "hypersweep-data"
# Trials of the Pareto front listed in a Sweep's status; the status never lists every trial.
FRONT_LIMIT = 10


#: The structural schema of core/v1 PodTemplateSpec (package data).
PODTEMPLATE_SCHEMA = "podtemplatespec.schema.json"

_PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    item: JsonDict = {"rule": rule, "message": message}
    if field_path:
        item["fieldPath"] = field_path
    return item


def _quoted(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def _condition_schema() -> JsonDict:
    return {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string"},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string"},
                "message": {"type": "string"},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "lastUpdateTime": {"type": "string", "format": "date-time"},
            },
        },
    }


@functools.cache
def _load_pod_template_schema() -> JsonDict:
    # Generated from the API server's OpenAPI by hack/podtemplate_schema.py (a test keeps it
    # in step with the test cluster's), never written by hand.
    text = resources.files("hypersweep.operators").joinpath(PODTEMPLATE_SCHEMA).read_text()
    schema: JsonDict = json.loads(text)
    return schema


def _pod_template_schema() -> JsonDict:
    """core/v1 PodTemplateSpec, structural, as Kubeflow's CRDs embed it.

    With it, the API server prunes nothing silently: an unknown pod field (``resource:``,
    ``envv:``) is refused at ``kubectl apply`` (strict field validation), naming the field.
    """
    template = copy.deepcopy(_load_pod_template_schema())
    template["description"] = (
        "The pod template, a core/v1 PodTemplateSpec (kubectl explain pod.spec describes its "
        "fields): unknown fields and wrong types are refused when it is applied."
    )
    template["properties"]["spec"]["properties"]["containers"]["minItems"] = 1
    return template


def _replica_spec_schema() -> JsonDict:
    return {
        "type": "object",
        "required": ["template"],
        "description": "Replicas of one role, as in a Kubeflow replica spec.",
        "properties": {
            "replicas": {
                "type": "integer",
                "minimum": 0,
                "default": 1,
                "description": "How many pods of this role.",
            },
            "restartPolicy": {
                "type": "string",
                "enum": list(RESTART_POLICIES),
                "default": "OnFailure",
                "description": (
                    "What a failed replica does to the job. OnFailure (and Always): restart the "
                    "whole gang from its checkpoint, up to runPolicy.backoffLimit times. ExitCode: "
                    "restart on exit codes >= 128 (signals, OOM, preemption), fail the job on "
                    "1-127. Never: fail the job."
                ),
            },
            "template": _pod_template_schema(),
        },
    }


def _replica_map_schema(roles: tuple[str, ...] | None, framework: str) -> JsonDict:
    schema: JsonDict = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 8,
        "additionalProperties": _replica_spec_schema(),
    }
    rules = []
    if roles is not None:
        rules.append(
            _cel(
                f"self.all(role, role in {_quoted(roles)})",
                f"{framework} replica roles are {', '.join(roles)}",
            )
        )
    if framework == "pytorch":
        rules += [
            _cel("'Master' in self", "a PyTorch job needs a Master replica (rank 0)"),
            _cel(
                "!('Master' in self) || self['Master'].replicas == 1",
                "a PyTorch job has exactly one Master replica",
            ),
        ]
    elif framework == "tensorflow":
        rules += [
            _cel(
                "'Chief' in self || 'Master' in self || 'Worker' in self",
                "a TensorFlow job needs a Chief or Worker replica",
            ),
            _cel(
                "!('Chief' in self) || self['Chief'].replicas <= 1",
                "a TensorFlow job has at most one Chief replica",
            ),
        ]
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def _light_replica_map_schema(framework: str, roles: tuple[str, ...]) -> JsonDict:
    """A replica map whose pod templates the API server stores as given.

    Each full map embeds the pod template's schema (about 60 kB), and a CRD must stay under
    the 256 kB that ``kubectl apply`` can record: Kubeflow's ``jaxReplicaSpecs`` would not fit
    in the Sweep CRD. Its roles and templates are checked by the controller instead (a bad
    spec is refused with a condition naming the field) and its pods by the API server.
    """
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": (
            f"Kubeflow's {framework} replica map (roles: {', '.join(roles)}), as replicaSpecs "
            f"with framework {framework}; checked by the controller rather than at admission."
        ),
    }


def trainjob_spec_schema() -> JsonDict:
    """The schema of ``TrainJob.spec``, also used for ``Sweep.spec.trialTemplate``."""
    return {
        "type": "object",
        "properties": {
            "framework": {
                "type": "string",
                "enum": list(FRAMEWORKS),
                "description": (
                    "pytorch: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK (and PET_*) as "
                    "PyTorchJob sets them. tensorflow: TF_CONFIG as TFJob sets it. jax: "
                    "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (and JAXJob's "
                    "COORDINATOR_ADDRESS, COORDINATOR_PORT, NUM_PROCESSES, PROCESS_ID). "
                    "generic: RANK, WORLD_SIZE and HYPERSWEEP_CLUSTER only. Implied by "
                    "pytorchReplicaSpecs, tfReplicaSpecs and jaxReplicaSpecs."
                ),
            },
            "replicaSpecs": _replica_map_schema(None, "generic"),
            "pytorchReplicaSpecs": _replica_map_schema(PYTORCH_ROLES, "pytorch"),
            "tfReplicaSpecs": _replica_map_schema(TENSORFLOW_ROLES, "tensorflow"),
            "jaxReplicaSpecs": _light_replica_map_schema("jax", JAX_ROLES),
            "successPolicy": {
                "type": "string",
                "enum": ["", "AllWorkers"],
                "description": (
                    "TensorFlow only: the job succeeds when the chief (or worker 0) succeeds "
                    '("", the default) or when every worker does (AllWorkers).'
                ),
            },
            "runPolicy": _run_policy_schema(),
            "elasticPolicy": elastic_policy_schema(),
        },
        "x-kubernetes-validations": [*_replica_specs_rules(), *_framework_rules()],
    }


def _run_policy_schema() -> JsonDict:
    """``runPolicy``: restarts, deadlines, clean-up and suspension, as in Kubeflow."""
    return {
        "type": "object",
        "default": {},
        "properties": {
            "backoffLimit": {
                "type": "integer",
                "minimum": 0,
                "default": DEFAULT_BACKOFF_LIMIT,
                "description": "Restarts of the whole gang before the job fails.",
            },
            "activeDeadlineSeconds": {
                "type": "integer",
                "minimum": 1,
                "description": "Seconds the job may run before it fails.",
            },
            "ttlSecondsAfterFinished": {
                "type": "integer",
                "minimum": 0,
                "description": "Seconds after which a finished job is deleted.",
            },
            "cleanPodPolicy": {
                "type": "string",
                "enum": list(CLEAN_POD_POLICIES),
                "default": "Running",
                "description": "Pods deleted when the job finishes.",
            },
            "suspend": {
                "type": "boolean",
                "default": False,
                "description": "Delete the job's pods and keep it until unsuspended.",
            },
            "stalledTimeoutSeconds": {
                "type": "integer",
                "minimum": 0,
                "default": DEFAULT_STALLED_TIMEOUT,
                "description": (
                    "Seconds a pod may stay unable to start (Unschedulable, "
                    "ImagePullBackOff, CreateContainerConfigError...) before the job "
                    "fails with that reason."
                ),
            },
        },
    }


def _replica_specs_rules() -> list[JsonDict]:
    """CEL rules: one kind of replica specs, and the framework that goes with it."""
    return [
        _cel(
            "[has(self.replicaSpecs), has(self.pytorchReplicaSpecs), "
            "has(self.tfReplicaSpecs), has(self.jaxReplicaSpecs)]"
            ".filter(given, given).size() == 1",
            "give exactly one of replicaSpecs, pytorchReplicaSpecs, tfReplicaSpecs or "
            "jaxReplicaSpecs",
        ),
        _cel(
            "!has(self.replicaSpecs) || has(self.framework)",
            "framework is required with replicaSpecs: pytorch, tensorflow, jax or generic",
            ".framework",
        ),
        _cel(
            "!has(self.pytorchReplicaSpecs) || !has(self.framework) || self.framework == 'pytorch'",
            "pytorchReplicaSpecs needs framework pytorch",
            ".framework",
        ),
        _cel(
            "!has(self.tfReplicaSpecs) || !has(self.framework) || self.framework == 'tensorflow'",
            "tfReplicaSpecs needs framework tensorflow",
            ".framework",
        ),
        _cel(
            "!has(self.jaxReplicaSpecs) || !has(self.framework) || self.framework == 'jax'",
            "jaxReplicaSpecs needs framework jax",
            ".framework",
        ),
    ]


def _framework_rules() -> list[JsonDict]:
    """CEL rules on each framework's replica roles (PyTorch's Master, TensorFlow's Chief)."""
    rules = []
    for name, roles in (
        ("pytorch", PYTORCH_ROLES),
        ("tensorflow", TENSORFLOW_ROLES),
        ("jax", JAX_ROLES),
    ):
        applies = f"!has(self.replicaSpecs) || !has(self.framework) || self.framework != '{name}'"
        rules.append(
            _cel(
                f"{applies} || self.replicaSpecs.all(role, role in {_quoted(roles)})",
                f"{name} replica roles are {', '.join(roles)}",
                ".replicaSpecs",
            )
        )
    pytorch = "!has(self.replicaSpecs) || !has(self.framework) || self.framework != 'pytorch'"
    rules += [
        _cel(
            f"{pytorch} || 'Master' in self.replicaSpecs",
            "a PyTorch job needs a Master replica (rank 0)",
            ".replicaSpecs",
        ),
        _cel(
            f"{pytorch} || !('Master' in self.replicaSpecs) "
            "|| self.replicaSpecs['Master'].replicas == 1",
            "a PyTorch job has exactly one Master replica",
            ".replicaSpecs",
        ),
    ]
    tensorflow = "!has(self.replicaSpecs) || !has(self.framework) || self.framework != 'tensorflow'"
    rules += [
        _cel(
            f"{tensorflow} || 'Chief' in self.replicaSpecs || 'Master' in self.replicaSpecs "
            "|| 'Worker' in self.replicaSpecs",
            "a TensorFlow job needs a Chief or Worker replica",
            ".replicaSpecs",
        ),
        _cel(
            f"{tensorflow} || !('Chief' in self.replicaSpecs) "
            "|| self.replicaSpecs['Chief'].replicas <= 1",
            "a TensorFlow job has at most one Chief replica",
            ".replicaSpecs",
        ),
    ]
    return rules


def _trainjob_status_schema() -> JsonDict:
    counts = {
        "type": "object",
        "properties": {
            "active": {"type": "integer"},
            "succeeded": {"type": "integer"},
            "failed": {"type": "integer"},
        },
    }
    return {
        "type": "object",
        "properties": {
            "conditions": _condition_schema(),
            "replicaStatuses": {"type": "object", "additionalProperties": counts},
            "restartCount": {"type": "integer"},
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    }


def _space_parameter_schema() -> JsonDict:
    return {
        "type": "object",
        "description": (
            "A parameter: {type: float|int, low, high, log, step}, {type: categorical|grid, "
            "values}, {type: constant, value}, or a nested mapping of parameters. A categorical "
            "whose values are mappings is a choice among sub-spaces."
        ),
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "type": {"type": "string", "enum": ["float", "int", "categorical", "grid", "constant"]},
            "low": {"type": "number"},
            "high": {"type": "number"},
            "log": {"type": "boolean"},
            "step": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
            "values": {
                "type": "array",
                "minItems": 1,
                "items": {"x-kubernetes-preserve-unknown-fields": True},
            },
            "value": {"x-kubernetes-preserve-unknown-fields": True},
        },
        "x-kubernetes-validations": [
            _cel(
                "!has(self.type) || !(self.type in ['float', 'int']) "
                "|| (has(self.low) && has(self.high))",
                "float and int parameters need low and high",
            ),
            _cel(
                "!has(self.type) || !(self.type in ['float', 'int']) || !has(self.low) "
                "|| !has(self.high) || self.low <= self.high",
                "low must not exceed high",
                ".low",
            ),
            _cel(
                "!has(self.type) || self.type != 'float' || !has(self.low) "
                "|| !has(self.log) || !self.log || self.low > 0.0",
                "a log-scaled range needs low > 0",
                ".low",
            ),
        ],
    }


def _sweep_spec_schema() -> JsonDict:
    return {
        "type": "object",
        "required": ["space", "objective", "maxTrials", "trialTemplate"],
        "properties": {
            "space": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 100,
                "description": "The search space, in the plain-data form of sweep files.",
                "additionalProperties": _space_parameter_schema(),
            },
            "objective": _objective_schema(),
            "strategy": _strategy_schema(),
            "earlyStopping": _early_stopping_schema(),
            **_budget_schemas(),
            "trialTemplate": _trial_template_schema(),
            "storage": _storage_schema(),
            "pools": _pools_schema(),
            "schedulingPolicy": _scheduling_policy_schema(),
            "callbacks": {
                "type": "array",
                "description": "Trackers fed by the operator, as in sweep files: "
                "[{mlflow: {tracking_uri: ...}}, {tensorboard: {log_dir: ...}}, {wandb: {...}}].",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "x-kubernetes-validations": _immutable_rules(),
    }


def _objective_schema() -> JsonDict:
    """``Sweep.spec.objective``: one metric and mode, or several metrics; constraints; goal."""
    return {
        "type": "object",
        "description": "What the sweep optimizes: metric and mode, or metrics.",
        "properties": {
            "metric": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "The metric to optimize: a key of what the objective returns and "
                    "reports (e.g. loss)."
                ),
            },
            "mode": {
                "type": "string",
                "enum": ["min", "max"],
                "default": "min",
                "description": "min to minimize the metric, max to maximize it.",
            },
            "metrics": {
                "type": "array",
                "minItems": 2,
                "maxItems": 10,
                "description": (
                    "Several objectives, instead of metric and mode: the status shows "
                    "their Pareto front."
                ),
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 253},
                        "mode": {
                            "type": "string",
                            "enum": ["min", "max"],
                            "default": "min",
                        },
                    },
                },
            },
            "constraints": {
                "type": "object",
                "maxProperties": 20,
                "description": (
                    "Bounds on reported metrics, e.g. {memory_gb: {max: 16}}: a trial "
                    "that breaks one is infeasible and never the best."
                ),
                "additionalProperties": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {"min": {"type": "number"}, "max": {"type": "number"}},
                },
            },
            "goal": {
                "type": "number",
                "description": "Stop starting trials once the best value reaches it.",
            },
        },
        "x-kubernetes-validations": [
            _cel(
                "has(self.metric) != has(self.metrics)",
                "give either metric (one objective) or metrics (several)",
            ),
            _cel(
                "!has(self.goal) || has(self.metric)",
                "goal needs a single metric; with several there is no single best value",
                ".goal",
            ),
        ],
    }


def _strategy_schema() -> JsonDict:
    """``Sweep.spec.strategy``: the search strategy by name, and its settings."""
    return {
        "type": "object",
        "default": {"name": "tpe"},
        "description": "How the next trials' parameters are chosen.",
        "properties": {
            "name": {
                "type": "string",
                "enum": list(SWEEP_STRATEGY_NAMES),
                "default": "tpe",
                "description": "The search strategy (an Optuna sampler).",
            },
            "settings": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "description": (
                    "Options of the strategy's Optuna sampler: seed for all, e.g. "
                    "n_startup_trials and multivariate for tpe, sigma0 for cmaes, "
                    "population_size for nsga2. An unknown one fails the sweep, naming "
                    "the options there are."
                ),
                "properties": {"seed": {"type": "integer", "minimum": 0}},
            },
        },
    }


def _early_stopping_schema() -> JsonDict:
    """``Sweep.spec.earlyStopping``: a scheduler or pruner by name, and its settings."""
    return {
        "type": "object",
        "required": ["name"],
        "description": "Stopping unpromising trials early, from their reports.",
        "properties": {
            "name": {
                "type": "string",
                "enum": ["none", *EARLY_STOPPING_NAMES],
                "description": (
                    "asha, hyperband and pbt pause, promote and clone trials on "
                    "checkpoints; median is Optuna's median pruner."
                ),
            },
            "settings": {
                **copy.deepcopy(_PRESERVE),
                "description": (
                    "Its settings, e.g. min_resource, max_resource and reduction_factor "
                    "for asha. An unknown one fails the sweep, naming the settings there "
                    "are."
                ),
            },
        },
    }


def _budget_schemas() -> JsonDict:
    """The budget and retry properties of ``Sweep.spec``, in the order the CRD lists them."""
    return {
        "maxTrials": {
            "type": "integer",
            "minimum": 1,
            "maximum": 1_000_000,
            "description": "Trials the sweep runs in all (its budget).",
        },
        "parallelism": {
            "type": "integer",
            "minimum": 1,
            "default": 3,
            "description": "Trials running at once.",
        },
        "maxFailedTrials": {
            "type": "integer",
            "minimum": 1,
            "description": "Failed trials after which the sweep stops and fails.",
        },
        "maxRetries": {
            "type": "integer",
            "minimum": 0,
            "default": 2,
            "description": "New TrainJobs for a trial whose TrainJob vanished.",
        },
        "keepCheckpoints": {
            "type": "integer",
            "minimum": 1,
            "default": 2,
            "description": "Checkpoints kept per trial (the latest ones).",
        },
        "retain": {
            "type": "boolean",
            "default": False,
            "description": (
                "Keep the trial records and the best trial's checkpoints when the Sweep is "
                "deleted (its TrainJobs, pods and Secrets still go), as Katib's retain."
            ),
        },
    }


def _trial_template_schema() -> JsonDict:
    """``Sweep.spec.trialTemplate``: a TrainJob spec, with how trials get their parameters."""
    trial_template = trainjob_spec_schema()
    trial_template["description"] = (
        "The TrainJob every trial runs. Each trial's parameters are given to its containers as "
        "HYPERSWEEP_CONFIG (JSON), as the file HYPERSWEEP_CONFIG_FILE, and in place of "
        "${trialParameters.NAME} in commands, args and env values."
    )
    return trial_template


def _storage_schema() -> JsonDict:
    """``Sweep.spec.storage``: the data volume's claim, or a storage URL from a Secret."""
    return {
        "type": "object",
        "default": {},
        "description": "Where the sweep's trial records and checkpoints live.",
        "properties": {
            "persistentVolumeClaim": {
                "type": "object",
                "default": {},
                "description": (
                    "A ReadWriteMany claim mounted by the operator and by every trial pod at "
                    "the operator's data directory: checkpoints, and the trial records unless "
                    "url is given."
                ),
                "properties": {"claimName": {"type": "string", "default": DEFAULT_CLAIM}},
            },
            "checkpoints": {
                "type": "object",
                "required": ["url"],
                "description": (
                    "Checkpoints on object storage instead of the claim: trial pods then mount "
                    "no volume. The Sweep writes under <url>/<namespace>/<study>, deleted with "
                    "the Sweep."
                ),
                "properties": {
                    "url": {
                        "type": "string",
                        "description": "An fsspec URL: s3://bucket/prefix, gs://..., az://...",
                    },
                    "options": {
                        "type": "object",
                        "description": (
                            "fsspec storage options without credentials, e.g. endpoint_url"
                        ),
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                    "secretRef": {
                        "type": "object",
                        "required": ["name"],
                        "description": (
                            "A Secret of the store's environment variables (AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY, ...): given to every trial pod as "
                            "variables, and read by the operator."
                        ),
                        "properties": {"name": {"type": "string"}},
                    },
                },
            },
            "url": {
                "type": "object",
                "required": ["secretKeyRef"],
                "description": "An Optuna storage URL (e.g. postgresql://...) read from a Secret.",
                "properties": {
                    "secretKeyRef": {
                        "type": "object",
                        "required": ["name", "key"],
                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                    }
                },
            },
        },
    }


def _immutable_rules() -> list[JsonDict]:
    """CEL rules: what a Sweep cannot change once created (its space, objective, storage)."""
    return [
        _cel("self.space == oldSelf.space", "space cannot change after creation", ".space"),
        _cel(
            "has(self.objective.metric) == has(oldSelf.objective.metric) "
            "&& (!has(self.objective.metric) || self.objective.metric == "
            "oldSelf.objective.metric) && self.objective.mode == oldSelf.objective.mode "
            "&& has(self.objective.metrics) == has(oldSelf.objective.metrics) "
            "&& (!has(self.objective.metrics) || self.objective.metrics == "
            "oldSelf.objective.metrics) "
            "&& has(self.objective.constraints) == has(oldSelf.objective.constraints) "
            "&& (!has(self.objective.constraints) || self.objective.constraints == "
            "oldSelf.objective.constraints)",
            "objective.metric, mode, metrics and constraints cannot change after creation",
            ".objective",
        ),
        _cel(
            "self.storage == oldSelf.storage",
            "storage cannot change after creation",
            ".storage",
        ),
    ]


def _pools_schema() -> JsonDict:
    toleration = {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "operator": {"type": "string", "enum": ["Equal", "Exists"]},
            "value": {"type": "string"},
            "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
            "tolerationSeconds": {"type": "integer"},
        },
    }
    return {
        "type": "array",
        "maxItems": 32,
        "description": (
            "The node pools trials may use. A trial starts only once one pool has room for all "
            "of its replicas at once (each replica on one node); until then it waits "
            "(status.queuedTrials). A trial that fits no pool even when empty fails."
        ),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 63},
                "tpu": {
                    "type": "object",
                    "required": ["accelerator", "topology"],
                    "description": (
                        "A GKE TPU slice pool: each trial is one whole slice (one replica per "
                        "host), its nodes selected by cloud.google.com/gke-tpu-accelerator and "
                        "-topology, each replica requesting google.com/tpu = chipsPerHost."
                    ),
                    "properties": {
                        "accelerator": {"type": "string", "minLength": 1},
                        "topology": {
                            "type": "string",
                            "pattern": "^[1-9][0-9]*(x[1-9][0-9]*){1,2}$",
                        },
                        "chipsPerHost": {"type": "integer", "minimum": 1},
                    },
                },
                "nodeSelector": {
                    "type": "object",
                    "minProperties": 1,
                    "description": "The labels of the pool's nodes, e.g. hypersweep.io/pool: a100.",
                    "additionalProperties": {"type": "string"},
                },
                "accelerator": {
                    "type": "object",
                    "required": ["resource"],
                    "description": "What each replica requests there (requests and limits).",
                    "properties": {
                        "resource": {"type": "string", "minLength": 1},
                        "perReplica": {"type": "integer", "minimum": 0, "default": 1},
                    },
                },
                "tolerations": {"type": "array", "items": toleration},
                "weight": {
                    "type": "integer",
                    "default": 1,
                    "description": "Preference: the pool of highest weight with room is used.",
                },
            },
        },
    }


def _scheduling_policy_schema() -> JsonDict:
    return {
        "type": "object",
        "default": {"gang": "builtin"},
        "description": (
            "Who starts a trial's replicas together: builtin (the operator admits a trial once a "
            "pool has room for all replicas), none (pods go straight to the scheduler; partial "
            "gangs can deadlock a pool), kueue (queueName: a LocalQueue), podGroup "
            "(scheduler-plugins coscheduling or Volcano) or workload (kube-scheduler's own gang "
            "scheduling: a scheduling.k8s.io/v1alpha2 Workload and PodGroup per trial)."
        ),
        "properties": {
            "gang": {
                "type": "string",
                "enum": ["builtin", "none", "kueue", "podGroup", "workload"],
                "default": "builtin",
            },
            "queueName": {"type": "string"},
            "provider": {
                "type": "string",
                "enum": ["schedulerPlugins", "volcano"],
                "default": "schedulerPlugins",
            },
            "schedulerName": {"type": "string"},
            "scheduleTimeoutSeconds": {"type": "integer", "minimum": 1},
        },
        "x-kubernetes-validations": [
            _cel(
                "self.gang != 'kueue' || has(self.queueName)",
                "queueName is required with gang: kueue",
            )
        ],
    }


def _sweep_status_schema() -> JsonDict:
    counts = {
        name: {"type": "integer"}
        for name in (
            "total",
            "pending",
            "running",
            "paused",
            "succeeded",
            "pruned",
            "failed",
            "infeasible",
        )
    }
    return {
        "type": "object",
        "properties": {
            "conditions": _condition_schema(),
            "observedGeneration": {"type": "integer"},
            "studyName": {"type": "string"},
            "queuedTrials": {
                "type": "integer",
                "description": "Trials waiting for a pool with room for all their replicas.",
            },
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "trials": {"type": "object", "properties": counts},
            "paretoFront": {
                "type": "object",
                "description": (
                    "With several objectives: the front's size and its first trials (the "
                    "whole front: hypersweep best)."
                ),
                "properties": {
                    "size": {"type": "integer"},
                    "trials": {
                        "type": "array",
                        "maxItems": FRONT_LIMIT,
                        "items": {
                            "type": "object",
                            "properties": {
                                "number": {"type": "integer"},
                                "values": {
                                    "type": "object",
                                    "additionalProperties": {"type": "number"},
                                },
                                "params": copy.deepcopy(_PRESERVE),
                            },
                        },
                    },
                },
            },
            "bestTrial": {
                "type": "object",
                "properties": {
                    "number": {"type": "integer"},
                    "value": {"type": "number"},
                    "rounded": {
                        "type": "string",
                        "description": "The value to 6 significant digits, as printed.",
                    },
                    "params": copy.deepcopy(_PRESERVE),
                },
            },
        },
    }


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    spec: JsonDict,
    status: JsonDict,
    columns: list[JsonDict],
    root_rules: list[JsonDict],
) -> JsonDict:
    schema: JsonDict = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": root_rules,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["hypersweep"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def _column(name: str, path: str, kind: str = "string", priority: int = 0) -> JsonDict:
    column: JsonDict = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


def trainjob_crd() -> JsonDict:
    """The TrainJob CustomResourceDefinition."""
    return _crd(
        "TrainJob",
        "trainjobs",
        ["tj"],
        trainjob_spec_schema(),
        _trainjob_status_schema(),
        [
            # A trial's TrainJob shows the trial (kubectl get trainjobs -l hypersweep.io/sweep=S).
            _column("Trial", ".metadata.labels.hypersweep\\.io/trial"),
            _column("Trial-State", ".metadata.annotations.hypersweep\\.io/trial-state"),
            _column("Value", ".metadata.annotations.hypersweep\\.io/value"),
            _column("Params", ".metadata.annotations.hypersweep\\.io/params"),
            _column("State", ".status.conditions[-1:].type"),
            _column("Restarts", ".status.restartCount", "integer"),
            _column("Framework", ".spec.framework", priority=1),
            _column("Age", ".metadata.creationTimestamp", "date"),
            _column("Failure", ".metadata.annotations.hypersweep\\.io/failure"),
        ],
        [
            _cel(
                f"self.metadata.name.size() <= {MAX_TRAINJOB_NAME}",
                f"a TrainJob name has at most {MAX_TRAINJOB_NAME} characters, so that its pods' "
                "and services' names are DNS labels",
            )
        ],
    )


def sweep_crd() -> JsonDict:
    """The Sweep CustomResourceDefinition (accepting Katib-shaped specs too)."""
    from hypersweep.operators._katib_crd import extend_sweep_crd

    return extend_sweep_crd(_native_sweep_crd())


def _native_sweep_crd() -> JsonDict:
    return _crd(
        "Sweep",
        "sweeps",
        ["sw"],
        _sweep_spec_schema(),
        _sweep_status_schema(),
        [
            _column("State", ".status.conditions[-1:].type"),
            _column("Succeeded", ".status.trials.succeeded", "integer"),
            _column("Pruned", ".status.trials.pruned", "integer"),
            _column("Failed", ".status.trials.failed", "integer"),
            _column("Running", ".status.trials.running", "integer"),
            _column("Best-Trial", ".status.bestTrial.number", "integer"),
            _column("Best-Value", ".status.bestTrial.rounded"),
            _column("Paused", ".status.trials.paused", "integer"),
            _column("Total", ".status.trials.total", "integer"),
            _column("Metric", ".spec.objective.metric", priority=1),
            _column("Front", ".status.paretoFront.size", "integer", priority=1),
            _column("Strategy", ".spec.strategy.name", priority=1),
            _column("Age", ".metadata.creationTimestamp", "date"),
        ],
        [
            _cel(
                f"self.metadata.name.size() <= {MAX_SWEEP_NAME}",
                f"a Sweep name has at most {MAX_SWEEP_NAME} characters, so that its trials' "
                "TrainJob names stay short enough",
            )
        ],
    )


def crd_manifests() -> list[JsonDict]:
    """Every CRD the operator serves, in install order."""
    return [trainjob_crd(), sweep_crd()]
