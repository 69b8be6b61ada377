"""Objectives for conditional spaces, several objectives and constraints (tests and examples)."""

from __future__ import annotations

import math
from typing import Any


def branch_loss(config: dict[str, Any]) -> dict[str, float]:
    """A loss that depends on the chosen optimizer branch; echoes the keys it was given."""
    optimizer = config["optimizer"]
    if optimizer["name"] == "sgd":
        loss = (math.log10(optimizer["lr"]) + 2) ** 2 + (optimizer["momentum"] - 0.9) ** 2
    else:
        loss = (math.log10(optimizer["lr"]) + 3) ** 2 + (optimizer["beta1"] - 0.9) ** 2
        schedule = optimizer.get("schedule")
        if schedule is not None:
            loss += 0.1 if schedule["kind"] == "step" else 0.0
    return {"loss": loss}


def zdt1(config: dict[str, Any]) -> dict[str, float]:
    """ZDT1: two objectives to minimize; the true front is f2 = 1 - sqrt(f1), f1 in [0, 1]."""
    xs = [config[f"x{i}"] for i in range(len(config))]
    f1 = xs[0]
    g = 1 + 9 * sum(xs[1:]) / (len(xs) - 1)
    return {"f1": f1, "f2": g * (1 - math.sqrt(f1 / g))}


def constrained(config: dict[str, Any]) -> dict[str, float]:
    """Best unconstrained at x=3, but memory_gb = 4x, so memory_gb <= 8 allows x <= 2 only."""
    x = config["x"]
    return {"loss": (x - 3) ** 2, "memory_gb": 4 * x}


def constrained_two(config: dict[str, Any]) -> dict[str, float]:
    """ZDT1 with a memory bound: memory_gb = 10 * f1, so memory_gb <= 5 keeps f1 <= 0.5."""
    metrics = zdt1(config)
    return {**metrics, "memory_gb": 10 * metrics["f1"]}


def grid_loss(config: dict[str, Any]) -> float:
    """Any number that depends on the config (for grid sweeps over branches)."""
    model = config["model"]
    if model["kind"] == "linear":
        return model["alpha"] + config["seed"]
    return model["depth"] + (model["split"] == "b") + config["seed"]


def sum_loss(config: dict[str, Any]) -> float:
    """The sum of the config's numbers, nested ones included."""
    total = 0.0
    for value in config.values():
        total += sum_loss(value) if isinstance(value, dict) else float(value)
    return total


def layers_loss(config: dict[str, Any]) -> float:
    """For a define-by-run space: prefers two layers of 100 units."""
    layers = config["layers"]
    return (len(layers) - 2) ** 2 + sum((units - 100) ** 2 for units in layers) / 1e4


def trade_off(config: dict[str, Any]) -> dict[str, float]:
    """Two objectives on one line: every trial is on the Pareto front."""
    return {"f1": config["x"], "f2": 1.0 - config["x"]}
