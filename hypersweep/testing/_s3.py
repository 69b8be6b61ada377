"""A real S3-compatible server on loopback: SeaweedFS's ``weed server -s3``.

The checkpoint tests and the checkpoint benchmark store trial checkpoints in it through s3fs,
exactly as on AWS S3 or any S3-compatible store. ``hack/seaweedfs/build.sh`` builds ``weed``
from the Go module proxy into ``~/.cache/hypersweep/seaweedfs/<version>/bin`` (or under
``$HYPERSWEEP_CACHE``).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The SeaweedFS commit hack/seaweedfs/build.sh builds (a test checks they agree).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
#: How to build ``weed`` on a fresh machine.
SEAWEEDFS_BUILD_COMMAND = "bash hack/seaweedfs/build.sh"


def weed_binary() -> Path | None:
    """The built ``weed`` of the pinned version, or None when it is not built yet."""
    cache = Path(os.environ.get("HYPERSWEEP_CACHE", Path.home() / ".cache" / "hypersweep"))
    binary = cache / "seaweedfs" / SEAWEEDFS_VERSION / "bin" / "weed"
    return binary if os.access(binary, os.X_OK) else None


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint, its credentials, and a bucket created for the caller."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str

    @property
    def url(self) -> str:
        """``s3://<bucket>``."""
        return f"s3://{self.bucket}"

    def storage_options(self) -> dict[str, Any]:
        """fsspec (s3fs) options reaching this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
        }

    def env(self) -> dict[str, str]:
        """The AWS environment variables by which s3fs (botocore) reaches this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server (no cached listings)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def new_bucket(self, name: str | None = None) -> S3Server:
        """Create another bucket on the same server."""
        bucket = name or f"b{secrets.token_hex(6)}"
        self.filesystem().mkdir(bucket)
        return S3Server(self.endpoint_url, self.access_key, self.secret_key, bucket)


def prefix_identity(name: str, prefix: str) -> tuple[dict[str, Any], str, str]:
    """A SeaweedFS identity that may read, write and list only under ``prefix``
    (``bucket/path``), and its fresh key pair: SeaweedFS scopes an identity's actions to
    object paths (``Read:bucket/path/*``), as an IAM policy on ``arn:aws:s3:::bucket/path/*``
    and ``s3:prefix`` does on AWS.

    Returns the identity (for ``s3_server(identities=...)``), its access key and secret key.
    """
    access_key, secret_key = f"hs{secrets.token_hex(8)}", secrets.token_hex(20)
    path = prefix.strip("/")
    identity = {
        "name": name,
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": [f"{action}:{path}/*" for action in ("Read", "Write", "List")],
    }
    return identity, access_key, secret_key


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1 (with their +10000 gRPC ports also free)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@contextmanager
def s3_server(
    workdir: Path,
    *,
    bucket: str = "hypersweep",
    timeout: float = 120.0,
    identities: Sequence[dict[str, Any]] = (),
) -> Iterator[S3Server]:
    """Run SeaweedFS (master, volume, filer and S3 gateway in one ``weed server``) on free
    ports of 127.0.0.1 with its data in ``workdir``, with a fresh access key, and yield it once
    ``bucket`` is created; stopped on exit. ``identities`` are more SeaweedFS identities (e.g.
    :func:`prefix_identity`) beside the administrator the yielded server's key belongs to.

    Raises:
        FileNotFoundError: ``weed`` is not built (the message says how to build it).
        RuntimeError: the server exited or did not answer within ``timeout`` (its log named).
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError(
            f"SeaweedFS {SEAWEEDFS_VERSION} is not built; run {SEAWEEDFS_BUILD_COMMAND}"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"hs{secrets.token_hex(8)}", secrets.token_hex(20)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "hypersweep",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    *identities,
                ]
            }
        )
    )
    master, volume, filer, s3 = _free_ports(4)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    command = [
        str(binary),
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        "-master.volumeSizeLimitMB=1024",  # small volumes: tests stay within a little disk
        f"-volume.port={volume}",
        "-volume.max=1000",  # each bucket (collection) takes volumes of its own; sparse files
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        "-s3.port.iceberg=0",  # no Iceberg catalog nor Lance server: only S3
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    log_path = workdir / "weed.log"
    server = S3Server(f"http://127.0.0.1:{s3}", access_key, secret_key, bucket)
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("w"))
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"weed server exited: {log_path.read_text()[-3000:]}")
                try:
                    fs = server.filesystem()
                    if not fs.exists(bucket):
                        fs.mkdir(bucket)
                    # Ready once an object can be written: the volume server has registered.
                    fs.pipe_file(f"{bucket}/.ready", b"ok")
                    fs.rm_file(f"{bucket}/.ready")
                    break
                except Exception as error:  # noqa: BLE001 - not ready yet: refused, 503...
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"weed server did not serve S3 in {timeout:g} s ({error}); "
                            f"see {log_path}"
                        ) from None
                time.sleep(0.2)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
