"""The ``hypersweep`` command: run, resume and inspect sweeps.

Exit codes: 0 done; 1 the sweep failed (no trial completed, or max_failed_trials was reached);
2 invalid input (the message names the field); 130 interrupted (resume it later).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from hypersweep._errors import ConfigError

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def _storage_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        help="Optuna storage URL or journal file (default: ./hypersweep-runs/NAME/journal.log)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="hypersweep", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the sweep described in a YAML file")
    run.add_argument("file", help="sweep YAML file")
    run.add_argument("--name", help="sweep name (overrides the file's)")
    run.add_argument("--resume", action="store_true", help="continue the sweep if it exists")
    run.add_argument("--n-trials", type=int, help="number of trials (overrides the file's)")
    run.add_argument("--max-concurrent", type=int, help="trials at once (overrides the file's)")
    run.add_argument("--no-live", action="store_true", help="log lines instead of a live table")
    _storage_argument(run)

    resume = commands.add_parser("resume", help="continue a stopped or killed sweep")
    resume.add_argument("name")
    resume.add_argument("--objective", help="module:function, if the sweep did not store one")
    resume.add_argument("--no-live", action="store_true", help="log lines instead of a live table")
    _storage_argument(resume)

    validate = commands.add_parser("validate", help="check a sweep file without running it")
    validate.add_argument("file")

    status = commands.add_parser("status", help="show the trials of a stored sweep")
    status.add_argument("name")
    _storage_argument(status)

    best = commands.add_parser("best", help="print the best trial of a stored sweep")
    best.add_argument("name")
    best.add_argument("--json", action="store_true", help="print JSON")
    _storage_argument(best)

    plot = commands.add_parser("plot", help="save a picture of a sweep's values and curves")
    plot.add_argument("name")
    plot.add_argument("-o", "--output", help="file to write (default: NAME.png)")
    _storage_argument(plot)

    dashboard = commands.add_parser("dashboard", help="open optuna-dashboard on a sweep")
    dashboard.add_argument("name")
    dashboard.add_argument("--port", type=int, default=8080)
    _storage_argument(dashboard)

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


def _run_sweep(settings: Any, objective: str, live: bool, console: Console) -> int:
    from hypersweep._progress import LiveTable, print_summary
    from hypersweep.launchers import Launcher, LocalLauncher, RayLauncher
    from hypersweep.orchestrator._objective import resolve_objective
    from hypersweep.orchestrator._orchestrator import Orchestrator
    from hypersweep.orchestrator._storage import default_run_dir
    from hypersweep.orchestrator._tune import _ensure_log_handler

    objective_ref = resolve_objective(objective)
    log_dir = default_run_dir(settings.name) / "logs" if live else None
    launcher: Launcher = LocalLauncher(settings.max_concurrent, log_dir=log_dir)
    if settings.launcher is not None and settings.launcher.get("type", "local") == "ray":
        launcher = RayLauncher.from_spec(
            {"max_concurrent": settings.max_concurrent, **settings.launcher}
        )
    orchestrator = Orchestrator(settings, objective_ref, launcher, objective_reference=objective)
    if live:
        logging.getLogger("hypersweep").setLevel(logging.WARNING)
        table = LiveTable()
        orchestrator.listeners.append(table.update)
        with table:
            result = orchestrator.run()
        console.print(f"trial logs: {log_dir}")
    else:
        _ensure_log_handler()
        result = orchestrator.run()
    print_summary(result, console)
    if result.best_trial is None or (
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
    base = path.resolve().parent
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    objective = _resolve_objective(spec.objective, base)
    settings = spec.to_settings(resume=args.resume)
    return _run_sweep(settings, objective, not args.no_live, console)


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
    return _run_sweep(settings, objective, not args.no_live, console)


def _cmd_status(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._progress import print_summary, trials_table
    from hypersweep.orchestrator._tune import load

    result = load(args.name, args.storage)
    console.print(trials_table(result))
    print_summary(result, console)
    return 0


def _cmd_best(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._progress import format_config
    from hypersweep.orchestrator._tune import load

    result = load(args.name, args.storage)
    best = result.best_trial
    if best is None:
        console.print(f"sweep {args.name}: no trial completed yet")
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"trial": best.number, "value": best.value, "config": best.config}))
    else:
        console.print(f"trial {best.number}: {result.metric}={best.value:.6g}")
        console.print(format_config(best.config))
    return 0


def _cmd_validate(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._spec import load_spec_file

    spec = load_spec_file(args.file)
    console.print(f"{args.file}: valid sweep ({spec.strategy}, metric {spec.metric} {spec.mode})")
    return 0


def _cmd_plot(args: argparse.Namespace, console: Console) -> int:
    from hypersweep._plots import plot_sweep
    from hypersweep.orchestrator._tune import load

    path = plot_sweep(load(args.name, args.storage), args.output or f"{args.name}.png")
    console.print(f"saved {path}")
    return 0


def _cmd_dashboard(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.orchestrator._storage import open_storage

    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError(
            "dashboard: optuna-dashboard is not installed; pip install 'hypersweep[dashboard]'"
        ) from None
    storage = open_storage(args.storage, args.name)
    console.print(f"dashboard on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    optuna_dashboard.run_server(storage, host="127.0.0.1", port=args.port)
    return 0


def _cmd_operator(args: argparse.Namespace, console: Console) -> int:
    from hypersweep.operators._operator import main as operator_main

    return operator_main(args.operator_args)


_COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "validate": _cmd_validate,
    "status": _cmd_status,
    "best": _cmd_best,
    "plot": _cmd_plot,
    "dashboard": _cmd_dashboard,
    "operator": _cmd_operator,
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
    except KeyboardInterrupt:
        name = getattr(args, "name", None) or "NAME"
        error_console.print(
            "interrupted: running trials were stopped and queued; continue with "
            f"'hypersweep resume {name}'"
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
