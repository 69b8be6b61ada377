"""Checkpoints that every rank of a multi-replica trial writes its own part of, in parallel.

``hs.checkpoint(state_or_dir, all_ranks=True)`` on each rank writes that rank's part into the
same checkpoint folder at once (each rank uploads from its own process): a pickled object goes
to ``.parts/rank-RRRRR.pkl``; the files of a folder (``torch.distributed.checkpoint`` shards, a
``.metadata`` from the coordinating rank) are merged into the checkpoint folder itself, as Ray
Train merges its workers' checkpoint folders. Each rank then writes its part marker
``.parts/rank-RRRRR.json`` (the files it wrote, and the token of its gang), and rank 0, once the
markers of all ranks with its own token are there, deletes whatever else the folder holds (what
a killed gang left) and commits ``checkpoint.json``: before that marker readers skip the folder,
so a rank SIGKILLed mid-upload leaves nothing that is ever restored.

The ranks agree on the folder without talking to each other: the ``n``-th such checkpoint of a
run goes to the sequence number after the checkpoint the run started from, plus ``n``. Folders
past that one hold only unfinished leftovers (a run starts from the newest complete one), which
the token tells apart: it names the attempt, the world size and the starting checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersweep.orchestrator._checkpoints import (
    _META,
    _NAME,
    _PARTS,
    BLOCK,
    StorageOptions,
    _files_under,
    _forget,
    _is_local,
    _Pieces,
    _remove,
    filesystem,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

PARTS = _PARTS
#: How long rank 0 waits for the other ranks' parts before it says which are missing.
PART_TIMEOUT = 600.0


def sequence_of(checkpoint: str | None) -> int:
    """The sequence number of a checkpoint folder (``.../checkpoint-000007`` is 7); 0 for None."""
    if checkpoint is None:
        return 0
    match = _NAME.match(posixpath.basename(str(checkpoint).rstrip("/")))
    return int(match.group(1)) if match else 0


def _marker(where: str, rank: int) -> str:
    return f"{where}/{PARTS}/rank-{rank:05d}.json"


def _state(where: str, rank: int) -> str:
    return f"{where}/{PARTS}/rank-{rank:05d}.pkl"


def write_part(
    checkpoint: str,
    state_or_dir: Any,
    *,
    rank: int,
    world_size: int,
    token: str,
    options: StorageOptions | None = None,
) -> None:
    """Write rank ``rank``'s part of ``checkpoint`` (a path or URL), then its part marker."""
    fs, where = filesystem(checkpoint, options)
    local = _is_local(fs)
    if local:
        os.makedirs(f"{where}/{PARTS}", exist_ok=True)
    # A killed predecessor's marker goes before our data does, so rank 0 never counts it.
    _remove(fs, _marker(where, rank))
    is_dir = isinstance(state_or_dir, (str, os.PathLike)) and Path(state_or_dir).is_dir()
    if is_dir:
        sources, targets = _files_under(Path(state_or_dir), where)
        if local:
            for source, target in zip(sources, targets, strict=True):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
        elif sources:
            fs.put(sources, targets)  # concurrently, as every other rank does its own
        files = [posixpath.relpath(target, where) for target in targets]
    else:
        with fs.open(_state(where, rank), "wb", block_size=BLOCK) as handle:
            pickle.dump(state_or_dir, _Pieces(handle), protocol=pickle.HIGHEST_PROTOCOL)
        files = [posixpath.relpath(_state(where, rank), where)]
    marker = {
        "rank": rank,
        "world_size": world_size,
        "token": token,
        "kind": "directory" if is_dir else "object",
        "files": files,
    }
    fs.pipe_file(_marker(where, rank), json.dumps(marker).encode())


def commit(
    checkpoint: str,
    *,
    world_size: int,
    token: str,
    step: int | None,
    options: StorageOptions | None = None,
    timeout: float = PART_TIMEOUT,
) -> None:
    """Wait until every rank's part of ``checkpoint`` is written, then make it visible.

    Run by rank 0 after its own part. Raises TimeoutError naming the missing ranks after
    ``timeout`` seconds (a rank that never calls ``checkpoint(all_ranks=True)``).
    """
    fs, where = filesystem(checkpoint, options)
    parts = _wait_for_parts(fs, where, world_size, token, timeout)
    wanted = {f"{PARTS}/rank-{rank:05d}.json" for rank in parts}
    for part in parts.values():
        wanted.update(part["files"])
    # What a killed gang left in this folder (its marker too, should it have committed).
    _forget(fs, where)
    for found in fs.find(where):
        if posixpath.relpath(str(found), where) not in wanted:
            _remove(fs, str(found))
    meta = {
        "step": step,
        "kind": "ranks",
        "world_size": world_size,
        "parts": {str(rank): part["kind"] for rank, part in sorted(parts.items())},
        "time": time.time(),
    }
    fs.pipe_file(f"{where}/{_META}", json.dumps(meta).encode())  # the commit: now it counts


def _wait_for_parts(
    fs: AbstractFileSystem, where: str, world_size: int, token: str, timeout: float
) -> dict[int, dict[str, Any]]:
    parts: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        _forget(fs, where)
        for rank in range(world_size):
            if rank in parts:
                continue
            try:
                part = json.loads(fs.cat_file(_marker(where, rank)))
            except FileNotFoundError:
                continue
            if part.get("token") == token:  # not a marker a killed gang left
                parts[rank] = part
        if len(parts) == world_size:
            return parts
        if time.monotonic() > deadline:
            missing = sorted(set(range(world_size)) - set(parts))
            raise TimeoutError(
                f"checkpoint(all_ranks=True): ranks {missing} did not write their part of "
                f"{where} within {timeout:.0f} s; every rank must call "
                f"hypersweep.checkpoint(..., all_ranks=True) at the same point"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def read_part(
    fs: AbstractFileSystem, where: str, meta: dict[str, Any], rank: int
) -> tuple[str, str]:
    """What rank ``rank`` restores of a committed all-ranks checkpoint: ("object", the path
    of its pickled part) or ("directory", "") for the whole merged folder."""
    kinds: dict[str, str] = meta["parts"]
    kind = kinds.get(str(rank))
    if kind is None:
        if set(kinds.values()) == {"directory"}:
            return "directory", ""  # a folder every rank reads whole reshards (e.g. DCP)
        raise RuntimeError(
            f"{fs.unstrip_protocol(where)} was written by {meta['world_size']} ranks and has no "
            f"part of rank {rank}: restore it with the same number of replicas, or checkpoint "
            "a folder (e.g. torch.distributed.checkpoint) that any world size can read"
        )
    if kind == "object":
        return "object", _state(where, rank)
    return "directory", ""
