"""Kubernetes operator: the TrainJob and Sweep custom resources and their controllers.

* ``TrainJob`` (``hypersweep.io/v1alpha1``): a gang of replica pods with the rendezvous environment
  of PyTorchJob or TFJob, restarted together from checkpoint (``_trainjob``).
* ``Sweep``: a whole hyperparameter sweep, run by the same orchestrator loop as ``tune()``, one
  TrainJob per trial (``_sweep``).
* ``hypersweep operator run``: the leader-elected process running both (``_operator``).
* ``python -m hypersweep.operators.trial_entrypoint``: what a trial pod runs (``trial_entrypoint``).

Names are imported lazily, so that a trial pod importing the entry point loads neither the
``kubernetes`` client nor the controllers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hypersweep.kube._names import API_VERSION, GROUP, VERSION

if TYPE_CHECKING:
    from hypersweep.operators._crds import crd_manifests, sweep_crd, trainjob_crd
    from hypersweep.operators._operator import Operator, OperatorOptions
    from hypersweep.operators._sweep import SweepController
    from hypersweep.operators._trainjob import TrainJobController

_LAZY = {
    "Operator": "hypersweep.operators._operator",
    "OperatorOptions": "hypersweep.operators._operator",
    "SweepController": "hypersweep.operators._sweep",
    "TrainJobController": "hypersweep.operators._trainjob",
    "crd_manifests": "hypersweep.operators._crds",
    "sweep_crd": "hypersweep.operators._crds",
    "trainjob_crd": "hypersweep.operators._crds",
}

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Operator",
    "OperatorOptions",
    "SweepController",
    "TrainJobController",
    "crd_manifests",
    "sweep_crd",
    "trainjob_crd",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
