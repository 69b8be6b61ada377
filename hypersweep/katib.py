"""Katib compatibility for trial code: ``report_metrics`` as Katib's SDK has it (Push).

A trial of a Katib-shaped Sweep whose ``metricsCollectorSpec.collector.kind`` is ``Push``
replaces ``from kubeflow.katib import report_metrics`` with
``from hypersweep.katib import report_metrics``; the call is the same.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["report_metrics"]

_PUSH_FD_ENV = "HYPERSWEEP_KATIB_PUSH_FD"


def report_metrics(metrics: Mapping[str, Any], timeout_s: int = 10) -> None:
    """Report ``{name: value}`` metrics of this trial (values numbers or numeric strings).

    ``timeout_s`` is accepted for Katib's signature: the call only writes to the trial entry
    point, which reports to the operator.
    """
    del timeout_s
    line = json.dumps({str(k): str(v) for k, v in metrics.items()}) + "\n"
    fd = os.environ.get(_PUSH_FD_ENV)
    if fd is None:
        sys.stderr.write(f"report_metrics outside a Push trial (no ${_PUSH_FD_ENV}): {line}")
        return
    os.write(int(fd), line.encode())
