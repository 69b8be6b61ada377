"""The Sweep CRD's schema for Katib-shaped specs (``parameters``, ``algorithm`` ...).

A Sweep's spec is either native or Katib's Experiment spec; the API server accepts both shapes
(structural schemas cannot say "one of two objects", so the Katib fields are added next to the
native ones, the native requirements apply only when ``parameters`` is absent, and the operator
translates and checks the Katib form, naming the field, before anything starts). The Katib
status fields and printer columns a Katib user looks for are added too.
"""

from __future__ import annotations

import copy
from typing import Any

JsonDict = dict[str, Any]

_PRESERVE: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_STRING = {"type": "string"}
_NAME_VALUE = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
    },
}
_KATIB = "Katib's Experiment field (kubeflow.org/v1beta1), translated by the operator."
_NATIVE = "!has(self.parameters)"


def _katib_spec_properties() -> JsonDict:
    return {
        "parameters": {
            "type": "array",
            "maxItems": 100,
            "description": f"The search space as Katib's parameters. {_KATIB}",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": _STRING,
                    "parameterType": {
                        "type": "string",
                        "enum": ["double", "int", "discrete", "categorical"],
                    },
                    "feasibleSpace": {
                        "type": "object",
                        "properties": {
                            "min": _STRING,
                            "max": _STRING,
                            "step": _STRING,
                            "distribution": _STRING,
                            "list": {"type": "array", "items": _STRING},
                        },
                    },
                },
            },
        },
        "algorithm": {
            "type": "object",
            "description": f"algorithmName and algorithmSettings. {_KATIB}",
            "properties": {"algorithmName": _STRING, "algorithmSettings": _NAME_VALUE},
        },
        "parallelTrialCount": {"type": "integer", "minimum": 1, "description": _KATIB},
        "maxTrialCount": {"type": "integer", "minimum": 1, "description": _KATIB},
        "maxFailedTrialCount": {"type": "integer", "minimum": 0, "description": _KATIB},
        "resumePolicy": {"type": "string", "description": _KATIB},
        "metricsCollectorSpec": {**copy.deepcopy(_PRESERVE), "description": _KATIB},
        "nasConfig": {**copy.deepcopy(_PRESERVE), "description": "Refused: no NAS."},
    }


def _or_katib(rule: JsonDict, katib: str) -> JsonDict:
    return {**rule, "rule": f"{katib} || ({rule['rule']})"}


def extend_sweep_crd(crd: JsonDict) -> JsonDict:
    """``crd`` (the Sweep CRD) accepting Katib-shaped specs too."""
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    spec["properties"].update(_katib_spec_properties())
    spec["required"] = [r for r in spec["required"] if r not in ("space", "maxTrials")]
    rules = spec.setdefault("x-kubernetes-validations", [])
    for rule in rules:
        if rule["rule"] == "self.space == oldSelf.space":
            rule["rule"] = (
                "has(self.space) == has(oldSelf.space) && "
                "(!has(self.space) || self.space == oldSelf.space)"
            )
    rules += [
        {
            "rule": f"{_NATIVE} ? has(self.space) && has(self.maxTrials) : !has(self.space)",
            "message": "give space and maxTrials (native), or Katib's parameters and "
            "maxTrialCount, not both",
        },
        {
            "rule": "has(self.parameters) == has(oldSelf.parameters) && "
            "(!has(self.parameters) || self.parameters == oldSelf.parameters)",
            "message": "parameters cannot change after creation",
            "fieldPath": ".parameters",
        },
    ]
    objective = spec["properties"]["objective"]
    objective["properties"].update(
        {
            "type": {"type": "string", "enum": ["minimize", "maximize"], "description": _KATIB},
            "objectiveMetricName": {"type": "string", "description": _KATIB},
            "additionalMetricNames": {"type": "array", "items": _STRING},
            "metricStrategies": _NAME_VALUE,
        }
    )
    objective["x-kubernetes-validations"] = [
        _or_katib(rule, "has(self.objectiveMetricName)")
        for rule in objective["x-kubernetes-validations"]
    ]
    early = spec["properties"]["earlyStopping"]
    early.pop("required", None)
    early["properties"].update({"algorithmName": _STRING, "algorithmSettings": _NAME_VALUE})
    early["x-kubernetes-validations"] = [
        {
            "rule": "has(self.name) || has(self.algorithmName)",
            "message": "give name (or Katib's algorithmName)",
        }
    ]
    template = spec["properties"]["trialTemplate"]
    template["properties"].update(
        {
            "primaryContainerName": _STRING,
            "trialParameters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _STRING,
                        "reference": _STRING,
                        "description": _STRING,
                    },
                },
            },
            "trialSpec": {**copy.deepcopy(_PRESERVE), "description": _KATIB},
            "configMap": {**copy.deepcopy(_PRESERVE), "description": "Refused: inline trialSpec."},
            "successCondition": _STRING,
            "failureCondition": _STRING,
            "retain": {"type": "boolean"},
        }
    )
    template["x-kubernetes-validations"] = [
        _or_katib(rule, "has(self.trialSpec) || has(self.configMap)")
        for rule in template.get("x-kubernetes-validations") or []
    ]
    status = schema["properties"]["status"]["properties"]
    for name in (
        "trialsSucceeded",
        "trialsFailed",
        "trialsRunning",
        "trialsPending",
        "trialsEarlyStopped",
    ):
        status[name] = {"type": "integer"}
    metric = {
        "type": "object",
        "properties": {"name": _STRING, "min": _STRING, "max": _STRING, "latest": _STRING},
    }
    status["currentOptimalTrial"] = {
        "type": "object",
        "description": "Katib's name for the best trial: its TrainJob, parameters and metric.",
        "properties": {
            "bestTrialName": _STRING,
            "parameterAssignments": _NAME_VALUE,
            "observation": {
                "type": "object",
                "properties": {"metrics": {"type": "array", "items": metric}},
            },
        },
    }
    columns = version["additionalPrinterColumns"]
    age = columns.pop()  # keep Age last
    columns += [
        # As `kubectl get experiment` shows them (Type is our State).
        {
            "name": "Status",
            "type": "string",
            "jsonPath": ".status.conditions[-1:].status",
            "priority": 1,
        },
        {
            "name": "Optimal-Trial",
            "type": "string",
            "jsonPath": ".status.currentOptimalTrial.bestTrialName",
            "priority": 1,
        },
        {
            "name": "Objective",
            "type": "string",
            "jsonPath": ".spec.objective.objectiveMetricName",
            "priority": 1,
        },
        {
            "name": "Algorithm",
            "type": "string",
            "jsonPath": ".spec.algorithm.algorithmName",
            "priority": 1,
        },
        age,
    ]
    return crd
