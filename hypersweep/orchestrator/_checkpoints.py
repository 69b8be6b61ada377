"""Trial checkpoints on a filesystem that the driver and the trial's workers share.

Each checkpoint is a directory ``checkpoint-NNNNNN`` under the trial's folder, written under a
temporary name and renamed into place, so a reader never sees half a checkpoint even when the
writer is killed mid-write. A checkpoint holds either a pickled object (``state.pkl``) or the
files of a directory the trial handed over; ``checkpoint.json`` says which, and at what step.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^checkpoint-(\d{6,})$")
_META = "checkpoint.json"
_STATE = "state.pkl"


def trial_checkpoint_dir(root: str | os.PathLike[str], trial_number: int) -> Path:
    """Where trial ``trial_number`` of a sweep keeps its checkpoints."""
    return Path(root) / f"trial-{trial_number:05d}"


def _complete_checkpoints(trial_dir: Path) -> list[tuple[int, Path]]:
    if not trial_dir.is_dir():
        return []
    found = []
    for entry in trial_dir.iterdir():
        match = _NAME.match(entry.name)
        if match and (entry / _META).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(trial_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a trial, or None."""
    found = _complete_checkpoints(Path(trial_dir))
    return found[-1][1] if found else None


def write_checkpoint(
    trial_dir: str | os.PathLike[str], state_or_dir: Any, *, step: int | None, keep: int
) -> Path:
    """Save ``state_or_dir`` as the trial's newest checkpoint and drop all but the last ``keep``.

    A path to an existing directory is copied as it is; anything else is pickled.
    """
    trial_dir = Path(trial_dir)
    trial_dir.mkdir(parents=True, exist_ok=True)
    existing = _complete_checkpoints(trial_dir)
    sequence = existing[-1][0] + 1 if existing else 1
    final = trial_dir / f"checkpoint-{sequence:06d}"
    staging = trial_dir / f".staging-{sequence:06d}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    if isinstance(state_or_dir, (str, os.PathLike)) and Path(state_or_dir).is_dir():
        shutil.copytree(state_or_dir, staging)
        kind = "directory"
    else:
        staging.mkdir()
        with open(staging / _STATE, "wb") as handle:
            pickle.dump(state_or_dir, handle, protocol=pickle.HIGHEST_PROTOCOL)
        kind = "object"
    meta = {"step": step, "kind": kind, "time": time.time()}
    (staging / _META).write_text(json.dumps(meta))
    os.rename(staging, final)
    for _, old in _complete_checkpoints(trial_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """What :func:`write_checkpoint` saved: the object, or the directory's path as a str."""
    path = Path(path)
    meta = json.loads((path / _META).read_text())
    if meta["kind"] == "object":
        with open(path / _STATE, "rb") as handle:
            return pickle.load(handle)
    return str(path)


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step recorded with a checkpoint, if the trial gave one."""
    step = json.loads((Path(path) / _META).read_text()).get("step")
    return int(step) if step is not None else None
