"""The ``hypersweep`` command: run, resume and inspect sweeps.

Exit codes: 0 done; 1 the sweep failed (no trial completed, or max_failed_trials was reached);
2 invalid input (the message names the field); 130 interrupted (resume it later).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from hypersweep._errors import ConfigError, SweepFailed
from hypersweep._version import __version__

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

_DESCRIPTION = "Run, resume and inspect hyperparameter sweeps."
_EPILOG = (
    "exit codes: 0 done, 1 the sweep failed, 2 invalid input (the message names the field), "
    "130 interrupted (continue with 'hypersweep resume NAME')"
)
_EXPORT_FORMATS = ("csv", "json", "parquet")


def _storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="Optuna storage URL or journal file (default: ./hypersweep-runs/NAME/journal.log)",
    )


def _progress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-live", action="store_true", help="log lines and progress lines, no live table"
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines when the output is not a terminal (default 5)",
    )


def _metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics of the trials on this port (/metrics) while it runs",
    )


def _serve_metrics(settings: Any, port: int, console: Console) -> None:
    """Serve the sweep's trial metrics until the command exits (a daemon thread)."""
    from hypersweep._metrics import serve_sweep_metrics

    if not 0 < port < 65536:
        raise ConfigError(f"--metrics-port: expected a port from 1 to 65535, got {port}")
    try:
        metrics, _server = serve_sweep_metrics(port)
    except OSError as error:
        raise ConfigError(f"--metrics-port: cannot serve on port {port} ({error})") from None
    settings.callbacks = [*(settings.callbacks or []), metrics]
    console.print(f"metrics: http://127.0.0.1:{port}/metrics")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="hypersweep", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"hypersweep {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the sweep described in a YAML file")
    run.add_argument("file", help="sweep YAML file")
    run.add_argument("--name", help="sweep name (overrides the file's)")
    run.add_argument("--resume", action="store_true", help="continue the sweep if it exists")
    run.add_argument("--n-trials", type=int, help="number of trials (overrides the file's)")
    run.add_argument("--max-concurrent", type=int, help="trials at once (overrides the file's)")
    _progress_arguments(run)
    _metrics_argument(run)
    _storage_argument(run)

    resume = commands.add_parser("resume", help="continue a stopped or killed sweep")
    resume.add_argument("name")
    resume.add_argument("--objective", help="module:function, if the sweep did not store one")
    _progress_arguments(resume)
    _metrics_argument(resume)
    _storage_argument(resume)

    validate = commands.add_parser(
        "validate", help="check a sweep file and its objective without running anything"
    )
    validate.add_argument("file")

    commands.add_parser("list", help="the sweeps under the runs folder")

    status = commands.add_parser("status", help="show the trials of a stored sweep")
    status.add_argument("name")
    status.add_argument(
        "--all", action="store_true", help="list every trial (default: at most 50 rows)"
    )
    _storage_argument(status)

    best = commands.add_parser("best", help="print the best trial of a stored sweep")
    best.add_argument("name")
    best.add_argument("--json", action="store_true", help="print JSON (also when none is best)")
    _storage_argument(best)

    export = commands.add_parser("export", help="write one row per trial to a file")
    export.add_argument("name")
    export.add_argument("--format", choices=_EXPORT_FORMATS, default="csv")
    export.add_argument("-o", "--output", help="file to write (default: NAME.FORMAT)")
    _storage_argument(export)

    plot = commands.add_parser("plot", help="save a picture of a sweep's trials and curves")
    plot.add_argument("name")
    plot.add_argument("-o", "--output", help="file to write (default: NAME.png)")
    _storage_argument(plot)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on a sweep")
    dashboard.add_argument("name")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dashboard.add_argument("--port", type=int, default=8080)
    _storage_argument(dashboard)

    katib = commands.add_parser("katib", help="Katib Experiments (convert)")
    katib_commands = katib.add_subparsers(dest="katib_command", required=True, metavar="COMMAND")
    convert = katib_commands.add_parser(
        "convert", help="print the native Sweep equivalent to a Katib Experiment YAML"
    )
    convert.add_argument("file", help="a kubeflow.org/v1beta1 Experiment (or Katib-shaped Sweep)")

    # Everything after "operator" goes to its own parser (hypersweep.operators._operator).
    operator = commands.add_parser(
        "operator", help="the Kubernetes operator (run, crds)", add_help=False, prefix_chars="\0"
    )
    operator.add_argument("operator_args", nargs=argparse.REMAINDER)
    return parser


def _resolve_objective(reference: str, base: Path) -> str:
    """Make a file reference independent of the working directory."""
    module_part, _, function = reference.rpartition(":")
    if module_part.endswith(".py") and not Path(module_part).is_absolute():
        return f"{(base / module_part).resolve()}:{function}"
    return reference


def _objective_of_file(spec: Any, path: Path) -> str:
    """The spec's objective as an absolute reference, its folder importable."""
    base = path.resolve().parent
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return _resolve_objective(spec.objective, base)


def _run_sweep(args: argparse.Namespace, settings: Any, objective: str, console: Console) -> int:
    from hypersweep._progress import LiveTable, ProgressLines, print_summary
    from hypersweep.launchers import Launcher, LocalLauncher, RayLauncher
    from hypersweep.orchestrator._objective import resolve_objective
    from hypersweep.orchestrator._orchestrator import Orchestrator
    from hypersweep.orchestrator._storage import default_run_dir
    from hypersweep.orchestrator._tune import _ensure_log_handler

    error_console = Console(stderr=True)
    objective_ref = resolve_objective(objective)
    args.sweep_name = settings.name  # for the Ctrl-C hint
    live = not args.no_live and error_console.is_terminal
    log_dir = default_run_dir(settings.name) / "logs" if not args.no_live else None
    launcher: Launcher = LocalLauncher(settings.max_concurrent, log_dir=log_dir)
    if settings.launcher is not None and settings.launcher.get("type", "local") == "ray":
        launcher = RayLauncher.from_spec(
            {"max_concurrent": settings.max_concurrent, **settings.launcher}
        )
    if args.metrics_port is not None:
        _serve_metrics(settings, args.metrics_port, error_console)
    orchestrator = Orchestrator(
        settings, objective_ref, launcher, objective_reference=objective, resume_hint="--resume"
    )
    budget = f"{settings.n_trials} trials" if settings.n_trials else f"{settings.timeout:g} s"
    error_console.print(
        f"sweep [bold]{escape(settings.name)}[/bold]: {budget}, storage "
        f"{escape(orchestrator.storage_description)}"
        + (f", trial logs in {log_dir}" if log_dir else ""),
        highlight=False,
    )
    started = time.monotonic()
    if live:
        logging.getLogger("hypersweep").setLevel(logging.WARNING)
        table = LiveTable(error_console)
        orchestrator.listeners.append(table.update)
        with table:
            result = orchestrator.run()
    else:
        _ensure_log_handler()
        lines = ProgressLines(logging.getLogger("hypersweep").info, args.progress_every)
        orchestrator.listeners.append(lines.update)
        result = orchestrator.run()
    print_summary(result, console, time.monotonic() - started)
    if orchestrator.failure is not None:
        raise orchestrator.failure
    if not result.best_trials or (
        result.stopped_reason and "max_failed_trials" in result.stopped_reason
    ):
        return EXIT_FAILED
    return 0


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._spec import load_spec_file

    path = Path(args.file)
    spec = load_spec_file(path)
    overrides = {
        "name": args.name,
        "storage": args.storage,
        "n_trials": args.n_trials,
        "max_concurrent": args.max_concurrent,
    }
    spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if args.resume and spec.name is None:
        raise ConfigError(f"name: --resume needs the sweep's name; set name: in {path} or --name")
    objective = _objective_of_file(spec, path)
    settings = spec.to_settings(resume=args.resume)
    return _run_sweep(args, settings, objective, console)


def _cmd_resume(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._spec import parse_spec
    from hypersweep.orchestrator._tune import load

    load(args.name, args.storage)  # refuses an unknown sweep, naming it
    if os.getcwd() not in sys.path:  # a stored 'module:function' from the current folder
        sys.path.insert(0, os.getcwd())
    from hypersweep.orchestrator._storage import SweepStore, open_storage

    storage = open_storage(args.storage, args.name)
    store = SweepStore(storage, storage.get_study_id_from_name(args.name))
    stored = store.spec()
    if stored is None:
        raise ConfigError(f"name: sweep {args.name!r} was not created by hypersweep")
    if stored.get("space") is None:
        raise ConfigError(
            f"space: sweep {args.name!r} was started from Python with a space function, which "
            f"a file cannot hold; resume it from Python: tune(space, objective, ..., "
            f"name={args.name!r}, resume=True)"
        )
    objective = args.objective or stored.get("objective")
    if not objective:
        raise ConfigError(
            f"objective: sweep {args.name!r} was started from Python with a function that "
            "cannot be imported by name; pass --objective module:function"
        )
    data = {k: v for k, v in stored.items() if v is not None}
    data.update(objective=objective, storage=args.storage)
    for key in ("strategy", "early_stopping"):
        if key not in stored or stored[key] is None:
            data.pop(key, None)
    settings = parse_spec(data, f"sweep {args.name}").to_settings(resume=True)
    return _run_sweep(args, settings, objective, console)


def _print_space(space: dict[str, Any], console: Console) -> None:
    from hypersweep._progress import describe_space

    for line in describe_space(space):
        console.print(f"  {escape(line)}", highlight=False)


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._objective import load_reference
    from hypersweep.orchestrator._spec import load_spec_file

    path = Path(args.file)
    spec = load_spec_file(path)
    load_reference(_objective_of_file(spec, path))  # what `run` would import, errors included
    settings = spec.to_settings()
    console.print(
        f"{escape(args.file)}: valid sweep ({spec.strategy}, metric {spec.metric} {spec.mode}, "
        f"objective {escape(spec.objective)}); space:",
        highlight=False,
    )
    _print_space(settings.space, console)
    return 0


STATUS_ROWS = 50  # a table of 100,000 rows takes minutes to draw and nobody reads it


def _cmd_status(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._progress import print_summary, trials_table
    from hypersweep.orchestrator._tune import load

    result = load(args.name, args.storage)
    console.print(trials_table(result, limit=None if args.all else STATUS_ROWS))
    if result.space is not None:
        console.print("space:")
        _print_space(result.space, console)
    print_summary(result, console)
    return 0


def _cmd_best(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._progress import format_config
    from hypersweep.orchestrator._tune import load

    result = load(args.name, args.storage)
    if result.multi_objective:
        return _print_front(result, args, console)
    best = result.best_trial
    if args.json:
        data: dict[str, Any] = {"sweep": result.name, "metric": result.metric, "mode": result.mode}
        if best is None:
            data.update(trial=None, value=None, config=None, metrics=None)
            data["message"] = "no trial completed yet"
        else:
            data.update(
                trial=best.number, value=best.value, config=best.config, metrics=best.metrics
            )
        print(json.dumps(data))
        return 0 if best is not None else EXIT_FAILED
    if best is None:
        console.print(f"sweep {escape(args.name)}: no trial completed yet")
        return EXIT_FAILED
    console.print(f"trial {best.number}: {result.metric}={best.value:.6g}", highlight=False)
    others = {k: v for k, v in best.metrics.items() if k != result.metric}
    if others:
        console.print(" ".join(f"{k}={v:.6g}" for k, v in others.items()), highlight=False)
    console.print(escape(format_config(best.config)), highlight=False)
    return 0


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from hypersweep.orchestrator._storage import runs_root

    root = runs_root()
    folders = sorted(p.parent for p in root.glob("*/journal.log"))
    if not folders:
        console.print(f"no sweeps under {escape(str(root))}", highlight=False)
        return 0
    table = Table(title=f"sweeps under {root}")
    for column in ("name", "state", "trials", "best", "last update"):
        table.add_column(column)
    for folder in folders:
        table.add_row(*_overview(folder.name))
    console.print(table)
    return 0


def _overview(name: str) -> tuple[str, str, str, str, str]:
    """A row of ``hypersweep list``: name, state, trials by state, best, last update."""
    import datetime

    from hypersweep._progress import counts_text
    from hypersweep.orchestrator._storage import (
        LEASE_PREFIX,
        SweepStore,
        default_run_dir,
        driver_is_alive,
        open_storage,
    )
    from hypersweep.orchestrator._tune import load

    journal = default_run_dir(name) / "journal.log"
    updated = datetime.datetime.fromtimestamp(journal.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    try:
        result = load(name)
    except ConfigError:  # a journal that holds no sweep of this name
        return name, "unreadable", "", "", updated
    storage = open_storage(None, name)
    store = SweepStore(storage, storage.get_study_id_from_name(name))
    attrs = store.system_attrs()
    leases = {k[len(LEASE_PREFIX) :]: v for k, v in attrs.items() if k.startswith(LEASE_PREFIX)}
    counts = result.counts()
    if any(driver_is_alive(lease, driver, 30.0) for driver, lease in leases.items()):
        state = "running"
    elif any(counts.get(s) for s in ("running", "paused", "interrupted", "queued")):
        state = "stopped (resume it)"
    else:
        state = "finished"
    stopped = [t.step for t in result.trials if t.state == "pruned"]
    best = result.best_trial
    best_text = f"{result.metric}={best.value:.6g} (trial {best.number})" if best else ""
    return name, state, counts_text(counts, stopped), best_text, updated


def _cmd_export(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._export import export_result
    from hypersweep.orchestrator._tune import load

    output = Path(args.output or f"{args.name}.{args.format}")
    _check_output_folder(output)
    result = load(args.name, args.storage)
    export_result(result, output, args.format)
    console.print(f"wrote {len(result.trials)} trials to {escape(str(output))}", highlight=False)
    return 0


def _print_front(result: Any, args: argparse.Namespace, console: Console) -> int:
    """``hypersweep best`` of a sweep with several objectives: its Pareto front."""
    from hypersweep._progress import print_front

    front = result.best_trials
    if args.json:
        trials = [
            {
                "trial": t.number,
                "values": dict(zip(result.metrics, t.values or [], strict=True)),
                "config": t.config,
                "metrics": t.metrics,
            }
            for t in front
        ]
        data = {"sweep": result.name, "metrics": result.metrics, "modes": result.modes}
        print(json.dumps({**data, "front": trials}))
    else:
        print_front(result, console, limit=len(front) or 1)
    return 0 if front else EXIT_FAILED


def _check_output_folder(path: Path) -> None:
    if not path.parent.is_dir():
        raise ConfigError(
            f"output: folder {str(path.parent)!r} does not exist; create it or write elsewhere"
        )


def _cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._plots import plot_sweep
    from hypersweep.orchestrator._tune import load

    output = Path(args.output or f"{args.name}.png")
    _check_output_folder(output)
    path = plot_sweep(load(args.name, args.storage), output)
    console.print(f"saved {escape(str(path))}", highlight=False)
    return 0


def _cmd_dashboard(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._storage import open_storage
    from hypersweep.orchestrator._tune import load

    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError(
            "dashboard: optuna-dashboard is not installed; pip install 'hypersweep[dashboard]'"
        ) from None
    load(args.name, args.storage)  # refuses an unknown sweep instead of serving an empty one
    storage = open_storage(args.storage, args.name)
    console.print(
        f"dashboard of sweep {escape(args.name)} on http://{args.host}:{args.port} "
        "(Ctrl-C to stop)",
        highlight=False,
    )
    try:
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port: {args.port} on {args.host} is busy (another server listens there); "
                "pass --port with a free one"
            ) from None
        if error.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise ConfigError(
                f"host: cannot listen on {args.host}:{args.port} ({error.strerror})"
            ) from None
        raise
    return 0


def _cmd_operator(args: argparse.Namespace, console: Console) -> int:
    try:
        from hypersweep.launchers._kubernetes import KubernetesLauncher
        from hypersweep.operators._operator import main as operator_main
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"operator: needs the kubernetes extra (module {error.name!r} is missing); "
            "pip install 'hypersweep[kubernetes]'"
        ) from None
    # The operator runs each Sweep's trials with the Kubernetes launcher; the two packages
    # know each other only through what this entry point gives the operator.
    return operator_main(args.operator_args, KubernetesLauncher)


def _cmd_katib(args: argparse.Namespace, console: Console) -> int:
    """``hypersweep katib convert FILE``: the native Sweep, as YAML on standard output."""
    import yaml

    from hypersweep.operators._katib import translate_experiment
    from hypersweep.orchestrator._spec import SpecLoader

    path = Path(args.file)
    try:
        document = yaml.load(path.read_text(), Loader=SpecLoader)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        sweep = translate_experiment(document)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    sys.stdout.write(yaml.safe_dump(sweep, sort_keys=False))
    return 0


_COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "validate": _cmd_validate,
    "list": _cmd_list,
    "status": _cmd_status,
    "best": _cmd_best,
    "export": _cmd_export,
    "plot": _cmd_plot,
    "dashboard": _cmd_dashboard,
    "operator": _cmd_operator,
    "katib": _cmd_katib,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hypersweep`` command."""
    args = build_parser().parse_args(argv)
    console = Console()
    error_console = Console(stderr=True)
    try:
        return _COMMANDS[args.command](args, console)
    except ConfigError as error:
        error_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return EXIT_INVALID
    except SweepFailed as error:
        error_console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        name = getattr(args, "sweep_name", None) or getattr(args, "name", None) or "NAME"
        error_console.print(
            "interrupted: running trials were stopped and queued; continue with "
            f"'hypersweep resume {name}'",
            highlight=False,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
