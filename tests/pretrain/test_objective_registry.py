"""The objective registry and the trainer's optional objective hooks."""

from __future__ import annotations

import pytest

from eofm.pretrain.config import OBJECTIVES
from eofm.pretrain.objectives import list_objectives, objective_params, register_objective


def test_mae_is_registered_and_every_registered_objective_is_configurable() -> None:
    assert "mae" in list_objectives()
    assert set(list_objectives()) <= set(OBJECTIVES)


def test_objective_params_merge_and_name_unknown_keys() -> None:
    assert objective_params({"a": 2}, {"a": 1, "b": 3}, "x") == {"a": 2, "b": 3}
    with pytest.raises(ValueError, match=r"unknown key\(s\) for 'x': 'bb' \(did you mean 'b'\?\)"):
        objective_params({"bb": 1}, {"a": 1, "b": 3}, "x")


def test_a_name_cannot_be_registered_twice() -> None:
    register_objective("_test_twice")(lambda cfg, info: None)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("_test_twice")(lambda cfg, info: None)
