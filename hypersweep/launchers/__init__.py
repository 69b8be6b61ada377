"""Where trials run: local worker processes now; Ray and Kubernetes behind the same interface."""

from hypersweep.launchers._base import Launcher, SweepContext
from hypersweep.launchers._local import LocalLauncher

__all__ = ["Launcher", "LocalLauncher", "SweepContext"]
