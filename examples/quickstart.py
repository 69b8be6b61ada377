"""Quickstart: tune a small neural network on scikit-learn's bundled digits (nothing downloaded).

Each trial trains an MLP one epoch at a time, reports validation accuracy per epoch so that
asynchronous successive halving stops weak configs early, and checkpoints its model so that a
retried or resumed trial continues where it stopped.

    python examples/quickstart.py            # or: hypersweep run examples/quickstart.yaml
"""

from __future__ import annotations

import warnings
from typing import Any

import hypersweep as hs

SPACE = {
    "hidden": hs.choice([32, 64, 128]),
    "lr": hs.loguniform(1e-4, 3e-1),
    "alpha": hs.loguniform(1e-6, 1e-1),
    "batch_size": hs.choice([32, 64, 128]),
    "epochs": 30,
}


def train_digits(config: dict[str, Any]) -> dict[str, float]:
    """Train an MLP on digits and return its best validation accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)

    state = hs.restore()  # None on a first attempt
    if state is None:
        model = MLPClassifier(
            hidden_layer_sizes=(config["hidden"],),
            learning_rate_init=config["lr"],
            alpha=config["alpha"],
            batch_size=config["batch_size"],
            random_state=0,
        )
        start, best = 0, 0.0
    else:
        model, start, best = state["model"], state["epoch"] + 1, state["best"]

    for epoch in range(start, config["epochs"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=list(range(10)))
        accuracy = float(model.score(x_val, y_val))
        best = max(best, accuracy)
        hs.checkpoint({"model": model, "epoch": epoch, "best": best}, step=epoch)
        hs.report(epoch, accuracy=accuracy)  # raises hs.TrialPruned when ASHA stops it
    return {"accuracy": best, "final_accuracy": accuracy}


def main() -> None:
    result = hs.tune(
        SPACE,
        train_digits,
        metric="accuracy",
        mode="max",
        n_trials=40,
        max_concurrent=2,
        early_stopping={"name": "asha", "min_resource": 2, "reduction_factor": 3},
        seed=0,
        name="quickstart",
        resume=True,
    )
    print(f"\n{result.counts()}")
    print(f"best accuracy {result.best_value:.4f} with {result.best_config}")


if __name__ == "__main__":
    main()
