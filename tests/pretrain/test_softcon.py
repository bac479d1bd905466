"""SoftCon: soft targets, the InfoNCE reduction, the global-batch gather over two gloo ranks,
the EMA target, the device-side views, and a short end-to-end run with export."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from eofm.models import create_model
from eofm.models.masking import num_keep
from eofm.pretrain.config import load_config
from eofm.pretrain.objectives.softcon import (
    SoftCon,
    build_softcon,
    ema_momentum,
    make_views,
    soft_targets,
    softcon_loss,
)
from eofm.pretrain.optim import build_optimizer

BANDS = ["B02", "B03", "B04", "B08"]
SMALL = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32}


def _objective(**params) -> SoftCon:
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=16)
    return SoftCon(enc, BANDS, **{**SMALL, **params})


def _infonce(z: torch.Tensor, zt: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE written out: -log(exp(s_ii/tau) / sum_j exp(s_ij/tau)), averaged."""
    total = 0.0
    for i in range(z.shape[0]):
        sims = [float(z[i] @ zt[j]) / tau for j in range(zt.shape[0])]
        total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    return torch.tensor(total / z.shape[0])


def test_one_hot_all_different_labels_give_infonce() -> None:
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    zt = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    labels = torch.eye(6)[torch.randperm(6, generator=g)]
    targets = soft_targets(labels, labels, 0, 6)
    assert torch.equal(targets, torch.eye(6))
    loss = softcon_loss(z, zt, targets, tau=0.3)
    assert torch.allclose(loss, _infonce(z, zt, 0.3), atol=1e-5)


def test_identical_labels_give_equal_soft_targets_and_unlabelled_fall_back() -> None:
    y = torch.tensor([[1.0, 0, 1, 0], [1.0, 0, 1, 0], [0, 1.0, 1, 0], [0, 0, 0, 0],
                      [0.2, 0.8, 0, 0]])
    t = soft_targets(y, y, 0, 5)
    assert torch.equal(t[0], t[1]) and t[0, 0] == t[0, 1] == 1.0
    assert torch.allclose(t[0, 2], torch.tensor(0.5))  # cos([1,0,1],[0,1,1]) = 1/2
    assert torch.equal(t[3], torch.tensor([0.0, 0, 0, 1, 0]))  # identity row
    assert t[0, 3] == 0 and t[4, 4] == pytest.approx(1.0)
    # a rank's rows sit at its offset in the global batch
    t2 = soft_targets(y[3:], y, 3, 5)
    assert torch.equal(t2, t[3:])
    # no labels at all: identity, and the loss equals InfoNCE
    assert torch.equal(soft_targets(None, None, 2, 6, batch_size=2), torch.eye(6)[2:4])
    with pytest.raises(ValueError, match="offset: expected 0 <= offset <= n_all - B = 4"):
        soft_targets(None, None, 5, 6, batch_size=2)  # rows 5..6 would run past the batch


def test_unlabelled_samples_are_not_positives_of_each_other() -> None:
    """Two unlabelled samples of one batch have identical (all-zero) label vectors, yet
    nothing says they show alike scenes: each keeps its identity row (its own other view is
    its only positive), not a target of 1 at the other."""
    y = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1.0, 0]])
    t = soft_targets(y, y, 0, 4)
    assert torch.equal(t[1], torch.tensor([0.0, 1, 0, 0]))
    assert torch.equal(t[2], torch.tensor([0.0, 0, 1, 0]))
    assert t[0, 1] == t[0, 2] == 0  # nor positives of a labelled sample


def test_bce_option_and_unknown_loss() -> None:
    z = F.normalize(torch.randn(3, 4), dim=1)
    t = torch.eye(3)
    bce = softcon_loss(z, z, t, 0.5, "bce")
    hand = F.binary_cross_entropy_with_logits(z @ z.T / 0.5, t)
    assert torch.allclose(bce, hand)
    with pytest.raises(ValueError, match="loss"):
        softcon_loss(z, z, t, 0.5, "hinge")


def test_soft_ce_is_against_the_row_normalised_targets() -> None:
    """The soft cross-entropy takes each row's targets as a distribution, T_ij / sum_j T_ij
    (rows of cosines sum to more than 1 where a sample has several positives), written out by
    hand on targets with one, two and three positives per row."""
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    zt = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    t = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0.5, 0], [0, 0.5, 1, 0], [0, 0, 0, 1]])
    p = t / t.sum(1, keepdim=True)
    hand = -(p * F.log_softmax(z @ zt.T / 0.2, dim=1)).sum(1).mean()
    torch.testing.assert_close(softcon_loss(z, zt, t, 0.2), hand)


def test_module_with_one_hot_labels_equals_identity_targets() -> None:
    obj = _objective()
    x = torch.randn(4, 4, 16, 16)
    views = (x, x.flip(-1))
    ids = torch.arange(4)[None].repeat(4, 1)
    a = obj(x, views=views, ids_keep=ids, labels=torch.eye(4))["loss"]
    b = obj(x, views=views, ids_keep=ids)["loss"]
    out = obj(x, views=views, ids_keep=ids, labels=torch.ones(4, 3))  # all alike
    assert torch.allclose(a, b) and not torch.allclose(a, out["loss"])
    assert torch.equal(out["targets"], torch.ones(4, 4))


def test_ema_target_gets_no_gradient_and_follows_the_schedule() -> None:
    obj = _objective(momentum=0.9)
    target_ids = {id(p) for p in [*obj.target_encoder.parameters(),
                                  *obj.target_projector.parameters()]}
    opt = build_optimizer(obj, load_config(None, ["data.path=x"]).optim, 0.1)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not target_ids & in_opt and in_opt
    x = torch.randn(4, 4, 16, 16)
    obj(x, generator=torch.Generator().manual_seed(1), labels=torch.rand(4, 5))["loss"].backward()
    assert all(p.grad is None for p in obj.target_encoder.parameters())
    assert all(p.grad is None for p in obj.target_projector.parameters())
    opt.step()
    before = [t.detach().clone() for t, _ in obj._pairs()]
    obj.on_step_end(3, 10)
    m = ema_momentum(3, 10, 0.9)
    assert obj.last_momentum == pytest.approx(m)
    for (t, o), b in zip(obj._pairs(), before, strict=True):
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)
        assert torch.equal(t, b.clone().mul_(m).add_(o.detach(), alpha=1 - m))  # in place, fp32
    assert obj.ema_shadow() is None and not any(k.startswith("ema_fp32") for k in obj.state_dict())
    assert ema_momentum(0, 10, 0.9) == pytest.approx(0.9)
    assert ema_momentum(10, 10, 0.9) == pytest.approx(1.0)
    assert ema_momentum(5, 10, 0.9) == pytest.approx(0.95)


# --- the EMA under a low-precision cast (DeepSpeed bf16 casts every parameter) ----------------

def _bf16_cast(obj: SoftCon) -> SoftCon:
    """What DeepSpeed's engine does with bf16: every parameter, the target's included."""
    for p in obj.parameters():
        p.data = p.data.to(torch.bfloat16)
    return obj


def _ema_state(obj: SoftCon) -> list[torch.Tensor]:
    """The EMA the objective holds, in fp32: its shadow when it has one, else the target."""
    if "ema_fp32" in obj._modules:
        return obj.ema_fp32.tensors()
    return [t.detach().float() for t, _ in obj._pairs()]


def _online_step(obj: SoftCon, g: torch.Generator) -> None:
    """A small optimiser step on the online side, written back in the online dtype."""
    with torch.no_grad():
        for _, o in obj._pairs():
            o.add_((torch.randn(o.shape, generator=g) * 1e-3).to(o.dtype))


def test_ema_of_a_bf16_cast_target_stays_exact_in_fp32() -> None:
    obj = _bf16_cast(_objective(momentum=0.99))
    ref = [t.detach().float().clone() for t, _ in obj._pairs()]
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        _online_step(obj, g)
        obj.on_step_end(step, 1000)
        m = obj.last_momentum
        ref = [m * r + (1 - m) * o.detach().float()
               for r, (_, o) in zip(ref, obj._pairs(), strict=True)]
    moved = 0.0
    for got, want, (t, _) in zip(_ema_state(obj), ref, obj._pairs(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)  # fp32 precision
        assert got.dtype == torch.float32 and t.dtype == torch.bfloat16
        assert torch.equal(t, got.to(torch.bfloat16))  # the target's forward uses the shadow
        moved += float((want - t.detach().float()).abs().sum())
    assert moved > 0  # the bf16 target alone could not hold this EMA


def test_fp32_ema_shadow_survives_a_cast_and_a_resume() -> None:
    a = _bf16_cast(_objective(momentum=0.99))
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        _online_step(a, g)
        a.on_step_end(step, 1000)
    a.bfloat16()  # a later cast of the whole module leaves the shadow fp32
    assert all(s.dtype == torch.float32 for s in a.ema_fp32.tensors())
    state = a.state_dict()
    assert sum(k.startswith("ema_fp32.") for k in state) == len(a._pairs())
    b = _bf16_cast(_objective(momentum=0.99))  # a fresh process: no shadow until it loads one
    assert "ema_fp32" not in b._modules
    b.load_state_dict(state)  # strict
    for x, y in zip(a.ema_fp32.tensors(), b.ema_fp32.tensors(), strict=True):
        assert y.dtype == torch.float32 and torch.equal(x, y)
    for obj in (a, b):  # one more identical step: the resumed EMA goes on exactly
        _online_step(obj, torch.Generator().manual_seed(2))
        obj.on_step_end(3, 1000)
    for x, y in zip(_ema_state(a), _ema_state(b), strict=True):
        assert torch.equal(x, y)


# --- labels from the batch ------------------------------------------------------------------

def test_batch_inputs_take_labels_from_label_or_seg(caplog) -> None:
    import numpy as np

    obj = _objective()
    y = np.array([[1, 0, 1], [0, 0, 0]], dtype=np.uint8)
    got = obj.batch_inputs({"label": y}, torch.device("cpu"))["labels"]
    assert got.dtype == torch.float32 and torch.equal(got, torch.tensor(y).float())
    with pytest.raises(ValueError, match=r"label: SoftCon needs \(B, K\).*got shape \(2,\)"):
        obj.batch_inputs({"label": np.array([3, 1])}, torch.device("cpu"))
    seg = _objective(seg_classes=3)
    raster = torch.tensor([[[0, 0], [1, 2]], [[2, 2], [2, 2]]])
    fr = seg.batch_inputs({"seg": raster, "label": y}, torch.device("cpu"))["labels"]
    assert torch.allclose(fr, torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="seg_classes: set, but the batch has no 'seg'"):
        seg.batch_inputs({"label": y}, torch.device("cpu"))
    with caplog.at_level("WARNING", logger="eofm.pretrain.objectives.softcon"):
        assert obj.batch_inputs({}, torch.device("cpu")) == {}
        assert obj.batch_inputs({}, torch.device("cpu")) == {}
    assert sum("no 'label' entry" in r.getMessage() for r in caplog.records) == 1  # once


def test_views_are_seeded_and_keep_nodata_zero() -> None:
    x = torch.randn(3, 2, 24, 24)
    valid = torch.ones(3, 24, 24, dtype=torch.bool)
    valid[:, :, :12] = False
    a, va, _ = make_views(x, valid, 16, torch.Generator().manual_seed(5), brightness=0.2)
    b, _, _ = make_views(x, valid, 16, torch.Generator().manual_seed(5), brightness=0.2)
    c, _, _ = make_views(x, valid, 16, torch.Generator().manual_seed(6), brightness=0.2)
    assert a.shape == (3, 2, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[~va[:, None].expand_as(a)] == 0).all() and (~va).any()
    # full-area crop, no flips/rotations/jitter: the image itself
    same, _, zoom = make_views(x, None, 24, None, crop_scale=(1.0, 1.0), flip=False,
                               rot90=False, ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5) and torch.allclose(zoom, torch.ones(3))


def test_view_zoom_is_input_pixels_per_view_pixel() -> None:
    """A quarter-area crop of a 32 px input resized to 8 px: 16 input px over 8 -> zoom 2."""
    x = torch.randn(4, 2, 32, 32)
    _, _, zoom = make_views(x, None, 8, torch.Generator().manual_seed(0),
                            crop_scale=(0.25, 0.25), ratio=(1.0, 1.0))
    torch.testing.assert_close(zoom, torch.full((4,), 2.0))
    _, _, wide = make_views(x, None, 8, torch.Generator().manual_seed(0), crop_scale=(0.2, 1.0))
    assert ((wide >= 32 * 0.2**0.5 / 8 - 1e-4) & (wide <= 4.0 + 1e-4)).all()
    assert wide.unique().numel() == 4  # one zoom per sample


def test_gsd_aware_encoder_gets_each_views_gsd() -> None:
    """SoftCon passes the loader's GSD times each view's zoom to a gsd_pos encoder."""
    seen: list[torch.Tensor] = []
    enc = create_model("vit_test_patch8", bands=["B02", "B03"], img_size=16, gsd_pos=True)
    obj = SoftCon(enc, ["B02", "B03"], **{**SMALL, "crop_scale": [0.25, 0.25]})
    real = obj.encoder.forward_features

    def spy(x, **kw):
        seen.append(kw["gsd"])
        return real(x, **kw)

    obj.encoder.forward_features = spy
    obj(torch.randn(2, 2, 64, 64), generator=torch.Generator().manual_seed(1),
        gsd=torch.tensor([10.0, 20.0]))
    # quarter-area crops of 64 px resized to 16 px: 32 input px per 16 view px, zoom 2
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.tensor([20.0, 40.0]))


def test_non_square_views_have_the_size_asked_and_no_quarter_turns() -> None:
    """make_views with (h, w): views of that size, zoom per axis pair; a non-square view turns
    by half turns only, so a full-area, ratio-1 crop is the image or its 180-degree turn."""
    x = torch.randn(6, 2, 32, 48)
    v, vv, zoom = make_views(x, None, (8, 12), torch.Generator().manual_seed(0),
                             crop_scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert v.shape == (6, 2, 8, 12) and vv.shape == (6, 8, 12)
    torch.testing.assert_close(zoom, torch.full((6,), 2.0))  # 16 x 24 input px -> 8 x 12
    for seed in range(4):
        same, _, zoom = make_views(x, None, (32, 48), torch.Generator().manual_seed(seed),
                                   crop_scale=(1.0, 1.0), flip=False, ratio=(1.0, 1.0))
        for i in range(6):
            assert (torch.allclose(same[i], x[i], atol=1e-5)
                    or torch.allclose(same[i], x[i].flip(-1, -2), atol=1e-5))
        torch.testing.assert_close(zoom, torch.ones(6))


@pytest.mark.parametrize("drop_ratio", [0.0, 0.5])
def test_non_square_encoder_sees_views_of_its_img_size(drop_ratio: float) -> None:
    """A (h, w) encoder img_size (``model.overrides.img_size``): both views and the drop map
    have the encoder's size and the token drop covers its h/p x w/p grid (the views used to
    be img_size[0] squared: silently wrong, or an index error with token dropping)."""
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=[16, 24])
    obj = SoftCon(enc, BANDS, drop_ratio=drop_ratio, head_norm="ln", **SMALL)
    shapes: list[tuple[int, ...]] = []
    for e in (obj.encoder, obj.target_encoder):
        real = e.forward_features

        def spy(x, _real=real, **kw):
            shapes.append(tuple(x.shape))
            return _real(x, **kw)

        e.forward_features = spy
    out = obj(torch.randn(3, 4, 32, 48), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and shapes == [(3, 4, 16, 24)] * 2
    pics = obj.views(torch.randn(3, 4, 32, 48), generator=torch.Generator().manual_seed(0))
    assert pics["view1"].shape == pics["view2"].shape == pics["dropped1"].shape == (3, 4, 16, 24)
    cells = pics["dropped1"][:, 0, ::8, ::8].flatten(1).sum(1)  # 2 x 3 token cells
    assert cells.eq(enc.num_tokens - num_keep(enc.num_tokens, 1.0 - drop_ratio)).all()


def test_sharded_strategies_are_refused() -> None:
    for over in (["runtime.strategy=fsdp2"],
                 ["runtime.strategy=deepspeed", "runtime.zero_stage=3"]):
        cfg = load_config(None, ["data.path=x", "objective.name=softcon", *over])
        with pytest.raises(ValueError, match=r"runtime\.strategy: softcon cannot run"):
            build_softcon(cfg, None)  # refused before the bands are looked at


def test_masked_autoencoder_fields_set_for_softcon_are_refused() -> None:
    """When the configuration loads (its registration reads none of the typed fields), and
    again, from the same check, before a configuration that skipped it is built."""
    from eofm.pretrain.config import ConfigError
    from eofm.pretrain.objectives import build_objective

    over = ["data.path=x", "objective.name=softcon", "objective.mask_ratio=0.5",
            "objective.decoder_depth=2"]
    with pytest.raises(ConfigError) as loaded:
        load_config(None, over)
    cfg = load_config(None, over, check=False)
    with pytest.raises(ConfigError) as built:
        build_objective(cfg, None)  # refused before the bands are looked at
    for err in (loaded, built):
        assert [p.split(":")[0] for p in err.value.problems] == ["objective.mask_ratio",
                                                                  "objective.decoder_depth"]
        assert "softcon does not use it, got 0.5" in str(err.value)


def test_unknown_param_is_named() -> None:
    with pytest.raises(ValueError, match="drop_ratoi"):
        _objective(drop_ratoi=0.3)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("seg_classes", "0", "an integer >= 1"),
    ("seg_classes", "2.5", "an integer >= 1"),
    ("seg_classes", "true", "an integer >= 1"),
    ("presence_threshold", "1.5", "in [0, 1)"),
    ("presence_threshold", "1.0", "in [0, 1)"),
    ("presence_threshold", "-0.1", "in [0, 1)"),
    ("weights_init", "zeros", "one of ['mean', 'random']"),
    ("brightness", "-0.1", "expected >= 0"),
    ("weights_rgb_bands", "[B04, B03]", "3 band names"),
    ("weights_rgb_bands", "[B04, B03, 3]", "3 band names"),
    ("head_norm", "batch", "one of ['bn', 'ln', None]"),
    ("proj_dim", "0", "an integer >= 1"),
    ("proj_hidden_dim", "-4", "an integer >= 1"),
    ("pred_hidden_dim", "2.5", "an integer >= 1"),
])
def test_bad_label_jitter_and_weights_params_are_refused_at_load(
        key: str, value: str, expected: str) -> None:
    """Refused when the configuration loads, naming objective.params.<key> (they failed at
    step 1 with a message naming no setting, or were accepted: a negative brightness silently
    disabled the jitter, weights_init='zeros' passed without a weights file), and by SoftCon
    itself with the same message."""
    from eofm.pretrain.config import ConfigError

    over = ["data.path=x", "objective.name=softcon", f"objective.params.{key}={value}"]
    with pytest.raises(ConfigError) as err:
        load_config(None, over)
    assert [p.split(":")[0] for p in err.value.problems] == [f"objective.params.{key}"]
    assert expected in str(err.value)
    params = load_config(None, over, check=False).objective.params
    with pytest.raises(ValueError, match=rf"{key}: .*{re.escape(expected)}"):
        _objective(**params)


def test_valid_label_jitter_and_weights_params_load() -> None:
    for over in (["seg_classes=3", "presence_threshold=0.5"], ["seg_classes=null"],
                 ["brightness=0", "weights_init=random"], ["weights_rgb_bands=null"],
                 ["weights_rgb_bands=[B4, B3, B2]", "presence_threshold=0"]):
        load_config(None, ["data.path=x", "objective.name=softcon",
                           *(f"objective.params.{o}" for o in over)])
    assert _objective(seg_classes=3, presence_threshold=0.5, brightness=0.0).p["seg_classes"] == 3


# --- two gloo ranks vs one process with the whole batch -------------------------------------

def _run(obj: SoftCon, x, views, ids, labels) -> tuple[float, dict[str, torch.Tensor]]:
    loss = obj(x, views=views, ids_keep=ids, labels=labels)["loss"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in obj.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, 16, 16, generator=g)
    views = (x + 0.1 * torch.randn(8, 4, 16, 16, generator=g), x.flip(-2))
    ids = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(8)])
    labels = (torch.rand(8, 6, generator=g) > 0.6).float()
    labels[5] = 0  # one unlabelled sample
    return x, views, ids, labels


def _worker(rank: int, port: int, out: str) -> None:
    from eofm.pretrain import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    D.init_distributed(backend="gloo")
    torch.set_num_threads(1)
    x, views, ids, labels = _data()
    i = slice(4 * rank, 4 * rank + 4)
    obj = _objective(head_norm="ln")
    loss, grads = _run(obj, x[i], tuple(v[i] for v in views), ids[i], labels[i])
    mean_loss = float(D.all_reduce_mean(torch.tensor(loss)))
    for g in grads.values():  # what DDP does: average the ranks' gradients
        torch.distributed.all_reduce(g)
        g /= 2
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": grads}, Path(out) / "dist.pt")
    D.teardown()


def test_global_batch_gather_matches_one_process(tmp_path: Path, spawn_two_ranks) -> None:
    spawn_two_ranks(_worker, str(tmp_path))
    got = torch.load(tmp_path / "dist.pt", weights_only=True)
    x, views, ids, labels = _data()
    loss, grads = _run(_objective(head_norm="ln"), x, views, ids, labels)
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(got["grads"]) == set(grads) and grads
    for n, g in grads.items():
        assert torch.allclose(got["grads"][n], g, atol=1e-6, rtol=1e-4), n


# --- end to end: eofm-pretrain on labelled BigEarthNet patches, then eofm-export -------------

def test_trainer_run_and_export_the_online_encoder(sample_data: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    from safetensors.torch import load_file

    from eofm.finetune.export import export_run
    from eofm.pretrain.cli import main

    seen: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # (labels, targets) per step
    forward = SoftCon.forward

    def spy(self, x, valid=None, **kw):
        out = forward(self, x, valid, **kw)
        seen.append((kw.get("labels"), out["targets"]))
        return out

    monkeypatch.setattr(SoftCon, "forward", spy)

    cfg = tmp_path / "softcon.yaml"
    cfg.write_text(f"""
data:
  path: {tmp_path / "ben"}
  build_from: {sample_data / "bigearthnet"}
  build_args: [--tile, "40", --stride, "40"]
  modalities: [s1]
  crop_size: 32
  shuffle_buffer: 10
  num_workers: 0
  batch_size: 8
model: {{name: vit_test_patch8, img_size: 32}}
objective:
  name: softcon
  params: {{proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32, drop_ratio: 0.25}}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 3, warmup_steps: 1}}
runtime: {{out_dir: {tmp_path / "run"}, ckpt_every: 0}}
logging: {{log_every: 1, progress: false}}
""")
    assert main(["--config", str(cfg)]) == 0
    recs = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) for r in recs)
    # the shards' multi-hot labels reach the objective: soft targets, not InfoNCE's identity
    assert len(seen) == 3 and all(y is not None and y.shape[0] == 8 and y.ndim == 2
                                  and (y.sum(1) > 0).all() for y, _ in seen)
    assert not any(torch.equal(t, torch.eye(*t.shape)) for _, t in seen)
    ckpt = torch.load(next((tmp_path / "run" / "checkpoints").glob("step_*.pt")),
                      weights_only=True)
    state = ckpt["model"]
    online = state["encoder.blocks.0.attn.qkv.weight"]
    target = state["target_encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(online, target)  # the EMA lags the online encoder
    out = export_run(tmp_path / "run", tmp_path / "export")
    exported = load_file(str(out / "model.safetensors"))
    assert torch.equal(exported["blocks.0.attn.qkv.weight"], online)
    assert not any(k.startswith(("target_", "projector", "predictor")) for k in exported)
    card = (out / "README.md").read_text()
    assert "| Token drop ratio | 0.25 |" in card and "softcon" in card
    config = json.loads((out / "config.json").read_text())
    assert config["eofm_contract"]["bands"] == ["VV", "VH"]


@pytest.mark.parametrize(("crop", "img", "factor"), [
    (32, 16, 2.0),  # the 32 px crop seen at 16 px: twice the crop's GSD
    (None, 16, 2.0),  # no crop: the 32 px tile seen at 16 px
    (16, 32, 0.5),  # a 16 px crop (20 m) upsampled to 32 px
    (32, 32, 1.0),  # crop == img_size: unchanged
    (None, 32, 1.0),
])
def test_contract_gsd_is_that_of_the_views(scene_tiles_32: Path, tmp_path: Path,
                                           crop: int | None, img: int, factor: float) -> None:
    """The views resample the loader's crop (or tile) to model.img_size: the trainer's input
    contract (so the checkpoint's) and the export's rebuild of it state the GSD the encoder
    saw, the crop's times input_gsd_factor (it stated the crop's)."""
    from eofm.finetune.export import encoder_from_checkpoint
    from eofm.pretrain.config import to_dict
    from eofm.pretrain.data import sample_gsd
    from eofm.pretrain.trainer import Trainer

    cfg = load_config(None, [
        f"data.path={scene_tiles_32}", "data.bands={s2: [B02, B03, B04]}",
        f"data.crop_size={'null' if crop is None else crop}", "data.shuffle_buffer=0",
        "data.num_workers=0", "data.batch_size=4", "model.name=vit_test_patch8",
        f"model.img_size={img}", "objective.name=softcon",
        "objective.params={proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32}",
        "schedule.steps=1", "schedule.warmup_steps=0", "runtime.ckpt_every=0",
        f"runtime.out_dir={tmp_path / 'run'}", "logging.progress=false"])
    trainer = Trainer(cfg)
    crop_gsd = sample_gsd(trainer.info, crop)
    assert trainer.info.tile == (32, 32) and crop_gsd == (20.0 if crop == 16 else 10.0)
    contract = trainer.encoder.contract
    assert contract.gsd == pytest.approx(crop_gsd * factor)
    assert getattr(trainer.objective, "input_gsd_factor", 1.0) == pytest.approx(factor)
    assert tuple(contract.input_size) == (img, img)
    ckpt = {"config": to_dict(cfg), "model": trainer.objective.state_dict(), "step": 0,
            "contract": contract.to_dict()}
    exported, _, card = encoder_from_checkpoint(ckpt)
    assert exported.contract.gsd == pytest.approx(crop_gsd * factor)
    assert (card["input_gsd_note"] is None) == (crop_gsd * factor == 10.0)


@pytest.mark.parametrize("tokenizer", ["plain", "grouped"])
def test_views_mark_the_dropped_tokens_of_each_band(tokenizer: str) -> None:
    """The pictures' view-1 drop map (``logging.preview_every``): whole patches, the drop
    budget per sample; with a grouped tokenizer (G*L tokens) each band shows its own group's
    dropped cells and a band in no group (B01 here) none."""
    bands = ["B02", "B03", "B04", "B08", "B11", "B01"]
    groups = {"rgb": ["B02", "B03", "B04"], "nir_swir": ["B08", "B11"]}
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=bands, img_size=16,
                       **({"groups": groups} if tokenizer == "grouped" else {}))
    m = SoftCon(enc, bands, drop_ratio=0.5, **SMALL)
    out = m.views(torch.randn(3, 6, 16, 16), None, generator=torch.Generator().manual_seed(0))
    d = out["dropped1"]
    assert d.shape == out["view1"].shape == (3, 6, 16, 16) and d.dtype == torch.bool
    cells = d[..., ::8, ::8]  # (B, C, 2, 2): one pixel per token cell
    assert torch.equal(d, cells.repeat_interleave(8, -2).repeat_interleave(8, -1))
    n = enc.num_tokens
    budget = n - num_keep(n, 0.5)
    per_band = cells.flatten(2).sum(-1)  # (B, C) dropped cells per band
    if tokenizer == "plain":
        assert (cells == cells[:, :1]).all() and per_band[:, 0].eq(budget).all()
    else:
        assert n == 2 * 4
        assert (cells[:, :3] == cells[:, :1]).all() and (cells[:, 3:5] == cells[:, 3:4]).all()
        assert (per_band[:, 0] + per_band[:, 3]).eq(budget).all()
        assert not cells[:, 5].any()
