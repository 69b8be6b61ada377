"""Katib Experiments as Sweeps: a Katib ``Experiment.spec`` translated to a native Sweep spec.

A Katib user changes ``apiVersion: kubeflow.org/v1beta1, kind: Experiment`` to
``apiVersion: hypersweep.io/v1alpha1, kind: Sweep`` and keeps the rest. The operator translates
such a spec with :func:`translate_spec` before it builds the sweep's settings, so the same control
loop runs it as any Sweep; ``hypersweep katib convert experiment.yaml`` prints the translation
for users who want to move on to the native form.

This module is pure (its one read is the metrics relay's source, once): Katib's fields in, the
native spec (the primary container's command wrapped by the relay, with the collector settings
it reads) out, or a :class:`ConfigError` naming the Katib field and the fix.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.strategies._brackets import HyperbandSchedule

JsonDict = dict[str, Any]

KATIB_API_VERSION = "kubeflow.org/v1beta1"
#: Katib's default StdOut/File filter: ``name=value`` pairs, e.g. ``Validation-accuracy=0.91``.
DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
#: The environment variable carrying the metrics collector settings to the trial entry point.
COLLECTOR_ENV = "HYPERSWEEP_KATIB_COLLECTOR"
#: The interpreter and its flags that run the metrics relay (``-I``: standard library only).
RELAY_INTERPRETER = ("python3", "-I", "-c")

#: Katib's algorithms and the strategy (Optuna sampler) each runs as.
ALGORITHMS = {
    "random": "random",
    "grid": "grid",
    "tpe": "tpe",
    "multivariate-tpe": "tpe",
    "cmaes": "cmaes",
    "bayesianoptimization": "gp",
    "sobol": "qmc",
    "hyperband": "hyperband",
}
#: Katib algorithms refused, and why.
_REFUSED_ALGORITHMS = {
    "pbt": "population based training clones trials from their checkpoints, and a trial command "
    "run under the metrics relay has none; use algorithmName hyperband (budgets as a parameter, "
    "no checkpoints needed), or a native Sweep with earlyStopping pbt and an objective that "
    "calls hypersweep.checkpoint()",
    "enas": "neural architecture search is not supported",
    "darts": "neural architecture search is not supported",
}
#: Katib ``algorithmSettings`` names -> the sampler's (or scheduler's) setting, per algorithm.
_SETTINGS: dict[str, dict[str, str]] = {
    "random": {"random_state": "seed"},
    "grid": {},
    "tpe": {
        "random_state": "seed",
        "n_startup_trials": "n_startup_trials",
        "n_ei_candidates": "n_ei_candidates",
        "n_EI_candidates": "n_ei_candidates",
    },
    "multivariate-tpe": {
        "random_state": "seed",
        "n_startup_trials": "n_startup_trials",
        "n_ei_candidates": "n_ei_candidates",
    },
    "cmaes": {"random_state": "seed", "sigma": "sigma0", "restart_strategy": "restart_strategy"},
    "bayesianoptimization": {"random_state": "seed", "n_initial_points": "n_startup_trials"},
    "sobol": {"random_state": "seed"},
    "hyperband": {
        "resource_name": "resource",
        "r_l": "max_resource",
        "eta": "eta",
        "random_state": "seed",
    },
}
_INT_SETTINGS = {
    "seed",
    "eta",
    "n_startup_trials",
    "n_ei_candidates",
}
_FLOAT_SETTINGS = {"sigma0", "max_resource"}
#: medianstop's settings -> Optuna's MedianPruner's.
_MEDIANSTOP = {"min_trials_required": "n_startup_trials", "start_step": "n_warmup_steps"}
#: Katib's defaults for medianstop (its docs): 3 trials, from the 4th report.
_MEDIANSTOP_DEFAULTS = {"n_startup_trials": 3, "n_warmup_steps": 4}

_KATIB_KEYS = {
    "objective",
    "algorithm",
    "earlyStopping",
    "parameters",
    "parallelTrialCount",
    "maxTrialCount",
    "maxFailedTrialCount",
    "metricsCollectorSpec",
    "trialTemplate",
    "resumePolicy",
    "nasConfig",
}
#: hypersweep's own Sweep fields that a Katib-shaped spec may also carry (and keeps).
_NATIVE_EXTRAS = {
    "storage",
    "pools",
    "schedulingPolicy",
    "callbacks",
    "retain",
    "maxRetries",
    "keepCheckpoints",
    # Defaulted by the CRD; the Katib fields say the same thing and win.
    "strategy",
    "parallelism",
}
_RUN_POLICY_KEYS = ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
_PARAMETER = re.compile(r"\$\{trialParameters\.([^}]*)\}")
_METADATA = re.compile(
    r"^\$\{trialSpec\.(Name|Namespace|Kind|APIVersion|Labels|Annotations)(?:\[(.+)\])?\}$"
)
COLLECTOR_KINDS = ("StdOut", "File", "TensorFlowEvent", "Push")
#: Where Katib's TensorFlowEvent collector looks when the Experiment gives no path.
DEFAULT_TFEVENT_DIR = "/var/log/katib/tfevent/"
_REFUSED_COLLECTORS = {
    "None": "a sweep ranks trials by their objective metric, so it must collect it (every "
    "trial would fail for want of it); use StdOut, File or Push",
    "Prometheus": "there is no Prometheus scraping of trials; print the metrics (StdOut) or push "
    "them (Push)",
    "PrometheusMetric": "there is no Prometheus scraping of trials; print the metrics (StdOut) "
    "or push them (Push)",
    "Custom": "custom collector sidecars are not run; print the metrics (StdOut) or push them "
    "(Push)",
}


def is_katib_spec(spec: Mapping[str, Any] | None) -> bool:
    """Whether a Sweep's spec is written in Katib's terms (it has ``parameters``, ``algorithm``
    or a Katib objective)."""
    if not isinstance(spec, Mapping):
        return False
    objective = spec.get("objective")
    return (
        "parameters" in spec
        or "algorithm" in spec
        or (isinstance(objective, Mapping) and "objectiveMetricName" in objective)
    )


# --- values --------------------------------------------------------------------------------


def _number(text: Any, where: str, kind: type = float) -> Any:
    """A Katib value (a string such as ``"0.01"``) as a number; ``kind`` int or float."""
    try:
        if kind is int:
            value = float(str(text))
            if not value.is_integer():
                raise ValueError
            return int(value)
        return float(str(text))
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(
            f'{where}: expected {what} (as a string, e.g. "3"), got {text!r}'
        ) from None


def _plain(text: str) -> Any:
    """A list value as the number it spells, else the string."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if re.fullmatch(r"[+-]?\d+", text.strip()) else value


# --- parameters ----------------------------------------------------------------------------


def translate_parameters(parameters: Any, grid: bool) -> JsonDict:
    """``spec.parameters`` as a native search space. With ``grid`` every parameter becomes its
    list of values (doubles need a step), as Katib's grid enumerates them."""
    if not isinstance(parameters, list) or not parameters:
        raise ConfigError("spec.parameters: expected a non-empty list of parameters")
    space: JsonDict = {}
    for index, parameter in enumerate(parameters):
        at = f"spec.parameters[{index}]"
        if not isinstance(parameter, Mapping):
            raise ConfigError(f"{at}: expected a mapping with name, parameterType, feasibleSpace")
        name = parameter.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}.name: expected the parameter's name")
        at = f"spec.parameters[{index}] ({name})"
        if name in space:
            raise ConfigError(f"{at}.name: {name!r} is given twice")
        kind = parameter.get("parameterType")
        feasible = parameter.get("feasibleSpace") or {}
        if not isinstance(feasible, Mapping):
            raise ConfigError(f"{at}.feasibleSpace: expected a mapping")
        space[name] = _domain(kind, feasible, at, grid)
    return space


def _domain(kind: Any, feasible: Mapping[str, Any], at: str, grid: bool) -> JsonDict:
    if kind in ("discrete", "categorical"):
        values = feasible.get("list")
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{at}.feasibleSpace.list: a {kind} parameter needs its list of values"
            )
        if kind == "discrete":
            plain = [_number(v, f"{at}.feasibleSpace.list") for v in values]
            plain = [
                int(v) if float(v).is_integer() and "." not in str(o) else v
                for v, o in zip(plain, values, strict=True)
            ]
        else:
            plain = [str(v) for v in values]
        return {"type": "categorical", "values": plain}
    if kind not in ("double", "int"):
        raise ConfigError(
            f"{at}.parameterType: expected double, int, discrete or categorical, got {kind!r}"
        )
    number = float if kind == "double" else int
    for needed in ("min", "max"):
        if feasible.get(needed) is None:
            raise ConfigError(f"{at}.feasibleSpace.{needed}: a {kind} parameter needs {needed}")
    low = _number(feasible["min"], f"{at}.feasibleSpace.min", number)
    high = _number(feasible["max"], f"{at}.feasibleSpace.max", number)
    if low > high:
        raise ConfigError(f"{at}.feasibleSpace: min ({low}) is above max ({high})")
    step = feasible.get("step")
    step = _number(step, f"{at}.feasibleSpace.step", number) if step not in (None, "") else None
    distribution = feasible.get("distribution") or "uniform"
    if distribution not in ("uniform", "logUniform"):
        raise ConfigError(
            f"{at}.feasibleSpace.distribution: {distribution!r} is not supported: the "
            "distributions are uniform and logUniform (normal and logNormal have no Optuna "
            "sampler counterpart)"
        )
    if grid:
        if step is None and kind == "double":
            raise ConfigError(
                f"{at}.feasibleSpace.step: grid search needs a step for a double parameter"
            )
        return {"type": "categorical", "values": _grid_values(low, high, step or 1, kind)}
    domain: JsonDict = {"type": "float" if kind == "double" else "int", "low": low, "high": high}
    if distribution == "logUniform":
        domain["log"] = True
    if step is not None and distribution != "logUniform":
        domain["step"] = step
    return domain


def _grid_values(low: Any, high: Any, step: Any, kind: str) -> list[Any]:
    values: list[Any] = []
    count = int((high - low) / step + 1e-9) + 1
    for index in range(count):
        value = low + index * step
        values.append(int(value) if kind == "int" else round(value, 12))
    return values


# --- objective, algorithm, early stopping -------------------------------------------------


def translate_objective(objective: Any) -> tuple[JsonDict, JsonDict]:
    """``spec.objective`` -> (native objective, metric strategies by metric name)."""
    if not isinstance(objective, Mapping):
        raise ConfigError("spec.objective: expected type, objectiveMetricName and optionally goal")
    kind = objective.get("type")
    if kind not in ("minimize", "maximize"):
        raise ConfigError(f"spec.objective.type: expected minimize or maximize, got {kind!r}")
    metric = objective.get("objectiveMetricName")
    if not isinstance(metric, str) or not metric:
        raise ConfigError("spec.objective.objectiveMetricName: expected the metric's name")
    native: JsonDict = {"metric": metric, "mode": "min" if kind == "minimize" else "max"}
    if objective.get("goal") is not None:
        native["goal"] = _number(objective["goal"], "spec.objective.goal")
    additional = objective.get("additionalMetricNames") or []
    if not isinstance(additional, list) or not all(isinstance(m, str) for m in additional):
        raise ConfigError("spec.objective.additionalMetricNames: expected a list of metric names")
    # Katib's defaults: the objective by its own direction, the others their latest value.
    strategies: JsonDict = {metric: native["mode"], **{m: "latest" for m in additional}}
    for index, item in enumerate(objective.get("metricStrategies") or []):
        at = f"spec.objective.metricStrategies[{index}]"
        name, value = (item or {}).get("name"), (item or {}).get("value")
        if name not in strategies:
            raise ConfigError(
                f"{at}.name: {name!r} is neither the objective metric nor an additional metric"
            )
        if value not in ("min", "max", "latest"):
            raise ConfigError(f"{at}.value: expected min, max or latest, got {value!r}")
        strategies[name] = value
    return native, strategies


def translate_algorithm(algorithm: Any) -> JsonDict:
    """``spec.algorithm`` -> the native strategy (an Optuna sampler and its settings)."""
    if not isinstance(algorithm, Mapping):
        raise ConfigError("spec.algorithm: expected a mapping with algorithmName")
    name = algorithm.get("algorithmName")
    if name in _REFUSED_ALGORITHMS:
        raise ConfigError(
            f"spec.algorithm.algorithmName: {name} is not supported: {_REFUSED_ALGORITHMS[name]}"
        )
    if name not in ALGORITHMS:
        raise ConfigError(
            f"spec.algorithm.algorithmName: {name!r} is not supported; the algorithms are "
            f"{', '.join(ALGORITHMS)}"
        )
    known = _SETTINGS[name]
    settings: JsonDict = {}
    for index, item in enumerate(algorithm.get("algorithmSettings") or []):
        at = f"spec.algorithm.algorithmSettings[{index}]"
        key, value = (item or {}).get("name"), (item or {}).get("value")
        if key not in known:
            raise ConfigError(
                f"{at}.name: {name} has no setting {key!r} here; its settings are "
                f"{', '.join(known) or 'none'}"
            )
        target = known[key]
        if target in _INT_SETTINGS:
            settings[target] = _number(value, f"{at}.value", int)
        elif target in _FLOAT_SETTINGS:
            settings[target] = _number(value, f"{at}.value")
        else:
            settings[target] = value
    strategy: JsonDict = {"name": ALGORITHMS[name]}
    if name == "multivariate-tpe":
        settings["multivariate"] = True
    if name == "sobol":
        settings["qmc_type"] = "sobol"
    if settings:
        strategy["settings"] = settings
    return strategy


def translate_early_stopping(early: Any) -> JsonDict | None:
    """``spec.earlyStopping`` (medianstop) -> Optuna's median pruner with Katib's defaults."""
    if early is None:
        return None
    if not isinstance(early, Mapping):
        raise ConfigError("spec.earlyStopping: expected a mapping with algorithmName")
    name = early.get("algorithmName")
    if name != "medianstop":
        raise ConfigError(
            f"spec.earlyStopping.algorithmName: expected medianstop (Katib's only early "
            f"stopping), got {name!r}"
        )
    settings = dict(_MEDIANSTOP_DEFAULTS)
    for index, item in enumerate(early.get("algorithmSettings") or []):
        at = f"spec.earlyStopping.algorithmSettings[{index}]"
        key = (item or {}).get("name")
        if key not in _MEDIANSTOP:
            raise ConfigError(
                f"{at}.name: medianstop has no setting {key!r}; its settings are "
                f"{', '.join(_MEDIANSTOP)}"
            )
        settings[_MEDIANSTOP[key]] = _number((item or {}).get("value"), f"{at}.value", int)
    return {"name": "median", "settings": settings}


# --- metrics collector ---------------------------------------------------------------------


def translate_collector(spec: Any) -> JsonDict:
    """``spec.metricsCollectorSpec`` -> the collector settings the trial entry point reads:
    ``kind`` (StdOut, File, Push), ``filters`` (regexes) and ``path`` for File."""
    spec = spec or {}
    if not isinstance(spec, Mapping):
        raise ConfigError("spec.metricsCollectorSpec: expected a mapping with collector.kind")
    kind = (spec.get("collector") or {}).get("kind") or "StdOut"
    if kind in _REFUSED_COLLECTORS:
        raise ConfigError(
            f"spec.metricsCollectorSpec.collector.kind: {kind} is not supported: "
            f"{_REFUSED_COLLECTORS[kind]}"
        )
    if kind not in COLLECTOR_KINDS:
        raise ConfigError(
            f"spec.metricsCollectorSpec.collector.kind: expected one of "
            f"{', '.join(COLLECTOR_KINDS)}, got {kind!r}"
        )
    source = spec.get("source") or {}
    formats = ((source.get("filter") or {}).get("metricsFormat")) or [DEFAULT_FILTER]
    for index, pattern in enumerate(formats):
        at = f"spec.metricsCollectorSpec.source.filter.metricsFormat[{index}]"
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ConfigError(f"{at}: not a valid regular expression ({error})") from None
        if compiled.groups < 2:
            raise ConfigError(
                f"{at}: needs two groups, the metric's name and its value, as Katib's filters"
            )
    collector: JsonDict = {"kind": kind, "filters": list(formats)}
    path_spec = source.get("fileSystemPath") or {}
    if kind == "TensorFlowEvent":
        collector["path"] = path_spec.get("path") or DEFAULT_TFEVENT_DIR
    if kind == "File":
        path = path_spec.get("path")
        if not path:
            raise ConfigError(
                "spec.metricsCollectorSpec.source.fileSystemPath.path: a File collector needs "
                "the metrics file's path"
            )
        file_format = path_spec.get("format") or "TEXT"
        if file_format not in ("TEXT", "TF_EVENT"):
            raise ConfigError(
                f"spec.metricsCollectorSpec.source.fileSystemPath.format: expected TEXT or "
                f"TF_EVENT, got {file_format!r}"
            )
        if file_format == "TF_EVENT":
            collector["kind"] = "TensorFlowEvent"
        collector["path"] = path
    return collector


# --- the trial template --------------------------------------------------------------------


def _metadata_reference(reference: str, trial_meta: Mapping[str, Any], at: str) -> str:
    """What a ``${trialSpec.X}`` reference becomes: Kubernetes' ``$(VAR)`` expansion of the
    trial pod's environment for the name and namespace, constants for the rest."""
    match = _METADATA.match(reference)
    if match is None:
        raise ConfigError(
            f"{at}: {reference!r} names no parameter of spec.parameters and is not a "
            "${trialSpec.Name|Namespace|Kind|APIVersion|Labels[key]|Annotations[key]} reference"
        )
    field, key = match.groups()
    if field == "Name":
        # The trial's TrainJob name, as the launcher makes it: <sweep>-trial-<n>.
        return "$(HYPERSWEEP_SWEEP)-trial-$(HYPERSWEEP_TRIAL_NUMBER)"
    if field == "Namespace":
        return "$(HYPERSWEEP_NAMESPACE)"
    if field == "Kind":
        return "TrainJob"
    if field == "APIVersion":
        return "hypersweep.io/v1alpha1"
    values = trial_meta.get("labels" if field == "Labels" else "annotations") or {}
    if key not in values:
        raise ConfigError(
            f"{at}: {reference!r}: the trialSpec's metadata has no {field.lower()[:-1]} {key!r}"
        )
    return str(values[key])


def _substitute(node: Any, replacements: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return _PARAMETER.sub(lambda m: replacements.get(m.group(1), m.group(0)), node)
    if isinstance(node, Mapping):
        return {key: _substitute(value, replacements) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(item, replacements) for item in node]
    return node


def _used_parameters(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, str):
        found.update(_PARAMETER.findall(node))
    elif isinstance(node, Mapping):
        for value in node.values():
            found |= _used_parameters(value)
    elif isinstance(node, list):
        for item in node:
            found |= _used_parameters(item)
    return found


def _job_to_trainjob(trial_spec: Mapping[str, Any]) -> tuple[JsonDict, list[JsonDict]]:
    """A Katib ``trialSpec`` as a TrainJob spec, and the pod specs in it (to find containers)."""
    at = "spec.trialTemplate.trialSpec"
    api_version = trial_spec.get("apiVersion")
    kind = trial_spec.get("kind")
    body = trial_spec.get("spec") or {}
    if not isinstance(body, Mapping):
        raise ConfigError(f"{at}.spec: expected a mapping")
    if kind == "Job" and api_version == "batch/v1":
        for key in ("parallelism", "completions"):
            if int(body.get(key) or 1) != 1:
                raise ConfigError(
                    f"{at}.spec.{key}: a trial Job runs one pod; for several replicas use a "
                    "PyTorchJob or TFJob trialSpec"
                )
        template = copy.deepcopy(body.get("template") or {})
        if not (template.get("spec") or {}).get("containers"):
            raise ConfigError(f"{at}.spec.template.spec.containers: the Job's pod has no container")
        restart = (template.get("spec") or {}).pop("restartPolicy", "Never")
        job: JsonDict = {
            "framework": "generic",
            "replicaSpecs": {
                "Worker": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure" if restart == "OnFailure" else "Never",
                    "template": template,
                }
            },
        }
        run = {k: body[k] for k in _RUN_POLICY_KEYS if body.get(k) is not None}
        if run:
            job["runPolicy"] = run
        return job, [template["spec"]]
    if kind in ("PyTorchJob", "TFJob") and str(api_version).startswith("kubeflow.org/"):
        key = "pytorchReplicaSpecs" if kind == "PyTorchJob" else "tfReplicaSpecs"
        allowed = {key, "runPolicy"} | ({"successPolicy"} if kind == "TFJob" else set())
        for extra in body:
            if extra not in allowed:
                raise ConfigError(
                    f"{at}.spec.{extra}: not supported in a {kind} trial (a TrainJob takes "
                    f"{', '.join(sorted(allowed))})"
                )
        replicas = copy.deepcopy(body.get(key) or {})
        if not replicas:
            raise ConfigError(f"{at}.spec.{key}: the {kind} has no replicas")
        job = {key: replicas}
        if body.get("successPolicy"):
            job["successPolicy"] = body["successPolicy"]
        run_policy = dict(body.get("runPolicy") or {})
        for extra in run_policy:
            if extra not in (*_RUN_POLICY_KEYS, "cleanPodPolicy", "suspend"):
                raise ConfigError(f"{at}.spec.runPolicy.{extra}: not supported in a trial")
        if run_policy:
            job["runPolicy"] = run_policy
        pods = [
            r["template"]["spec"]
            for r in replicas.values()
            if (r.get("template") or {}).get("spec")
        ]
        return job, pods
    if kind == "MPIJob":
        raise ConfigError(
            f"{at}.kind: MPIJob is not supported: hypersweep runs PyTorch and TensorFlow gangs "
            "(use a PyTorchJob or TFJob trialSpec, or a batch/v1 Job for one pod)"
        )
    raise ConfigError(
        f"{at}.kind: {api_version}/{kind} is not supported; a trial runs a batch/v1 Job or a "
        "kubeflow.org/v1 PyTorchJob or TFJob (each becomes a TrainJob)"
    )


def translate_trial_template(
    template: Any, space: Mapping[str, Any], collector: JsonDict, strategies: JsonDict
) -> JsonDict:
    """``spec.trialTemplate`` -> the native trial template (a TrainJob spec).

    Each ``${trialParameters.NAME}`` becomes the native ``${trialParameters.<reference>}`` of
    the parameter it references (or the metadata it names), and the primary container's command
    is wrapped by the trial entry point that relays its metrics.
    """
    at = "spec.trialTemplate"
    if not isinstance(template, Mapping):
        raise ConfigError(f"{at}: expected a mapping with trialSpec and trialParameters")
    if template.get("configMap") is not None:
        raise ConfigError(
            f"{at}.configMap: trial templates from a ConfigMap are not read (the operator has "
            "no access to ConfigMaps); inline the template as trialSpec"
        )
    trial_spec = template.get("trialSpec")
    if not isinstance(trial_spec, Mapping):
        raise ConfigError(f"{at}.trialSpec: expected the trial's Job, PyTorchJob or TFJob")
    trial_meta = trial_spec.get("metadata") or {}
    replacements: dict[str, str] = {}
    for index, item in enumerate(template.get("trialParameters") or []):
        where = f"{at}.trialParameters[{index}]"
        name, reference = (item or {}).get("name"), (item or {}).get("reference")
        if not name:
            raise ConfigError(f"{where}.name: expected the placeholder's name")
        reference = reference or name
        if reference in space:
            replacements[name] = "${trialParameters." + reference + "}"
        else:
            replacements[name] = _metadata_reference(reference, trial_meta, f"{where}.reference")
    unknown = sorted(_used_parameters(trial_spec) - set(replacements))
    if unknown:
        raise ConfigError(
            f"{at}.trialSpec: ${{trialParameters.{unknown[0]}}} is not declared in "
            f"{at}.trialParameters (declared: {', '.join(sorted(replacements)) or 'none'})"
        )
    job, pods = _job_to_trainjob(_substitute(trial_spec, replacements))
    primary = template.get("primaryContainerName")
    found = 0
    for pod in pods:
        containers = pod.get("containers") or []
        if primary is None and len(containers) == 1:
            chosen = containers[0]
        else:
            chosen = next((c for c in containers if c.get("name") == primary), None)
        if chosen is None:
            continue
        found += 1
        _wrap(chosen, collector, strategies, f"{at}.trialSpec ({chosen.get('name')})")
    if not found:
        names = sorted({str(c.get("name")) for pod in pods for c in pod.get("containers") or []})
        raise ConfigError(
            f"{at}.primaryContainerName: {primary!r} names no container of the trial "
            f"(its containers: {', '.join(names)}); name the one that trains"
        )
    if template.get("retain"):
        # Katib's retain keeps a finished trial's pods for inspection.
        job.setdefault("runPolicy", {})["cleanPodPolicy"] = "None"
    return job


@functools.cache
def relay_source() -> str:
    """The metrics relay's source as the trial runs it: ``_katib_relay.py`` without its
    docstrings and comments (half the size in every trial pod's spec)."""
    tree = ast.parse(Path(__file__).with_name("_katib_relay.py").read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            if len(body) == 1:
                body[0] = ast.Pass()
            else:
                del body[0]
    return ast.unparse(tree) + "\n"


def relay_command() -> list[str]:
    """What the primary container's command is prefixed with: the relay, then ``--``."""
    return [*RELAY_INTERPRETER, relay_source(), "--"]


def _wrap(container: JsonDict, collector: JsonDict, strategies: JsonDict, at: str) -> None:
    """Run the container's command under the metrics relay (no sidecar, nothing of hypersweep
    needed in the image: the relay is standard-library Python run from its source)."""
    command = list(container.get("command") or [])
    if not command:
        raise ConfigError(
            f"{at}.command: the primary container needs its command written out (the image's "
            "entrypoint is not known here, and the metrics relay runs the command itself)"
        )
    container["command"] = [*relay_command(), *command, *(container.get("args") or [])]
    container.pop("args", None)
    settings = {**collector, "metrics": strategies}
    env = [e for e in container.get("env") or [] if e.get("name") != COLLECTOR_ENV]
    env.append({"name": COLLECTOR_ENV, "value": json.dumps(settings, separators=(",", ":"))})
    container["env"] = env


# --- the whole spec ------------------------------------------------------------------------


def translate_spec(spec: Mapping[str, Any]) -> JsonDict:
    """A Katib-shaped Sweep (or Experiment) spec as the native Sweep spec.

    hypersweep's own fields (``storage``, ``pools``, ``callbacks``, ``maxRetries``...) pass
    through; Katib's are translated; anything else is refused, naming the field.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError("spec: expected a mapping")
    for key in spec:
        if key not in _KATIB_KEYS and key not in _NATIVE_EXTRAS:
            if key in ("space", "maxTrials", "maxFailedTrials", "trialTemplate", "earlyStopping"):
                continue
            raise ConfigError(
                f"spec.{key}: not a field of a Katib Experiment spec (nor of a Sweep's that "
                f"applies to one); the fields are {', '.join(sorted(_KATIB_KEYS))}"
            )
    for ours, katib in (
        ("space", "parameters"),
        ("maxTrials", "maxTrialCount"),
        ("maxFailedTrials", "maxFailedTrialCount"),
    ):
        if ours in spec:
            raise ConfigError(
                f"spec.{ours}: a Katib-shaped spec gives {katib} instead; give one form only"
            )
    if spec.get("nasConfig") is not None:
        raise ConfigError(
            "spec.nasConfig: neural architecture search (enas, darts) is not supported"
        )
    algorithm = spec.get("algorithm") or {"algorithmName": "random"}
    name = (algorithm or {}).get("algorithmName")
    strategy = translate_algorithm(algorithm)
    space = translate_parameters(spec.get("parameters"), grid=name == "grid")
    objective, strategies = translate_objective(spec.get("objective"))
    early = translate_early_stopping(spec.get("earlyStopping"))
    collector = translate_collector(spec.get("metricsCollectorSpec"))
    native: JsonDict = {
        key: copy.deepcopy(spec[key])
        for key in _NATIVE_EXTRAS - {"strategy", "parallelism"}
        if key in spec
    }
    native.update(
        {
            "space": space,
            "objective": objective,
            "strategy": strategy,
            "trialTemplate": translate_trial_template(
                spec.get("trialTemplate"), space, collector, strategies
            ),
        }
    )
    if early:
        native["earlyStopping"] = early
    parallel = spec.get("parallelTrialCount", 3)
    native["parallelism"] = _count(parallel, "spec.parallelTrialCount", 1)
    trials = spec.get("maxTrialCount")
    if trials is None and name != "hyperband":
        if name != "grid":
            raise ConfigError(
                "spec.maxTrialCount: required (a sweep runs a fixed budget of trials); Katib's "
                "unlimited experiments end on their goal, so give a bound"
            )
        trials = 1
        for domain in space.values():
            trials *= len(domain.get("values") or [1])
    if name == "hyperband":
        schedule = _hyperband(strategy, space)
        # Katib's hyperband ends with its last bracket, or at maxTrialCount if that comes first.
        if trials is None:
            trials = schedule.total_trials
        else:
            trials = min(_count(trials, "spec.maxTrialCount", 1), schedule.total_trials)
    native["maxTrials"] = _count(trials, "spec.maxTrialCount", 1)
    if spec.get("maxFailedTrialCount") is not None:
        # Katib fails the experiment when more than maxFailedTrialCount trials failed.
        failed = _count(spec["maxFailedTrialCount"], "spec.maxFailedTrialCount", 0)
        native["maxFailedTrials"] = failed + 1
    policy = spec.get("resumePolicy") or "Never"
    if policy not in ("Never", "LongRunning", "FromVolume"):
        raise ConfigError(
            f"spec.resumePolicy: expected Never, LongRunning or FromVolume, got {policy!r}"
        )
    return native


def _hyperband(strategy: JsonDict, space: JsonDict) -> HyperbandSchedule:
    """Check Katib's hyperband settings against the parameters, and make the budget parameter
    an integer between the smallest and the largest budget (Katib gives trials ``int`` budgets,
    whatever the parameter's feasible space says)."""
    at = "spec.algorithm.algorithmSettings"
    settings = strategy.get("settings") or {}
    for needed, katib in (("resource", "resource_name"), ("max_resource", "r_l")):
        if needed not in settings:
            raise ConfigError(
                f"{at}: hyperband needs {katib} (the budget parameter and the largest budget, as "
                "Katib's hyperband)"
            )
    resource = settings["resource"]
    if resource not in space:
        raise ConfigError(
            f"{at} resource_name: {resource!r} is not one of spec.parameters (the budget each "
            f"trial gets is a parameter's value; the parameters are {', '.join(space)})"
        )
    try:
        schedule = HyperbandSchedule(settings["max_resource"], settings.get("eta", 3))
    except ConfigError as error:
        raise ConfigError(f"{at}: {error}") from None
    space[resource] = {
        "type": "int",
        "low": schedule.min_budget,
        "high": int(schedule.max_resource),
    }
    return schedule


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def translate_experiment(document: Mapping[str, Any]) -> JsonDict:
    """A whole Katib Experiment (or Katib-shaped Sweep) manifest as a native Sweep manifest."""
    if not isinstance(document, Mapping):
        raise ConfigError("expected a Katib Experiment manifest (a mapping)")
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    if (api_version, kind) not in (
        (KATIB_API_VERSION, "Experiment"),
        ("hypersweep.io/v1alpha1", "Sweep"),
    ):
        raise ConfigError(
            f"kind: expected a {KATIB_API_VERSION} Experiment (or a hypersweep.io/v1alpha1 Sweep "
            f"in Katib's shape), got {api_version}/{kind}"
        )
    metadata = {
        k: v
        for k, v in (document.get("metadata") or {}).items()
        if k in ("name", "namespace", "labels", "annotations")
    }
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": metadata,
        "spec": translate_spec(document.get("spec") or {}),
    }


def native_view(sweep: Mapping[str, Any]) -> JsonDict:
    """The Sweep as the controller reads it: a copy whose Katib-shaped spec is translated; a
    native Sweep unchanged. Raises ConfigError naming the field."""
    view: JsonDict = copy.deepcopy(dict(sweep))
    spec = view.get("spec") or {}
    if is_katib_spec(spec):
        template = spec.get("trialTemplate")
        if isinstance(template, Mapping):
            # The CRD defaults runPolicy as for a native template: not Katib's to give.
            spec = {
                **spec,
                "trialTemplate": {k: v for k, v in template.items() if k != "runPolicy"},
            }
        view["spec"] = translate_spec(spec)
    return view
