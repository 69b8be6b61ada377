"""Experiment trackers fed from the sweep loop: MLflow, TensorBoard and Weights & Biases.

Each is a :class:`hypersweep.Callback` that runs in the driver, so trials need neither the
tracker's package nor its credentials. The trackers' packages are optional
(``pip install 'hypersweep[tracking]'``); they are imported when a callback is created, and a
missing one is a ConfigError naming the extra. Logging that a sweep's end did not wait for
(MLflow's, by default) is sent before the interpreter exits; :func:`flush` waits for it sooner.
"""

from hypersweep.integrations._background import flush_all as flush
from hypersweep.integrations._mlflow import MLflowCallback
from hypersweep.integrations._tensorboard import TensorBoardCallback
from hypersweep.integrations._wandb import WandbCallback

__all__ = ["MLflowCallback", "TensorBoardCallback", "WandbCallback", "flush"]
