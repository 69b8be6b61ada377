"""Conditional spaces: sub-space choices (Python and plain data) and define-by-run spaces.

Real sweeps on the embedded default (worker processes, an Optuna journal file): a trial's config
holds only its branch's keys, branches never share a parameter in storage, and strategies that
cannot serve a conditional space are refused before anything starts.
"""

from __future__ import annotations

import json
from typing import Any

import multi_objectives
import optuna
import pytest
import yaml

import hypersweep as hs
from hypersweep.orchestrator._storage import open_storage
from hypersweep.strategies import Branches, grid_configs, parse_space, space_to_data

SGD_KEYS = {"name", "lr", "momentum"}
ADAM_KEYS = {"name", "lr", "beta1", "schedule"}


def nested_space() -> dict[str, Any]:
    """Two optimizers with a shared key name (lr, different ranges), adam with a nested choice."""
    return {
        "optimizer": hs.choice(
            [
                {"name": "sgd", "lr": hs.loguniform(1e-4, 1e-1), "momentum": hs.uniform(0.5, 0.99)},
                {
                    "name": "adam",
                    "lr": hs.loguniform(1e-5, 1e-2),
                    "beta1": hs.uniform(0.8, 0.99),
                    "schedule": hs.choice(
                        [{"kind": "step", "gamma": hs.uniform(0.1, 0.9)}, {"kind": "cosine"}]
                    ),
                },
            ]
        ),
        "epochs": 3,
    }


def check_branch_keys(config: dict[str, Any]) -> str:
    optimizer = config["optimizer"]
    assert config["epochs"] == 3
    if optimizer["name"] == "sgd":
        assert set(optimizer) == SGD_KEYS
        assert 1e-4 <= optimizer["lr"] <= 1e-1
        return "sgd"
    assert set(optimizer) == ADAM_KEYS
    assert 1e-5 <= optimizer["lr"] <= 1e-2
    schedule = optimizer["schedule"]
    assert set(schedule) == ({"kind", "gamma"} if schedule["kind"] == "step" else {"kind"})
    return f"adam-{schedule['kind']}"


@pytest.mark.parametrize("strategy", ["tpe", "random", "gp", "nsga2", "nsga3"])
def test_a_trial_holds_only_its_branch_keys(strategy: str) -> None:
    result = hs.tune(
        nested_space(),
        multi_objectives.branch_loss,
        metric="loss",
        n_trials=16,
        strategy=strategy,
        seed=0,
        name=f"branches-{strategy}",
    )
    assert result.counts() == {"completed": 16}
    seen = {check_branch_keys(t.config) for t in result.trials}
    assert {"sgd", "adam-step", "adam-cosine"} <= seen
    # The value the objective saw is the one storage rebuilt: the config is the same.
    for trial in result.trials:
        assert trial.value == pytest.approx(multi_objectives.branch_loss(trial.config)["loss"])

    # In storage the two lr's are two parameters; no trial has parameters of both branches.
    study = optuna.load_study(
        study_name=f"branches-{strategy}", storage=open_storage(None, f"branches-{strategy}")
    )
    names = set().union(*(t.params for t in study.trials))
    assert {"optimizer", "optimizer[0].lr", "optimizer[1].lr", "optimizer[1].schedule"} <= names
    for trial in study.trials:
        branch = trial.params["optimizer"]
        assert all(not n.startswith(f"optimizer[{1 - branch}]") for n in trial.params), trial.params


def test_grid_runs_every_branch_times_its_grid() -> None:
    space = {
        "model": hs.grid(
            [
                {"kind": "linear", "alpha": hs.grid([0.1, 1.0])},
                {"kind": "tree", "depth": hs.grid([2, 4, 8]), "split": hs.choice(["a", "b"])},
            ]
        ),
        "seed": hs.grid([0, 1]),
    }
    result = hs.tune(space, multi_objectives.grid_loss, metric="loss", strategy="grid")
    seen = sorted(json.dumps(t.config, sort_keys=True) for t in result.trials)
    expected = sorted(
        json.dumps(c, sort_keys=True)
        for c in [
            *(
                {"model": {"kind": "linear", "alpha": a}, "seed": s}
                for a in (0.1, 1.0)
                for s in (0, 1)
            ),
            *(
                {"model": {"kind": "tree", "depth": d, "split": p}, "seed": s}
                for d in (2, 4, 8)
                for p in ("a", "b")
                for s in (0, 1)
            ),
        ]
    )
    assert len(result.trials) == (2 + 3 * 2) * 2  # n_trials defaults to the grid's size
    assert seen == expected


@pytest.mark.parametrize("strategy", ["cmaes", "qmc"])
def test_strategies_that_need_a_fixed_space_are_refused(strategy: str) -> None:
    with pytest.raises(hs.ConfigError, match=rf"strategy: {strategy} needs the same parameters"):
        hs.tune(
            nested_space(),
            multi_objectives.branch_loss,
            metric="loss",
            n_trials=2,
            strategy=strategy,
        )


def test_cmaes_runs_where_every_trial_has_the_same_parameters() -> None:
    result = hs.tune(
        {"x0": hs.uniform(0, 1), "x1": hs.uniform(0, 1), "opt": {"lr": hs.uniform(0, 1)}},
        multi_objectives.sum_loss,
        metric="loss",
        n_trials=6,
        strategy="cmaes",
        seed=0,
    )
    assert result.counts() == {"completed": 6}


def test_define_by_run_space_runs_in_the_driver() -> None:
    def space(trial: optuna.Trial) -> dict[str, Any]:
        n = trial.suggest_int("n", 1, 4)
        return {"layers": [trial.suggest_int(f"units_{i}", 16, 256) for i in range(n)]}

    result = hs.tune(
        space, multi_objectives.layers_loss, metric="loss", n_trials=12, seed=0, name="dbr"
    )
    assert result.counts() == {"completed": 12}
    lengths = set()
    for trial in result.trials:
        layers = trial.config["layers"]
        lengths.add(len(layers))
        assert all(16 <= units <= 256 for units in layers)
        assert trial.value == pytest.approx(multi_objectives.layers_loss(trial.config))
    assert len(lengths) > 1
    # Read back from storage alone, the configs are the functions' results.
    loaded = hs.load("dbr")
    assert [t.config for t in loaded.trials] == [t.config for t in result.trials]


def test_a_space_function_that_returns_no_dict_fails_its_trial() -> None:
    result = hs.tune(
        lambda trial: trial.suggest_float("x", 0, 1),
        multi_objectives.sum_loss,
        metric="loss",
        n_trials=2,
        max_failed_trials=None,
    )
    assert result.counts() == {"failed": 2}
    assert "the space function must return the config as a dict" in (result.trials[0].error or "")


def test_define_by_run_is_refused_by_grid() -> None:
    with pytest.raises(hs.ConfigError, match="strategy: grid needs the values"):
        hs.tune(
            lambda t: {"x": t.suggest_int("x", 0, 2)},
            multi_objectives.sum_loss,
            metric="loss",
            strategy="grid",
        )


# --- the plain-data form ------------------------------------------------------------------

CONDITIONAL_YAML = """
optimizer:
  type: categorical
  values:
    - name: sgd
      lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
      momentum: {type: float, low: 0.5, high: 0.99}
    - name: adam
      lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      beta1: {type: float, low: 0.8, high: 0.99}
      schedule:
        type: categorical
        values:
          - {kind: step, gamma: {type: float, low: 0.1, high: 0.9}}
          - {kind: cosine}
epochs: 3
"""


def test_plain_data_form_round_trips() -> None:
    parsed = parse_space(yaml.safe_load(CONDITIONAL_YAML))
    assert isinstance(parsed["optimizer"], Branches)
    assert parsed == hs.strategies.validate_space(nested_space())
    data = space_to_data(nested_space())
    assert parse_space(yaml.safe_load(yaml.safe_dump(data))) == parsed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["optimizer"]["values"][1].update(
                beta1={"type": "float", "low": 0.99, "high": 0.8}
            ),
            r"space\.optimizer\[1\]\.beta1: low \(0\.99\) must be less than high \(0\.8\)",
        ),
        (
            lambda d: d["optimizer"]["values"][1]["schedule"]["values"][0].update(
                gamma={"type": "flaot", "low": 0, "high": 1}
            ),
            r"space\.optimizer\[1\]\.schedule\[0\]\.gamma\.type: unknown type 'flaot'",
        ),
        (
            lambda d: d["optimizer"]["values"].append("rmsprop"),
            r"space\.optimizer\.values\[2\]: a choice among sub-spaces needs a mapping",
        ),
        (
            lambda d: d["optimizer"]["values"][0].update({"a.b": 1}),
            r"space\.optimizer\[0\]\.a\.b: keys must not contain '\.'",
        ),
    ],
)
def test_plain_data_errors_name_the_path(change: Any, message: str) -> None:
    data = yaml.safe_load(CONDITIONAL_YAML)
    change(data)
    with pytest.raises(hs.ConfigError, match=message):
        parse_space(data)


def test_python_form_errors_name_the_path() -> None:
    space = {
        "opt": hs.choice([{"lr": hs.uniform(0, 1)}, {"lr": {"type": "float", "low": 2, "high": 1}}])
    }
    with pytest.raises(hs.ConfigError, match=r"space\.opt\[1\]\.lr: low \(2\) must be less"):
        hs.tune(space, multi_objectives.sum_loss, metric="loss", n_trials=1)
    with pytest.raises(hs.ConfigError, match=r"values\[1\]: a choice among sub-spaces"):
        hs.choice([{"a": 1}, 2])


def test_grid_configs_of_a_nested_choice() -> None:
    space = hs.strategies.validate_space(
        {"a": hs.choice([{"b": hs.choice([{"c": hs.grid([1, 2])}, {}])}, {"d": hs.grid([0])}])}
    )
    assert grid_configs(space) == [
        {"a": 0, "a[0].b": 0, "a[0].b[0].c": 1},
        {"a": 0, "a[0].b": 0, "a[0].b[0].c": 2},
        {"a": 0, "a[0].b": 1},
        {"a": 1, "a[1].d": 0},
    ]


def test_ray_tune_searchers_are_refused_for_conditional_spaces_and_several_metrics() -> None:
    search = pytest.importorskip("ray.tune.search")
    with pytest.raises(hs.ConfigError, match="strategy: a Ray Tune searcher gets a fixed space"):
        hs.tune(
            nested_space(),
            multi_objectives.branch_loss,
            metric="loss",
            n_trials=1,
            strategy=search.BasicVariantGenerator(),
        )
    with pytest.raises(hs.ConfigError, match="strategy: a Ray Tune searcher optimizes a single"):
        hs.tune(
            {"x0": hs.uniform(0, 1), "x1": hs.uniform(0, 1)},
            multi_objectives.zdt1,
            metric=["f1", "f2"],
            n_trials=1,
            strategy=search.BasicVariantGenerator(),
        )
