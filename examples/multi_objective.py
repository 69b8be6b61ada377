"""Two objectives: validation accuracy (max) against model size (min) on scikit-learn's digits.

There is no single best trial but a Pareto front: the trials that no other trial beats on both
accuracy and size. NSGA-II searches for it; a constraint keeps every model under 40,000
parameters (larger trials run, are recorded as infeasible, and never enter the front). Quick:
small MLPs, a few epochs, nothing downloaded.

    python examples/multi_objective.py
    hypersweep best multi-objective     # the front, one line per trial
    hypersweep plot multi-objective     # accuracy against size, the front highlighted
"""

from __future__ import annotations

import warnings
from typing import Any

import hypersweep as hs

SPACE = {
    "layers": hs.randint(1, 4),
    "width": hs.choice([8, 16, 32, 64, 128, 256]),
    "lr": hs.loguniform(1e-3, 1e-1),
    "epochs": 8,
}


def train(config: dict[str, Any]) -> dict[str, float]:
    """Train an MLP on digits; return its accuracy and its number of parameters."""
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
    hidden = (config["width"],) * config["layers"]
    model = MLPClassifier(
        hidden_layer_sizes=hidden, learning_rate_init=config["lr"], random_state=0
    )
    best = 0.0
    for epoch in range(config["epochs"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.partial_fit(x_train, y_train, classes=list(range(10)))
        best = max(best, float(model.score(x_val, y_val)))
        hs.report(epoch, accuracy=best)
    size = sum(w.size for w in model.coefs_) + sum(b.size for b in model.intercepts_)
    return {"accuracy": best, "params": float(size)}


def main(n_trials: int = 40, name: str = "multi-objective") -> hs.SweepResult:
    result = hs.tune(
        SPACE,
        train,
        metric=["accuracy", "params"],
        mode=["max", "min"],
        constraints={"params": {"max": 40_000}},
        strategy="nsga2",
        n_trials=n_trials,
        seed=0,
        name=name,
        resume=True,
    )
    print(f"\n{result.counts()}; Pareto front:")
    for trial in result.best_trials:
        accuracy, size = trial.values or (0.0, 0.0)
        print(f"  trial {trial.number}: accuracy {accuracy:.4f}, {size:.0f} parameters")
    return result


if __name__ == "__main__":
    main()
