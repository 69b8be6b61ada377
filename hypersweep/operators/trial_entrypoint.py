"""Run one trial in a pod: ``python -m hypersweep.operators.trial_entrypoint [module:function]``.

The container command of a Sweep's trial template. It loads the objective by reference (the
argument, else ``$HYPERSWEEP_OBJECTIVE``; a function shipped by ``tune()`` from a notebook comes
pickled in ``$HYPERSWEEP_OBJECTIVE_PICKLE``), reads the trial's config from
``$HYPERSWEEP_CONFIG_FILE`` or ``$HYPERSWEEP_CONFIG``, and calls it exactly as a local worker
does: inside it, ``hypersweep.report``, ``checkpoint`` and ``restore`` work unchanged, talking to
the operator over HTTP (``_channel``). The objective restores from the latest checkpoint in
``$HYPERSWEEP_CHECKPOINT_DIR`` (a volume shared with the operator), so a gang restarted by its
TrainJob after a replica failure goes on where it stopped.

In a multi-replica trial every replica runs this entry point; its rank comes from ``RANK``
(PyTorch) or ``TF_CONFIG`` (TensorFlow: the chief, else worker 0, is rank 0). Only rank 0's
reports, checkpoints and outcome are the trial's; the other ranks get the same early-stopping
decisions. Under torch's elastic agent (an elastic trial's replicas run ``python -m
torch.distributed.run -m hypersweep.operators.trial_entrypoint``), an objective's error while
the agent has restarts left is not reported: the agent restarts the workers (a lost peer breaks
every rank's collective) and the last restart's error is the trial's.

Exit codes: 0 the trial returned, or was stopped early; 1 the objective raised (reported as the
trial's error); 2 the entry point itself was misconfigured; 3 the operator refused the token.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping
from typing import Any

from hypersweep.kube import _names as names
from hypersweep.operators._channel import HttpChannel, LocalChannel, ReportRefused, TrialGone
from hypersweep.orchestrator._checkpoints import latest_checkpoint, trial_checkpoint_dir
from hypersweep.orchestrator._objective import Objective, load_reference
from hypersweep.orchestrator._reporting import (
    Channel,
    TrialContext,
    TrialPaused,
    TrialPruned,
    _set_context,
    call_objective,
)

logger = logging.getLogger("hypersweep.trial")

EXIT_ERROR = 1
EXIT_MISCONFIGURED = 2
EXIT_REFUSED = 3

# TensorFlow roles that run the training function, in rank order; PS and evaluator tasks do not
# take part in the collective, so they come after every rank.
_TF_RANKED_ROLES = ("chief", "master", "worker")


def replica_rank(env: Mapping[str, str]) -> tuple[int, int]:
    """This replica's rank and the number of ranks, from PyTorch's or TensorFlow's variables."""
    if "RANK" in env:
        return int(env["RANK"]), int(env.get("WORLD_SIZE", "1"))
    raw = env.get("TF_CONFIG")
    if not raw:
        return 0, 1
    config = json.loads(raw)
    cluster: dict[str, list[str]] = config.get("cluster") or {}
    task = config.get("task") or {}
    role, index = str(task.get("type", "worker")), int(task.get("index", 0))
    ranked = [r for r in _TF_RANKED_ROLES if r in cluster]
    world = sum(len(cluster[r]) for r in ranked)
    offset = 0
    for candidate in ranked:
        if candidate == role:
            return offset + index, max(world, 1)
        offset += len(cluster[candidate])
    return world + 1 + index, max(world, 1)  # a parameter server or an evaluator


def elastic_restarts_left(env: Mapping[str, str]) -> bool:
    """Whether torch's elastic agent (torchrun) runs this process and will restart it.

    In an elastic gang a replica lost mid-collective makes the objective raise on every other
    rank; the agents then restart their workers in a new rendezvous, from the latest
    checkpoint. Such an error is the trial's only once the agent has no restart left.
    """
    restarts = env.get("TORCHELASTIC_MAX_RESTARTS")
    if restarts is None:
        return False
    return int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) < int(restarts)


def read_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The trial's config: the mounted file if there is one, else the JSON variable."""
    path = env.get(names.CONFIG_FILE_ENV)
    if path and os.path.isfile(path):
        with open(path) as handle:
            data = json.load(handle)
    else:
        data = json.loads(env.get(names.CONFIG_ENV) or "{}")
    if not isinstance(data, dict):
        raise ValueError(f"the trial config must be a JSON object, got {type(data).__name__}")
    return data


def load_objective(reference: str | None, env: Mapping[str, str]) -> Objective:
    """The objective: by reference, or unpickled from the environment."""
    reference = reference or env.get(names.OBJECTIVE_ENV)
    if reference:
        return load_reference(reference)
    pickled = env.get(names.OBJECTIVE_PICKLE_ENV)
    if pickled:
        import cloudpickle

        function: Objective = cloudpickle.loads(base64.b64decode(pickled))
        return function
    raise ValueError(
        "no objective: pass module:function (or path/to/file.py:function) as the argument, "
        f"or set ${names.OBJECTIVE_ENV}"
    )


def _channel(env: Mapping[str, str], rank: int) -> Channel:
    url = env.get(names.REPORT_URL_ENV)
    if not url:
        logger.warning("%s is not set: running outside a sweep", names.REPORT_URL_ENV)
        return LocalChannel()
    return HttpChannel(
        url,
        env.get(names.TOKEN_ENV, ""),
        namespace=env.get(names.NAMESPACE_ENV, "default"),
        sweep=env.get(names.SWEEP_ENV, ""),
        trial_number=int(env.get(names.TRIAL_ENV, "0")),
        attempt=int(env.get(names.ATTEMPT_ENV, "0")),
        rank=rank,
        timeout=float(env.get(names.REPORT_TIMEOUT_ENV, "3600")),
    )


def _clean_result(result: Any) -> Any:
    """The objective's result as JSON: a number, or a mapping of names to numbers."""
    if isinstance(result, Mapping):
        return {str(key): _number(value) for key, value in result.items()}
    return _number(result)


def _number(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value  # the operator reports what is wrong with it
    return number if math.isfinite(number) else str(number)


def run_trial(objective: Objective, env: Mapping[str, str]) -> int:
    """Run the objective as one trial; returns the exit code."""
    rank, world_size = replica_rank(env)
    config = read_config(env)
    trial_number = int(env.get(names.TRIAL_ENV, "0"))
    checkpoint_dir = env.get(names.CHECKPOINT_DIR_ENV) or os.path.join(
        tempfile.gettempdir(), "hypersweep-checkpoints"
    )
    # Credentials, if any, are in the environment (the Secret's variables, e.g. AWS_*).
    options = json.loads(env.get(names.CHECKPOINT_OPTIONS_ENV) or "{}")
    latest = latest_checkpoint(trial_checkpoint_dir(checkpoint_dir, trial_number), options)
    channel = _channel(env, rank)
    context = TrialContext(
        trial_number=trial_number,
        config=config,
        sweep_name=env.get(names.SWEEP_ENV, ""),
        checkpoint_dir=checkpoint_dir,
        restore_path=latest,
        checkpoint_options=options,
        attempt=int(env.get(names.ATTEMPT_ENV, "0")),
        keep_checkpoints=int(env.get(names.KEEP_CHECKPOINTS_ENV, "2")),
        rank=rank,
        world_size=world_size,
        channel=channel,
    )
    if latest is not None:
        logger.info("trial %d resumes from %s", trial_number, latest)
    _set_context(context)
    try:
        try:
            result = call_objective(objective, json.loads(json.dumps(config)))
        except TrialPruned:
            channel.send(("stopped", "stop"))
            return 0
        except TrialPaused:
            channel.send(("stopped", "pause"))
            return 0
        except (TrialGone, ReportRefused):
            raise
        except Exception as error:  # noqa: BLE001 - the objective's error is the trial's
            details = traceback.format_exc()
            sys.stderr.write(details)
            if elastic_restarts_left(env):
                logger.warning(
                    "trial %d: the workers are restarted by torch's elastic agent: %s",
                    trial_number,
                    error,
                )
                return EXIT_ERROR
            channel.send(("error", f"{type(error).__name__}: {error}", details))
            return EXIT_ERROR
        channel.send(("result", _clean_result(result)))
        return 0
    except TrialGone as gone:
        logger.warning("trial %d: %s", trial_number, gone)
        return 0
    except ReportRefused as refused:
        logger.error("trial %d: %s", trial_number, refused)
        return EXIT_REFUSED
    finally:
        _set_context(None)
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hypersweep.operators.trial_entrypoint",
        description="Run one trial of a hypersweep Sweep in this container.",
    )
    parser.add_argument(
        "objective",
        nargs="?",
        help=f"module:function or path/to/file.py:function (default: ${names.OBJECTIVE_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[hypersweep %(asctime)s] %(message)s")
    env = dict(os.environ)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        objective = load_objective(args.objective, env)
    except Exception as error:  # noqa: BLE001 - reported as the trial's error, then exit 2
        details = traceback.format_exc()
        sys.stderr.write(details)
        try:
            rank, _ = replica_rank(env)
            _channel(env, rank).send(
                ("error", f"the objective could not be loaded: {error}", details)
            )
        except Exception as send_error:  # noqa: BLE001 - the exit code still says what happened
            logger.warning("could not report the error to the sweep: %s", send_error)
        return EXIT_MISCONFIGURED
    return run_trial(objective, env)


if __name__ == "__main__":
    sys.exit(main())
