"""Katib's hyperband as a strategy: the schedule Katib's suggestion computes, the sampler that
proposes it over a real (journal file) Optuna study, and the translation of a Katib Experiment's
hyperband algorithm."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hypersweep._errors import ConfigError
from hypersweep.operators._katib import translate_spec
from hypersweep.operators._validation import strategy_for
from hypersweep.strategies import HyperbandSampler, StrategyNotReady
from hypersweep.strategies._brackets import HyperbandSchedule

RANDOM = Path(__file__).resolve().parent / "katib" / "random.yaml"


def test_the_schedule_is_katibs() -> None:
    """r_l = 9, eta = 3: Katib's suggestion runs 9 configs at 1, the best 3 at 3, the best at 9;
    then 5 at 3 and the best 2 at 9; then 3 at 9."""
    schedule = HyperbandSchedule(9, 3)
    assert schedule.s_max == 2
    assert [(r.bracket, r.index, r.count, r.budget) for r in schedule.rungs] == [
        (2, 0, 9, 1),
        (2, 1, 3, 3),
        (2, 2, 1, 9),
        (1, 0, 5, 3),
        (1, 1, 2, 9),
        (0, 0, 3, 9),
    ]
    assert schedule.total_trials == 23 and schedule.min_budget == 1
    assert [r.first for r in schedule.rungs] == [0, 9, 12, 13, 18, 20]
    small = HyperbandSchedule(4, 2)
    assert [(r.count, r.budget) for r in small.rungs] == [
        (4, 1),
        (2, 2),
        (1, 4),
        (3, 2),
        (2, 4),
        (3, 4),
    ]
    with pytest.raises(ConfigError, match="eta: expected an integer >= 2"):
        HyperbandSchedule(9, 1)
    with pytest.raises(ConfigError, match="max_resource"):
        HyperbandSchedule(0.5, 3)


def _study(tmp_path: Path, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))
    return optuna.create_study(storage=storage, sampler=sampler, direction="maximize")


def _suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "layers": trial.suggest_int("layers", 1, 3),
        "epochs": trial.suggest_int("epochs", 1, 4),
    }


def test_the_sampler_runs_the_best_of_each_rung_again_with_more_budget(tmp_path: Path) -> None:
    sampler = HyperbandSampler("epochs", max_resource=4, eta=2, seed=1)
    study = _study(tmp_path, sampler)
    schedule = sampler.schedule
    configs: dict[int, dict[str, Any]] = {}
    for rung in schedule.rungs:
        trials = [study.ask() for _ in range(rung.count)]
        for trial in trials:
            assert trial.number in range(rung.first, rung.first + rung.count)
            configs[trial.number] = _suggest(trial) if rung.index == 0 else {}
        for trial in trials:
            if rung.index > 0:
                configs[trial.number] = _suggest(trial)
            # A made-up score: lower lr and more epochs score better; unique per config.
            score = -configs[trial.number]["lr"] + configs[trial.number]["epochs"]
            study.tell(trial, score)
    assert len(study.trials) == schedule.total_trials == 15
    assert [configs[n]["epochs"] for n in range(15)] == [
        r.budget for r in schedule.rungs for _ in range(r.count)
    ]
    for position, rung in enumerate(schedule.rungs):
        if rung.index == 0:
            continue
        below = schedule.rungs[position - 1]
        ranked = sorted(
            range(below.first, below.first + below.count),
            key=lambda n: -study.trials[n].value,  # type: ignore[operator]
        )
        for slot in range(rung.count):
            mine, parent = configs[rung.first + slot], configs[ranked[slot]]
            assert (mine["lr"], mine["layers"]) == (parent["lr"], parent["layers"])
    # Fresh configs of different trials differ; after the schedule the strategy is done.
    assert len({configs[n]["lr"] for n in range(4)}) == 4
    extra = study.ask()
    with pytest.raises(StrategyNotReady) as done:
        _suggest(extra)
    assert done.value.exhausted


def test_a_rung_waits_for_every_trial_of_the_rung_below(tmp_path: Path) -> None:
    study = _study(tmp_path, HyperbandSampler("epochs", max_resource=4, eta=2, seed=2))
    first = [study.ask() for _ in range(4)]
    proposed = [_suggest(t) for t in first]
    promoted = study.ask()
    for trial, config in zip(first[:3], proposed, strict=False):
        study.tell(trial, config["lr"])
    with pytest.raises(StrategyNotReady, match="trials 0-3"):
        _suggest(promoted)  # trial 3 still runs
    study.tell(first[3], state=optuna.trial.TrialState.FAIL)
    best = max(range(3), key=lambda n: proposed[n]["lr"])
    assert _suggest(promoted) == {**proposed[best], "epochs": 2}


def test_a_restarted_driver_proposes_the_same(tmp_path: Path) -> None:
    first = _study(tmp_path, HyperbandSampler("epochs", max_resource=4, eta=2, seed=3))
    trials = [first.ask() for _ in range(4)]
    proposed = [_suggest(t) for t in trials]
    for trial, config in zip(trials, proposed, strict=True):
        first.tell(trial, config["lr"])
    again = optuna.load_study(
        study_name=first.study_name,
        storage=first._storage,
        sampler=HyperbandSampler("epochs", max_resource=4, eta=2, seed=3),
    )
    promoted = _suggest(again.ask())
    best = max(range(4), key=lambda n: proposed[n]["lr"])
    assert promoted == {**proposed[best], "epochs": 2}


def katib_spec(**settings: str) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(yaml.safe_load(RANDOM.read_text())["spec"])
    body["algorithm"] = {
        "algorithmName": "hyperband",
        "algorithmSettings": [{"name": k, "value": v} for k, v in settings.items()],
    }
    body["parameters"].append(
        {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "20", "max": "20"}}
    )
    body.pop("maxTrialCount", None)
    return body


def test_katib_hyperband_translates_to_the_strategy() -> None:
    native = translate_spec(katib_spec(resource_name="epochs", eta="3", r_l="9"))
    assert native["strategy"] == {
        "name": "hyperband",
        "settings": {"resource": "epochs", "eta": 3, "max_resource": 9.0},
    }
    # The budget parameter spans the budgets Katib hands out, whatever its feasible space.
    assert native["space"]["epochs"] == {"type": "int", "low": 1, "high": 9}
    assert native["maxTrials"] == 23  # the whole schedule
    capped = katib_spec(resource_name="epochs", r_l="9")
    capped["maxTrialCount"] = 10
    assert translate_spec(capped)["maxTrials"] == 10
    sampler, seed = strategy_for(native["strategy"], native["space"])
    assert isinstance(sampler, HyperbandSampler) and seed is None
    assert sampler.schedule.total_trials == 23 and sampler.resource == "epochs"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"eta": "3", "r_l": "9"}, "hyperband needs resource_name"),
        ({"resource_name": "epochs"}, "hyperband needs r_l"),
        ({"resource_name": "steps", "r_l": "9"}, "'steps' is not one of spec.parameters"),
        ({"resource_name": "epochs", "r_l": "9", "eta": "1"}, "eta: expected an integer >= 2"),
        ({"resource_name": "epochs", "r_l": "9", "s_max": "2"}, "hyperband has no setting 's_max'"),
    ],
)
def test_katib_hyperband_settings_are_checked(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        translate_spec(katib_spec(**settings))
    assert "spec.algorithm.algorithmSettings" in str(error.value)


def test_a_native_hyperband_strategy_needs_its_settings() -> None:
    from hypersweep.strategies import make_sampler

    with pytest.raises(ConfigError, match="hyperband needs its settings"):
        make_sampler("hyperband", {"x": {"type": "float", "low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="spec.strategy.settings.*max_resource"):
        strategy_for({"name": "hyperband", "settings": {"resource": "x"}}, {})
    with pytest.raises(ConfigError, match="has no setting 'rungs'"):
        strategy_for({"name": "hyperband", "settings": {"rungs": 3}}, {})


def budgeted_score(config: dict[str, Any]) -> float:
    """A trial that trains from scratch for its budget: a longer run ends better."""
    import hypersweep as hs

    score = 0.0
    for epoch in range(1, config["epochs"] + 1):
        score = (1.0 - abs(config["x"] - 0.3)) * epoch / (epoch + 1)
        hs.report(epoch, score=score)
    return score


def test_tune_runs_the_hyperband_strategy(tmp_path: Path) -> None:
    """``tune()`` takes the sampler as any strategy: the local launcher runs the schedule."""
    import hypersweep as hs

    result = hs.tune(
        {"x": hs.uniform(0, 1), "epochs": hs.randint(1, 5)},
        budgeted_score,
        metric="score",
        mode="max",
        strategy=HyperbandSampler("epochs", max_resource=4, eta=2, seed=0),
        n_trials=15,
        max_concurrent=3,
        storage=str(tmp_path / "journal.log"),
        name="hyperband-local",
    )
    assert result.counts() == {"completed": 15}
    budgets = [r.budget for r in HyperbandSchedule(4, 2).rungs for _ in range(r.count)]
    trials = sorted(result.trials, key=lambda t: t.number)
    assert [t.config["epochs"] for t in trials] == budgets
    assert [len(t.intermediate_values) for t in trials] == budgets
    assert result.best_trial.config["epochs"] == 4


def test_katibs_own_hyperband_shape_translates() -> None:
    """Katib's published shape: a dashed budget parameter whose feasible space is [1, 1], r_l 2,
    eta 2, and a maxTrialCount below the schedule's 5 trials."""
    body = katib_spec(resource_name="num-epochs", eta="2", r_l="2")
    body["parameters"][-1]["name"] = "num-epochs"
    body["parameters"][-1]["feasibleSpace"] = {"min": "1", "max": "1"}
    body["maxTrialCount"] = 2
    native = translate_spec(body)
    assert HyperbandSchedule(2, 2).total_trials == 5 and native["maxTrials"] == 2
    assert native["space"]["num-epochs"] == {"type": "int", "low": 1, "high": 2}
