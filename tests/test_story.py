"""What a sweep tells while it runs and after: the table, the log, progress lines and the summary
agree on which trials completed, which were stopped or paused at which step, and which were
promoted; a promoted trial's duration adds up all its runs."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import HYPERSWEEP, PYTHON, hypersweep, python_env

import hypersweep as hs

# objectives.asha_curve: trial n has quality ASHA_QUALITY[n % 6]; one trial at a time, so ASHA
# pauses, promotes and stops the same trials every run.
ASHA_SWEEP = {
    "name": "story",
    "objective": "objectives:asha_curve",
    "metric": "loss",
    "n_trials": 9,
    "max_concurrent": 1,
    "seed": 0,
    "early_stopping": {"name": "asha", "min_resource": 1, "max_resource": 9, "reduction_factor": 3},
    "space": {"x": {"type": "float", "low": 0, "high": 1}},
}


def _write(run_dir: Path, **changes: object) -> None:
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump({**ASHA_SWEEP, **changes}))


def test_the_log_and_the_summary_tell_the_same_story_as_storage(run_dir: Path) -> None:
    _write(run_dir)
    run = hypersweep("run", "sweep.yaml", "--no-live")
    assert run.returncode == 0, run.stderr
    result = hs.load("story")
    log = run.stderr
    pruned = [t for t in result.trials if t.state == "pruned"]
    completed = [t for t in result.trials if t.state == "completed"]
    promotions = [(t.number, step) for t in result.trials for step in t.promoted_at]
    assert pruned and completed and promotions  # the sweep exercises every part of the story

    # The log names every pause and every promotion with its step.
    logged_promotions = re.findall(r"Trial (\d+) promoted from step (\d+)", log)
    assert sorted((int(n), int(s)) for n, s in logged_promotions) == sorted(promotions)
    pauses = re.findall(r"Trial (\d+) paused at step (\d+)", log)
    finally_paused = re.search(r"(\d+) paused trials stay stopped where they were paused", log)
    left = int(finally_paused.group(1)) if finally_paused else 0
    assert len(pauses) == len(promotions) + left
    for trial in pruned:  # each stopped trial stands where the log last left it
        last = [int(s) for n, s in pauses if int(n) == trial.number]
        stopped = re.findall(rf"Trial {trial.number} stopped early at step (\d+)", log)
        assert trial.step == (int(stopped[-1]) if stopped else last[-1])

    # The summary counts the same trials, grouped by the step they stopped at.
    by_step: dict[int, int] = {}
    for trial in pruned:
        assert trial.step is not None
        by_step[trial.step] = by_step.get(trial.step, 0) + 1
    where = ", ".join(f"{n} at step {s}" for s, n in sorted(by_step.items()))
    promoted_trials = len({n for n, _ in promotions})
    expected = (
        f"sweep story: {len(completed)} completed, {len(pruned)} stopped early ({where}); "
        f"{len(promotions)} promotions of {promoted_trials} paused trials in "
    )
    assert expected in run.stdout, run.stdout

    # status shows each trial's state, step and promotions as storage has them.
    status = hypersweep("status", "story", env={"COLUMNS": "200"})
    rows = {
        int(cells[0]): cells
        for line in status.stdout.splitlines()
        if (cells := [c.strip() for c in line.split("│")[1:-1]]) and cells[0].isdigit()
    }
    for trial in result.trials:
        state = f"stopped at {trial.step}" if trial.state == "pruned" else trial.state
        assert rows[trial.number][1] == state
        assert rows[trial.number][2] == ", ".join(map(str, trial.promoted_at))


def test_a_promoted_trials_duration_is_its_total_running_time(run_dir: Path) -> None:
    _write(run_dir)
    env = {"HYPERSWEEP_TEST_STEP": "0.02"}  # 20 ms a step: durations well above clock noise
    assert hypersweep("run", "sweep.yaml", "--no-live", env=env).returncode == 0
    result = hs.load("story")
    promoted = [t for t in result.trials if t.promoted_at]
    assert promoted
    for trial in result.trials:
        assert trial.duration is not None
        assert len(trial.segments) == len(trial.promoted_at) + 1
        assert trial.duration == pytest.approx(sum(end - start for start, end in trial.segments))
        for (_, end), (start, _) in zip(trial.segments, trial.segments[1:], strict=False):
            assert start >= end  # runs do not overlap
    best = result.best_trial
    assert best is not None and best.promoted_at
    # Trained for 10 steps of 20 ms over several runs: the total, not the last run.
    assert best.duration is not None and best.duration >= 10 * 0.02
    last_run = best.segments[-1][1] - best.segments[-1][0]
    assert best.duration > last_run
    frame = result.to_dataframe().set_index("number")
    assert frame.loc[best.number, "duration"] == pytest.approx(best.duration)
    assert frame.loc[best.number, "segments"] == len(best.segments)


_PROGRESS = re.compile(
    r"sweep story · (\d+)/~(\d+) steps \((\d+)%\) · (\d+:\d\d) elapsed( · ~\d+:\d\d left)? · "
    r"(\d+)/9 trials started"
)


def test_progress_lines_when_the_output_is_not_a_terminal(run_dir: Path) -> None:
    _write(run_dir)
    run = hypersweep(
        "run", "sweep.yaml", "--progress-every", "0.3", env={"HYPERSWEEP_TEST_STEP": "0.05"}
    )
    assert run.returncode == 0, run.stderr
    lines = [m for line in run.stderr.splitlines() if (m := _PROGRESS.search(line))]
    assert len(lines) >= 3, run.stderr
    spent = [int(m.group(1)) for m in lines]
    assert spent == sorted(spent) and spent[-1] > spent[0]  # resource spent grows
    assert any(m.group(5) for m in lines)  # an estimate of the time left
    started = [int(m.group(6)) for m in lines]
    assert started == sorted(started)
    assert run.stderr.splitlines()[0].startswith("sweep story: 9 trials, storage ")
    assert (run_dir / "runs" / "story" / "logs").is_dir()  # trial output goes to files


def _run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal as stdout and stderr; return its code and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_the_live_table_on_a_terminal_tells_the_story(run_dir: Path) -> None:
    _write(run_dir)
    env = {**python_env(), "COLUMNS": "160", "LINES": "60", "HYPERSWEEP_TEST_STEP": "0.02"}
    code, output = _run_in_terminal([HYPERSWEEP, "run", "sweep.yaml"], env)
    assert code == 0, output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # without colours and cursor moves
    result = hs.load("story")
    pruned = [t for t in result.trials if t.state == "pruned"]
    # The last frame: every trial decided, the same counts as the summary, no trial left paused.
    frames = re.findall(r"9/9 trials started: ([^·\n]*)", text)
    assert frames, text
    last = frames[-1]
    assert f"1 completed, {len(pruned)} stopped early" in last and "paused" not in last
    assert re.search(r"\d+/~\d+ steps \(\d+%\) · \d+:\d\d elapsed", text)
    for trial in pruned:
        assert re.search(rf"│\s+{trial.number} │ stopped at {trial.step}\s", text)
    assert "paused at 1" in text  # trials were seen waiting at the first rung


def test_tune_prints_a_short_summary_when_verbose(run_dir: Path) -> None:
    code = (
        "import hypersweep as hs, objectives\n"
        "hs.tune({'x': hs.uniform(-1, 1)}, objectives.quadratic, metric='loss', n_trials=3,"
        " name='verbose-sweep', max_concurrent=1)\n"
    )
    run = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=python_env(), timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "Sweep verbose-sweep starts; storage: " in run.stderr
    assert "sweep verbose-sweep: 3 completed in 0:" in run.stderr
    best = hs.load("verbose-sweep").best_trial
    assert best is not None
    assert f"best trial {best.number}: loss={best.value:.6g}" in run.stderr
    quiet = subprocess.run(
        [
            PYTHON,
            "-c",
            code.replace("max_concurrent=1", "max_concurrent=1, verbose=False").replace(
                "verbose-sweep", "quiet-sweep"
            ),
        ],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    assert quiet.returncode == 0 and "quiet-sweep" not in quiet.stderr


def test_an_interrupted_tune_says_how_to_resume_in_python(run_dir: Path) -> None:
    code = (
        "import hypersweep as hs, objectives\n"
        "def stop(orchestrator):\n"
        "    if orchestrator.views:\n"
        "        raise KeyboardInterrupt\n"
        "try:\n"
        "    hs.tune({'x': hs.uniform(-1, 1)}, objectives.quadratic, metric='loss', n_trials=3,"
        " name='cut', on_update=stop)\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
    )
    run = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, env=python_env(), timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "Sweep cut interrupted; continue it with tune(..., name='cut', resume=True)" in (
        run.stderr
    )
    assert "--resume" not in run.stderr


def test_python_messages_name_the_argument_not_the_flag(run_dir: Path) -> None:
    import objectives

    hs.tune(
        {"x": hs.uniform(0, 1)},
        objectives.quadratic,
        metric="loss",
        n_trials=1,
        name="twice",
        verbose=False,
    )
    with pytest.raises(hs.ConfigError) as error:
        hs.tune(
            {"x": hs.uniform(0, 1)},
            objectives.quadratic,
            metric="loss",
            n_trials=1,
            name="twice",
            verbose=False,
        )
    assert "pass resume=True" in str(error.value) and "--resume" not in str(error.value)


ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_shows_the_recorded_quickstart_and_its_picture() -> None:
    readme = (ROOT / "README.md").read_text()
    record = json.loads((ROOT / "benchmarks" / "results" / "quickstart_story.json").read_text())
    assert f"```text\n{record['summary']}\n```" in readme
    counts = record["counts"]
    stopped = ", ".join(f"{n} at step {s}" for s, n in record["stopped_at_step"].items())
    assert record["summary"].startswith(
        f"sweep quickstart-cli: {counts['completed']} completed, {counts['pruned']} stopped "
        f"early ({stopped}); {record['promotions']} promotions"
    )
    assert "![hypersweep plot of the quickstart sweep](docs/plot-quickstart.png)" in readme
    picture = (ROOT / record["picture"]).read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(picture) < 200_000
