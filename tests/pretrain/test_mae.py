"""MAE objective: the loss against a hand computation, nodata exclusion, band alignment."""

from __future__ import annotations

import pytest
import torch

from eofm.models import create_model
from eofm.models.tokenizers import patchify
from eofm.pretrain.objectives import MAE, masked_patch_loss

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _mae(tokenizer: str = "plain", bands=("B02", "B03", "B04", "B08"), **kw) -> MAE:
    enc = create_model("vit_test_patch8", tokenizer=tokenizer, bands=list(bands), img_size=32)
    return MAE(enc, list(bands), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


def test_masked_patch_loss_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    mask = torch.tensor([[1.0, 0, 1], [0, 1, 1]])
    valid = torch.ones(2, 3, 8)
    valid[1, 2, :3] = 0  # 5 of 8 valid: still scored at min_valid_fraction 0.5
    valid[0, 0, :6] = 0  # 2 of 8 valid: not scored
    s, n = masked_patch_loss(pred, target, mask, valid)
    p, t, v = pred.numpy(), target.numpy(), valid.numpy()
    ref = [((p[b, i] - t[b, i]) ** 2 * v[b, i]).sum() / v[b, i].sum()
           for b, i in [(0, 2), (1, 1), (1, 2)]]
    assert n.item() == 3 and s.item() == pytest.approx(sum(ref), rel=1e-6)


def test_norm_pix_uses_valid_pixels_only() -> None:
    target = torch.randn(1, 1, 16)
    valid = torch.ones(1, 1, 16)
    valid[..., :4] = 0
    changed = target.clone()
    changed[..., :4] = 1e6  # nodata values must not leak into the normalisation
    pred = torch.zeros(1, 1, 16)
    a = masked_patch_loss(pred, target, torch.ones(1, 1), valid, norm_pix=True)[0]
    b = masked_patch_loss(pred, changed, torch.ones(1, 1), valid, norm_pix=True)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize("tokenizer", ["plain", "grouped", "spectral"])
def test_every_parameter_gets_a_gradient(tokenizer: str) -> None:
    bands = S2 if tokenizer == "grouped" else ["B02", "B03", "B04", "B08"]
    m = _mae(tokenizer, bands)
    kw = {}
    if tokenizer == "spectral":
        kw = {"wavelengths": torch.tensor([492.0, 560.0, 665.0, 833.0]),
              "bandwidths": torch.tensor([66.0, 36.0, 31.0, 106.0])}
    out = m(torch.randn(2, len(bands), 32, 32), **kw)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert out["mask"].sum(1).tolist() == [0.75 * m.encoder.num_tokens] * 2


def test_grouped_targets_are_taken_by_band_name() -> None:
    """A decoder that predicts each group's own bands exactly gives zero loss: predictions and
    targets are paired by name (the published SatMAE code pairs B08 with the red-edge head)."""
    m = _mae("grouped", S2)
    x = torch.randn(2, 13, 32, 32)
    groups = m.encoder.tokenizer.groups
    exact = {g: patchify(x[:, [S2.index(b) for b in names]], 8) for g, names in groups.items()}
    m.decoder.forward = lambda latent, ids_restore: exact  # type: ignore[method-assign]
    assert m(x)["loss"].item() == pytest.approx(0.0, abs=1e-7)
    assert groups["rgbn"][3] == "B08"


def test_tokens_mostly_nodata_are_never_targets() -> None:
    m = _mae().eval()
    x = torch.randn(2, 4, 32, 32)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :8, :] = False  # the first row of 8x8 patches is nodata
    out = m(x, valid, generator=torch.Generator().manual_seed(1))
    tokens_in_nodata = out["mask"].reshape(2, 4, 4)[:, 0].sum().item()
    assert tokens_in_nodata > 0
    assert out["scored_tokens"].item() == out["mask"].sum().item() - tokens_in_nodata
    again = m(x, valid, generator=torch.Generator().manual_seed(1))  # same masks, same loss
    assert again["loss"].item() == pytest.approx(out["loss"].item())


def test_rejects_band_mismatch() -> None:
    enc = create_model("vit_test_patch8", bands=["B02", "B03", "B04"], img_size=32)
    with pytest.raises(ValueError, match="tokenizer expects"):
        MAE(enc, ["B04", "B03", "B02"])


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, 50])
def test_min_valid_fraction_outside_zero_one_is_refused_by_name(value: float) -> None:
    """Above 1 no token is ever scored (a loss of exactly 0 at every step, silently); 0 would
    score fully-nodata patches as zero error."""
    with pytest.raises(ValueError, match=r"^min_valid_fraction: .* in \(0, 1\]"):
        _mae(min_valid_fraction=value)
    if value == 50:  # meant as a percent: the message says so
        with pytest.raises(ValueError, match=r"a share, not a percent: 0\.5 for 50%"):
            _mae(min_valid_fraction=value)


def test_min_valid_fraction_one_is_accepted() -> None:
    m = _mae(min_valid_fraction=1.0)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, 0, 0] = False  # one pixel short of the 8x8 token (0, 0)
    out = m(torch.randn(2, 4, 32, 32), valid, generator=torch.Generator().manual_seed(0))
    assert out["scored_tokens"].item() == out["mask"].sum().item() - out["mask"][:, 0].sum().item()


def test_a_bf16_prediction_is_scored_in_float32() -> None:
    """Under autocast the decoder's prediction is bf16; the scored-token count (257, which bf16
    rounds to 256) and the loss are float32."""
    pred = torch.zeros(1, 257, 4, dtype=torch.bfloat16)
    s, n = masked_patch_loss(pred, torch.ones(1, 257, 4), torch.ones(1, 257), torch.ones(1, 257, 4))
    assert s.dtype == n.dtype == torch.float32
    assert n.item() == 257 and (s / n).item() == 1.0


def test_norm_pix_statistics_of_a_bf16_prediction_are_float32() -> None:
    """203 of 256 pixels x 13 bands valid: 2639 valid values, which bf16 rounds to 2640. A bf16
    prediction equal to the normalised target loses only its own rounding (~3e-6), not a
    biased mean and variance (5e-4 with the count in bf16)."""
    torch.manual_seed(0)
    target = 3.0 + 0.05 * torch.randn(1, 1, 256 * 13)
    valid = torch.zeros(1, 1, 256, 13)
    valid[:, :, :203] = 1
    valid = valid.flatten(2)
    n = valid.sum()
    mean = (target * valid).sum() / n
    var = (((target - mean) ** 2) * valid).sum() / (n - 1)
    pred = ((target - mean) / (var + 1e-6).sqrt()).bfloat16()
    mask = torch.ones(1, 1)
    s16, c16 = masked_patch_loss(pred, target, mask, valid, norm_pix=True)
    s32, c32 = masked_patch_loss(pred.float(), target, mask, valid, norm_pix=True)
    assert c16.item() == c32.item() == 1
    assert s16.item() == pytest.approx(s32.item(), rel=1e-5) and s16.item() < 1e-5


@pytest.mark.parametrize("objective", ["mae", "satmaepp", "selectivemae"])
def test_min_valid_fraction_is_checked_when_the_config_loads(objective: str) -> None:
    """Refused with the config's other problems, before any shard build or loader start."""
    from eofm.pretrain.config import ConfigError, load_config

    base = ["data.path=/data/ds", f"objective.name={objective}",
            *(["objective.norm_pix_loss=false"] if objective == "satmaepp" else [])]
    with pytest.raises(ConfigError, match=r"objective\.params\.min_valid_fraction: .*\(a share, "
                                          r"not a percent: 0\.5 for 50%\), got 50"):
        load_config(None, [*base, "objective.params.min_valid_fraction=50"])
    with pytest.raises(ConfigError, match=r"objective\.params\.min_valid_fraction: .*got 0"):
        load_config(None, [*base, "objective.params.min_valid_fraction=0"])
    cfg = load_config(None, [*base, "objective.params.min_valid_fraction=1.0"])
    assert cfg.objective.params["min_valid_fraction"] == 1.0


def _multiply_formula(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      w: torch.Tensor, norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """masked_patch_loss as it was written before NaN-safe selection (invalid pixels
    multiplied by 0): the finite-input reference."""
    n_valid = w.sum(-1)
    if norm_pix:
        k = w.sum(-1, keepdim=True)
        mean = (target * w).sum(-1, keepdim=True) / k.clamp(min=1)
        var = (((target - mean) ** 2) * w).sum(-1, keepdim=True) / (k - 1).clamp(min=1)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (((pred - target) ** 2) * w).sum(-1) / n_valid.clamp(min=1)
    scored = mask * (n_valid >= 0.5 * w.shape[-1]).float()
    return (per_patch * scored).sum(), scored.sum()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_nan_at_invalid_pixels_never_reaches_the_patch_loss(norm_pix: bool) -> None:
    """NaN * 0 is NaN: a target (or prediction) holding NaN at pixels flagged invalid scores
    exactly as one holding 0 there, with a finite gradient; finite inputs score bit for bit as
    the multiply formula did."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 3, 16, generator=g)
    target = torch.randn(2, 3, 16, generator=g)
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 1]])
    valid = (torch.rand(2, 3, 16, generator=g) > 0.3).float()
    valid[0, 0] = 1.0
    ref = masked_patch_loss(pred, target, mask, valid, norm_pix=norm_pix)
    assert all(torch.equal(a, b) for a, b in zip(
        ref, _multiply_formula(pred, target, mask, valid, norm_pix), strict=True))
    zeros = torch.where(valid > 0, target, 0.0)
    nans = torch.where(valid > 0, target, torch.nan)
    p = pred.clone().requires_grad_()
    s, n = masked_patch_loss(torch.where(valid > 0, p, torch.nan), nans, mask, valid,
                             norm_pix=norm_pix)
    s.backward()
    expected = masked_patch_loss(pred, zeros, mask, valid, norm_pix=norm_pix)
    assert torch.isfinite(s) and torch.equal(s, expected[0]) and torch.equal(n, expected[1])
    assert torch.isfinite(p.grad).all() and p.grad[valid == 0].abs().sum() == 0


def test_mae_loss_with_nan_at_nodata_is_the_loss_with_zeros_there() -> None:
    """A library caller's nodata filled with NaN (the trainer's loader fills 0): every token
    holds an invalid pixel, so visible ones too; the loss and every gradient are those of the
    same batch with 0 at the invalid pixels, not NaN."""
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, ::8, ::8] = False  # one pixel of each 8x8 token
    valid[:, :8, :8] = False  # and a whole token
    results = []
    for fill in (0.0, torch.nan):
        torch.manual_seed(0)  # the same weights
        m = _mae(norm_pix_loss=True)
        out = m(torch.where(valid[:, None], x, fill), valid,
                generator=torch.Generator().manual_seed(1))
        out["loss"].backward()
        results.append((out["loss"].detach(), [q.grad for q in m.parameters()]))
    (a, grads_a), (b, grads_b) = results
    assert torch.isfinite(b) and torch.equal(a, b)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert torch.equal(ga, gb)
