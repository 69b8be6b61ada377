"""The hypersweep command on YAML sweeps: run, status, best, resume, and bad input refused."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from conftest import HYPERSWEEP, PYTHON, hypersweep, python_env

import hypersweep as hs
from hypersweep.testing import free_port

SWEEP = """
name: cli-sweep
objective: objectives:quadratic
metric: loss
n_trials: 6
max_concurrent: 2
seed: 1
space:
  x: {type: float, low: -5, high: 5}
  y: {type: float, low: -5, high: 5}
"""


def test_run_status_best(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP)
    run = hypersweep("run", "sweep.yaml", "--no-live")
    assert run.returncode == 0, run.stderr
    assert "sweep cli-sweep: 6 completed" in run.stdout
    assert "best trial" in run.stdout

    status = hypersweep("status", "cli-sweep")
    assert status.returncode == 0
    assert status.stdout.count("completed") >= 6

    best = hypersweep("best", "cli-sweep", "--json")
    assert best.returncode == 0
    data = json.loads(best.stdout)
    assert set(data["config"]) == {"x", "y"} and data["value"] >= 0

    again = hypersweep("run", "sweep.yaml", "--no-live")
    assert again.returncode == 2 and "already exists" in again.stderr
    # The CLI names its own flag, not tune()'s argument.
    assert "pass --resume" in again.stderr and "resume=True" not in again.stderr

    more = hypersweep("run", "sweep.yaml", "--no-live", "--resume", "--n-trials", "8")
    assert more.returncode == 0 and "8 completed" in more.stdout


def test_resume_by_name_uses_the_stored_spec(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP.replace("n_trials: 6", "n_trials: 3"))
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    resumed = hypersweep("resume", "cli-sweep", "--no-live")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 completed" in resumed.stdout
    assert hypersweep("resume", "nope", "--no-live").returncode == 2


def test_bad_yaml_is_refused_with_the_field_named(run_dir: Path) -> None:
    cases = [
        ({"n_trials": -1}, "n_trials: Input should be greater than or equal to 1"),
        ({"strategy": "bayes"}, "strategy: unknown strategy 'bayes'"),
        ({"mode": "up"}, "mode: Input should be 'min' or 'max'"),
        ({"n_trails": 3}, "n_trails: unknown field"),
        (
            {"space": {"x": {"type": "float", "low": 2, "high": 1}}},
            "space.x: low (2) must be less than high",
        ),
        (
            {"early_stopping": {"name": "asha", "rungs": 3}},
            "early_stopping: unknown setting(s) rungs for asha; allowed: name,",
        ),
        ({"objective": "objectives:nope"}, "objective: 'objectives' has no function 'nope'"),
    ]
    for change, message in cases:
        (run_dir / "bad.yaml").write_text(yaml.safe_dump({**yaml.safe_load(SWEEP), **change}))
        result = hypersweep("run", "bad.yaml", "--no-live")
        assert result.returncode == 2, (change, result.stderr)
        assert message in " ".join(result.stderr.split()), (change, result.stderr)
        assert "Traceback" not in result.stderr
    (run_dir / "broken.yaml").write_text("name: [unclosed\n")
    result = hypersweep("validate", "broken.yaml")
    assert result.returncode == 2 and "not valid YAML at line" in result.stderr
    assert not (run_dir / "runs").exists()


def test_the_quickstart_yaml_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
    result = hypersweep("validate", str(example))
    assert result.returncode == 0, result.stderr


def test_version_and_help_read_as_plain_text() -> None:
    version = hypersweep("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"hypersweep {hs.__version__}"
    top = hypersweep("--help")
    assert top.returncode == 0 and "``" not in top.stdout
    for command in ("list", "export", "run", "resume", "validate", "status", "best", "plot"):
        assert command in top.stdout
    commands = ("run", "resume", "validate", "list", "status", "best", "export", "plot", "operator")
    for command in commands:
        page = hypersweep(command, "--help")
        assert page.returncode == 0 and "``" not in page.stdout, command
    assert "--host" in hypersweep("dashboard", "--help").stdout
    assert "(default 5)" in " ".join(hypersweep("run", "--help").stdout.split())


def _write_objective(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


def test_objective_import_errors_are_invalid_input_with_their_location(run_dir: Path) -> None:
    _write_objective(
        run_dir, "raises.py", "import math\nrate = 1 / 0\n\ndef f(config):\n    return 0\n"
    )
    _write_objective(run_dir, "syntax.py", "def f(config)\n    return 0\n")
    _write_objective(
        run_dir, "needs.py", "import no_such_package_xyz\n\ndef f(config):\n    return 0\n"
    )
    _write_objective(run_dir, "good.py", "def f(config):\n    return config['x']\n")
    _write_objective(run_dir, "names.py", "import os\n\nrate = x + 1\n")
    cases = [
        (
            "raises.py:f",
            ["importing", "ZeroDivisionError: division by zero", "raises.py, line 2: rate = 1 / 0"],
        ),
        ("syntax.py:f", ["SyntaxError", "syntax.py, line 1"]),
        (
            "needs:f",
            ["ModuleNotFoundError: No module named 'no_such_package_xyz'", "needs.py, line 1"],
        ),
        (
            "names.py:f",
            ["NameError: name 'x' is not defined (at ", "names.py, line 3: rate = x + 1"],
        ),
        ("missing.py:f", ["file", "missing.py", "does not exist"]),
        ("good.py:nope", ["has no function 'nope'"]),
    ]
    for objective, messages in cases:
        sweep = {**yaml.safe_load(SWEEP), "objective": objective}
        (run_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        for command in (["validate", "sweep.yaml"], ["run", "sweep.yaml", "--no-live"]):
            result = hypersweep(*command)
            assert result.returncode == 2, (objective, command, result.stderr)
            text = " ".join(result.stderr.split())
            assert text.startswith("error: objective:"), text
            for message in messages:
                assert message in text, (objective, message, text)
            assert "Traceback" not in result.stderr
    assert not (run_dir / "runs").exists()


def test_yaml_numbers_as_people_write_them_and_the_effective_ranges(run_dir: Path) -> None:
    sweep = SWEEP.replace(
        "  x: {type: float, low: -5, high: 5}",
        "  x: {type: float, low: 1e-3, high: 1E+1, log: true}\n  n: {type: int, low: 1, high: 3}",
    )
    (run_dir / "sweep.yaml").write_text(
        sweep.replace("objective: objectives:quadratic", "objective: objectives:quadratic")
    )
    result = hypersweep("validate", "sweep.yaml")
    assert result.returncode == 0, result.stderr
    assert "x: float 0.001..10 log" in result.stdout
    assert "n: int 1..3 (both ends included)" in result.stdout
    # randint's high is excluded in Python: status shows the range the sweep really searches.
    code = (
        "import hypersweep as hs, objectives\n"
        "hs.tune({'x': hs.uniform(0, 1), 'n': hs.randint(1, 4)}, objectives.quadratic, "
        "metric='loss', n_trials=2, name='ranges', verbose=False)\n"
    )
    subprocess.run([PYTHON, "-c", code], env=python_env(), check=True, timeout=120)
    status = hypersweep("status", "ranges", env={"COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert "n: int 1..3 (both ends included)" in status.stdout


def test_sweep_file_errors_speak_yaml(run_dir: Path) -> None:
    base = yaml.safe_load(SWEEP)
    cases = [
        (
            {"early_stopping": 3},
            "early_stopping: Input should be a string or a mapping, got a number (3)",
        ),
        ({"replicas": 2}, "replicas: Input should be a mapping, got a number (2)"),
        ({"strategy": None}, "strategy: Input should be a string, got nothing (null)"),
        ({"space": {"x": 1}}, "add one, e.g. x: {type: float, low: 0, high: 1} in a sweep file"),
    ]
    python_words = ("__init__", "NoneType", "dict[", "ReplicasSpec", "dictionary", ".str:")
    for change, message in cases:
        (run_dir / "bad.yaml").write_text(yaml.safe_dump({**base, **change}))
        result = hypersweep("validate", "bad.yaml")
        text = " ".join(result.stderr.split())
        assert result.returncode == 2 and message in text, (change, text)
        assert not any(word in text for word in python_words), (change, text)
    (run_dir / "empty.yaml").write_text("")
    result = hypersweep("validate", "empty.yaml")
    assert result.returncode == 2 and "the file is empty" in result.stderr
    assert "NoneType" not in result.stderr


def test_operator_without_the_kubernetes_extra_names_it() -> None:
    # Runs the CLI in an interpreter where the extra's modules cannot be imported.
    for module in ("orjson",):  # the operator's first import of the extra
        code = (
            f"import sys; sys.modules[{module!r}] = None\n"
            "from hypersweep._cli import main\n"
            "sys.exit(main(['operator', '--help']))\n"
        )
        result = subprocess.run(
            [PYTHON, "-c", code], capture_output=True, text=True, env=python_env(), timeout=60
        )
        text = " ".join(result.stderr.split())
        assert result.returncode == 2, text
        assert f"needs the kubernetes extra (module '{module}' is missing)" in text
        assert "pip install 'hypersweep[kubernetes]'" in text and "Traceback" not in text


def test_best_json_is_always_json_with_the_metric_and_every_final_metric(run_dir: Path) -> None:
    sweep = SWEEP.replace("objectives:quadratic", "objectives:returns_dict").replace(
        "n_trials: 6", "n_trials: 2"
    )
    (run_dir / "sweep.yaml").write_text(sweep)
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    best = json.loads(hypersweep("best", "cli-sweep", "--json").stdout)
    assert best["metric"] == "loss" and best["mode"] == "min" and best["sweep"] == "cli-sweep"
    assert set(best["metrics"]) == {"loss", "accuracy"} and best["value"] == best["metrics"]["loss"]

    failing = {
        **yaml.safe_load(SWEEP),
        "name": "all-fail",
        "objective": "objectives:fail_on_odd",
        "n_trials": 2,
        "space": {"n": {"type": "categorical", "values": [1, 3]}},
    }
    (run_dir / "fail.yaml").write_text(yaml.safe_dump(failing))
    assert hypersweep("run", "fail.yaml", "--no-live").returncode == 1
    none = hypersweep("best", "all-fail", "--json")
    assert none.returncode == 1
    data = json.loads(none.stdout)
    assert data["trial"] is None and data["metric"] == "loss" and data["metrics"] is None


def test_list_shows_the_sweeps_under_the_runs_folder(run_dir: Path) -> None:
    assert "no sweeps under" in hypersweep("list").stdout
    (run_dir / "sweep.yaml").write_text(SWEEP.replace("n_trials: 6", "n_trials: 2"))
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    assert hypersweep("run", "sweep.yaml", "--no-live", "--name", "other").returncode == 0
    rows = _list_rows()
    assert set(rows) == {"cli-sweep", "other"}
    for name in ("cli-sweep", "other"):
        best = hs.load(name).best_trial
        assert best is not None
        assert "finished" in rows[name] and "2 completed" in rows[name]
        assert f"loss={best.value:.6g} (trial {best.number})" in rows[name]
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", rows[name])


def test_dashboard_refuses_an_unknown_sweep_and_a_busy_port(run_dir: Path) -> None:
    unknown = hypersweep("dashboard", "nosuch", "--port", str(free_port()))
    assert unknown.returncode == 2 and "no sweep 'nosuch'" in unknown.stderr
    assert not (run_dir / "runs" / "nosuch").exists()

    (run_dir / "sweep.yaml").write_text(SWEEP.replace("n_trials: 6", "n_trials: 1"))
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hypersweep("dashboard", "cli-sweep", "--port", str(port))
    text = " ".join(result.stderr.split())
    assert result.returncode == 2 and f"port: {port} on 127.0.0.1 is busy" in text, text
    assert "Traceback" not in text


def test_dashboard_listens_on_the_given_host(run_dir: Path) -> None:
    (run_dir / "sweep.yaml").write_text(SWEEP.replace("n_trials: 6", "n_trials: 1"))
    assert hypersweep("run", "sweep.yaml", "--no-live").returncode == 0
    port = free_port()
    server = subprocess.Popen(
        [HYPERSWEEP, "dashboard", "cli-sweep", "--host", "127.0.0.2", "--port", str(port)],
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = _wait_for_url(f"http://127.0.0.2:{port}/api/studies", server)
        assert "cli-sweep" in body
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5)
            raise AssertionError("the dashboard also listens on 127.0.0.1")
        except urllib.error.URLError:
            pass
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_url(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            assert server.poll() is None, "the dashboard exited"
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.2)


def test_the_start_names_the_sweep_and_ctrl_c_says_how_to_resume_it(run_dir: Path) -> None:
    sweep = {**yaml.safe_load(SWEEP), "objective": "objectives:slow_steps", "n_trials": 4}
    del sweep["name"]  # a generated name, which the user must be told
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    env = {
        **python_env(),
        "HYPERSWEEP_TEST_MARKERS": str(run_dir / "m"),
        "HYPERSWEEP_TEST_STEP": "1",
    }
    driver = subprocess.Popen(
        [HYPERSWEEP, "run", "sweep.yaml", "--no-live"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert driver.stderr is not None
    first = driver.stderr.readline()
    match = re.match(r"sweep (sweep-\d{8}-\d{6}-[0-9a-f]{4}): 4 trials, storage", first)
    assert match, first
    name = match.group(1)
    deadline = time.monotonic() + 60
    while not list((run_dir / "m").glob("starts-*")):  # a trial is running
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    assert "running" in _list_rows()[name]  # hypersweep list sees the live driver
    os.kill(driver.pid, signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130
    assert f"continue with 'hypersweep resume {name}'" in " ".join(err.split())
    assert "stopped (resume it)" in _list_rows()[name]


def _list_rows() -> dict[str, str]:
    listing = hypersweep("list", env={"COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    return {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if "│" in line}
