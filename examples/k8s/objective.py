"""The objective of the example Sweep: a small network on scikit-learn's digits, no download.

Runs in the trial pods as ``python -m hypersweep.operators.trial_entrypoint
/opt/hypersweep/examples/k8s/objective.py:train``; the trial's parameters arrive as ``config``.
It checkpoints every epoch and reports the validation loss, so ASHA can pause it and resume it
from its checkpoint later, and a restarted pod goes on where it stopped.
"""

from __future__ import annotations

import pickle
from typing import Any

import hypersweep as hs


def train(config: dict[str, Any]) -> dict[str, float]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features / 16.0, labels, random_state=0)
    state = hs.restore()
    if state is not None:
        model, start = pickle.loads(state["model"]), state["epoch"] + 1
    else:
        model = MLPClassifier(
            hidden_layer_sizes=(config["hidden"],),
            learning_rate_init=config["lr"],
            alpha=config["alpha"],
            random_state=0,
        )
        start = 0
    loss = accuracy = 0.0
    for epoch in range(start, config["epochs"]):
        model.partial_fit(x_train, y_train, classes=list(range(10)))
        accuracy = float(model.score(x_val, y_val))
        loss = 1.0 - accuracy
        hs.checkpoint({"model": pickle.dumps(model), "epoch": epoch})
        hs.report(epoch, loss=loss, accuracy=accuracy)
    return {"loss": loss, "accuracy": accuracy}
