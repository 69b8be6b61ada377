"""A Sweep's checkpoints on object storage (``spec.storage.checkpoints``), without any volume.

The Sweep names a bucket URL, its fsspec options (no secrets) and a Secret whose keys are the
environment variables of the store's client (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``...). Trial pods get that Secret as environment variables; the operator,
which serves many Sweeps in one process, reads it and turns it into fsspec options. Each Sweep
checkpoints under its own prefix ``<url>/<namespace>/<study>``, deleted with the Sweep.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from hypersweep._errors import ConfigError
from hypersweep.kube._client import SECRETS, Kube
from hypersweep.orchestrator._checkpoints import check_location, is_url, options_from_env

FIELD = "spec.storage.checkpoints"


@dataclass(frozen=True)
class SweepCheckpoints:
    """Where one Sweep's checkpoints go, and how the operator and its trials reach them."""

    url: str  # the Sweep's own prefix
    options: dict[str, Any] = field(default_factory=dict)  # public: given to trial pods
    secret: str | None = None  # the credentials Secret, given to trial pods as variables
    credentials: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def operator_options(self) -> dict[str, Any]:
        """The fsspec options of the operator's own accesses (listing, clones, deletion)."""
        return {**self.options, **self.credentials}


def sweep_checkpoints(kube: Kube, sweep: dict[str, Any], study: str) -> SweepCheckpoints | None:
    """The Sweep's object-storage checkpoints, or None where it keeps them on the data volume.

    Raises:
        ConfigError: a bad field or a missing Secret, named.
    """
    spec = ((sweep.get("spec") or {}).get("storage") or {}).get("checkpoints")
    if not spec:
        return None
    url = str(spec.get("url") or "")
    if not is_url(url):
        raise ConfigError(
            f"{FIELD}.url: expected an object-storage URL such as s3://bucket/prefix, got "
            f"{url!r} (leave checkpoints out to use the data volume)"
        )
    options = dict(spec.get("options") or {})
    check_location(url, options, f"{FIELD}.url", f"{FIELD}.options")
    namespace = sweep["metadata"]["namespace"]
    secret_name = (spec.get("secretRef") or {}).get("name")
    credentials: dict[str, Any] = {}
    if secret_name:
        secret = kube.get(SECRETS, namespace, secret_name)
        if secret is None:
            raise ConfigError(
                f"{FIELD}.secretRef: Secret {secret_name!r} does not exist in namespace "
                f"{namespace!r}; create it with the store's variables (e.g. AWS_ACCESS_KEY_ID)"
            )
        variables = {
            key: base64.b64decode(value).decode().strip()
            for key, value in (secret.get("data") or {}).items()
        }
        credentials = options_from_env(url, variables)
    return SweepCheckpoints(
        f"{url.rstrip('/')}/{namespace}/{study}", options, secret_name, credentials
    )
