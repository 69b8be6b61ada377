"""A seeded sweep that is interrupted and resumed, or shared, proposes no config twice.

Optuna's samplers replay their random stream from the seed in every new driver, so a resumed
sweep re-proposed its first configs (optuna#1547, optuna#3055). These tests SIGKILL a real
driver mid-sweep, resume the sweep, and compare every trial's config with an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import objectives
import pytest
from conftest import PYTHON, python_env

import hypersweep as hs
from hypersweep.testing import wait_until

SPACES: dict[str, dict[str, Any]] = {
    "random": {"x": hs.uniform(0, 4), "n": hs.randint(0, 1000), "c": hs.choice(["a", "bb", "c"])},
    "qmc": {"x": hs.uniform(0, 4), "n": hs.randint(0, 1000), "c": hs.choice(["a", "bb", "c"])},
    "tpe": {"x": hs.uniform(0, 4), "n": hs.randint(0, 1000), "c": hs.choice(["a", "bb", "c"])},
    "gp": {"x": hs.uniform(0, 4), "n": hs.randint(0, 1000), "c": hs.choice(["a", "bb", "c"])},
    "grid": {"n": hs.choice([0, 1, 2, 3, 4]), "c": hs.choice(["a", "bb"])},
}

DRIVER = textwrap.dedent(
    """
    import sys
    import hypersweep as hs
    import objectives
    from test_resume_search import SPACES

    hs.tune(SPACES[{strategy!r}], objectives.sleepy_quadratic, metric="loss", n_trials=10,
            max_concurrent=2, name="killed", strategy={strategy!r}, seed=3, resume=True,
            verbose=False)
    """
)


def _configs(result: hs.SweepResult) -> dict[int, str]:
    return {t.number: json.dumps(t.config, sort_keys=True) for t in result.trials}


def _kill_after_three(run_dir: Path, strategy: str) -> None:
    """Run the sweep in a driver process and SIGKILL it once 3 trials finished."""
    script = run_dir / "driver.py"
    script.write_text(DRIVER.format(strategy=strategy))
    # Trials 0-2 end, the next ones hold until the kill: the sweep is always cut at 3.
    env = {**python_env(), "HYPERSWEEP_TEST_STEP": "0.1", "HYPERSWEEP_TEST_HOLD_FROM": "3"}
    driver = subprocess.Popen([PYTHON, str(script)], env=env)

    def three_done() -> bool:
        assert driver.poll() is None, "the driver ended before it was killed"
        try:
            return hs.load("killed").counts().get("completed", 0) >= 3
        except hs.ConfigError:
            return False

    try:
        wait_until(three_done, timeout=120)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()


@pytest.mark.parametrize("strategy", ["random", "qmc", "grid", "tpe", "gp"])
def test_a_resumed_seeded_sweep_proposes_what_an_uninterrupted_one_does(
    run_dir: Path, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 10 first trials of TPE and GP are their random start-up trials.
    settings: dict[str, Any] = dict(
        metric="loss", n_trials=10, max_concurrent=2, strategy=strategy, seed=3, verbose=False
    )
    space = SPACES[strategy]
    reference = hs.tune(space, objectives.sleepy_quadratic, name="reference", **settings)
    _kill_after_three(run_dir, strategy)
    before = hs.load("killed")
    assert before.counts().get("completed") == 3  # really interrupted
    monkeypatch.setenv("HYPERSWEEP_TEST_STEP", "0")
    resumed = hs.tune(space, objectives.sleepy_quadratic, name="killed", resume=True, **settings)
    assert resumed.counts() == {"completed": 10}
    assert _configs(resumed) == _configs(reference)
    assert len(set(_configs(resumed).values())) == 10  # no config twice


def test_two_drivers_with_one_seed_propose_no_config_twice(run_dir: Path) -> None:
    """A second driver joining with the same seed continues the sweep, it does not restart it."""
    settings: dict[str, Any] = dict(
        metric="loss", n_trials=12, max_concurrent=2, strategy="random", seed=5, verbose=False
    )
    space = SPACES["random"]
    hs.tune(space, objectives.sleepy_quadratic, name="shared", **{**settings, "n_trials": 6})
    # A new driver (new sampler, same seed) adds 6 trials to the same sweep.
    result = hs.tune(space, objectives.sleepy_quadratic, name="shared", resume=True, **settings)
    configs = list(_configs(result).values())
    assert len(configs) == 12 and len(set(configs)) == 12


@pytest.mark.parametrize("seed", [0, None])
@pytest.mark.parametrize("strategy", ["tpe", "gp", "cmaes"])
def test_model_based_strategies_never_repeat_a_config(strategy: str, seed: int | None) -> None:
    """On a small discrete space a model-based strategy would propose its best config again."""
    space = {"a": hs.choice([1, 2, 3]), "b": hs.choice(["good", "bad", "ugly"])}
    result = hs.tune(
        space,
        objectives.categorical,
        metric="loss",
        n_trials=9,
        max_concurrent=1,
        strategy=strategy,
        seed=seed,
        verbose=False,
    )
    configs = [json.dumps(t.config, sort_keys=True) for t in result.trials]
    assert len(configs) == 9
    assert len(set(configs)) == 9, sorted(configs)


def test_a_ray_searcher_without_save_restore_is_said_to_start_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("ray.tune")
    from ray.tune.search import Searcher

    class Counting(Searcher):  # type: ignore[misc]
        """A Searcher that, like Ray Tune's base class, has no save/restore."""

        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
            self._metric, self._mode = metric, mode
            return True

        def suggest(self, trial_id: str) -> dict[str, Any]:
            self.count += 1
            return {"x": self.count / 10}

        def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
            pass

    caplog.set_level("INFO", logger="hypersweep")
    space = {"x": hs.uniform(0, 4)}
    hs.tune(space, objectives.quadratic, metric="loss", n_trials=2, strategy=Counting(), name="c")
    assert "Counting cannot save its state: a resumed sweep starts it afresh" in caplog.text
    resumed = Counting()
    hs.tune(
        space,
        objectives.quadratic,
        metric="loss",
        n_trials=3,
        strategy=resumed,
        name="c",
        resume=True,
    )
    assert resumed.count == 1  # started afresh: it knew nothing of the first two trials
