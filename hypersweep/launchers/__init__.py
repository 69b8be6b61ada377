"""Where trials run: local worker processes, a Ray cluster, or Kubernetes (a TrainJob per trial)."""

from typing import TYPE_CHECKING, Any

from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.launchers._local import LocalLauncher
from hypersweep.launchers._ray import RayLauncher

if TYPE_CHECKING:
    from hypersweep.launchers._kubernetes import KubernetesLauncher

__all__ = ["KubernetesLauncher", "Launcher", "LocalLauncher", "RayLauncher", "SweepContext"]


def __getattr__(name: str) -> Any:
    if name == "KubernetesLauncher":  # imported on use: it is not needed to run trials locally
        from hypersweep.launchers._kubernetes import KubernetesLauncher

        return KubernetesLauncher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
