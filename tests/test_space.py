"""Search spaces: validation with errors that name the field, and the plain-data round trip."""

from __future__ import annotations

import json

import pytest
import yaml

import hypersweep as hs
from hypersweep.strategies import (
    Float,
    Int,
    flatten_space,
    grid_search_space,
    parse_space,
    space_to_data,
    validate_space,
)

SPACE = {
    "lr": hs.loguniform(1e-4, 1e-1),
    "dropout": hs.uniform(0.0, 0.5),
    "layers": hs.randint(1, 5),
    "momentum": hs.quniform(0.5, 0.9, 0.1),
    "optimizer": hs.choice(["adam", "sgd"]),
    "batch": hs.grid([16, 32]),
    "epochs": 10,
    "model": {"width": hs.choice([64, 128]), "act": "relu", "opt": {"type": "adam"}},
}


def test_round_trip_through_yaml_and_json() -> None:
    data = space_to_data(SPACE)
    assert data["lr"] == {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}
    assert data["layers"] == {"type": "int", "low": 1, "high": 4}  # randint excludes high
    assert data["opt" if False else "model"]["opt"] == {
        "type": "constant",
        "value": {"type": "adam"},
    }
    for text in (yaml.safe_dump(data), json.dumps(data)):
        loaded = yaml.safe_load(text)
        assert parse_space(loaded) == {**SPACE, "model": {**SPACE["model"]}}
        assert space_to_data(parse_space(loaded)) == data


def test_flatten_names_nested_parameters_with_dots() -> None:
    assert list(flatten_space(SPACE)) == [
        "lr",
        "dropout",
        "layers",
        "momentum",
        "optimizer",
        "batch",
        "model.width",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"lr": {"type": "float", "low": 1, "high": 0}},
            "space.lr: low (1) must be less than high",
        ),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "space.lr: a log-scaled"),
        ({"lr": {"type": "flaot", "low": 0, "high": 1}}, "space.lr.type: unknown type 'flaot'"),
        ({"n": {"type": "int", "low": 1.5, "high": 3}}, "space.n: low must be an integer"),
        (
            {"a": {"b": {"type": "categorical", "values": []}}},
            "space.a.b: values must not be empty",
        ),
        ({"a": {"type": "categorical"}}, "space.a: needs 'values'"),
        ({"a": {"type": "float", "low": 0, "high": 1, "lo": 3}}, "space.a: unknown field(s) lo"),
        ({"a": {"type": "float", "high": 1}}, "space.a: needs low"),
        ({"a.b": 1}, "keys must not contain '.'"),
        ({}, "the space is empty"),
        ({"a": 1}, "no parameter to search"),
    ],
)
def test_invalid_spaces_are_refused_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(hs.ConfigError) as error:
        validate_space(parse_space(data))
    assert message in str(error.value)


def test_python_helpers_refuse_bad_ranges() -> None:
    with pytest.raises(hs.ConfigError, match="randint needs low < high"):
        hs.randint(3, 3)
    with pytest.raises(hs.ConfigError, match="step must be positive"):
        hs.quniform(0, 1, 0)
    with pytest.raises(hs.ConfigError, match="null, booleans, numbers and strings"):
        hs.choice([[1, 2]])


def test_grid_values() -> None:
    assert grid_search_space({"a": hs.grid([1, 2]), "b": Int(0, 4, step=2)}) == {
        "a": [1, 2],
        "b": [0, 2, 4],
    }
    with pytest.raises(hs.ConfigError, match="space.x: the grid strategy needs a finite set"):
        grid_search_space({"x": Float(0, 1)})
