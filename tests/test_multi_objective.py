"""Several objectives and constraints: real sweeps on the embedded default.

A 2-objective sweep on ZDT1 (whose true front is known) returns only non-dominated trials and
comes close to the true front with NSGA-II; constraints keep every infeasible trial out of the
best; strategies and schedulers that cannot serve several objectives are refused up front.
"""

from __future__ import annotations

import math
from typing import Any

import multi_objectives
import optuna
import pytest

import hypersweep as hs
from hypersweep.orchestrator._result import SweepResult, TrialRecord
from hypersweep.orchestrator._storage import open_storage

ZDT1_SPACE = {f"x{i}": hs.uniform(0, 1) for i in range(3)}
TRUE_FRONT = [(i / 1000, 1 - math.sqrt(i / 1000)) for i in range(1001)]


def igd(points: list[tuple[float, float]]) -> float:
    """Inverted generational distance: mean distance from the true front to the nearest point."""
    return sum(min(math.dist(p, q) for p in points) for q in TRUE_FRONT) / len(TRUE_FRONT)


def dominates(a: list[float], b: list[float]) -> bool:
    """For minimization on every objective."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def test_nsga2_finds_the_zdt1_front_and_returns_only_non_dominated_trials() -> None:
    result = hs.tune(
        ZDT1_SPACE,
        multi_objectives.zdt1,
        metric=["f1", "f2"],
        mode=["min", "min"],
        strategy="nsga2",
        n_trials=1000,
        max_concurrent=2,  # as in the benchmark: NSGA-II's generations depend on it
        seed=0,
        verbose=False,
    )
    assert result.counts() == {"completed": 1000}
    front = result.best_trials
    completed = [t.values for t in result.trials if t.values is not None]
    assert len(completed) == 1000
    # Non-dominated by any trial of the sweep; every other trial is dominated by the front.
    for trial in front:
        assert trial.values is not None
        assert not any(dominates(other, trial.values) for other in completed)
    front_values = [t.values for t in front]
    for values in completed:
        assert values in front_values or any(dominates(f, values) for f in front_values)  # type: ignore[arg-type]
    points = [(v[0], v[1]) for v in front_values if v is not None]
    assert len(points) >= 20
    # benchmarks/results/zdt1_front.json: median 0.05, worst of 3 seeds 0.10; random 0.25.
    assert igd(points) < 0.15
    random = hs.tune(
        ZDT1_SPACE,
        multi_objectives.zdt1,
        metric=["f1", "f2"],
        mode="min",
        strategy="random",
        n_trials=1000,
        seed=0,
        verbose=False,
    )
    assert igd([(t.values[0], t.values[1]) for t in random.best_trials if t.values]) > igd(points)
    with pytest.raises(ValueError, match="several metrics .* use best_trials"):
        _ = result.best_trial
    with pytest.raises(ValueError, match="there is no single best trial"):
        _ = result.best_config

    frame = result.to_dataframe()
    assert {"value.f1", "value.f2", "pareto"} <= set(frame.columns)
    assert "value" not in frame.columns
    assert int(frame["pareto"].sum()) == len(front)
    on_front = frame[frame["pareto"]]
    assert sorted(on_front["number"]) == [t.number for t in front]


@pytest.mark.parametrize("strategy", ["nsga3", "tpe", "gp", "random", "qmc", "grid"])
def test_multi_objective_strategies_by_name(strategy: str) -> None:
    grid = {"x0": hs.grid([0.0, 0.25, 0.5]), "x1": hs.grid([0.0, 0.5]), "x2": hs.grid([0.0, 1.0])}
    result = hs.tune(
        grid if strategy == "grid" else ZDT1_SPACE,
        multi_objectives.zdt1,
        metric=["f1", "f2"],
        mode="min",  # one mode for every metric
        strategy=strategy,
        n_trials=12,
        seed=0,
        verbose=False,
    )
    assert result.counts() == {"completed": 12}
    assert result.modes == ["min", "min"]
    assert result.best_trials
    values = [t.values for t in result.trials]
    for trial in result.best_trials:
        assert not any(dominates(v, trial.values) for v in values if v)  # type: ignore[arg-type]


def test_modes_per_metric_are_respected() -> None:
    # Maximize f1 and minimize f2: the front is the trials with the largest f1 for their f2.
    result = hs.tune(
        ZDT1_SPACE,
        multi_objectives.zdt1,
        metric=["f1", "f2"],
        mode=["max", "min"],
        strategy="random",
        n_trials=30,
        seed=1,
        verbose=False,
    )
    signs = (-1, 1)
    values = [[s * v for s, v in zip(signs, t.values or [], strict=True)] for t in result.trials]
    for trial in result.best_trials:
        mine = [s * v for s, v in zip(signs, trial.values or [], strict=True)]
        assert not any(dominates(v, mine) for v in values)
    assert max(t.values[0] for t in result.trials) in [  # type: ignore[index]
        t.values[0]  # type: ignore[index]
        for t in result.best_trials
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "cmaes"}, r"strategy: cmaes optimizes a single objective; .* nsga2"),
        ({"early_stopping": "asha"}, r"early_stopping: no scheduler can rank trials on several"),
        ({"early_stopping": "median"}, r"early_stopping: no scheduler can rank trials on several"),
        ({"early_stopping": "pbt"}, r"early_stopping: no scheduler can rank trials on several"),
        (
            {"early_stopping": optuna.pruners.MedianPruner()},
            r"early_stopping: no scheduler can rank trials on several",
        ),
        ({"mode": ["min"]}, r"mode: give one mode per metric \(2: f1, f2\)"),
        ({"mode": ["min", "up"]}, r"mode\[1\]: expected 'min' or 'max', got 'up'"),
        ({"metric": ["f1", "f1"]}, r"metric: each objective must be named once"),
        ({"metric": ["f1", ""]}, r"metric\[1\]: expected a metric name"),
    ],
)
def test_what_cannot_serve_several_objectives_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"metric": ["f1", "f2"], "mode": "min", "n_trials": 2, **kwargs}
    with pytest.raises(hs.ConfigError, match=message):
        hs.tune(ZDT1_SPACE, multi_objectives.zdt1, **arguments)


def test_a_bare_number_or_a_missing_metric_fails_the_trial_with_the_names() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        multi_objectives.sum_loss,
        metric=["loss", "size"],
        n_trials=1,
        verbose=False,
    )
    assert result.counts() == {"failed": 1}
    assert "return a dict with the metrics 'loss', 'size'" in (result.trials[0].error or "")
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        multi_objectives.constrained,
        metric=["loss", "size"],
        n_trials=1,
        verbose=False,
    )
    assert "without the metric 'size' (keys: loss, memory_gb)" in (result.trials[0].error or "")


def test_resuming_with_other_modes_is_refused() -> None:
    arguments: dict[str, Any] = {"metric": ["f1", "f2"], "n_trials": 2, "name": "mo-resume"}
    hs.tune(ZDT1_SPACE, multi_objectives.zdt1, mode="min", verbose=False, **arguments)
    with pytest.raises(hs.ConfigError, match="mode: sweep 'mo-resume' was created to minimize"):
        hs.tune(ZDT1_SPACE, multi_objectives.zdt1, mode=["min", "max"], resume=True, **arguments)
    more = hs.tune(
        ZDT1_SPACE,
        multi_objectives.zdt1,
        mode="min",
        resume=True,
        verbose=False,
        **{**arguments, "n_trials": 4},
    )
    assert more.counts() == {"completed": 4}
    assert hs.load("mo-resume").best_trials == more.best_trials


# --- constraints --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["tpe", "gp", "random"])
def test_constraints_keep_infeasible_trials_out_of_the_best(strategy: str) -> None:
    name = f"constrained-{strategy}"
    result = hs.tune(
        {"x": hs.uniform(0, 5)},
        multi_objectives.constrained,
        metric="loss",
        constraints={"memory_gb": {"max": 8}},
        strategy=strategy,
        n_trials=20,
        seed=0,
        name=name,
        verbose=False,
    )
    infeasible = [t for t in result.trials if t.feasible is False]
    feasible = [t for t in result.trials if t.feasible is True]
    assert len(infeasible) + len(feasible) == 20
    assert infeasible, "the search space reaches past the bound"
    assert all(t.metrics["memory_gb"] > 8 for t in infeasible)
    assert all(t.metrics["memory_gb"] <= 8 for t in feasible)
    best = result.best_trial
    assert best is not None and best.feasible is True
    assert best.config["x"] <= 2
    assert best.value == min(t.value for t in feasible if t.value is not None)
    # Unconstrained, an infeasible trial would have won: the bound is what excluded it.
    assert min(t.value for t in infeasible if t.value is not None) < best.value  # type: ignore[operator]
    assert result.best_trials == [best]
    frame = result.to_dataframe()
    assert list(frame["feasible"]) == [t.feasible for t in result.trials]
    # Optuna's own record of the constraints, where its constraint-aware samplers read them
    # (set_constraint in Optuna 5; constraints_func before).
    study = optuna.load_study(study_name=name, storage=open_storage(None, name))
    for trial in study.trials:
        recorded = getattr(trial, "constraints", None) or dict(
            enumerate(trial.system_attrs.get("constraints", []))
        )
        assert list(recorded.values()) == [trial.user_attrs["metrics"]["memory_gb"] - 8]


@pytest.mark.parametrize("strategy", ["nsga2", "nsga3", "random"])
def test_constraints_with_several_objectives(strategy: str) -> None:
    result = hs.tune(
        ZDT1_SPACE,
        multi_objectives.constrained_two,
        metric=["f1", "f2"],
        mode="min",
        constraints={"memory_gb": {"max": 5}},
        strategy=strategy,
        n_trials=120,
        seed=0,
        verbose=False,
    )
    front = result.best_trials
    assert front and all(t.feasible is True for t in front)
    assert all(t.metrics["memory_gb"] <= 5 for t in front)
    feasible = [t for t in result.trials if t.feasible]
    infeasible = [t for t in result.trials if t.feasible is False]
    assert infeasible and len(feasible) + len(infeasible) == 120
    # The front is exactly the feasible trials that no feasible trial dominates.
    expected = [
        t.number
        for t in feasible
        if not any(dominates(f.values, t.values) for f in feasible)  # type: ignore[arg-type]
    ]
    assert [t.number for t in front] == expected
    if strategy == "random":  # an unbiased sample: the bound is what keeps trials out
        assert any(
            not any(dominates(f.values, t.values) for f in feasible)  # type: ignore[arg-type]
            for t in infeasible
        )


def test_a_constrained_metric_the_objective_does_not_return_fails_the_trial() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        multi_objectives.constrained,
        metric="loss",
        constraints={"gpu_gb": {"max": 1}},
        n_trials=1,
        verbose=False,
    )
    assert "without the metric 'gpu_gb' (keys: loss, memory_gb)" in (result.trials[0].error or "")


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ({"memory_gb": 16}, r"constraints\.memory_gb: expected bounds like \{max: 16\}"),
        ({"memory_gb": {"below": 16}}, r"constraints\.memory_gb: unknown bound\(s\) below"),
        ({"memory_gb": {"max": "16"}}, r"constraints\.memory_gb\.max: expected a finite number"),
        ({"memory_gb": {"min": 2, "max": 1}}, r"constraints\.memory_gb: min \(2\.0\) must not"),
        ([], r"constraints: expected a mapping of metric name to bounds"),
    ],
)
def test_bad_constraints_are_refused(constraints: Any, message: str) -> None:
    with pytest.raises(hs.ConfigError, match=message):
        hs.tune(
            {"x": hs.uniform(0, 1)},
            multi_objectives.constrained,
            metric="loss",
            constraints=constraints,
            n_trials=1,
        )


def test_best_trials_of_a_hand_made_result() -> None:
    """The front logic alone: duplicates are kept, infeasible and failed trials never enter."""

    def record(number: int, values: list[float], **kw: Any) -> TrialRecord:
        return TrialRecord(
            number=number,
            state=kw.pop("state", "completed"),
            config={},
            value=None,
            values=values,
            **kw,
        )

    result = SweepResult(
        name="hand",
        metric=["a", "b"],
        mode=["min", "max"],
        storage="",
        trials=[
            record(0, [1.0, 1.0]),
            record(1, [1.0, 1.0]),  # equal to 0: both on the front
            record(2, [2.0, 1.0]),  # dominated by 0
            record(3, [0.0, 5.0], feasible=False),  # would dominate all
            record(4, [3.0, 2.0]),
            record(5, [0.0, 9.0], state="failed"),
        ],
        constraints={"m": {"max": 1}},
    )
    assert [t.number for t in result.best_trials] == [0, 1, 4]


def test_the_multi_objective_example_runs() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "multi_objective.py"
    spec = importlib.util.spec_from_file_location("multi_objective_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(n_trials=4, name="example")
    assert result.counts() == {"completed": 4}
    front = result.best_trials
    assert front and all(t.feasible and t.metrics["params"] <= 40_000 for t in front)
    assert all(0.0 < t.metrics["accuracy"] <= 1.0 for t in front)


def test_the_sweep_resource_status_summary() -> None:
    """What the operator writes to a Sweep's status, from the same orchestrator: a feasible
    best trial and the infeasible count; with several objectives, the front's size and its
    first 10 trials only."""
    pytest.importorskip("kubernetes")
    from hypersweep.operators._sweep import summarize

    seen: list[Any] = []
    result = hs.tune(
        {"x": hs.uniform(0, 5)},
        multi_objectives.constrained,
        metric="loss",
        constraints={"memory_gb": {"max": 8}},
        strategy="random",
        n_trials=12,
        seed=0,
        verbose=False,
        on_update=seen.append,
    )
    summary = summarize(seen[-1])
    best = result.best_trial
    assert best is not None
    assert summary["bestTrial"]["number"] == best.number
    assert summary["trials"]["infeasible"] == sum(t.feasible is False for t in result.trials) > 0

    seen.clear()
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        multi_objectives.trade_off,
        metric=["f1", "f2"],
        strategy="random",
        n_trials=15,
        seed=0,
        verbose=False,
        on_update=seen.append,
    )
    summary = summarize(seen[-1])
    assert "bestTrial" not in summary and "infeasible" not in summary["trials"]
    front = summary["paretoFront"]
    assert front["size"] == len(result.best_trials) == 15
    assert [t["number"] for t in front["trials"]] == list(range(10))
    assert front["trials"][0]["values"] == {
        "f1": result.trials[0].values[0],  # type: ignore[index]
        "f2": result.trials[0].values[1],  # type: ignore[index]
    }


def test_a_lower_bound_constraint() -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 5)},
        multi_objectives.constrained,
        metric="loss",
        constraints={"memory_gb": {"min": 14, "max": 18}},  # 3.5 <= x <= 4.5
        strategy="random",
        n_trials=20,
        seed=0,
        verbose=False,
    )
    for trial in result.trials:
        assert trial.feasible is (14 <= trial.metrics["memory_gb"] <= 18)
    best = result.best_trial
    assert best is not None and 3.5 <= best.config["x"] <= 4.5
    assert any(t.feasible is False and t.value < best.value for t in result.trials)  # type: ignore[operator]
