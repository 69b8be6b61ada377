"""Large sweeps stay cheap: the results snapshot beside the journal, the journal reader, and
proposals that do not read every trial."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
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
from hypersweep.orchestrator._snapshot import (
    read_snapshot,
    replay_snapshot_path,
    snapshot_path,
    write_snapshot,
)
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


def _killed_mid_write(
    script: Path, source: str, journal: Path, delays: tuple[float, ...]
) -> Iterator[float]:
    """Run ``source`` (a writer that prints ``ready`` and then writes in a loop) on
    ``journal`` once per delay, SIGKILL it that long after it is ready, and yield the delay."""
    script.write_text(source)
    for delay in delays:
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
        yield delay


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
    torn = 0
    for _ in _killed_mid_write(
        run_dir / "writer.py", WRITER, journal, (0.05, 0.11, 0.23, 0.37, 0.5)
    ):
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


# --- the journal storage's memory and its replay snapshot ----------------------------------


def _optuna_replay(journal: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials as Optuna's own JournalStorage reads the journal, from its first line."""
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return storage.get_all_trials(storage.get_study_id_from_name("s"))


def _opened_trials(journal: Path) -> tuple[Any, list[optuna.trial.FrozenTrial]]:
    storage = open_storage(str(journal), "s")
    return storage, storage.get_all_trials(storage.get_study_id_from_name("s"), deepcopy=False)


def test_the_storage_holds_finished_trials_as_optuna_reads_them_in_shared_parts() -> None:
    result = hs.tune(SPACE, objectives.quadratic, n_trials=40, name="s", verbose=False, **SETTINGS)
    assert result.counts() == {"completed": 40}
    journal = default_run_dir("s") / "journal.log"
    replay_snapshot_path(journal).unlink()  # read every line
    storage, trials = _opened_trials(journal)
    assert trials == _optuna_replay(journal)
    # One distributions dict and one object per distribution for every finished trial.
    assert len({id(t.distributions) for t in trials}) == 1
    assert len({id(t.distributions["x"]) for t in trials}) == 1
    # Optuna's own API on top still works: a deep copy is an ordinary, editable trial.
    study = optuna.load_study(study_name="s", storage=storage)
    copied = study.trials[0]
    copied.user_attrs["note"] = 1
    assert storage.get_trial(copied._trial_id).user_attrs == {}
    with pytest.raises(TypeError, match="read-only"):
        trials[0].user_attrs["note"] = 1  # the stored, shared empty dict


_TRACED_REPLAYS = textwrap.dedent(
    """
    import gc, json, sys, tracemalloc
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from pathlib import Path
    from hypersweep.orchestrator._snapshot import replay_snapshot_path
    from hypersweep.orchestrator._storage import open_storage

    def traced(build):
        gc.collect()
        tracemalloc.start()
        try:
            built = build()
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return built, held

    journal = sys.argv[1]
    def build_theirs():
        return optuna.storages.JournalStorage(JournalFileBackend(journal))
    def build_ours():
        return open_storage(journal, "s")
    # Once untraced first, so that neither side is charged with its lazy imports and caches.
    build_theirs(), build_ours()
    replay_snapshot_path(Path(journal)).unlink(missing_ok=True)
    theirs, optuna_bytes = traced(build_theirs)
    ours, our_bytes = traced(build_ours)
    print(json.dumps({
        "optuna": [len(theirs._replay_result._trials), optuna_bytes],
        "ours": [len(ours._replay_result._trials), our_bytes],
    }))
    """
)


def test_the_storage_holds_a_finished_trial_in_much_less_memory_than_optuna() -> None:
    """Optuna's JournalStorage holds about 2 KB per finished trial (allocated bytes; 3 KB of
    RSS), most of it new distribution objects and dicts per trial: 300 MB at 100,000 trials.

    Measured in a fresh process: tracemalloc counts every thread's allocations, and threads
    an earlier test left ending would be counted with the storage's.
    """
    n = 600
    hs.tune(SPACE, objectives.quadratic, n_trials=n, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    replay_snapshot_path(journal).unlink()
    measured = subprocess.run(
        [PYTHON, "-c", _TRACED_REPLAYS, str(journal)],
        env=python_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    held = json.loads(measured.stdout.strip().splitlines()[-1])
    (their_trials, optuna_bytes), (our_trials, our_bytes) = held["optuna"], held["ours"]
    assert our_trials == their_trials == n
    assert our_bytes / n < 1400, our_bytes / n
    assert our_bytes < 0.7 * optuna_bytes, (our_bytes / n, optuna_bytes / n)


def _count_lines_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the journal lines every reader parses from now on (the real reader, counted)."""
    counted = [0]
    read_logs = FlockJournalFileBackend.read_logs

    def counting(self: FlockJournalFileBackend, log_number_from: int) -> Any:
        for log in read_logs(self, log_number_from):
            counted[0] += 1
            yield log

    monkeypatch.setattr(FlockJournalFileBackend, "read_logs", counting)
    return counted


def test_a_restart_restores_the_replay_snapshot_and_reads_only_later_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=30, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    assert replay_snapshot_path(journal).is_file()
    lines = len(journal.read_bytes().splitlines())
    counted = _count_lines_read(monkeypatch)
    storage, trials = _opened_trials(journal)
    assert counted[0] == 0 and storage._backend.restored_lines == lines
    assert trials == _optuna_replay(journal)
    # Another writer adds lines (plain Optuna): they are read after the snapshot.
    study = optuna.load_study(study_name="s", storage=storage)
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5, "y": 1.0}, distributions=trials[0].distributions, value=3.0
        )
    )
    study.set_user_attr("note", "later")
    counted[0] = 0
    storage, trials = _opened_trials(journal)
    assert counted[0] == 2
    assert trials == _optuna_replay(journal) and len(trials) == 31
    assert storage.get_study_user_attrs(storage.get_study_id_from_name("s")) == {"note": "later"}
    # load() of the changed journal: the results snapshot is stale, the replay one is not.
    counted[0] = 0
    assert hs.load("s").counts() == {"completed": 31}
    assert counted[0] == 2
    # A resume of the finished sweep reads none of the lines the snapshot covers.
    counted[0] = 0
    resumed = hs.tune(
        SPACE, objectives.quadratic, n_trials=30, name="s", resume=True, verbose=False, **SETTINGS
    )
    assert resumed.counts() == {"completed": 31}
    assert counted[0] < 20, counted[0]


def test_a_restored_replay_snapshot_shares_distributions_without_a_json_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restoring the replay snapshot re-shares each finished trial's parts (a pickle without
    memo gives every trial its own copies) by the distribution objects themselves: turning
    each trial's distributions back into JSON made a resume of 100,000 trials seconds slower."""
    import optuna.distributions as distributions_module

    hs.tune(SPACE, objectives.quadratic, n_trials=30, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    assert replay_snapshot_path(journal).is_file()
    converted = [0]
    to_json = distributions_module.distribution_to_json

    def counting(distribution: Any) -> str:
        converted[0] += 1
        return to_json(distribution)

    monkeypatch.setattr(distributions_module, "distribution_to_json", counting)
    counted = _count_lines_read(monkeypatch)
    _, trials = _opened_trials(journal)
    assert counted[0] == 0  # every trial came from the snapshot
    assert converted[0] == 0
    assert len(trials) == 30 and trials == _optuna_replay(journal)
    assert len({id(t.distributions) for t in trials}) == 1
    assert len({id(t.distributions["x"]) for t in trials}) == 1
    assert len({id(t.distributions["y"]) for t in trials}) == 1


def test_reading_a_sweep_leaves_the_garbage_collector_as_it_was() -> None:
    """The collector is paused while a sweep is read in bulk (everything read stays alive, so
    a collection then is pure cost), and left on or off as the caller had it."""
    import gc

    hs.tune(SPACE, objectives.quadratic, n_trials=20, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    try:
        for enabled in (True, False):
            gc.enable() if enabled else gc.disable()
            snapshot_path(journal).unlink(missing_ok=True)  # load() builds every record
            assert hs.load("s").counts() == {"completed": 20}
            _opened_trials(journal)  # the replay snapshot restored
            assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_a_replay_snapshot_that_does_not_match_the_journal_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hs.tune(SPACE, objectives.quadratic, n_trials=8, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    replay = replay_snapshot_path(journal)
    saved, content = replay.read_bytes(), journal.read_bytes()
    counted = _count_lines_read(monkeypatch)
    lines = len(content.splitlines())

    def reads_every_line() -> None:
        counted[0] = 0
        storage, trials = _opened_trials(journal)
        assert counted[0] == len(journal.read_bytes().splitlines())
        assert storage._backend.restored_lines == 0
        assert trials == _optuna_replay(journal)

    # A journal shorter than the snapshot covers (truncated, or a new sweep of that name).
    journal.write_bytes(b"\n".join(content.splitlines()[: lines // 2]) + b"\n")
    reads_every_line()
    # The same length, other content: refused by the fingerprint.
    journal.write_bytes(content.replace(b'"state":1', b'"state":2', 1))
    replay.write_bytes(saved)
    reads_every_line()
    # A damaged snapshot.
    journal.write_bytes(content)
    replay.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    reads_every_line()
    replay.write_bytes(saved)
    counted[0] = 0
    _opened_trials(journal)
    assert counted[0] == 0  # the intact one again: restored


REPLAY_WRITER = textwrap.dedent(
    """
    import copy
    import sys
    from hypersweep.orchestrator._journal import save_replay_snapshot
    from hypersweep.orchestrator._storage import open_storage
    storage = open_storage(sys.argv[1], "s")
    replay = storage._replay_result
    # A large, wrong replay (every trial 2000 times), so that a write can be killed midway.
    trials = list(replay._trials.values())
    for trial_id in range(len(trials), len(trials) * 2000):
        trial = copy.copy(trials[trial_id % len(trials)])
        trial._trial_id = trial_id
        replay._trials[trial_id] = trial
        replay._study_id_to_trial_ids[0].append(trial_id)
        replay._trial_id_to_study_id[trial_id] = 0
    print("ready", flush=True)
    while True:
        save_replay_snapshot(storage, min_new_lines=0)
    """
)


def test_a_replay_snapshot_killed_mid_write_never_disagrees_with_the_journal(
    run_dir: Path,
) -> None:
    """SIGKILL a process that rewrites the replay snapshot (with 2000x trials) at random
    times: a storage opened after it holds the journal's trials, or that wrong snapshot whole."""
    hs.tune(SPACE, objectives.quadratic, n_trials=6, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    expected = _optuna_replay(journal)
    for _ in _killed_mid_write(
        run_dir / "replay_writer.py", REPLAY_WRITER, journal, (0.05, 0.13, 0.29, 0.41)
    ):
        _, trials = _opened_trials(journal)
        assert trials == expected or len(trials) == len(expected) * 2000
        replay_snapshot_path(journal).unlink(missing_ok=True)
        assert _opened_trials(journal)[1] == expected


# --- a resume, a status and a driver's end: what keeps them fast at 100,000 trials ----------


def test_a_resume_with_nothing_to_run_keeps_the_results_snapshot_current() -> None:
    """A resume of a finished sweep writes only its lease and a create attempt: the results
    snapshot stays current (status and load read it), and is not rewritten."""
    hs.tune(SPACE, objectives.quadratic, n_trials=20, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    size = journal.stat().st_size
    saved = snapshot_path(journal).stat()
    replay = replay_snapshot_path(journal).stat()
    resumed = hs.tune(
        SPACE, objectives.quadratic, n_trials=20, name="s", resume=True, verbose=False, **SETTINGS
    )
    assert journal.stat().st_size > size  # the resume's lease and create attempt
    after = snapshot_path(journal).stat()
    assert (after.st_ino, after.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
    after = replay_snapshot_path(journal).stat()
    assert (after.st_ino, after.st_mtime_ns) == (replay.st_ino, replay.st_mtime_ns)
    current = read_snapshot(journal, "s")
    assert current is not None and current.to_records() == _from_journal("s")
    assert resumed.to_records() == current.to_records()
    assert resumed.counts() == {"completed": 20}
    # Any other write makes it stale: a study attribute that is no lease...
    storage = open_storage(str(journal), "s")
    storage.set_study_system_attr(storage.get_study_id_from_name("s"), "note", 1)
    assert read_snapshot(journal, "s") is None
    # ...and a lease write still being written (no newline yet).
    write_snapshot(journal, "s", current, journal.stat().st_size)
    assert read_snapshot(journal, "s") is not None
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code":3,"worker_id":"w","study_id":0,"system_attr":{"hyper')
    assert read_snapshot(journal, "s") is None


def test_the_replay_snapshot_packs_finished_trials_and_restores_them_shared() -> None:
    """The replay snapshot holds finished trials as tuples with tables of their distributions
    and attribute names (a pickle without memo repeated them in every trial): less than half
    the bytes, and restored trials share their keys as a replay of the journal does."""
    import pickle

    hs.tune(SPACE, objectives.quadratic, n_trials=60, name="s", verbose=False, **SETTINGS)
    journal = default_run_dir("s") / "journal.log"
    expected = _optuna_replay(journal)
    pickler_output = io.BytesIO()
    unpacked = pickle.Pickler(pickler_output, protocol=pickle.HIGHEST_PROTOCOL)
    unpacked.fast = True  # as the snapshot is written
    unpacked.dump(expected)
    assert replay_snapshot_path(journal).stat().st_size < 0.5 * len(pickler_output.getvalue())
    storage, trials = _opened_trials(journal)
    assert storage._backend.restored_lines > 0  # restored, not read from the journal
    assert trials == expected
    keys = [key for trial in trials for key in trial.system_attrs]
    assert len({id(key) for key in keys}) == len(set(keys))
    assert len({id(t.distributions) for t in trials}) == 1


def test_the_journal_backend_keeps_its_descriptors_and_is_never_pickled_by_optuna(
    run_dir: Path,
) -> None:
    """Optuna's storage pickles its whole replay every 100 trials created when its backend
    is a ``BaseJournalSnapshot`` (a budget of N trials: N/100 pickles of up to N trials), and
    the backend opened the journal for every read and every write (about 27 per trial)."""
    import os

    from optuna.storages.journal._base import BaseJournalSnapshot

    journal = run_dir / "journal.log"
    storage = open_storage(str(journal), "s")
    assert not isinstance(storage._backend, BaseJournalSnapshot)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    for _ in range(30):
        storage.create_new_trial(study_id)
        storage.get_all_trials(study_id, deepcopy=False)
    opened = [
        fd
        for fd in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(journal.resolve())
    ]
    assert len(opened) == 2  # one to read, one to append: not one per call
    assert len(storage.get_all_trials(study_id)) == 30


def test_a_driver_releases_its_stored_trials_as_it_builds_the_records() -> None:
    """At its end a driver drops the storage's trials as their records are built, so that it
    does not hold both (its peak memory); the storage restores its replay snapshot if used."""
    seen: list[Any] = []
    result = hs.tune(
        SPACE,
        objectives.quadratic,
        n_trials=25,
        name="s",
        verbose=False,
        on_update=lambda orchestrator: seen.append(orchestrator) if not seen else None,
        **SETTINGS,
    )
    orchestrator = seen[0]
    assert len(orchestrator.storage._replay_result._trials) == 0
    assert result.to_records() == _from_journal("s")
    # Read again: from the replay snapshot it saved, not the whole journal.
    assert len(orchestrator.store.trials()) == 25
    assert orchestrator.storage._backend.restored_lines > 0


def test_a_trial_record_pickles_as_a_tuple_and_reads_the_older_form() -> None:
    """The results snapshot's records: a tuple each (the frozen-slots default spent most of
    ``load()`` in ``fields()``), and a snapshot saved before that still reads."""
    import pickle

    rows = hs.tune(SPACE, objectives.quadratic, n_trials=3, name="s", verbose=False, **SETTINGS)
    for record in rows.trials:
        assert isinstance(record.__getstate__(), tuple)
        assert pickle.loads(pickle.dumps(record)) == record
        older = object.__new__(type(record))
        older.__setstate__(list(record.__getstate__()))  # the dataclass default's list
        assert older == record


def test_the_status_command_of_a_current_snapshot_imports_no_optuna(run_dir: Path) -> None:
    """``hypersweep status`` in a fresh process: with the results snapshot current it reads
    that file only, and Optuna (a third of the command's start-up) is never imported."""
    import os

    hs.tune(SPACE, objectives.quadratic, n_trials=8, name="s", verbose=False, **SETTINGS)
    script = (
        "import sys\n"
        "from hypersweep._cli import main\n"
        "assert main(['status', 's']) == 0\n"
        "print('optuna imported:', 'optuna' in sys.modules)\n"
    )
    env = {**python_env(), "HYPERSWEEP_RUNS_DIR": str(default_run_dir("s").parent)}
    shown = subprocess.run(
        [PYTHON, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "8 trials" in shown or "completed" in shown, shown
    assert shown.rstrip().endswith("optuna imported: False"), shown
    # Once the journal changed, the command reads it (and needs Optuna for that).
    study = optuna.load_study(
        study_name="s", storage=open_storage(os.fspath(default_run_dir("s") / "journal.log"), "s")
    )
    study.set_user_attr("note", 1)
    shown = subprocess.run(
        [PYTHON, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert shown.rstrip().endswith("optuna imported: True"), shown
