"""The objective registry and the trainer's optional objective hooks."""

from __future__ import annotations

import pytest
import torch

from eofm.pretrain.config import OBJECTIVES, ConfigError, load_config
from eofm.pretrain.data import BandInfo
from eofm.pretrain.objectives import (
    build_objective,
    list_objectives,
    mae,
    objective_params,
    register_objective,
    satmaepp,
    selectivemae,
    softcon,
)

# every objective's objective.params defaults and the keys that document null as a value
PARAM_DEFAULTS = {"mae": (mae.PARAMS, ()), "satmaepp": (satmaepp.DEFAULTS, ()),
                  "selectivemae": (selectivemae.DEFAULTS, ()),
                  "softcon": (softcon.DEFAULTS, softcon.NULLABLE)}


def test_mae_is_registered_and_every_registered_objective_is_configurable() -> None:
    assert "mae" in list_objectives()
    assert set(list_objectives()) <= set(OBJECTIVES)


def test_objective_params_merge_and_name_unknown_keys() -> None:
    assert objective_params({"a": 2}, {"a": 1, "b": 3}, "x") == {"a": 2, "b": 3}
    with pytest.raises(ValueError, match=r"unknown key\(s\) for 'x': 'bb' \(did you mean 'b'\?\)"):
        objective_params({"bb": 1}, {"a": 1, "b": 3}, "x")


@pytest.mark.parametrize("objective", sorted(PARAM_DEFAULTS))
def test_null_for_a_setting_that_needs_a_value_is_named(objective: str) -> None:
    """``key:`` left empty in YAML (or ``key=null``) is reported by name for every setting
    whose default is a value (it used to pass and fail deep in the constructor with a raw
    TypeError); null stays accepted where the default is null or null is documented."""
    defaults, nullable = PARAM_DEFAULTS[objective]
    for k, d in defaults.items():
        if d is None or k in nullable:
            assert objective_params({k: None}, defaults, objective, nullable)[k] is None
        else:
            with pytest.raises(ValueError, match=rf"^objective\.params\.{k}: expected .+ \(the "
                                                 rf"default is .+\), got null$"):
                objective_params({k: None}, defaults, objective, nullable)


@pytest.mark.parametrize(("objective", "key", "extra"), [
    ("selectivemae", "temperature", []), ("selectivemae", "growth_steps", []),
    ("selectivemae", "prune_low_loss_ratio", []),
    ("satmaepp", "mse_weight", ["data.crop_size=64", "objective.norm_pix_loss=false"]),
    ("satmaepp", "upsampler_ratio", ["data.crop_size=64", "objective.norm_pix_loss=false"]),
    ("softcon", "tau", [])])
def test_null_param_from_the_config_is_refused_when_it_loads_and_when_built(
        objective: str, key: str, extra: list[str]) -> None:
    bands = ["B02", "B03", "B04", "B08"]
    n = len(bands)
    info = BandInfo("s2", "s2_l1c", bands, torch.full((n,), 500.0), torch.full((n,), 20.0),
                    10.0, torch.zeros(n), torch.ones(n), {})
    args = ["data.path=/d", f"objective.name={objective}", "model.img_size=16",
            "model.name=vit_test_patch8", *extra]
    why = rf"objective\.params\.{key}: expected a number .*got null"
    with pytest.raises(ConfigError, match=why):
        load_config(None, [*args, f"objective.params.{key}=null"])
    cfg = load_config(None, args)
    cfg.objective.params = {key: None}  # past the load-time check: the builder refuses too
    with pytest.raises(ValueError, match=why):
        build_objective(cfg, info)


def test_softcon_head_norm_null_still_means_no_norm() -> None:
    from eofm.models import create_model

    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16)
    m = softcon.SoftCon(enc, ["B02", "B03"], head_norm=None, proj_hidden_dim=8, proj_dim=4,
                        pred_hidden_dim=8)
    assert not any(isinstance(x, (torch.nn.BatchNorm1d, torch.nn.LayerNorm))
                   for x in m.projector.modules())


def test_a_name_cannot_be_registered_twice() -> None:
    register_objective("_test_twice")(lambda cfg, info: None)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("_test_twice")(lambda cfg, info: None)


def _info(bands: list[str]) -> BandInfo:
    n = len(bands)
    return BandInfo("s2", "s2_l1c", bands, torch.full((n,), 500.0), torch.full((n,), 20.0),
                    10.0, torch.zeros(n), torch.ones(n), {})


@pytest.mark.parametrize(("objective", "key", "value", "extra"), [
    ("mae", "masking", "bogus", []),
    ("satmaepp", "num_scales", 1, ["data.crop_size=64", "objective.norm_pix_loss=false"]),
    ("satmaepp", "upsampler_ratio", 0, ["data.crop_size=64", "objective.norm_pix_loss=false"]),
    ("selectivemae", "kept_mask_ratio", 2.0, []), ("selectivemae", "cell_size", 3, []),
    ("selectivemae", "stage_fractions", [0.5, 0.2, 0.9], []),
    ("softcon", "pool", "max", [])])
def test_a_value_refused_when_the_config_loads_is_refused_by_the_builder_alike(
        objective: str, key: str, value: object, extra: list[str]) -> None:
    """One source of truth: the check the configuration runs when it loads is the one the
    builder runs (and the constructor, for direct use), with the same message."""
    from eofm.pretrain.objectives.base import objective_param_problems

    args = ["data.path=/d", f"objective.name={objective}", "model.img_size=16",
            "model.name=vit_test_patch8", *extra]
    cfg = load_config(None, args)
    with pytest.raises(ConfigError) as at_load:
        load_config(None, [*args, f"objective.params.{key}={value}"])
    [why] = at_load.value.problems
    assert why.startswith(f"objective.params.{key}") and why == objective_param_problems(
        objective, {key: value}, cfg)[0]
    cfg.objective.params = {key: value}  # past the load-time check: the builder refuses too
    with pytest.raises(ValueError) as at_build:
        build_objective(cfg, _info(["B02", "B03", "B04", "B08"]))
    assert why.split(": ", 1)[1] in str(at_build.value)


def test_a_registered_check_runs_on_the_values_merged_over_the_defaults() -> None:
    """A check registered with the defaults sees every key (the defaults filling in) and, for a
    key of the wrong kind, its default: that key is reported once, by its kind."""
    from eofm.pretrain.objectives.base import configured_params, objective_param_problems

    seen = []

    def check(params, cfg):
        seen.append(dict(params))
        return [] if params["n"] >= 0 else [f"objective.params.n: expected >= 0, got {params['n']}"]

    register_objective("_test_checked", {"n": 1, "s": "a"}, check=check)(lambda cfg, info: None)
    cfg = load_config(None, ["data.path=/d"])
    assert objective_param_problems("_test_checked", {"n": -2}, cfg) == [
        "objective.params.n: expected >= 0, got -2"]
    assert objective_param_problems("_test_checked", {"n": "x"}, cfg) == [
        "objective.params.n: expected a number (the default is 1), got 'x'"]
    assert seen == [{"n": -2, "s": "a"}, {"n": 1, "s": "a"}]
    assert objective_param_problems("_test_checked", {"n": -2}) == []  # no config: kinds only
    cfg.objective.name, cfg.objective.params = "_test_checked", {"n": -1}
    with pytest.raises(ConfigError, match=r"objective\.params\.n: expected >= 0, got -1"):
        configured_params(cfg)
    cfg.objective.params = {"s": "b"}
    assert configured_params(cfg) == {"n": 1, "s": "b"}


def test_a_registration_names_the_typed_fields_its_objective_reads() -> None:
    """``fields``: the typed objective fields an objective reads; one it does not read, set to
    anything but its default, is a problem of the configuration (the masked autoencoders read
    all, softcon none), and an unknown field name is refused when registering."""
    from eofm.pretrain.objectives.base import objective_field_problems, typed_fields

    assert typed_fields() == ["mask_ratio", "norm_pix_loss", "decoder_dim", "decoder_depth",
                              "decoder_heads"]
    cfg = load_config(None, ["data.path=/d", "objective.mask_ratio=0.5",
                             "objective.norm_pix_loss=false", "objective.decoder_depth=2"])
    for name in ("mae", "satmaepp", "selectivemae"):
        cfg.objective.name = name
        assert objective_field_problems(cfg.objective) == []
    cfg.objective.name = "softcon"
    assert [p.split(":")[0] for p in objective_field_problems(cfg.objective)] == [
        "objective.mask_ratio", "objective.norm_pix_loss", "objective.decoder_depth"]
    register_objective("_test_fields", fields=["mask_ratio"])(lambda cfg, info: None)
    cfg.objective.name = "_test_fields"
    assert [p.split(":")[0] for p in objective_field_problems(cfg.objective)] == [
        "objective.norm_pix_loss", "objective.decoder_depth"]
    register_objective("_test_no_fields")(lambda cfg, info: None)  # reads them all
    cfg.objective.name = "_test_no_fields"
    assert objective_field_problems(cfg.objective) == []
    with pytest.raises(ValueError, match=r"fields: expected typed objective fields among "
                                         r"\['mask_ratio', .*got \['mask_ration'\]"):
        register_objective("_test_bad_fields", fields=["mask_ration"])
