"""The copy an asynchronous checkpoint uploads: independent of the state, and made in the
previous copy's memory when it fits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import storage_objectives

import hypersweep as hs
from hypersweep.orchestrator._state_copy import copy_state


def test_a_copy_is_independent_and_reuses_the_previous_copys_arrays() -> None:
    weights = np.arange(1000, dtype=np.float32)
    state: dict[str, Any] = {"w": weights, "same": weights, "layers": [np.ones(3)], "step": 1}
    first = copy_state(state)
    assert first["w"] is not weights and np.array_equal(first["w"], weights)
    assert first["same"] is first["w"]  # one array twice stays one array, as in deepcopy
    weights += 1  # training changes the state in place
    assert first["w"][0] == 0.0
    memory = first["w"].ctypes.data
    second = copy_state(state, first)
    assert second["w"] is first["w"] and second["w"].ctypes.data == memory
    assert second["w"][0] == 1.0 and second["layers"][0] is first["layers"][0]
    # What does not fit (another shape, dtype) is copied afresh.
    state["w"] = np.zeros(10, dtype=np.float64)
    third = copy_state(state, second)
    assert third["w"] is not second["w"] and third["w"].shape == (10,)


def test_tensors_are_copied_into_the_previous_copys_tensors() -> None:
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(100.0), "nested": {"b": torch.zeros(4, dtype=torch.int64)}}
    first = copy_state(state)
    state["w"].add_(1)
    assert float(first["w"][0]) == 0.0
    second = copy_state(state, first)
    assert second["w"] is first["w"] and float(second["w"][0]) == 1.0
    assert second["nested"]["b"] is first["nested"]["b"]
    # A module's state_dict (an OrderedDict with its _metadata) is copied in place too.
    model = torch.nn.Linear(4, 2)
    saved = copy_state(model.state_dict())
    with torch.no_grad():
        model.weight.add_(1.0)
    again = copy_state(model.state_dict(), saved)
    assert type(again) is type(model.state_dict()) and again["weight"] is saved["weight"]
    assert torch.equal(again["weight"], model.weight) and again._metadata == saved._metadata
    torch.nn.Linear(4, 2).load_state_dict(again)


def test_asynchronous_checkpoints_each_keep_their_state(run_dir: Any) -> None:
    result = hs.tune(
        {"x": hs.uniform(0, 1)},
        storage_objectives.keeps_each_snapshot,
        metric="loss",
        n_trials=1,
        keep_checkpoints=3,
    )
    (trial,) = result.trials
    assert trial.state == "completed", trial.error
