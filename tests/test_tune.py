"""tune() on the embedded default: real worker processes and a real Optuna journal file."""

from __future__ import annotations

from pathlib import Path

import objectives
import optuna
import pytest

import hypersweep as hs
from hypersweep.strategies import STRATEGY_NAMES


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_name_runs_a_sweep(strategy: str) -> None:
    if strategy == "grid":
        space = {"a": hs.grid([1, 3, 5]), "b": hs.choice(["good", "bad"])}
        result = hs.tune(space, objectives.categorical, metric="loss", strategy="grid")
        assert len(result.trials) == 6  # n_trials defaults to the grid's size
        assert sorted((t.config["a"], t.config["b"]) for t in result.trials) == sorted(
            (a, b) for a in (1, 3, 5) for b in ("good", "bad")
        )
        assert result.best_value == 0.0
        return
    space = {"x": hs.uniform(-5, 5), "y": hs.uniform(-5, 5)}
    result = hs.tune(
        space, objectives.quadratic, metric="loss", n_trials=12, strategy=strategy, seed=3
    )
    assert result.counts() == {"completed": 12}
    values = [objectives.quadratic(t.config) for t in result.trials]
    assert result.best_value == pytest.approx(min(values))
    assert len({t.number for t in result.trials}) == 12


def test_a_sampler_instance_is_accepted_and_seeds_reproduce() -> None:
    space = {"x": hs.uniform(-5, 5)}
    first = hs.tune(
        space,
        objectives.quadratic,
        metric="loss",
        n_trials=5,
        strategy=optuna.samplers.RandomSampler(seed=7),
        max_concurrent=1,
    )
    second = hs.tune(
        space,
        objectives.quadratic,
        metric="loss",
        n_trials=5,
        strategy=optuna.samplers.RandomSampler(seed=7),
        max_concurrent=1,
    )
    assert [t.config for t in first.trials] == [t.config for t in second.trials]


def test_early_stopping_prunes_on_real_intermediate_reports() -> None:
    space = {"quality": hs.uniform(0.0, 1.0)}
    result = hs.tune(
        space,
        objectives.learning_curve,
        metric="loss",
        n_trials=16,
        max_concurrent=1,  # a deterministic order of reports
        early_stopping={"name": "median", "n_startup_trials": 3},
        strategy="random",
        seed=1,
    )
    counts = result.counts()
    assert counts.get("pruned", 0) >= 3
    assert counts["completed"] + counts["pruned"] == 16
    for trial in result.trials:
        assert trial.intermediate_values  # every trial reported
        if trial.state == "pruned":
            assert max(trial.intermediate_values) < 9  # stopped before its last step
    best = result.best_trial
    assert best is not None
    pruned_quality = [t.config["quality"] for t in result.trials if t.state == "pruned"]
    assert best.config["quality"] > sorted(pruned_quality)[len(pruned_quality) // 2]


def test_failures_are_recorded_with_traceback_and_the_sweep_goes_on() -> None:
    result = hs.tune(
        {"n": hs.grid([0, 1, 2, 3, 4])},
        objectives.fail_on_odd,
        metric="value",
        strategy="grid",
    )
    by_n = {t.config["n"]: t for t in result.trials}
    assert by_n[0].state == by_n[2].state == "completed"
    assert by_n[1].state == by_n[3].state == "failed"
    assert "ValueError: odd n=1 is not supported" in (by_n[1].error or "")
    assert "Traceback" in (by_n[1].error or "") and "fail_on_odd" in (by_n[1].error or "")
    assert by_n[4].state == "failed" and "nan" in (by_n[4].error or "")
    assert result.best_value == 0.0


def test_max_failed_trials_stops_the_sweep() -> None:
    result = hs.tune(
        {"n": hs.choice([1, 3, 5])},
        objectives.fail_on_odd,
        metric="value",
        n_trials=20,
        max_concurrent=1,
        max_failed_trials=3,
    )
    assert result.counts()["failed"] == 3
    assert result.stopped_reason and "max_failed_trials=3" in result.stopped_reason
    assert result.queued == 17  # the rest of the budget stays queued for a resume


def test_dict_results_keep_every_metric() -> None:
    result = hs.tune(
        {"x": hs.uniform(-1, 1)}, objectives.returns_dict, metric="accuracy", mode="max", n_trials=4
    )
    best = result.best_trial
    assert best is not None and best.metrics["loss"] == pytest.approx(best.config["x"] ** 2)
    frame = result.to_dataframe()
    assert {"number", "state", "value", "config.x", "metrics.loss"} <= set(frame.columns)
    assert len(frame) == 4


def test_objective_by_reference_and_from_a_file(run_dir: Path) -> None:
    script = run_dir / "my_objective.py"
    script.write_text("def f(config):\n    return (config['x'] - 1) ** 2\n")
    for reference in ("objectives:quadratic", f"{script}:f"):
        result = hs.tune({"x": hs.uniform(0, 3)}, reference, metric="loss", n_trials=3)
        assert result.counts() == {"completed": 3}


def test_closures_from_the_caller_run_in_workers() -> None:
    offset = 10.0
    result = hs.tune({"x": hs.uniform(0, 1)}, lambda c: c["x"] + offset, metric="v", n_trials=2)
    assert all(t.value is not None and t.value >= 10 for t in result.trials)


def test_invalid_input_is_refused_before_anything_starts(run_dir: Path) -> None:
    cases = [
        (dict(metric="loss", n_trials=0), "n_trials: expected an integer >= 1"),
        (dict(metric="loss", n_trials=2, mode="minimize"), "mode: expected 'min' or 'max'"),
        (dict(metric="loss", n_trials=2, strategy="bayes"), "strategy: unknown strategy 'bayes'"),
        (dict(metric="loss", n_trials=2, early_stopping="asap"), "early_stopping: unknown"),
        (dict(metric="loss"), "n_trials: give the number of trials"),
        (dict(metric="loss", n_trials=2, name="bad name"), "name: 'bad name' is not a valid"),
    ]
    for kwargs, message in cases:
        with pytest.raises(hs.ConfigError, match=message):
            hs.tune({"x": hs.uniform(0, 1)}, objectives.quadratic, **kwargs)
    with pytest.raises(hs.ConfigError, match="objective: cannot import module 'nope'"):
        hs.tune({"x": hs.uniform(0, 1)}, "nope:f", metric="loss", n_trials=1)
    with pytest.raises(hs.ConfigError, match="space.x: low"):
        hs.tune(
            {"x": {"type": "float", "low": 2, "high": 1}},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
        )
    assert not (run_dir / "runs").exists()  # nothing was created


def test_an_existing_sweep_is_not_overwritten() -> None:
    hs.tune({"x": hs.uniform(0, 1)}, objectives.quadratic, metric="loss", n_trials=2, name="s")
    with pytest.raises(hs.ConfigError, match="sweep 's' already exists.*resume=True"):
        hs.tune({"x": hs.uniform(0, 1)}, objectives.quadratic, metric="loss", n_trials=2, name="s")
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.quadratic,
        metric="loss",
        n_trials=5,
        name="s",
        resume=True,
    )
    assert len(result.trials) == 5  # resuming with a larger budget adds trials
    assert hs.load("s").counts() == {"completed": 5}


def test_report_checkpoint_restore_outside_a_trial_do_nothing() -> None:
    with pytest.warns(UserWarning, match="outside a trial"):
        hs.report(0, loss=1.0)
    assert hs.checkpoint({"a": 1}) is None
    assert hs.restore() is None
