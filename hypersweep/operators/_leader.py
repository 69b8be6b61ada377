"""Leader election with a ``coordination.k8s.io`` Lease, as client-go's ``leaderelection`` does.

Only the leader runs controllers and sweeps, so two operator replicas (a rolling update, an HA
deployment) never run the same sweep twice. The Lease records the holder and when it last renewed;
a candidate takes it over once the holder has not renewed for ``lease_duration`` seconds, as
measured on the candidate's own clock from when it saw the record last change (so clock skew
between machines does not matter). Every write carries the Lease's ``resourceVersion``, so two
candidates cannot both win. A leader that cannot renew within ``renew_deadline`` stops leading;
a leader that stops cleanly releases the Lease so that a successor starts at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from hypersweep.kube._client import LEASES, ApiError, JsonDict, Kube

logger = logging.getLogger("hypersweep.operator")


def _micro_time() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and keeps one Lease for ``identity``.

    Args:
        kube: the API client.
        namespace: the Lease's namespace (the operator's own).
        name: the Lease's name; operators sharing it share one leader.
        identity: this candidate's unique name (pod name and a random suffix).
        lease_duration: seconds without renewal after which others may take over.
        renew_deadline: seconds the leader keeps trying to renew before it gives up.
        retry_period: seconds between attempts.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = min(renew_deadline, lease_duration)
        self.retry_period = retry_period
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._leading = False
        self._written: JsonDict | None = None  # the lease as this candidate last wrote it

    @property
    def leading(self) -> bool:
        return self._leading

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this candidate leads (True) or ``stop`` is set (False)."""
        logger.info("waiting to lead (lease %s/%s as %s)", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if self._try_acquire_or_renew():
                self._leading = True
                logger.info("leading as %s", self.identity)
                return True
            stop.wait(self.retry_period)
        return False

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew until ``stop`` is set; call ``on_lost`` if the lease could not be kept."""
        last_renewed = time.monotonic()
        while not stop.wait(self.retry_period):
            try:
                renewed = self._try_acquire_or_renew()
            except Exception as error:  # noqa: BLE001 - retried until the renew deadline
                logger.warning("renewing the lease failed: %s", error)
                renewed = False
            if renewed:
                last_renewed = time.monotonic()
            elif time.monotonic() - last_renewed > self.renew_deadline:
                self._leading = False
                logger.error("lost the lease %s/%s", self.namespace, self.name)
                on_lost()
                return

    def release(self) -> None:
        """Give the lease up (if held), so that another candidate leads without waiting."""
        if not self._leading:
            return
        self._leading = False
        self._written = None
        try:
            lease = self.kube.get(LEASES, self.namespace, self.name)
            if lease is None or lease.get("spec", {}).get("holderIdentity") != self.identity:
                return
            self.kube.patch(
                LEASES,
                self.namespace,
                self.name,
                {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
                },
            )
        except ApiError as error:
            logger.warning("could not release the lease: %s", error)

    # --- one attempt ---------------------------------------------------------------------

    def _spec(self, transitions: int, acquired: str | None) -> JsonDict:
        now = _micro_time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _try_acquire_or_renew(self) -> bool:
        if self._leading and self._written is not None:
            # The leader renews the lease it last wrote without reading it first (client-go's
            # fast path): one request per renewal. A conflict means someone else wrote it.
            try:
                return self._write(self._written, acquired=True)
            except ApiError as error:
                if not error.conflict:
                    raise
            self._written = None
        lease = self.kube.get(LEASES, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0, None),
            }
            try:
                self._written = self.kube.create(LEASES, self.namespace, body)
            except ApiError as error:
                if error.conflict:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        expired = time.monotonic() - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        try:
            return self._write(lease, acquired=holder == self.identity)
        except ApiError as error:
            if error.conflict:
                return False
            raise

    def _write(self, lease: JsonDict, *, acquired: bool) -> bool:
        """Take or renew ``lease`` as this candidate, if it is still at its resourceVersion
        (else an :class:`ApiError` that is a conflict). ``acquired``: this candidate holds it
        already (its acquireTime and transitions stay)."""
        spec = lease.get("spec") or {}
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if acquired else 1)
        body = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": self._spec(transitions, spec.get("acquireTime") if acquired else None),
        }
        updated = self.kube.patch(LEASES, self.namespace, self.name, body)
        self._written = updated
        updated_spec = updated.get("spec") or {}
        self._observed = (self.identity, str(updated_spec.get("renewTime")))
        self._observed_at = time.monotonic()
        return True
