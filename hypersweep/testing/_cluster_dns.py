"""Cluster DNS for the test node agent: pod host names resolve as CoreDNS would resolve them.

In a cluster, every pod has an IP of its own, and a pod with ``spec.subdomain`` (a headless
Service's name) resolves as ``<hostname>.<subdomain>.<namespace>.svc[.cluster.local]``. The
TrainJob controller relies on it: ``MASTER_ADDR`` and ``TF_CONFIG`` carry those names. The node
agent runs pods as local processes, so without help they all share 127.0.0.1 and no such name
resolves. In cluster-DNS mode:

* each pod gets an address of its own in 127.0.0.0/8 (all of it is loopback on Linux, and any
  process may bind any of it, so no privilege is needed), reported as its ``podIP``;
* the agents of a cluster share one hosts file (this module) where each pod with a subdomain
  has its DNS names, added before the pod's containers start and removed when it ends;
* each container process resolves through that file: ``nss_wrapper`` (the cwrap library
  Samba's test suite uses to give unprivileged processes their own name service) is preloaded,
  with ``NSS_WRAPPER_HOSTS`` pointing at the file, which it re-reads when it changes, and
  ``NSS_WRAPPER_HOSTNAME`` making ``gethostname()`` return the pod's fully qualified name (so
  gloo, which resolves the host name to pick its address, finds the pod's address). Names that
  are not cluster names fall through to the machine's resolver.

Why not CoreDNS: a process finds its DNS server in ``/etc/resolv.conf``, which is one file for
the whole machine; pointing it elsewhere per process needs a mount namespace (privileges) or
the same kind of preload. nss_wrapper needs neither root nor a network namespace, and it is
one Debian package (``libnss-wrapper``).

gRPC (TensorFlow) resolves with its own c-ares client by default, which reads neither; the
agent sets ``GRPC_DNS_RESOLVER=native`` so it uses the C library's resolver like everything
else.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ClusterDns", "find_nss_wrapper", "pod_address", "pod_dns_names"]

#: Where Debian/Ubuntu (libnss-wrapper) and Fedora (nss_wrapper) install the library.
_NSS_WRAPPER_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
    "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
)
CLUSTER_DOMAIN = "cluster.local"


def find_nss_wrapper() -> str:
    """Path of ``libnss_wrapper.so``; a clear error naming the package when it is missing."""
    for candidate in _NSS_WRAPPER_PATHS:
        if Path(candidate).is_file():
            return candidate
    found = ctypes.util.find_library("nss_wrapper")
    if found:
        return found
    raise RuntimeError(
        "cluster_dns needs nss_wrapper to resolve pod names per process: install it "
        "(Debian/Ubuntu: apt-get install libnss-wrapper; Fedora: dnf install nss_wrapper)"
    )


def pod_address(uid: str) -> str:
    """The pod's own loopback address, derived from its UID (stable across agent restarts).

    Never 127.0.0.x, which the control plane and the host's services use.
    """
    digest = hashlib.sha256(uid.encode()).digest()
    return f"127.{1 + digest[0] % 254}.{digest[1]}.{1 + digest[2] % 254}"


def pod_dns_names(pod: Mapping[str, Any]) -> list[str]:
    """The DNS names cluster DNS gives a pod: only pods with a subdomain have them."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    subdomain = spec.get("subdomain")
    if not subdomain:
        return []
    hostname = spec.get("hostname") or meta["name"]
    fqdn = f"{hostname}.{subdomain}.{meta['namespace']}.svc"
    return [f"{fqdn}.{CLUSTER_DOMAIN}", fqdn]


class ClusterDns:
    """The hosts file shared by a cluster's node agents: one line per pod with DNS names.

    Lines carry the pod's UID as a comment; writers take an exclusive lock and replace the file
    atomically (a reader never sees half a file).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self.path.exists():
                self._write([])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line and not line.startswith("127.0.0.1 ")]

    def _write(self, lines: Sequence[str]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{line}\n" for line in ["127.0.0.1 localhost", *lines]))
        tmp.replace(self.path)

    def add(self, uid: str, address: str, names: Sequence[str]) -> None:
        """Publish a pod's names (replacing any line it had)."""
        if not names:
            return
        with self._locked():
            lines = [line for line in self._lines() if not line.endswith(f"# {uid}")]
            lines.append(f"{address} {' '.join(names)} # {uid}")
            # glibc answers an IPv6 query with AI_V4MAPPED (as torch's c10d store client asks
            # first) with the IPv4-mapped address; nss_wrapper does not map, so list it.
            lines.append(f"::ffff:{address} {' '.join(names)} # {uid}")
            self._write(lines)

    def remove(self, uid: str) -> None:
        """Withdraw a pod's names (its pod ended or was deleted)."""
        with self._locked():
            lines = self._lines()
            kept = [line for line in lines if not line.endswith(f"# {uid}")]
            if len(kept) != len(lines):
                self._write(kept)

    def process_env(self, pod: Mapping[str, Any]) -> dict[str, str]:
        """Environment that makes a pod's processes resolve through this file."""
        names = pod_dns_names(pod)
        env = {
            "LD_PRELOAD": find_nss_wrapper(),
            "NSS_WRAPPER_HOSTS": str(self.path),
            "GRPC_DNS_RESOLVER": "native",
        }
        if names:
            # gethostname(): the pod's FQDN, which resolves to the pod's own address.
            env["NSS_WRAPPER_HOSTNAME"] = names[0]
        return env
