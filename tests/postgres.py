"""A throwaway PostgreSQL server on loopback, from Debian's ``postgresql`` package."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypersweep.testing import free_port


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: float(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server in a temporary folder and yield a SQLAlchemy URL to a fresh database.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user.
    """
    bin_dir = find_bin_dir()
    assert bin_dir is not None, "PostgreSQL is not installed"
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="hypersweep-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    cluster = data / "cluster"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(cluster),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=200"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(cluster),
            "-o",
            options,
            "-w",
            "-l",
            str(data / "server.log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            created = subprocess.run(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "hypersweep",
                ],
                capture_output=True,
            )
            if created.returncode == 0:
                break
            assert time.monotonic() < deadline, created.stderr
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/hypersweep"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(cluster), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)
