"""Katib Experiments as Sweeps, without a cluster: every Experiment field's translation (and the
refusals, naming the field), the metrics relay's parsing, ``hypersweep katib convert``, the
Katib status fields, and the Sweep CRD accepting both shapes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hypersweep._errors import ConfigError
from hypersweep.operators._katib import (
    DEFAULT_FILTER,
    is_katib_spec,
    native_view,
    relay_command,
    translate_experiment,
    translate_spec,
)
from hypersweep.operators._katib_relay import MetricsRelay, MetricsUnavailable
from hypersweep.operators._katib_status import katib_status

HERE = Path(__file__).resolve().parent
RANDOM = HERE / "katib" / "random.yaml"


def experiment() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RANDOM.read_text())
    return data


def spec(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(experiment()["spec"])
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def settings_of(native: dict[str, Any]) -> Any:
    """The native spec through the operator's own settings path (what the controller runs)."""
    from hypersweep.operators._sweep import SweepController

    controller = SweepController.__new__(SweepController)
    controller.data_dir = Path("/var/lib/hypersweep")
    controller.kube = None  # type: ignore[assignment]
    sweep = {"metadata": {"name": "s", "namespace": "ns", "uid": "0123456789"}, "spec": native}
    return controller.settings_for(sweep)


def refused(body: dict[str, Any], *fragments: str) -> str:
    with pytest.raises(ConfigError) as error:
        translate_spec(body)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return str(error.value)


def primary(native: dict[str, Any]) -> dict[str, Any]:
    replicas = next(v for k, v in native["trialTemplate"].items() if k.endswith("eplicaSpecs"))
    container: dict[str, Any] = next(iter(replicas.values()))["template"]["spec"]["containers"][0]
    return container


# --- objective -----------------------------------------------------------------------------


def test_objective_type_goal_and_metrics() -> None:
    native = translate_spec(spec())
    assert native["objective"] == {"metric": "Validation-accuracy", "mode": "max", "goal": 0.97}
    collector = json.loads(primary(native)["env"][-1]["value"])
    assert collector["metrics"] == {"Validation-accuracy": "max", "Train-accuracy": "latest"}
    minimize = translate_spec(spec(objective={"type": "minimize", "objectiveMetricName": "loss"}))
    assert minimize["objective"] == {"metric": "loss", "mode": "min"}
    settings, _ = settings_of(native)
    assert settings.metric == "Validation-accuracy" and settings.mode == "max"


def test_metric_strategies() -> None:
    objective = {
        "type": "minimize",
        "objectiveMetricName": "loss",
        "additionalMetricNames": ["acc"],
        "metricStrategies": [{"name": "loss", "value": "latest"}, {"name": "acc", "value": "max"}],
    }
    native = translate_spec(spec(objective=objective))
    assert json.loads(primary(native)["env"][-1]["value"])["metrics"] == {
        "loss": "latest",
        "acc": "max",
    }
    bad = {**objective, "metricStrategies": [{"name": "other", "value": "max"}]}
    refused(spec(objective=bad), "spec.objective.metricStrategies[0].name", "'other'")
    bad = {**objective, "metricStrategies": [{"name": "loss", "value": "avg"}]}
    refused(spec(objective=bad), "spec.objective.metricStrategies[0].value")


def test_objective_refusals() -> None:
    refused(spec(objective={"type": "best", "objectiveMetricName": "x"}), "spec.objective.type")
    refused(spec(objective={"type": "minimize"}), "spec.objective.objectiveMetricName")
    refused(
        spec(objective={"type": "minimize", "objectiveMetricName": "x", "goal": "high"}),
        "spec.objective.goal",
    )


# --- algorithm -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings", "strategy"),
    [
        (
            "random",
            [{"name": "random_state", "value": "3"}],
            {"name": "random", "settings": {"seed": 3}},
        ),
        (
            "tpe",
            [{"name": "n_startup_trials", "value": "4"}],
            {"name": "tpe", "settings": {"n_startup_trials": 4}},
        ),
        (
            "tpe",
            [{"name": "n_ei_candidates", "value": "12"}],
            {"name": "tpe", "settings": {"n_ei_candidates": 12}},
        ),
        ("multivariate-tpe", [], {"name": "tpe", "settings": {"multivariate": True}}),
        (
            "cmaes",
            [{"name": "sigma", "value": "0.5"}],
            {"name": "cmaes", "settings": {"sigma0": 0.5}},
        ),
        (
            "cmaes",
            [{"name": "restart_strategy", "value": "ipop"}],
            {"name": "cmaes", "settings": {"restart_strategy": "ipop"}},
        ),
        (
            "bayesianoptimization",
            [{"name": "n_initial_points", "value": "2"}],
            {"name": "gp", "settings": {"n_startup_trials": 2}},
        ),
        ("sobol", [], {"name": "qmc", "settings": {"qmc_type": "sobol"}}),
    ],
)
def test_algorithms_become_strategies(name: str, settings: list[Any], strategy: Any) -> None:
    native = translate_spec(spec(algorithm={"algorithmName": name, "algorithmSettings": settings}))
    assert native["strategy"] == strategy
    if name != "cmaes":  # cmaes takes no categorical parameter: checked on a numeric space
        settings_of(native)


def test_grid_enumerates_values_and_counts_trials() -> None:
    parameters: list[dict[str, Any]] = [
        {
            "name": "lr",
            "parameterType": "double",
            "feasibleSpace": {"min": "0.1", "max": "0.3", "step": "0.1"},
        },
        {"name": "n", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "3"}},
        {
            "name": "act",
            "parameterType": "categorical",
            "feasibleSpace": {"list": ["relu", "tanh"]},
        },
    ]
    body = spec(algorithm={"algorithmName": "grid"}, parameters=parameters, maxTrialCount=None)
    template = body["trialTemplate"]
    template["trialParameters"] = [{"name": "learningRate", "reference": "lr"}]
    template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"] = [
        "${trialParameters.learningRate}"
    ]
    native = translate_spec(body)
    assert native["space"]["lr"] == {"type": "categorical", "values": [0.1, 0.2, 0.3]}
    assert native["space"]["n"]["values"] == [1, 2, 3]
    assert native["maxTrials"] == 18
    assert settings_of(native)[0].n_trials == 18
    parameters[0]["feasibleSpace"].pop("step")
    refused(body, "spec.parameters[0] (lr).feasibleSpace.step", "grid")


def test_pbt_is_refused_saying_why_and_what_instead() -> None:
    """PBT clones trials from checkpoints, which a relayed command has none of."""
    refused(
        spec(algorithm={"algorithmName": "pbt"}),
        "spec.algorithm.algorithmName",
        "pbt is not supported",
        "checkpoint",
        "hyperband",
    )


def test_algorithm_refusals() -> None:
    refused(
        spec(algorithm={"algorithmName": "enas"}),
        "spec.algorithm.algorithmName",
        "neural architecture search",
    )
    refused(spec(algorithm={"algorithmName": "anneal"}), "'anneal' is not supported", "sobol")
    refused(
        spec(
            algorithm={
                "algorithmName": "random",
                "algorithmSettings": [{"name": "gamma", "value": "1"}],
            }
        ),
        "spec.algorithm.algorithmSettings[0].name",
        "random_state",
    )
    refused(
        spec(
            algorithm={
                "algorithmName": "random",
                "algorithmSettings": [{"name": "random_state", "value": "x"}],
            }
        ),
        "spec.algorithm.algorithmSettings[0].value",
    )
    refused(spec(nasConfig={"graphConfig": {}}), "spec.nasConfig")


# --- parameters ----------------------------------------------------------------------------


def test_parameters_with_string_values() -> None:
    native = translate_spec(spec())
    assert native["space"] == {
        "lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
        "layers": {"type": "int", "low": 1, "high": 4},
        "optimizer": {"type": "categorical", "values": ["sgd", "adam"]},
    }
    discrete = [
        {
            "name": "batch",
            "parameterType": "discrete",
            "feasibleSpace": {"list": ["16", "32", "0.5"]},
        }
    ]
    body = spec(parameters=discrete)
    body["trialTemplate"]["trialParameters"] = []
    body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"] = []
    assert translate_spec(body)["space"]["batch"]["values"] == [16, 32, 0.5]
    stepped = [
        {
            "name": "x",
            "parameterType": "double",
            "feasibleSpace": {"min": "0", "max": "1", "step": "0.25"},
        }
    ]
    body["parameters"] = stepped
    assert translate_spec(body)["space"]["x"] == {
        "type": "float",
        "low": 0.0,
        "high": 1.0,
        "step": 0.25,
    }


def test_parameter_refusals() -> None:
    def one(parameter: dict[str, Any]) -> dict[str, Any]:
        body = spec(parameters=[parameter])
        body["trialTemplate"]["trialParameters"] = []
        body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"] = []
        return body

    refused(
        one({"name": "x", "parameterType": "float", "feasibleSpace": {}}),
        "spec.parameters[0] (x).parameterType",
    )
    refused(
        one({"name": "x", "parameterType": "int", "feasibleSpace": {"max": "3"}}),
        "feasibleSpace.min",
    )
    refused(
        one({"name": "x", "parameterType": "int", "feasibleSpace": {"min": "a", "max": "3"}}),
        "feasibleSpace.min",
        "integer",
    )
    refused(
        one({"name": "x", "parameterType": "double", "feasibleSpace": {"min": "2", "max": "1"}}),
        "min (2.0) is above max",
    )
    refused(
        one(
            {
                "name": "x",
                "parameterType": "double",
                "feasibleSpace": {"min": "0", "max": "1", "distribution": "normal"},
            }
        ),
        "feasibleSpace.distribution",
        "normal",
    )
    refused(
        one(
            {
                "name": "x",
                "parameterType": "double",
                "feasibleSpace": {"min": "0.1", "max": "1", "distribution": "logNormal"},
            }
        ),
        "feasibleSpace.distribution",
        "logNormal",
    )
    refused(
        one({"name": "x", "parameterType": "categorical", "feasibleSpace": {}}),
        "feasibleSpace.list",
    )
    refused(spec(parameters=[]), "spec.parameters")


# --- counts and policies -------------------------------------------------------------------


def test_trial_counts_and_resume_policy() -> None:
    native = translate_spec(spec())
    assert (native["parallelism"], native["maxTrials"], native["maxFailedTrials"]) == (2, 6, 3)
    settings, _ = settings_of(native)
    assert (settings.max_concurrent, settings.n_trials, settings.max_failed_trials) == (2, 6, 3)
    # Katib fails once more than maxFailedTrialCount failed: 0 stops at the first failure.
    assert translate_spec(spec(maxFailedTrialCount=0))["maxFailedTrials"] == 1
    assert translate_spec(spec(parallelTrialCount=None))["parallelism"] == 3  # Katib's default
    refused(spec(maxTrialCount=None), "spec.maxTrialCount", "required")
    refused(spec(maxTrialCount=0), "spec.maxTrialCount")
    for policy in ("Never", "LongRunning", "FromVolume"):
        translate_spec(spec(resumePolicy=policy))
    refused(spec(resumePolicy="Always"), "spec.resumePolicy")


def test_native_and_katib_forms_do_not_mix() -> None:
    refused(
        {**spec(), "space": {"x": {"type": "float", "low": 0, "high": 1}}},
        "spec.space",
        "parameters",
    )
    refused({**spec(), "maxTrials": 4}, "spec.maxTrials", "maxTrialCount")
    refused({**spec(), "unknownField": 1}, "spec.unknownField")
    native = translate_spec(
        {**spec(), "maxRetries": 1, "storage": {"persistentVolumeClaim": {"claimName": "c"}}}
    )
    assert (
        native["maxRetries"] == 1 and native["storage"]["persistentVolumeClaim"]["claimName"] == "c"
    )


# --- early stopping ------------------------------------------------------------------------


def test_medianstop() -> None:
    native = translate_spec(spec(earlyStopping={"algorithmName": "medianstop"}))
    assert native["earlyStopping"] == {
        "name": "median",
        "settings": {"n_startup_trials": 3, "n_warmup_steps": 4},
    }
    early = {
        "algorithmName": "medianstop",
        "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"},
            {"name": "start_step", "value": "1"},
        ],
    }
    native = translate_spec(spec(earlyStopping=early))
    assert native["earlyStopping"]["settings"] == {"n_startup_trials": 2, "n_warmup_steps": 1}
    assert settings_of(native)[0].early_stopping == {
        "name": "median",
        "n_startup_trials": 2,
        "n_warmup_steps": 1,
    }
    refused(spec(earlyStopping={"algorithmName": "asha"}), "spec.earlyStopping.algorithmName")
    bad = {"algorithmName": "medianstop", "algorithmSettings": [{"name": "x", "value": "1"}]}
    refused(spec(earlyStopping=bad), "spec.earlyStopping.algorithmSettings[0].name", "start_step")


# --- trial template ------------------------------------------------------------------------


def test_job_trial_template_substitutes_and_wraps() -> None:
    native = translate_spec(spec())
    template = native["trialTemplate"]
    assert template["framework"] == "generic"
    assert template["runPolicy"] == {"backoffLimit": 1}
    container = primary(native)
    assert container["command"] == [
        *relay_command(),
        "python",
        "/app/train.py",
        "--lr=${trialParameters.lr}",
        "--layers=${trialParameters.layers}",
        "--optimizer=${trialParameters.optimizer}",
        "--run=$(HYPERSWEEP_SWEEP)-trial-$(HYPERSWEEP_TRIAL_NUMBER)",
    ]
    assert "args" not in container
    _, rendered = settings_of(native)
    from hypersweep.launchers._kubernetes import substitute_parameters

    filled = substitute_parameters(rendered, {"lr": 0.01, "layers": 2, "optimizer": "adam"})
    command = filled["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert "--lr=0.01" in command and "--optimizer=adam" in command


def test_metadata_references() -> None:
    body = spec()
    body["trialTemplate"]["trialSpec"]["metadata"] = {"labels": {"team": "vision"}}
    body["trialTemplate"]["trialParameters"] += [
        {"name": "ns", "reference": "${trialSpec.Namespace}"},
        {"name": "kind", "reference": "${trialSpec.Kind}"},
        {"name": "team", "reference": "${trialSpec.Labels[team]}"},
    ]
    body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"] += [
        "${trialParameters.ns}/${trialParameters.kind}/${trialParameters.team}"
    ]
    assert primary(translate_spec(body))["command"][-1] == "$(HYPERSWEEP_NAMESPACE)/TrainJob/vision"
    body["trialTemplate"]["trialParameters"][-1]["reference"] = "${trialSpec.Labels[owner]}"
    refused(body, "spec.trialTemplate.trialParameters[6].reference", "owner")
    body["trialTemplate"]["trialParameters"][-1]["reference"] = "nothing"
    refused(body, "trialParameters[6].reference", "names no parameter")


def test_undeclared_placeholder_and_primary_container() -> None:
    body = spec()
    body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"].append(
        "--x=${trialParameters.typo}"
    )
    refused(body, "spec.trialTemplate.trialSpec", "${trialParameters.typo}", "not declared")
    body = spec()
    body["trialTemplate"]["primaryContainerName"] = "trainer"
    refused(body, "spec.trialTemplate.primaryContainerName", "'trainer'", "training")
    body = spec()
    body["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0].pop("command")
    refused(body, "command", "entrypoint")


def test_pytorchjob_and_tfjob_become_trainjobs() -> None:
    replica: dict[str, Any] = {
        "replicas": 1,
        "restartPolicy": "OnFailure",
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "pytorch",
                        "image": "img",
                        "command": ["python", "t.py", "--lr=${trialParameters.learningRate}"],
                    }
                ]
            }
        },
    }
    body = spec()
    body["trialTemplate"] = {
        "primaryContainerName": "pytorch",
        "retain": True,
        "trialParameters": [{"name": "learningRate", "reference": "lr"}],
        "trialSpec": {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "spec": {
                "pytorchReplicaSpecs": {"Master": replica, "Worker": {**replica, "replicas": 2}}
            },
        },
    }
    native = translate_spec(body)
    specs = native["trialTemplate"]["pytorchReplicaSpecs"]
    for role in ("Master", "Worker"):
        assert specs[role]["template"]["spec"]["containers"][0]["command"][:5] == relay_command()
    assert native["trialTemplate"]["runPolicy"] == {"cleanPodPolicy": "None"}  # retain
    settings_of(native)
    tf = copy.deepcopy(body)
    tf["trialTemplate"]["primaryContainerName"] = "tensorflow"
    tf_replica = copy.deepcopy(replica)
    tf_replica["template"]["spec"]["containers"][0]["name"] = "tensorflow"
    tf["trialTemplate"]["trialSpec"] = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "spec": {"tfReplicaSpecs": {"Worker": {**tf_replica, "replicas": 2}}},
    }
    assert translate_spec(tf)["trialTemplate"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    mpi = copy.deepcopy(body)
    mpi["trialTemplate"]["trialSpec"]["kind"] = "MPIJob"
    refused(mpi, "spec.trialTemplate.trialSpec.kind", "MPIJob is not supported")
    other = copy.deepcopy(body)
    other["trialTemplate"]["trialSpec"].update(apiVersion="ray.io/v1", kind="RayJob")
    refused(other, "spec.trialTemplate.trialSpec.kind", "ray.io/v1/RayJob")
    elastic = copy.deepcopy(body)
    elastic["trialTemplate"]["trialSpec"]["spec"]["elasticPolicy"] = {}
    refused(elastic, "spec.trialTemplate.trialSpec.spec.elasticPolicy")


def test_job_and_template_refusals() -> None:
    body = spec()
    body["trialTemplate"]["trialSpec"]["spec"]["parallelism"] = 2
    refused(body, "spec.trialTemplate.trialSpec.spec.parallelism")
    body = spec()
    body["trialTemplate"] = {"configMap": {"configMapName": "t"}}
    refused(body, "spec.trialTemplate.configMap", "inline")


# --- metrics collector ---------------------------------------------------------------------


def test_collector_kinds() -> None:
    def collector(native: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = json.loads(primary(native)["env"][-1]["value"])
        return settings

    assert collector(translate_spec(spec()))["filters"] == [DEFAULT_FILTER]
    custom = {
        "collector": {"kind": "StdOut"},
        "source": {"filter": {"metricsFormat": [r"(\w+):\s*([\d.]+)"]}},
    }
    assert collector(translate_spec(spec(metricsCollectorSpec=custom)))["filters"] == [
        r"(\w+):\s*([\d.]+)"
    ]
    file = {
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": "/tmp/m.log", "kind": "File"}},
    }
    assert collector(translate_spec(spec(metricsCollectorSpec=file)))["path"] == "/tmp/m.log"
    assert (
        collector(translate_spec(spec(metricsCollectorSpec={"collector": {"kind": "Push"}})))[
            "kind"
        ]
        == "Push"
    )
    for kind in ("Prometheus", "Custom", "None"):
        refused(spec(metricsCollectorSpec={"collector": {"kind": kind}}), "collector.kind", kind)
    refused(spec(metricsCollectorSpec={"collector": {"kind": "File"}}), "fileSystemPath.path")
    xml = {
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": "/x", "format": "XML"}},
    }
    refused(spec(metricsCollectorSpec=xml), "fileSystemPath.format", "XML")
    bad = {"source": {"filter": {"metricsFormat": ["(unclosed"]}}}
    refused(spec(metricsCollectorSpec=bad), "metricsFormat[0]", "regular expression")
    bad = {"source": {"filter": {"metricsFormat": [r"loss=\d+"]}}}
    refused(spec(metricsCollectorSpec=bad), "metricsFormat[0]", "two groups")


def test_default_filter_parses_katib_lines() -> None:
    relay = MetricsRelay([DEFAULT_FILTER], {"Validation-accuracy": "max", "loss": "latest"})
    assert relay.feed_line("epoch 1: loss=0.9") is None  # no objective yet
    assert relay.feed_line("Validation-accuracy=0.81 loss = 0.7") == {
        "Validation-accuracy": 0.81,
        "loss": 0.7,
    }
    assert relay.step == 1
    relay.feed_line("2026-12-01T10:00:00Z Validation-accuracy=0.91")
    relay.feed_line("Validation-accuracy=8.5e-1 other=3")
    assert relay.feed_line("nothing here: lr=") is None
    assert relay.step == 3
    assert relay.result() == {"Validation-accuracy": 0.91, "loss": 0.7}
    latest = MetricsRelay([DEFAULT_FILTER], {"loss": "latest"})
    latest.feed_line("loss=0.3")
    latest.feed_line("loss=0.5")
    assert latest.result() == {"loss": 0.5}
    pushed = MetricsRelay([], {"loss": "min"})
    assert pushed.feed_pushed({"loss": "0.4", "junk": "x"}) == {"loss": 0.4}
    with pytest.raises(MetricsUnavailable, match="'loss' never appeared"):
        MetricsRelay([DEFAULT_FILTER], {"loss": "min"}).result()


def bare_python() -> str:
    """The interpreter this virtualenv was made from: standard library only, no hypersweep."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def test_the_relay_runs_where_hypersweep_cannot_be_imported(tmp_path: Path) -> None:
    """The trial command needs only ``python3``: the relay's source rides in the command (no
    Kubernetes ``$(VAR)`` reference in it, small enough for a pod spec) and runs under ``-I``."""
    command = relay_command()
    assert command[:3] == ["python3", "-I", "-c"] and command[4] == "--"
    assert "$(" not in command[3] and len(command[3]) < 20_000
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [bare_python(), "-I", "-c", "import hypersweep"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert probe.returncode != 0 and "No module named 'hypersweep'" in probe.stderr
    collector = {"kind": "StdOut", "filters": [DEFAULT_FILTER], "metrics": {"loss": "min"}}
    done = _relay(
        [bare_python(), "-c", "print('loss=0.5 epoch'); print('loss=0.25')"], collector, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert '"step": 2, "metrics": {"loss": 0.25}' in done.stderr
    assert '{"kind": "result", "result": {"loss": 0.25}}' in done.stderr


_WRITE_EVENTS = """
import sys
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util
writer = EventFileWriter(sys.argv[1])
for step, value in ((1, 0.5), (2, 0.25), (3, 0.375)):
    tensor = tensor_util.make_tensor_proto(value, dtype="float32", shape=[])
    values = [summary_pb2.Summary.Value(tag="eval/loss", tensor=tensor)]
    writer.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=values)))
writer.close()
"""


def test_the_relay_reads_tf_events_without_tensorboard(tmp_path: Path) -> None:
    """Event files written by tensorboard's own writer (TF2 scalar tensors) are read by the relay
    under an interpreter that has neither tensorboard nor protobuf."""
    probe = subprocess.run(
        [bare_python(), "-I", "-c", "import google.protobuf"], capture_output=True, check=False
    )
    assert probe.returncode != 0
    events = tmp_path / "events"
    collector = {"kind": "TensorFlowEvent", "path": str(events), "metrics": {"loss": "min"}}
    done = _relay([sys.executable, "-c", _WRITE_EVENTS, str(events)], collector, tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"step": 3, "metrics": {"loss": 0.375}' in done.stderr
    assert '{"kind": "result", "result": {"loss": 0.25}}' in done.stderr


def _relay(
    command: list[str], collector: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HYPERSWEEP_KATIB_COLLECTOR": json.dumps(collector),
        "HYPERSWEEP_CHECKPOINT_DIR": str(tmp_path),
    }
    env.pop("HYPERSWEEP_REPORT_URL", None)
    env.pop("PYTHONPATH", None)
    # The relay as a trial pod runs it, under an interpreter without hypersweep.
    return subprocess.run(
        [bare_python(), *relay_command()[1:], *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_relay_runs_the_command_and_echoes_its_output(tmp_path: Path) -> None:
    collector = {"kind": "StdOut", "filters": [DEFAULT_FILTER], "metrics": {"loss": "min"}}
    done = _relay(
        [sys.executable, "-c", "print('loss=0.25'); print('loss=0.5')"], collector, tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "loss=0.25" in done.stdout  # still in the pod's log
    failed = _relay([sys.executable, "-c", "import sys; sys.exit(4)"], collector, tmp_path)
    assert failed.returncode == 1 and "exited with code 4" in failed.stderr
    silent = _relay([sys.executable, "-c", "print('nothing')"], collector, tmp_path)
    assert silent.returncode == 1 and "never appeared" in silent.stderr


# --- status, convert, CRD ------------------------------------------------------------------


def test_katib_status_fields() -> None:
    sweep = {"metadata": {"name": "exp"}, "spec": {"objective": {"objectiveMetricName": "acc"}}}
    status = {
        "trials": {"succeeded": 3, "failed": 1, "running": 0, "pending": 0, "pruned": 2},
        "bestTrial": {"number": 4, "value": 0.9, "params": {"lr": 0.01, "opt": "adam"}},
    }
    out = katib_status(sweep, status)
    assert out["trialsSucceeded"] == 3 and out["trialsEarlyStopped"] == 2
    assert out["currentOptimalTrial"] == {
        "bestTrialName": "exp-trial-4",
        "parameterAssignments": [{"name": "lr", "value": "0.01"}, {"name": "opt", "value": "adam"}],
        "observation": {"metrics": [{"name": "acc", "latest": "0.9", "min": "0.9", "max": "0.9"}]},
    }


def test_convert_prints_the_native_sweep(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hypersweep._cli", "katib", "convert", str(RANDOM)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and "No module" in done.stderr:
        from hypersweep._cli import main

        assert main(["katib", "convert", str(RANDOM)]) == 0
        return
    sweep = yaml.safe_load(done.stdout)
    assert sweep["kind"] == "Sweep" and sweep["spec"] == translate_spec(experiment()["spec"])
    assert translate_experiment(experiment())["metadata"] == {
        "name": "digits-random",
        "namespace": "team-a",
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(RANDOM.read_text().replace("algorithmName: random", "algorithmName: enas"))
    from hypersweep._cli import main

    assert main(["katib", "convert", str(bad)]) == 2


def test_native_view_leaves_native_sweeps_alone() -> None:
    native = {"metadata": {}, "spec": {"space": {"x": {}}, "objective": {"metric": "m"}}}
    assert native_view(native) == native and not is_katib_spec(native["spec"])
    katib = {
        "metadata": {},
        "spec": {
            **spec(),
            "trialTemplate": {**spec()["trialTemplate"], "runPolicy": {"backoffLimit": 3}},
        },
    }
    assert native_view(katib)["spec"] == translate_spec(spec())


def test_crd_accepts_both_shapes_and_stays_small() -> None:
    from hypersweep.operators._crds import sweep_crd

    crd = sweep_crd()
    assert len(json.dumps(crd, separators=(",", ":"))) < 240 * 1024
    version = crd["spec"]["versions"][0]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec_schema["required"] == ["objective", "trialTemplate"]
    for field in ("parameters", "algorithm", "maxTrialCount", "metricsCollectorSpec"):
        assert field in spec_schema["properties"]
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Optimal-Trial", "Status", "Best-Value"} <= columns
    on_disk = yaml.safe_load((HERE.parent / "deploy/crds/hypersweep.io_sweeps.yaml").read_text())
    assert on_disk == crd, "regenerate: hypersweep operator crds --output-dir deploy/crds"


def test_tf_event_files_are_read_as_they_grow(tmp_path: Path) -> None:
    """Scalars written by TensorBoard's own event writer (TF1 simple values and TF2 scalar
    tensors) are read incrementally, a record still being written left for the next read."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    from hypersweep.operators._katib_relay import EventScalars

    writer = EventFileWriter(str(tmp_path))
    scalars = EventScalars(str(tmp_path))

    def write(step: int, tag: str, value: float, tensor: bool = False) -> None:
        if tensor:
            proto = tensor_util.make_tensor_proto(value, dtype="float32", shape=[])
            item = summary_pb2.Summary.Value(tag=tag, tensor=proto)
        else:
            item = summary_pb2.Summary.Value(tag=tag, simple_value=value)
        summary = summary_pb2.Summary(value=[item])
        writer.add_event(event_pb2.Event(step=step, wall_time=1.0, summary=summary))
        writer.flush()

    write(1, "Validation-accuracy", 0.5)
    write(1, "train/Train-accuracy", 0.25, tensor=True)
    assert scalars.read() == [(1, "Validation-accuracy", 0.5), (1, "train/Train-accuracy", 0.25)]
    assert scalars.read() == []
    write(2, "Validation-accuracy", 0.75, tensor=True)
    assert scalars.read() == [(2, "Validation-accuracy", 0.75)]
    writer.close()
    relay = MetricsRelay([], {"Validation-accuracy": "max", "Train-accuracy": "latest"})
    reports = relay.feed_scalars(
        [(1, "Validation-accuracy", 0.5), (1, "train/Train-accuracy", 0.25), (2, "other", 1.0)]
    )
    assert reports == [(1, {"Validation-accuracy": 0.5, "Train-accuracy": 0.25})]


def test_tf_event_collector_settings() -> None:
    tfevent = {"collector": {"kind": "TensorFlowEvent"}}
    native = translate_spec(spec(metricsCollectorSpec=tfevent))
    settings = json.loads(primary(native)["env"][-1]["value"])
    assert (settings["kind"], settings["path"]) == ("TensorFlowEvent", "/var/log/katib/tfevent/")
    file = {
        "collector": {"kind": "File"},
        "source": {"fileSystemPath": {"path": "/logs", "kind": "Directory", "format": "TF_EVENT"}},
    }
    settings = json.loads(
        primary(translate_spec(spec(metricsCollectorSpec=file)))["env"][-1]["value"]
    )
    assert (settings["kind"], settings["path"]) == ("TensorFlowEvent", "/logs")


def test_a_job_keeps_its_deadline_and_ttl_and_conditions_are_accepted() -> None:
    body = spec()
    body["trialTemplate"]["trialSpec"]["spec"].update(
        {"activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 30}
    )
    body["trialTemplate"]["successCondition"] = 'status.conditions.#(type=="Complete")#|#'
    body["trialTemplate"]["failureCondition"] = 'status.conditions.#(type=="Failed")#|#'
    native = translate_spec(body)
    assert native["trialTemplate"]["runPolicy"] == {
        "backoffLimit": 1,
        "activeDeadlineSeconds": 600,
        "ttlSecondsAfterFinished": 30,
    }
    assert "successCondition" not in native["trialTemplate"]  # the TrainJob's own conditions
    settings_of(native)
