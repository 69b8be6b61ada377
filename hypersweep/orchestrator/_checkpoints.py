"""Trial checkpoints in a folder or on object storage, through fsspec.

A checkpoint location is a plain path, a ``file://`` URL, or any fsspec URL (``s3://bucket/p``,
``gs://``, ``az://``...) with its storage options (endpoint, credentials; unset, each library
reads its usual environment, e.g. ``AWS_ACCESS_KEY_ID`` and ``AWS_ENDPOINT_URL``).

Each checkpoint is ``<location>/trial-NNNNN/checkpoint-NNNNNN/``, holding either a pickled
object (``state.pkl``) or the files of a folder the trial handed over, plus ``checkpoint.json``
(kind and step), written last: a checkpoint counts only once that marker exists. On a local
filesystem the checkpoint is staged under a temporary name and renamed into place; object
stores have no rename, so the data objects are uploaded first and the marker committed after
them. A writer killed midway thus leaves a folder without a marker, which readers skip and the
trial's next checkpoint deletes.

Large states stream: pickle writes into the store in pieces of :data:`BLOCK` bytes (16 MiB)
(an object store uploads each piece as one part of a multipart upload) and reads them back the
same way, so no second copy of the state is held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import posixpath
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_NAME = re.compile(r"^checkpoint-(\d{6,})$")
_META = "checkpoint.json"
_STATE = "state.pkl"
#: Where a checkpoint every rank wrote keeps the ranks' pickled parts and part markers.
_PARTS = ".parts"
#: Pieces a state is written and read in: one multipart part on object storage. The S3
#: client holds a few copies of the part being sent, so parts are kept small.
BLOCK = 16 * 2**20
#: Which extra installs the fsspec implementation of a URL scheme.
_EXTRAS = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
}

StorageOptions = Mapping[str, Any]


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a remote filesystem (not a plain path nor ``file://``)."""
    text = str(location)
    return "://" in text and not text.startswith(("file://", "local://"))


def resolve_location(location: str | os.PathLike[str]) -> str:
    """The canonical form of a checkpoint location: an absolute path, or the URL as given."""
    text = str(location)
    if is_url(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return str(Path(text).resolve())


def check_location(
    location: Any,
    options: Any,
    field: str = "checkpoint_dir",
    options_field: str = "checkpoint_storage_options",
) -> None:
    """Refuse a location whose filesystem is unknown or not installed, naming the fix."""
    if options is not None and (
        not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)
    ):
        raise ConfigError(
            f"{options_field}: expected a mapping of option names to values (e.g. "
            f"{{'endpoint_url': 'http://...'}}), got {options!r}"
        )
    if location is None or not is_url(str(location)):
        return
    import fsspec

    protocol = str(location).split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ConfigError(
            f"{field}: {location!r} has an unknown scheme {protocol!r}; give a path or a URL "
            f"such as s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        ) from None
    except ImportError:
        package = _EXTRAS.get(protocol, f"the fsspec implementation of {protocol}://")
        extra = " (pip install 'hypersweep[s3]')" if package == "s3fs" else ""
        raise ConfigError(
            f"{field}: {location!r} needs {package}, which is not installed{extra}"
        ) from None


def filesystem(
    location: str | os.PathLike[str], options: StorageOptions | None = None
) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of ``location`` and the path on it."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(location), **dict(options or {}))
    return fs, path.rstrip("/") or "/"


def _is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _url(fs: AbstractFileSystem, path: str) -> str:
    """How a path on ``fs`` is named outside: a plain path locally, else a full URL."""
    return path if _is_local(fs) else str(fs.unstrip_protocol(path))


def trial_checkpoint_dir(root: str | os.PathLike[str], trial_number: int) -> str:
    """Where trial ``trial_number`` of a sweep keeps its checkpoints."""
    return f"{str(root).rstrip('/')}/trial-{trial_number:05d}"


def _forget(fs: AbstractFileSystem, path: str) -> None:
    """Drop what ``fs`` remembers of ``path`` and of every folder under it.

    Other processes write there. s3fs caches the listing of every folder a ``glob`` or
    ``find`` walked, and reads a file's size from its folder's cached listing before fetching
    it: a marker committed after that listing would read as missing. ``invalidate_cache``
    forgets a path and its parents, not the folders under it.
    """
    fs.invalidate_cache(path)
    prefix = path.rstrip("/") + "/"
    for cached in [key for key in fs.dircache if str(key).startswith(prefix)]:
        fs.dircache.pop(cached, None)


def _sequences(fs: AbstractFileSystem, trial_dir: str) -> tuple[list[int], list[int]]:
    """The sequence numbers of the trial's checkpoint folders: (complete, all)."""
    _forget(fs, trial_dir)  # another process may have written since we last listed
    try:
        entries = fs.ls(trial_dir, detail=False)
    except FileNotFoundError:
        return [], []
    every = sorted(
        int(match.group(1))
        for entry in entries
        if (match := _NAME.match(posixpath.basename(str(entry).rstrip("/"))))
    )
    if not every:
        return [], []
    markers = fs.glob(f"{trial_dir}/checkpoint-*/{_META}")
    complete = sorted(
        int(match.group(1))
        for marker in markers
        if (match := _NAME.match(posixpath.basename(posixpath.dirname(str(marker)))))
    )
    return complete, every


def _folder(trial_dir: str, sequence: int) -> str:
    return f"{trial_dir}/checkpoint-{sequence:06d}"


def latest_checkpoint(
    trial_dir: str | os.PathLike[str], options: StorageOptions | None = None
) -> str | None:
    """The newest complete checkpoint of a trial (a path or URL), or None."""
    fs, path = filesystem(trial_dir, options)
    complete, _ = _sequences(fs, path)
    return _url(fs, _folder(path, complete[-1])) if complete else None


def next_checkpoint(
    trial_dir: str | os.PathLike[str], options: StorageOptions | None = None
) -> str:
    """Where the trial's next checkpoint goes: after every folder there, complete or not."""
    fs, path = filesystem(trial_dir, options)
    _, every = _sequences(fs, path)
    return _url(fs, _folder(path, every[-1] + 1 if every else 1))


def checkpoint_at(
    trial_dir: str | os.PathLike[str], sequence: int, options: StorageOptions | None = None
) -> str:
    """The path or URL of the trial's checkpoint number ``sequence``."""
    fs, path = filesystem(trial_dir, options)
    return _url(fs, _folder(path, sequence))


def prune(
    trial_dir: str | os.PathLike[str], keep: int, options: StorageOptions | None = None
) -> None:
    """Delete the trial's complete checkpoints beyond the newest ``keep``, and older unfinished
    ones."""
    fs, path = filesystem(trial_dir, options)
    _prune(fs, path, keep)


class _Pieces:
    """A binary file whose writes go through in pieces of at most :data:`BLOCK` bytes.

    fsspec's buffered files append each write to an in-memory buffer before uploading it, so a
    state pickled in one gigabyte-sized write would be copied whole; cut, it streams.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), BLOCK):
            self._handle.write(view[start : start + BLOCK])
        return len(view)


class _ReadPieces:
    """A binary file whose large reads into a buffer (how pickle reads a big array's bytes)
    fetch :data:`BLOCK` bytes at a time, rather than the whole array as one temporary copy."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        return bytes(self._handle.read(size))

    def readline(self) -> bytes:
        return bytes(self._handle.readline())

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            piece = self._handle.read(min(BLOCK, len(view) - done))
            if not piece:
                break
            view[done : done + len(piece)] = piece
            done += len(piece)
        return done


def write_checkpoint(
    trial_dir: str | os.PathLike[str],
    state_or_dir: Any,
    *,
    step: int | None,
    keep: int,
    options: StorageOptions | None = None,
    at: str | None = None,
) -> str:
    """Save ``state_or_dir`` as the trial's newest checkpoint and drop all but the last ``keep``.

    A path to an existing directory is copied as it is (uploaded file by file, in parallel on
    object storage); anything else is pickled. ``at`` is the folder :func:`next_checkpoint`
    chose, when the caller reserved it earlier. Returns the checkpoint's path or URL.
    """
    fs, path = filesystem(trial_dir, options)
    final = filesystem(at, options)[1] if at is not None else None
    if final is None:
        _, every = _sequences(fs, path)
        final = _folder(path, every[-1] + 1 if every else 1)
    is_dir = isinstance(state_or_dir, (str, os.PathLike)) and Path(state_or_dir).is_dir()
    meta = json.dumps(
        {"step": step, "kind": "directory" if is_dir else "object", "time": time.time()}
    )
    if _is_local(fs):
        _write_local(path, final, state_or_dir, is_dir, meta)
    else:
        _remove(fs, final)  # what a writer killed while writing this very folder left
        if is_dir:
            sources, targets = _files_under(Path(state_or_dir), final)
            if sources:
                fs.put(sources, targets)
        else:
            with fs.open(f"{final}/{_STATE}", "wb", block_size=BLOCK) as handle:
                pickle.dump(state_or_dir, _Pieces(handle), protocol=pickle.HIGHEST_PROTOCOL)
        fs.pipe_file(f"{final}/{_META}", meta.encode())  # the commit: now it counts
    _prune(fs, path, keep)
    return _url(fs, final)


def _write_local(trial_dir: str, final: str, state_or_dir: Any, is_dir: bool, meta: str) -> None:
    os.makedirs(trial_dir, exist_ok=True)
    staging = Path(trial_dir) / f".staging-{posixpath.basename(final)}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    if is_dir:
        shutil.copytree(state_or_dir, staging)
    else:
        staging.mkdir()
        with open(staging / _STATE, "wb") as handle:
            pickle.dump(state_or_dir, handle, protocol=pickle.HIGHEST_PROTOCOL)
    (staging / _META).write_text(meta)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(staging, final)


def _files_under(folder: Path, target: str) -> tuple[list[str], list[str]]:
    sources, targets = [], []
    for directory, _, files in os.walk(folder):
        for name in files:
            source = Path(directory) / name
            sources.append(str(source))
            targets.append(f"{target}/{source.relative_to(folder).as_posix()}")
    return sources, targets


def _prune(fs: AbstractFileSystem, trial_dir: str, keep: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep``, and older unfinished ones."""
    complete, every = _sequences(fs, trial_dir)
    if not complete:
        return
    kept = set(complete[-keep:])
    for sequence in every:
        if sequence in kept or sequence > complete[-1]:
            continue  # a newer unfinished one may be being written right now
        folder = _folder(trial_dir, sequence)
        if sequence in complete:
            # The marker first: a reader never sees a checkpoint whose files are going.
            _remove(fs, f"{folder}/{_META}")
        _remove(fs, folder)


def _remove(fs: AbstractFileSystem, path: str) -> None:
    """Delete a file or folder that may already be gone. Some stores (SeaweedFS) keep listing
    a folder whose objects were all deleted, with nothing left in it to delete."""
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def read_checkpoint(
    path: str | os.PathLike[str], options: StorageOptions | None = None, *, rank: int = 0
) -> Any:
    """What :func:`write_checkpoint` saved: the object, or a local folder with its files.

    A folder checkpoint on object storage is downloaded once into a local cache folder. Of a
    checkpoint every rank wrote a part of, ``rank`` gets its own object, or the merged folder.
    """
    fs, where = filesystem(path, options)
    _forget(fs, where)
    meta = json.loads(fs.cat_file(f"{where}/{_META}"))
    state = f"{where}/{_STATE}"
    if meta["kind"] == "ranks":
        from hypersweep.orchestrator._rank_checkpoints import read_part

        kind, state = read_part(fs, where, meta, rank)
        meta = {**meta, "kind": kind}
    if meta["kind"] == "object":
        with fs.open(state, "rb", block_size=BLOCK) as handle:
            return pickle.load(_ReadPieces(handle))
    if _is_local(fs):
        return where
    return _download(fs, where)


def _download(fs: AbstractFileSystem, where: str) -> str:
    url = _url(fs, where)
    cache = Path(tempfile.gettempdir()) / "hypersweep-restore"
    local = cache / f"{hashlib.sha1(url.encode()).hexdigest()[:16]}-{posixpath.basename(where)}"
    if (local / _META).is_file():
        return str(local)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    files = [
        f
        for f in fs.find(where)
        if str(f).rstrip("/") != where
        and not posixpath.relpath(str(f), where).startswith(f"{_PARTS}/")
    ]
    targets = [str(staging / posixpath.relpath(str(f), where)) for f in files]
    for target in targets:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    if files:
        fs.get(files, targets)
    try:
        os.rename(staging, local)
    except OSError:  # another process of the trial downloaded it first
        shutil.rmtree(staging, ignore_errors=True)
    return str(local)


def checkpoint_step(
    path: str | os.PathLike[str], options: StorageOptions | None = None
) -> int | None:
    """The step recorded with a checkpoint, if the trial gave one."""
    fs, where = filesystem(path, options)
    _forget(fs, where)
    step = json.loads(fs.cat_file(f"{where}/{_META}")).get("step")
    return int(step) if step is not None else None


def copy_checkpoint(
    source: str, trial_dir: str | os.PathLike[str], options: StorageOptions | None = None
) -> str:
    """Copy a complete checkpoint into another trial's folder (a PBT clone); returns the copy.

    On object storage the copy happens in the store (no download), marker last.
    """
    fs, where = filesystem(source, options)
    _, target_dir = filesystem(trial_dir, options)
    target = f"{target_dir}/{posixpath.basename(where)}"
    if _is_local(fs):
        shutil.copytree(where, target, dirs_exist_ok=True)
        return target
    _forget(fs, where)
    files = [f for f in fs.find(where) if posixpath.basename(str(f)) != _META]
    if files:
        fs.copy(files, [f"{target}/{posixpath.relpath(str(f), where)}" for f in files])
    fs.copy(f"{where}/{_META}", f"{target}/{_META}")
    return _url(fs, target)


def delete_location(
    location: str | os.PathLike[str],
    options: StorageOptions | None = None,
    *,
    keep: str | None = None,
) -> None:
    """Delete every checkpoint under ``location``, except the trial folder named ``keep``."""
    fs, root = filesystem(location, options)
    _forget(fs, root)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return
    for entry in entries:
        if keep is not None and posixpath.basename(str(entry).rstrip("/")) == keep:
            continue
        _remove(fs, str(entry))


#: The environment variables of each store's client libraries, as fsspec options: how the
#: operator, which serves many sweeps in one process, uses a credentials Secret that trial pods
#: receive as environment variables.
_ENV_OPTIONS: dict[str, dict[str, str]] = {
    "s3": {
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_ENDPOINT_URL": "endpoint_url",
        "AWS_ENDPOINT_URL_S3": "endpoint_url",
    },
    "az": {
        "AZURE_STORAGE_CONNECTION_STRING": "connection_string",
        "AZURE_STORAGE_ACCOUNT_NAME": "account_name",
        "AZURE_STORAGE_ACCOUNT_KEY": "account_key",
        "AZURE_STORAGE_SAS_TOKEN": "sas_token",
    },
}
_ENV_OPTIONS["s3a"] = _ENV_OPTIONS["s3"]
_ENV_OPTIONS["abfs"] = _ENV_OPTIONS["az"]


def options_from_env(location: str, variables: Mapping[str, str]) -> dict[str, Any]:
    """The fsspec options that ``variables`` (e.g. a Secret's ``AWS_ACCESS_KEY_ID``...) give
    the filesystem of ``location``; variables it does not know are left out."""
    known = _ENV_OPTIONS.get(str(location).split("://", 1)[0], {})
    return {known[name]: value for name, value in variables.items() if name in known}
