"""Ray Tune search algorithms as strategies, run by hypersweep's own loop and storage.

The searchers run in the driver, so these sweeps use the local launcher; no Ray cluster is
started. ``HyperOptSearch`` (which has no ``add_evaluated_point``) is the searcher that must be
resumed from its saved state.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_module

require_module("ray.tune")

import objectives
import optuna
import ray_objectives
from conftest import PYTHON, python_env
from ray import tune as ray_tune
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

import hypersweep as hs
from hypersweep._errors import ConfigError
from hypersweep.orchestrator._storage import open_storage
from hypersweep.strategies._ray_searcher import RaySearcherSampler, _snap, to_ray_space
from hypersweep.strategies._space import Float, Int

SPACE = {"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10)}


def _hyperopt(**options: Any) -> Any:
    require_module("hyperopt")
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(**options)


class RecordingSearcher(Searcher):
    """A random searcher that records every call hypersweep makes."""

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.counter = 0

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        self._metric, self._mode, self.config = metric, mode, config
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        self.counter += 1
        self.calls.append(("suggest", trial_id))
        return {"n": self.counter % 4, "nested": {"lr": 10.0**-self.counter}}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.calls.append(("result", trial_id, result["step"], result["loss"]))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.calls.append(("complete", trial_id, None if result is None else result["loss"], error))


def _sweep_values(strategy: Any, seed: int) -> tuple[hs.SweepResult, list[float]]:
    result = hs.tune(
        SPACE,
        objectives.quadratic,
        metric="loss",
        n_trials=60,
        max_concurrent=1,
        strategy=strategy,
        seed=seed,
        verbose=False,
    )
    assert result.counts() == {"completed": 60}
    return result, [t.value for t in sorted(result.trials, key=lambda t: t.number)]


@pytest.mark.parametrize("seed", [0, 1])
def test_hyperopt_drives_a_sweep_to_a_good_result(seed: int) -> None:
    result, values = _sweep_values(_hyperopt(random_state_seed=seed, n_initial_points=10), seed)
    # Optuna's own random sampler as the baseline (its stream for this seed, as before
    # hypersweep's "random" drew each trial from (seed, trial number)).
    _, random_values = _sweep_values(optuna.samplers.RandomSampler(seed=seed), seed)
    # After its 10 random points, TPE samples near the minimum (0 at x=2, y=-1): its last
    # 20 trials are better than random search's, and its best is close.
    late = sorted(values[-20:])[10]
    assert late < sorted(random_values[-20:])[10]
    assert late < sorted(values[:10])[5]
    assert min(values) < 3.0
    # Stored like any trial: a plain Optuna study that Optuna itself reads.
    storage = open_storage(result.storage, result.name)
    study = optuna.load_study(study_name=result.name, storage=storage)
    assert len(study.trials) == 60 and study.best_value == pytest.approx(min(values))


def test_the_searcher_proposes_what_it_would_propose_alone() -> None:
    """One trial at a time, the sweep sees exactly the configs of a hand-driven searcher."""
    alone = _hyperopt(random_state_seed=3, n_initial_points=5)
    alone.set_search_properties("loss", "min", to_ray_space(SPACE))
    expected = []
    for number in range(15):
        config = alone.suggest(f"t{number}")
        expected.append(config)
        alone.on_trial_complete(f"t{number}", {"loss": objectives.quadratic(config)})
    result = hs.tune(
        SPACE,
        objectives.quadratic,
        metric="loss",
        n_trials=15,
        max_concurrent=1,
        strategy=_hyperopt(random_state_seed=3, n_initial_points=5),
    )
    configs = [t.config for t in sorted(result.trials, key=lambda t: t.number)]
    assert configs == [{k: float(v) for k, v in config.items()} for config in expected]


def test_every_callback_reaches_the_searcher() -> None:
    searcher = RecordingSearcher()
    result = hs.tune(
        {"n": hs.randint(0, 4), "nested": {"lr": hs.loguniform(1e-9, 1.0)}, "fixed": 7},
        objectives.fail_on_odd,
        metric="loss",
        n_trials=4,
        max_concurrent=1,
        strategy=searcher,
    )
    # The space, as Ray Tune domains; hypersweep's inclusive int range became randint(0, 4).
    assert isinstance(searcher.config["n"], ray_tune.search.sample.Integer)
    assert (searcher.config["n"].lower, searcher.config["n"].upper) == (0, 4)
    assert searcher.config["fixed"] == 7 and searcher.metric == "loss" and searcher.mode == "min"
    by_number = {t.number: t for t in result.trials}
    assert [by_number[i].config["n"] for i in range(4)] == [1, 2, 3, 0]  # the searcher's picks
    assert by_number[1].config["nested"]["lr"] == pytest.approx(1e-2)
    completes = {c[1]: c for c in searcher.calls if c[0] == "complete"}
    assert completes["hypersweep_00000"][2:] == (None, True)  # n=1 raised: error=True
    assert completes["hypersweep_00001"][2:] == (2.0, False)
    assert result.counts() == {"completed": 2, "failed": 2}


def test_intermediate_results_reach_the_searcher() -> None:
    searcher = RecordingSearcher()
    hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=2,
        max_concurrent=1,
        strategy=searcher,
    )
    reports = [c for c in searcher.calls if c[0] == "result" and c[1] == "hypersweep_00000"]
    assert [c[2] for c in reports] == list(range(10))
    final = next(c for c in searcher.calls if c[0] == "complete" and c[1] == "hypersweep_00000")
    assert final[2] == pytest.approx(reports[-1][3])  # the last report is the trial's value


def test_a_concurrency_limiter_caps_running_trials(run_dir: Path, monkeypatch: Any) -> None:
    markers = run_dir / "markers"
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(markers))
    result = hs.tune(
        {**SPACE, "seconds": 0.3},
        ray_objectives.timed,
        metric="loss",
        n_trials=8,
        max_concurrent=4,
        strategy=ConcurrencyLimiter(_hyperopt(random_state_seed=0), max_concurrent=2),
    )
    assert result.counts() == {"completed": 8}
    spans = [json.loads(p.read_text()) for p in markers.glob("span-*.json")]
    events = sorted([(s["began"], 1) for s in spans] + [(s["ended"], -1) for s in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 2  # the limiter's 2, not the sweep's 4


def test_basic_variant_generator_runs_the_grid_once_then_ends() -> None:
    result = hs.tune(
        {"a": hs.grid([1, 2, 3]), "b": hs.choice(["good", "bad"])},
        objectives.categorical,
        metric="loss",
        n_trials=10,
        strategy=BasicVariantGenerator(random_state=0),
    )
    # One pass over the grid (Ray Tune's num_samples=1); the rest of the budget stays queued.
    assert result.counts() == {"completed": 3, "queued": 7}
    assert sorted(t.config["a"] for t in result.trials) == [1, 2, 3]


def test_a_searcher_with_its_own_space_is_refused() -> None:
    searcher = _hyperopt(space={"x": ray_tune.uniform(0, 1)}, metric="loss", mode="min")
    with pytest.raises(ConfigError, match="did not accept the sweep's search space"):
        hs.tune(SPACE, objectives.quadratic, metric="loss", n_trials=2, strategy=searcher)


def test_space_conversion_and_values_snapped_into_optuna_ranges() -> None:
    space = {
        "q": hs.quniform(0.05, 0.95, 0.1),
        "k": Int(1, 9, step=2),
        "c": hs.choice([1, "1"]),
        "g": hs.quniform(0.0, 1.0, 0.25),
    }
    ray_space = to_ray_space(space)
    quantized = ray_tune.search.sample.Quantized
    assert isinstance(ray_space["g"].get_sampler(), quantized)  # the same grid in both
    assert not isinstance(ray_space["q"].get_sampler(), quantized)  # 0.05 + k * 0.1: snapped
    assert (ray_space["k"].lower, ray_space["k"].upper) == (1, 10)
    assert ray_space["c"].categories == [1, "1"]
    assert _snap(Float(0.05, 0.95, step=0.1), 0.3) == pytest.approx(0.25)  # Optuna's grid
    assert _snap(Float(0.05, 0.95, step=0.1), 1.0) == pytest.approx(0.95)
    assert _snap(Int(1, 9, step=2), 4.0) in (3, 5)
    assert _snap(Int(1, 9, step=2), 40) == 9
    assert _snap(hs.choice([1, "1"]), "1") == "1"
    assert _snap(hs.choice([1, 2]), 3) is None
    distributions = RaySearcherSampler(
        RecordingSearcher(), space, metric="loss", mode="min"
    ).infer_relative_search_space(None, None)  # type: ignore[arg-type]
    assert distributions["q"] == optuna.distributions.FloatDistribution(0.05, 0.95, step=0.1)


DRIVER = textwrap.dedent(
    """
    import hypersweep as hs
    import ray_objectives
    from ray.tune.search.hyperopt import HyperOptSearch

    hs.tune({{"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10), "seconds": 0.4}},
            ray_objectives.timed, metric="loss", n_trials={n}, max_concurrent=2,
            name="resumable", resume={resume},
            strategy=HyperOptSearch(random_state_seed=0, n_initial_points=4), verbose=False)
    """
)


@pytest.mark.slow
def test_resume_after_a_driver_kill_restores_the_searcher(run_dir: Path, monkeypatch: Any) -> None:
    """The killed driver's searcher state is restored; nothing is rerun or lost."""
    require_module("hyperopt")
    markers = run_dir / "markers"
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(markers))
    env = {**python_env(), "HYPERSWEEP_TEST_MARKERS": str(markers)}
    script = run_dir / "driver.py"
    n_trials = 14
    script.write_text(DRIVER.format(n=n_trials, resume=True))
    driver = subprocess.Popen([PYTHON, str(script)], env=env)

    def progressed() -> bool:
        try:
            counts = hs.load("resumable").counts()
        except ConfigError:
            return False
        return counts.get("completed", 0) >= 5 and counts.get("running", 0) >= 1

    deadline = time.monotonic() + 120
    while not progressed():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = hs.load("resumable")
    completed_before = {t.number: t.config for t in before.trials if t.state == "completed"}

    samplers: list[Any] = []
    result = _resume(n_trials, samplers)
    assert result.counts() == {"completed": n_trials}
    for trial in result.trials:  # finished trials were kept, not rerun
        if trial.number in completed_before:
            assert trial.config == completed_before[trial.number]
    sampler = samplers[0]
    assert isinstance(sampler, RaySearcherSampler)
    assert sampler.restored_trials >= len(completed_before) - 1  # saved after each trial
    assert sampler.skipped_trials == 0
    # HyperOpt's own record holds every trial's result: restored, replayed, or told anew.
    hyperopt_trials = sampler.searcher._hpopt_trials.trials
    done = [t for t in hyperopt_trials if t["result"].get("status") == "ok"]
    assert len(done) == n_trials
    losses = sorted(t["result"]["loss"] for t in done)
    assert losses == pytest.approx(sorted(t.value for t in result.trials))


def _resume(n_trials: int, samplers: list[Any]) -> hs.SweepResult:
    from ray.tune.search.hyperopt import HyperOptSearch

    return hs.tune(
        {"x": hs.uniform(-10, 10), "y": hs.uniform(-10, 10), "seconds": 0.4},
        ray_objectives.timed,
        metric="loss",
        n_trials=n_trials,
        max_concurrent=2,
        name="resumable",
        resume=True,
        strategy=HyperOptSearch(random_state_seed=0, n_initial_points=4),
        on_update=lambda orchestrator: samplers.append(orchestrator.study.sampler),
    )


def test_ray_tune_search_spaces_are_accepted(run_dir: Path) -> None:
    """A Ray Tune user's param_space, mixed with hypersweep domains, samples the same values."""
    space = {
        "x": ray_tune.uniform(-1, 3),
        "y": hs.uniform(-2, 0),
        "lr": ray_tune.loguniform(1e-4, 1e-1),
        "layers": ray_tune.randint(1, 4),  # Ray Tune excludes 4
        "width": ray_tune.qrandint(8, 32, 8),  # ...but includes 32 here
        "q": ray_tune.quniform(0, 1, 0.25),
        "opt": ray_tune.choice(["adam", "sgd"]),
    }
    result = hs.tune(space, objectives.quadratic, metric="loss", n_trials=40, strategy="random")
    assert result.counts() == {"completed": 40}
    configs = [t.config for t in result.trials]
    assert all(-1 <= c["x"] <= 3 and -2 <= c["y"] <= 0 for c in configs)
    assert all(1e-4 <= c["lr"] <= 1e-1 for c in configs)
    assert {c["layers"] for c in configs} == {1, 2, 3}
    assert {c["width"] for c in configs} <= {8, 16, 24, 32}
    assert {c["q"] for c in configs} <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert {c["opt"] for c in configs} == {"adam", "sgd"}

    grid = hs.tune(
        {"a": ray_tune.grid_search([1, 3, 5]), "b": ray_tune.grid_search(["good", "bad"])},
        objectives.categorical,
        metric="loss",
        strategy="grid",
    )
    assert grid.counts() == {"completed": 6}
    assert grid.best_trial is not None and grid.best_trial.config == {"a": 3, "b": "good"}

    with pytest.raises(ConfigError, match=r"space\.s: .*sample_from"):
        hs.tune(
            {"s": ray_tune.sample_from(lambda spec: 1), "x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
        )
    with pytest.raises(ConfigError, match=r"space\.n: .*no hypersweep equivalent"):
        hs.tune({"n": ray_tune.randn()}, objectives.quadratic, metric="loss", n_trials=1)


def test_a_ray_tune_trainable_runs_on_the_local_launcher(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tune.report() and tune.get_checkpoint() in local workers; the trainable imports Ray
    Tune only when it runs."""
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    result = hs.tune(
        {"x": ray_tune.grid_search([1.0, 3.0]), "crash_at": 3},
        ray_objectives.tune_trainable,
        metric="loss",
        strategy="grid",
    )
    assert result.counts() == {"completed": 2}
    for trial in result.trials:
        assert trial.value == pytest.approx((trial.config["x"] - 2.0) ** 2 + 1.0 / 5)
        assert trial.attempts == 2 and trial.metrics["started_at"] == 3.0
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3, 4]  # steps go on after a retry


def test_a_searcher_created_for_another_mode_or_metric_is_refused(run_dir: Path) -> None:
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    with pytest.raises(ConfigError, match=r"strategy: OptunaSearch\(mode='max'\) disagrees"):
        hs.tune(
            SPACE,
            objectives.quadratic,
            metric="loss",
            n_trials=2,
            strategy=OptunaSearch(mode="max"),
        )
    limited = ConcurrencyLimiter(OptunaSearch(metric="acc", mode="min"), max_concurrent=2)
    with pytest.raises(ConfigError, match=r"strategy: OptunaSearch\(metric='acc'\) disagrees"):
        hs.tune(SPACE, objectives.quadratic, metric="loss", n_trials=2, strategy=limited)
    result = hs.tune(
        SPACE,
        objectives.quadratic,
        metric="loss",
        mode="min",
        n_trials=2,
        strategy=OptunaSearch(metric="loss", mode="min"),
    )
    assert result.counts() == {"completed": 2}


def test_ray_tune_schedulers_by_their_class(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASHAScheduler runs as the sweep's own ASHA, with the same rungs as its settings say."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    from hypersweep.strategies._early_stopping import make_scheduler
    from hypersweep.strategies._schedulers import ASHA, Hyperband, OptunaPrunerScheduler

    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(run_dir / "markers"))
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        early_stopping=ASHAScheduler(max_t=9, grace_period=1, reduction_factor=3),
    )
    # The same outcome as early_stopping={"name": "asha", "min_resource": 1, "max_resource": 9}
    # (tests/test_schedulers.py): the best trial paused and promoted twice.
    assert result.counts() == {"completed": 1, "pruned": 5}
    assert result.best_value == pytest.approx(1 - 0.9 + 1 / 10)

    asha = make_scheduler(ASHAScheduler(max_t=27, grace_period=3, reduction_factor=3))
    assert isinstance(asha, ASHA)
    assert (asha.min_resource, asha.max_resource, asha.reduction_factor) == (3, 27, 3)
    hyperband = make_scheduler(HyperBandScheduler(max_t=27, reduction_factor=3))
    assert isinstance(hyperband, Hyperband) and len(hyperband.brackets) == 3
    median = make_scheduler(
        MedianStoppingRule(time_attr="training_iteration", grace_period=2, min_samples_required=4)
    )
    assert isinstance(median, OptunaPrunerScheduler)
    assert isinstance(median.pruner, optuna.pruners.MedianPruner)
    assert isinstance(make_scheduler(FIFOScheduler()).pruner, optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"early_stopping: MedianStoppingRule\(time_attr="):
        make_scheduler(MedianStoppingRule())  # Ray's default counts seconds
    with pytest.raises(ConfigError, match=r"PopulationBasedTraining has no equivalent.*'pbt'"):
        make_scheduler(PopulationBasedTraining(hyperparam_mutations={"lr": [0.1, 0.2]}))


def test_results_read_as_ray_tune_users_read_them(run_dir: Path) -> None:
    result = hs.tune(
        {"quality": hs.grid([0.2, 0.5, 0.8])},
        objectives.learning_curve,  # loss = 1 - quality + 1 / (step + 1), 10 reports
        metric="loss",
        strategy="grid",
    )
    by_quality = {t.config["quality"]: t for t in result.trials}
    best = result.get_best_result()
    assert best is not None and best.config["quality"] == 0.8
    assert result.get_best_result(scope="avg") is best
    # The worst loss ever reported: quality 0.2 at step 0 (0.8 + 1).
    worst = result.get_best_result("loss", "max", scope="all")
    assert worst is by_quality[0.2]
    assert max(worst.metric_series("loss")) == pytest.approx(1.8)
    frame = by_quality[0.5].metrics_dataframe
    assert list(frame["step"]) == list(range(10))
    assert frame["loss"].iloc[-1] == pytest.approx(0.5 + 1 / 10)
    assert result.get_best_result("accuracy") is None  # never reported
    with pytest.raises(ConfigError, match="scope: expected one of"):
        result.get_best_result(scope="best")
