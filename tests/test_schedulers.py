"""Early stopping that closes the loop: ASHA pauses and promotes, Hyperband, PBT clones."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import objectives
import optuna
import pytest
from conftest import PYTHON, python_env

import hypersweep as hs
from hypersweep.launchers import LocalLauncher
from hypersweep.orchestrator._events import TrialAssignment
from hypersweep.strategies import ASHA, PBT, Hyperband


def starts(markers: Path, number: int) -> list[int]:
    return [int(s) for s in (markers / f"starts-{number}").read_text().split()]


def test_asha_pauses_and_promotes_the_right_trials(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = run_dir / "markers"
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(markers))
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,  # trial n has quality ASHA_QUALITY[n]
        metric="loss",
        n_trials=6,
        max_concurrent=1,  # one order of events, so every decision is known in advance
        early_stopping={
            "name": "asha",
            "min_resource": 1,
            "max_resource": 9,
            "reduction_factor": 3,
        },
    )
    by_quality = {objectives.ASHA_QUALITY[t.number]: t for t in result.trials}
    best = by_quality[0.9]
    # 0.9 is paused at rung 1 (too few peers), promoted when 0.1 arrives, paused at rung 3,
    # and promoted again once no new trial can start: it resumes twice from checkpoints.
    assert best.state == "completed" and max(best.intermediate_values) == 9
    assert starts(markers, best.number) == [0, 2, 4]
    # 0.8 is in the top third of rung 1 when it gets there, then waits at rung 3 behind 0.9.
    assert by_quality[0.8].state == "pruned" and max(by_quality[0.8].intermediate_values) == 3
    for quality in (0.5, 0.1, 0.7, 0.3):
        trial = by_quality[quality]
        assert trial.state == "pruned" and max(trial.intermediate_values) == 1
        assert starts(markers, trial.number) == [0]
    assert result.best_value == pytest.approx(1 - 0.9 + 1 / 10)
    assert result.counts() == {"completed": 1, "pruned": 5}


class RecordingLauncher(LocalLauncher):
    """The local launcher, recording every launch and every decision sent to a trial."""

    def __init__(self, max_concurrent: int) -> None:
        super().__init__(max_concurrent)
        self.launched: list[int] = []
        self.decisions: list[tuple[int, str]] = []

    def launch(self, assignment: TrialAssignment) -> None:
        self.launched.append(assignment.trial_number)
        super().launch(assignment)

    def respond(self, trial_number: int, decision: str) -> None:
        self.decisions.append((trial_number, decision))
        super().respond(trial_number, decision)


def test_a_file_url_checkpoint_dir_pauses_and_promotes_through_that_folder(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checkpoint_dir takes fsspec URLs; file:// is the local folder spelt as a URL.
    markers = run_dir / "markers"
    monkeypatch.setenv("HYPERSWEEP_TEST_MARKERS", str(markers))
    folder = run_dir / "as-url"
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,
        metric="loss",
        n_trials=6,
        max_concurrent=1,
        early_stopping={"name": "asha", "min_resource": 1, "max_resource": 9},
        checkpoint_dir=f"file://{folder}",
    )
    best = next(t for t in result.trials if objectives.ASHA_QUALITY[t.number] == 0.9)
    assert best.state == "completed" and starts(markers, best.number) == [0, 2, 4]
    assert best.checkpoint is not None and str(folder) in best.checkpoint
    assert list(folder.rglob("checkpoint.json")), "nothing was written under the file:// URL"
    assert not (Path.cwd() / "file:").exists()


def test_asha_without_checkpoints_stops_instead_of_pausing() -> None:
    launcher = RecordingLauncher(1)
    result = hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.asha_curve_no_checkpoint,
        metric="loss",
        n_trials=8,
        seed=0,
        early_stopping={"name": "asha", "max_resource": 9},
        launcher=launcher,
    )
    # At the time: no trial was told to pause (its worker kept for a resume), and every trial
    # was launched once, never resumed.
    assert all(decision in ("continue", "stop") for _, decision in launcher.decisions)
    assert sorted(launcher.launched) == list(range(8))
    stops = [number for number, decision in launcher.decisions if decision == "stop"]
    assert len(stops) == len(set(stops)) >= 3
    # The first trial to reach a rung goes on (the asynchronous rule), so trial 0 completes.
    assert result.trials[0].state == "completed"
    by_number = {t.number: t for t in result.trials}
    for number in stops:  # stopped right at a rung
        assert by_number[number].state == "pruned"
        assert max(by_number[number].intermediate_values) in (1, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asha_without_checkpoints_is_no_worse_than_optunas_successive_halving(seed: int) -> None:
    """Same objective, sampler, seed and budget: ASHA stops no more and finds no worse."""

    def sweep(early_stopping: Any) -> hs.SweepResult:
        return hs.tune(
            {"quality": hs.uniform(0, 1)},
            objectives.asha_curve_no_checkpoint,
            metric="loss",
            n_trials=30,
            max_concurrent=1,  # one order of events, so both see the same history
            strategy="tpe",
            seed=seed,
            early_stopping=early_stopping,
            verbose=False,
        )

    asha = sweep({"name": "asha", "min_resource": 1, "reduction_factor": 3})
    optuna_sh = sweep(
        optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3, min_early_stopping_rate=0
        )
    )
    pruned = asha.counts().get("pruned", 0)
    assert pruned <= optuna_sh.counts().get("pruned", 0)
    assert asha.best_value is not None and optuna_sh.best_value is not None
    assert asha.best_value <= optuna_sh.best_value
    assert asha.counts().get("completed", 0) >= 3  # far from the 1 in 30 it used to complete


def test_hyperband_runs_brackets_to_completion(run_dir: Path) -> None:
    scheduler = Hyperband(min_resource=1, max_resource=9, reduction_factor=3)
    assert [b.min_resource for b in scheduler.brackets] == [1, 3]
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.asha_curve,
        metric="loss",
        n_trials=12,
        max_concurrent=2,
        early_stopping=scheduler,
        seed=0,
    )
    counts = result.counts()
    assert counts.get("completed", 0) >= 2 and sum(counts.values()) == 12
    assert "paused" not in counts and "running" not in counts


def test_pbt_beats_a_fixed_config_search_at_equal_budget(run_dir: Path) -> None:
    space = {"lr": hs.loguniform(0.01, 1.0)}
    budget = dict(metric="loss", n_trials=48, max_concurrent=4, strategy="random", seed=1)
    fixed = hs.tune(space, objectives.lr_schedule_toy, name="fixed", **budget)
    pbt = hs.tune(
        space,
        objectives.lr_schedule_toy,
        name="pbt",
        **budget,
        early_stopping=PBT(perturbation_interval=4, quantile_fraction=0.25, seed=1),
    )
    assert fixed.best_value is not None and pbt.best_value is not None
    # The best any fixed lr can do on this toy is 0.03697; only a schedule beats it.
    assert fixed.best_value >= 0.0369
    assert pbt.best_value < 0.0369
    clones = [t for t in pbt.trials if t.parent is not None]
    assert clones, "PBT never exploited a better trial"
    numbers = {t.number for t in pbt.trials}
    for clone in clones:
        assert clone.parent in numbers and clone.parent != clone.number
        if clone.intermediate_values:  # none if the parent's checkpoint was its last step
            assert min(clone.intermediate_values) > 0  # continued from the parent's checkpoint


DRIVER = textwrap.dedent(
    """
    import hypersweep as hs
    import objectives

    hs.tune({"x": hs.uniform(0, 1)}, objectives.asha_curve, metric="loss",
            n_trials=6, max_concurrent=1, name="asha-kill", resume=True, verbose=False,
            early_stopping={"name": "asha", "min_resource": 1, "max_resource": 9,
                            "reduction_factor": 3})
    """
)


@pytest.mark.slow
def test_paused_trials_survive_a_driver_kill(run_dir: Path) -> None:
    markers = run_dir / "markers"
    env = {**python_env(), "HYPERSWEEP_TEST_MARKERS": str(markers), "HYPERSWEEP_TEST_STEP": "0.1"}
    script = run_dir / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen([PYTHON, str(script)], env=env)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline
        try:
            if hs.load("asha-kill").counts().get("paused", 0) >= 2:
                break
        except hs.ConfigError:
            pass
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert subprocess.run([PYTHON, str(script)], env=env, timeout=120).returncode == 0
    result = hs.load("asha-kill")
    assert result.counts() == {"completed": 1, "pruned": 5}
    assert sorted(t.number for t in result.trials) == list(range(6))
    best = min(result.trials, key=lambda t: t.value if t.value is not None else 9)
    assert objectives.ASHA_QUALITY[best.number] == 0.9
    assert starts(markers, best.number)[-1] == 4  # promoted from its rung-3 checkpoint


def test_optuna_pruner_instances_still_work() -> None:
    result = hs.tune(
        {"quality": hs.uniform(0, 1)},
        objectives.learning_curve,
        metric="loss",
        n_trials=10,
        max_concurrent=1,
        early_stopping=optuna.pruners.SuccessiveHalvingPruner(),
        seed=0,
    )
    assert result.counts().get("pruned", 0) >= 1


def test_scheduler_settings_are_validated() -> None:
    for bad, message in [
        ({"name": "asha", "reduction_factor": 1}, "reduction_factor: expected an integer >= 2"),
        ({"name": "asha", "min_resource": 5, "max_resource": 3}, "max_resource: expected"),
        ({"name": "pbt", "quantile_fraction": 0.9}, "quantile_fraction"),
        (
            {"name": "hyperband", "bogus": 1},
            r"unknown setting\(s\) bogus for hyperband; allowed: name,",
        ),
    ]:
        with pytest.raises(hs.ConfigError, match=message):
            hs.tune(
                {"x": hs.uniform(0, 1)},
                objectives.quadratic,
                metric="loss",
                n_trials=1,
                early_stopping=bad,
            )
    assert ASHA(1, 27, 3).rungs(100) == [1, 3, 9]


def test_next_decision_steps_of_each_scheduler() -> None:
    """Where a report can next be answered other than "continue" (reports before it go
    unanswered on Ray): rungs, PBT intervals, pruners' interval steps, never for NopPruner."""
    import optuna

    from hypersweep.strategies._schedulers import ASHA, PBT, OptunaPrunerScheduler

    asha = ASHA(min_resource=1, max_resource=27, reduction_factor=3)
    assert [asha.next_decision(0, s) for s in (0, 1, 2, 3, 8, 9, 26)] == [1, 3, 3, 9, 9, None, None]
    assert PBT(perturbation_interval=4).next_decision(0, 5) == 8
    median = OptunaPrunerScheduler(optuna.pruners.MedianPruner(n_warmup_steps=5, interval_steps=3))
    assert [median.next_decision(0, s) for s in (0, 5, 6, 7, 8)] == [5, 8, 8, 8, 11]
    assert OptunaPrunerScheduler(optuna.pruners.NopPruner()).next_decision(0, 3) is None
