"""A conditional space: the optimizer is a choice, and each optimizer has its own settings.

An SGD trial gets a learning rate and a momentum; an Adam trial a learning rate (another range)
and beta_1. A trial's config holds only its optimizer's keys, and the two learning rates are two
parameters in storage, so the strategy learns each one separately. Trains scikit-learn's MLP on
its bundled digits (nothing downloaded), a few epochs per trial.

    hypersweep run examples/conditional.yaml        # the same space in a sweep file
    python examples/conditional.py
"""

from __future__ import annotations

import warnings
from typing import Any

import hypersweep as hs

SPACE = {
    "optimizer": hs.choice(
        [
            {"solver": "sgd", "lr": hs.loguniform(1e-3, 3e-1), "momentum": hs.uniform(0.5, 0.99)},
            {"solver": "adam", "lr": hs.loguniform(1e-4, 3e-2), "beta_1": hs.uniform(0.8, 0.99)},
        ]
    ),
    "hidden": hs.choice([32, 64]),
    "epochs": 8,
}


def train(config: dict[str, Any]) -> dict[str, float]:
    """Train an MLP on digits with the chosen optimizer; report validation accuracy per epoch."""
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
    optimizer = dict(config["optimizer"])
    settings = {"solver": optimizer.pop("solver"), "learning_rate_init": optimizer.pop("lr")}
    settings.update(optimizer)  # momentum for sgd, beta_1 for adam: MLPClassifier's names
    model = MLPClassifier(hidden_layer_sizes=(config["hidden"],), random_state=0, **settings)
    best = 0.0
    for epoch in range(config["epochs"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=list(range(10)))
        accuracy = float(model.score(x_val, y_val))
        best = max(best, accuracy)
        hs.report(epoch, accuracy=accuracy)
    return {"accuracy": best}


def main() -> None:
    result = hs.tune(SPACE, train, metric="accuracy", mode="max", n_trials=20, seed=0)
    print(f"best accuracy {result.best_value:.4f} with {result.best_config}")


if __name__ == "__main__":
    main()
