"""Experiment trackers fed from the sweep loop: MLflow, TensorBoard and Weights & Biases.

Each is a :class:`hypersweep.Callback` that runs in the driver, so trials need neither the
tracker's package nor its credentials. The trackers' packages are optional
(``pip install 'hypersweep[tracking]'``); they are imported when a callback is created, and a
missing one is a ConfigError naming the extra.
"""

from hypersweep.integrations._mlflow import MLflowCallback
from hypersweep.integrations._tensorboard import TensorBoardCallback
from hypersweep.integrations._wandb import WandbCallback

__all__ = ["MLflowCallback", "TensorBoardCallback", "WandbCallback"]
