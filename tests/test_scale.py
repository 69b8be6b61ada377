"""Large sweeps stay cheap: the results snapshot beside the journal, the journal reader, and
proposals that do not read every trial."""

from __future__ import annotations

import re
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
from hypersweep._cli import main as cli_main
from hypersweep.orchestrator import _tune
from hypersweep.orchestrator._journal import FlockJournalFileBackend
from hypersweep.orchestrator._snapshot import read_snapshot, snapshot_path, write_snapshot
from hypersweep.orchestrator._storage import default_run_dir, open_storage

SPACE = {"x": hs.uniform(-5, 5), "y": hs.choice([-1.0, 0.0, 1.0])}
SETTINGS: dict[str, Any] = dict(metric="loss", max_concurrent=2, strategy="random", seed=1)


def _from_journal(name: str) -> list[dict[str, Any]]:
    """The sweep's rows read from the journal itself, never from a snapshot."""
    journal = default_run_dir(name) / "journal.log"
    opened = open_storage(str(journal), name)
    study_id = opened.get_study_id_from_name(name)
    return _tune.read_sweep(opened, study_id, name, str(journal)).to_records()


def _journal_refused(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the journal was read")


def test_load_reads_the_snapshot_the_sweep_left_while_the_journal_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=12, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    assert snapshot_path(journal).is_file()
    expected = _from_journal("s")
    with monkeypatch.context() as patched:
        patched.setattr(_tune, "read_sweep", _journal_refused)
        patched.setattr("hypersweep.orchestrator._storage.open_storage", _journal_refused)
        loaded = hs.load("s")
    assert loaded.to_records() == expected
    assert loaded.counts() == {"completed": 12}
    assert loaded.storage == str(journal)


def test_a_snapshot_is_not_used_once_the_journal_changed() -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=6, name="s", verbose=False, **SETTINGS)
    # Another driver adds trials: the journal grows past the snapshot.
    hs.tune(
        SPACE, objectives.quadratic, n_trials=9, name="s", resume=True, verbose=False, **SETTINGS
    )
    assert hs.load("s").counts() == {"completed": 9}
    # A write from plain Optuna (a user attribute): the snapshot no longer matches.
    journal = default_run_dir("s") / "journal.log"
    assert read_snapshot(journal, "s") is not None
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal), "s"))
    study.set_user_attr("note", "checked")
    assert read_snapshot(journal, "s") is None
    assert hs.load("s").to_records() == _from_journal("s")
    # The same length but other content (a journal replaced): refused by the fingerprint.
    write_snapshot(journal, "s", hs.load("s"), journal.stat().st_size)
    content = journal.read_bytes()
    journal.write_bytes(content.replace(b'"checked"', b'"CHECKED"'))
    assert read_snapshot(journal, "s") is None
    assert hs.load("s").to_records() == _from_journal("s")


def test_a_damaged_snapshot_is_ignored() -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=5, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    data = snapshot_path(journal).read_bytes()
    snapshot_path(journal).write_bytes(data[: len(data) // 2])
    assert read_snapshot(journal, "s") is None
    snapshot_path(journal).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert read_snapshot(journal, "s") is None
    assert hs.load("s").to_records() == _from_journal("s")


WRITER = textwrap.dedent(
    """
    import sys
    from dataclasses import replace
    from pathlib import Path
    import hypersweep as hs
    from hypersweep.orchestrator._snapshot import write_snapshot
    journal = Path(sys.argv[1])
    result = hs.load("s")
    # A large result, so that a write takes long enough to be killed in the middle.
    big = replace(result, trials=result.trials * 4000)
    size = journal.stat().st_size
    print("ready", flush=True)
    while True:
        write_snapshot(journal, "s", big, size)
    """
)


def test_a_snapshot_killed_mid_write_never_disagrees_with_the_journal(run_dir: Path) -> None:
    """SIGKILL a process that rewrites the snapshot (with wrong, 4000x trials) at random times:
    a load never returns anything but what the journal holds, or that wrong snapshot whole."""
    hs.tune(SPACE, objectives.quadratic, n_trials=10, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    expected = _from_journal("s")
    script = run_dir / "writer.py"
    script.write_text(WRITER)
    torn = 0
    for delay in (0.05, 0.11, 0.23, 0.37, 0.5):
        writer = subprocess.Popen(
            [PYTHON, str(script), str(journal)],
            env=python_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(delay)  # a random moment of the write loop, not a wait for a condition
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        leftovers = list(journal.parent.glob("*.tmp"))
        torn += bool(leftovers)
        loaded = hs.load("s").to_records()
        # Whole snapshots only: the writer's (every trial 4000 times) or one from the journal.
        assert loaded == expected or loaded == expected * 4000
        # Removing the snapshot gives the journal's results.
        snapshot_path(journal).unlink(missing_ok=True)
        assert hs.load("s").to_records() == expected
    assert hs.load("s").to_records() == expected
    assert read_snapshot(journal, "s") is not None  # written again from the journal


def test_the_journal_reader_keeps_a_torn_last_line_for_the_next_read(run_dir: Path) -> None:
    path = run_dir / "journal.log"
    backend = FlockJournalFileBackend(str(path))
    backend.append_logs([{"op_code": 0, "n": 1}, {"op_code": 0, "n": 2}])
    with open(path, "ab") as handle:
        handle.write(b'{"op_code":0,"n"')  # a writer in the middle of its line
    assert [log["n"] for log in backend.read_logs(0)] == [1, 2]
    with open(path, "ab") as handle:
        handle.write(b":3}\n")
    assert [log["n"] for log in backend.read_logs(2)] == [3]
    assert backend.bytes_read == path.stat().st_size
    assert [log["n"] for log in backend.read_logs(1)] == [2, 3]  # from an earlier line: rescan


class _CountingStorage(optuna.storages.JournalStorage):
    """The real journal storage, counting reads of every trial."""

    reads = 0

    def get_all_trials(self, *args: Any, **kwargs: Any) -> Any:
        type(self).reads += 1
        return super().get_all_trials(*args, **kwargs)


def test_proposals_do_not_read_every_trial_each_time(run_dir: Path) -> None:
    """Refusing repeated configs once read the whole sweep per proposal: O(trials) each."""
    storage = _CountingStorage(FlockJournalFileBackend(str(run_dir / "journal.log")))
    _CountingStorage.reads = 0
    result = hs.tune(
        {"x": hs.uniform(-5, 5), "y": hs.choice([-1.0, 1.0])},
        objectives.quadratic,
        n_trials=200,
        storage=storage,
        name="p",
        verbose=False,
        **SETTINGS,
    )
    assert result.counts() == {"completed": 200}
    assert _CountingStorage.reads < 60, _CountingStorage.reads


class _Recording(optuna.samplers.RandomSampler):
    """A real sampler that records which finished trials it was shown for each proposal."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.shown: list[tuple[int, list[int]]] = []
        self.running: list[tuple[set[int], set[int]]] = []  # (shown, running in the storage)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        finished = study._get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        self.shown.append((trial.number, [t.number for t in finished]))
        running = optuna.trial.TrialState.RUNNING
        shown_running = {t.number for t in study._get_trials(deepcopy=False, states=(running,))}
        stored = study._storage.get_all_trials(study._study_id, deepcopy=False, states=(running,))
        self.running.append((shown_running, {t.number for t in stored} - {trial.number}))
        return super().sample_independent(study, trial, name, distribution)


def test_a_bounded_history_shows_the_best_and_the_most_recent_trials_only() -> None:
    recording = _Recording()
    result = hs.tune(
        {"x": hs.uniform(-5, 5)},
        objectives.quadratic,
        metric="loss",
        n_trials=80,
        max_concurrent=2,
        strategy=hs.strategies.BoundedHistorySampler(recording, best=5, recent=4),
        verbose=False,
    )
    values = {t.number: float(t.value or 0.0) for t in result.trials}
    assert max(len(shown) for _, shown in recording.shown) <= 5 + 4
    for number, shown in recording.shown[40:]:
        assert len(shown) >= 5  # the window is full once enough trials finished
        # A trial among the 5 best of all those proposed before this one is among the 5 best
        # of those finished by then: if it finished long before, it is in the window...
        best = sorted((n for n in values if n < number), key=lambda n: values[n])[:5]
        must = {n for n in best if n < number - 4}
        assert must <= set(shown), (number, best, shown)
        # ...and the rest of the window is the most recent trials.
        assert max(shown) >= number - 4
    # The trials running in this driver are shown too (TPE's constant liar needs them).
    assert all(shown == stored for shown, stored in recording.running), recording.running
    assert sum(bool(shown) for shown, _ in recording.running) >= 20  # 2 at a time: most times


def test_a_bounded_history_refuses_an_empty_window() -> None:
    with pytest.raises(hs.ConfigError, match="best: must be at least 1"):
        hs.strategies.BoundedHistorySampler(optuna.samplers.TPESampler(), best=0)


def test_status_of_a_large_sweep_lists_the_best_and_the_latest_trials() -> None:
    """Drawing a row per trial took minutes at 20,000 trials: past the limit, a selection."""
    from hypersweep._progress import trials_table

    result = hs.tune(SPACE, objectives.quadratic, n_trials=30, name="s", verbose=False, **SETTINGS)
    table = trials_table(result, limit=10)
    assert table.row_count == 10
    shown = [int(str(cell)) for cell in table.columns[0]._cells]
    best = sorted(result.trials, key=lambda t: float(t.value or 0.0))
    assert {t.number for t in best[:5]} <= set(shown)
    assert 29 in shown and shown == sorted(shown)
    assert "10 of 30 trials" in str(table.caption) and "--all" in str(table.caption)
    assert trials_table(result).row_count == 30


def _status_rows(output: str) -> list[int]:
    """The trial numbers in the rows of ``hypersweep status``'s table."""
    return [int(m.group(1)) for m in re.finditer(r"^│\s*(\d+)\s*│", output, re.MULTILINE)]


def test_the_status_command_reads_the_snapshot_and_lists_at_most_50_trials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=60, name="s", verbose=False, **SETTINGS)
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    with monkeypatch.context() as patched:
        # While the journal is unchanged, the command reads the snapshot only.
        patched.setattr(_tune, "read_sweep", _journal_refused)
        patched.setattr("hypersweep.orchestrator._storage.open_storage", _journal_refused)
        assert cli_main(["status", "s"]) == 0
    output = capsys.readouterr().out
    rows = _status_rows(output)
    assert len(rows) == 50 and 59 in rows, rows
    assert "50 of 60 trials" in output
    assert cli_main(["status", "s", "--all"]) == 0
    assert _status_rows(capsys.readouterr().out) == list(range(60))


def test_a_running_trial_is_listed_by_status_and_holds_back_the_snapshot(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=5, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal), "s"))
    distributions = study.trials[0].distributions
    # Trial 5 stays running (another driver's), then 60 later trials finish: it is neither
    # among the best nor among the latest, and is listed because it runs.
    running = study.ask(fixed_distributions=distributions)
    for i in range(60):
        params = {"x": -5.0 + i / 10, "y": 0.0}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=i)
        )
    assert hs.load("s").counts() == {"completed": 65, "running": 1}
    assert read_snapshot(journal, "s") is None  # not saved while a trial runs...
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()
    assert cli_main(["status", "s"]) == 0
    rows = _status_rows(capsys.readouterr().out)
    assert len(rows) == 50 and 5 in rows and 65 in rows, rows
    study.tell(running, 100.0)
    assert hs.load("s").counts() == {"completed": 66}
    assert read_snapshot(journal, "s") is not None  # ...and saved again once none runs
