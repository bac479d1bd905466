"""SelectiveMAE: budgets, semantic score, PSTS schedule, target selection, decoder queries, nodata,
and a short real run through the trainer followed by ``eofm-export``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eofm.models import create_model
from eofm.pretrain.objectives import SelectiveMAE
from eofm.pretrain.objectives.token_selection import (
    STAGES,
    SelectionSchedule,
    hog_histograms,
    sampling_logits,
    select_targets,
    select_visible,
    selection_budgets,
    semantic_score,
    token_validity,
)

ROOT = Path(__file__).resolve().parents[2]
BANDS = ["B02", "B03", "B04", "B08"]


def _model(img_size: int = 64, patch: int = 8, **kw) -> SelectiveMAE:
    torch.manual_seed(0)
    enc = create_model(f"vit_test_patch{patch}", bands=BANDS, img_size=img_size)
    return SelectiveMAE(enc, BANDS, decoder_dim=32, decoder_depth=2, decoder_heads=2, **kw)


def _textured(B: int, C: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with smooth regions and sharp structure, so scores vary between patches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")  # blocky edges
    return x + 0.05 * torch.randn(B, C, size, size, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_sets(ids_keep: torch.Tensor, ids_target: torch.Tensor, n: int, v: int, t: int) -> None:
    assert ids_keep.shape[1] == v and ids_target.shape[1] == t
    for keep, tgt in zip(ids_keep.tolist(), ids_target.tolist(), strict=True):
        assert len(set(keep)) == v and len(set(tgt)) == t  # no duplicates
        assert not set(keep) & set(tgt)  # disjoint
        assert all(0 <= i < n for i in keep + tgt)


def test_paper_budget_at_224_16_is_29_visible_and_49_reconstructed() -> None:
    assert selection_budgets(196, 0.85, 0.25) == (29, 49)
    m = _model(img_size=224, patch=16)
    assert (m.num_visible, m.num_targets) == (29, 49)
    keep, tgt, _ = m.select(_textured(4, 4, 224), generator=_gen())
    _check_sets(keep, tgt, 196, 29, 49)


@pytest.mark.parametrize("grid", [(4, 4), (6, 6), (8, 8), (12, 12), (7, 10), (14, 14), (3, 20)])
@pytest.mark.parametrize("stage_progress", [0.0, 0.4, 0.6, 0.9])
def test_budgets_exact_disjoint_and_unique_for_any_grid(grid, stage_progress) -> None:
    n = grid[0] * grid[1]
    v, t = selection_budgets(n, 0.85, 0.25)
    assert v == math.floor(n * 0.15 + 1e-6) and t == math.floor(n * 0.25 + 1e-6)
    x = _textured(3, 5, 8 * max(grid))[..., : 8 * grid[0], : 8 * grid[1]]
    score = semantic_score(x, 8)
    assert score.shape == (3, n)
    usable = torch.ones(3, n, dtype=torch.bool)
    emb = torch.randn(3, n, 16, generator=_gen(1))
    keep = select_visible(sampling_logits(score, usable, 1.0), emb, v, progress=stage_progress,
                          usable=usable, generator=_gen())
    tgt = select_targets(sampling_logits(score, usable, 1.0), keep, t, _gen(2))
    _check_sets(keep, tgt, n, v, t)


def test_bad_ratios_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kept_mask_ratio"):
        selection_budgets(196, 0.85, 0.9)
    with pytest.raises(ValueError, match="both must be at least 1"):
        selection_budgets(4, 0.85, 0.25)


@pytest.mark.parametrize("kind", ["energy", "orientation"])
@pytest.mark.parametrize("bands,patch,luminance", [(1, 8, False), (3, 16, False),
                                                   (13, 8, False), (13, 16, True)])
def test_score_ranks_textured_patches_above_flat_ones(kind, bands, patch, luminance) -> None:
    """Left half flat, right half vertical stripes (with a little noise everywhere)."""
    size = 4 * patch
    g = _gen(3)
    x = 0.01 * torch.randn(2, bands, size, size, generator=g)
    cols = torch.arange(size)
    stripes = ((cols // 2) % 2).float() * 2 - 1  # period 4 px
    x[..., size // 2:] += stripes[size // 2:]
    s = semantic_score(x, patch, kind=kind, luminance=luminance).reshape(2, 4, 4)
    flat, textured = s[..., :2], s[..., 2:]
    assert flat.max() < textured.min()
    assert s.std() > 0.1 * s.abs().mean()  # not constant (the released score is ~0 everywhere)


def test_energy_is_the_hog_histograms_total_per_contributing_pixel() -> None:
    """Contributing = valid and touching no invalid pixel (the pixels that vote)."""
    x = _textured(2, 3, 32)
    valid = torch.rand(2, 32, 32, generator=_gen(5)) > 0.05
    hist = hog_histograms(x, 8, valid=valid)
    assert hist.shape == (2, 16, 4, 9)
    padded = torch.nn.functional.pad(valid, (1, 1, 1, 1), value=True)  # the border is kept
    eroded = torch.stack([padded[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)]).all(0)
    n_contributing = eroded.reshape(2, 4, 8, 4, 8).sum((2, 4)).flatten(1).float()
    assert bool((n_contributing > 0).all())
    torch.testing.assert_close(semantic_score(x, 8, valid=valid),
                               hist.sum((-1, -2)) / n_contributing)


def _periodic_texture(size: int, period: int = 4, seed: int = 0) -> torch.Tensor:
    """(1, 3, size, size): one random period x period tile repeated, so every token away from
    the image border (replicate padding) holds the same pixels and the same gradients."""
    tile = torch.randn(1, 3, period, period, generator=_gen(seed))
    return tile.repeat(1, 1, size // period, size // period)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_energy_of_a_token_with_scattered_nodata_stays_that_of_its_texture(seed) -> None:
    """5% scattered invalid pixels silence ~25% of a token's gradients (each touches up to 9
    pixels); the energy is per contributing pixel, so the token keeps its texture's level
    (dividing by the valid share instead made it ~0.75x, the lowest of identical tokens)."""
    x = _periodic_texture(48, seed=seed)
    full = semantic_score(x, 8, valid=torch.ones(1, 48, 48, dtype=torch.bool)).reshape(6, 6)
    inner = full[1:-1, 1:-1]  # 16 identical tokens
    torch.testing.assert_close(inner, inner[:1, :1].expand(4, 4))
    level = inner[0, 0]
    valid = torch.ones(1, 48, 48, dtype=torch.bool)
    speck = torch.randperm(64, generator=_gen(10 + seed))[:3]  # 3 of 64 pixels, scattered
    valid[0, 16 + speck // 8, 16 + speck % 8] = False  # in token (2, 2), an inner one
    xs = torch.where(valid[:, None], x, torch.zeros(()))  # as a loader fills nodata
    s = semantic_score(xs, 8, valid=valid).reshape(6, 6)
    assert abs(float(s[2, 2] / level) - 1) < 0.05, (float(s[2, 2]), float(level))
    # its neighbours (an invalid pixel on the token's edge silences a row of theirs) too
    assert float((s[1:-1, 1:-1] / level - 1).abs().max()) < 0.05


def test_energy_without_nodata_is_unchanged_by_a_full_valid_mask() -> None:
    """An all-valid mask gives bit for bit the score without one: the gradient magnitude
    summed over bands and the patch's pixels, over p * p."""
    x = _textured(2, 3, 32)
    s = semantic_score(x, 8, valid=torch.ones(2, 32, 32, dtype=torch.bool))
    assert torch.equal(s, semantic_score(x, 8))
    from eofm.pretrain.objectives.token_selection import _gradients

    mag = _gradients(x, None, luminance=False)[2]
    assert torch.equal(s, mag.reshape(2, 3, 4, 8, 4, 8).sum((1, 3, 5)).flatten(1) / 64)


@pytest.mark.compiles
def test_compiled_score_equals_the_eager_one() -> None:
    """runtime.compile's hook: the score runs compiled (fused passes) with the same values."""
    m = _model(img_size=32)
    x = _textured(2, len(m.bands), 32)
    valid = torch.rand(2, 32, 32, generator=_gen(7)) > 0.1
    eager = m.score(x, valid)
    from eofm.pretrain.strategy import compile_model

    assert compile_model(m) == len(m.encoder.blocks) + len(m.decoder.blocks)
    assert m._score_fn is not semantic_score
    torch.testing.assert_close(m.score(x, valid), eager, rtol=1e-5, atol=1e-6)


def test_gradients_are_the_sobel_operator() -> None:
    from eofm.pretrain.objectives.token_selection import _gradients

    x = torch.randn(2, 3, 16, 12, generator=_gen(6))
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    w = torch.stack([k, k.t()])[:, None].repeat(3, 1, 1, 1)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                     w, groups=3)
    gx, gy, mag = _gradients(x, None, luminance=False)
    torch.testing.assert_close(gx, ref[:, 0::2])
    torch.testing.assert_close(gy, ref[:, 1::2])
    torch.testing.assert_close(mag, ref[:, 0::2].hypot(ref[:, 1::2]))


def test_score_varies_on_a_real_tile(sample_data: Path) -> None:
    from eofm.data_shards.raster_io import read_raster

    raster = read_raster(sample_data / "sentinel2_l1c_scene" / "s2_B04.jp2")
    x = torch.from_numpy(raster.data.astype("float32"))
    x = x.reshape(1, 1, *x.shape[-2:])[..., :64, :64]
    x = (x - x.mean()) / x.std()
    s = semantic_score(x, 8)
    assert s.shape == (1, 64) and s.std() / s.mean() > 0.2


def test_score_ignores_invalid_pixels() -> None:
    x = torch.zeros(1, 2, 32, 32)
    x[..., :, 16:] = 100.0  # a nodata fill value next to valid pixels makes a huge fake edge
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    valid[..., 16:] = False
    assert semantic_score(x, 8).max() > 10
    assert semantic_score(x, 8, valid=valid).max() == 0


@pytest.mark.parametrize("kind", ["energy", "orientation"])
@pytest.mark.parametrize("luminance", [False, True])
def test_nan_at_invalid_pixels_never_reaches_the_score(kind: str, luminance: bool) -> None:
    """NaN * 0 is NaN: with NaN at the invalid pixels the score (and the HOG histograms) are
    bit for bit those with 0 or any finite fill there, not NaN."""
    x = _textured(2, 3, 32)
    valid = torch.rand(2, 32, 32, generator=_gen(5)) > 0.1
    valid[1, :16] = False
    kw = {"kind": kind, "valid": valid, "luminance": luminance}
    ref = semantic_score(x, 8, **kw)
    assert torch.equal(ref, semantic_score(torch.where(valid[:, None], x, 0.0), 8, **kw))
    nan = torch.where(valid[:, None], x, torch.nan)
    got = semantic_score(nan, 8, **kw)
    assert torch.isfinite(got).all() and torch.equal(got, ref)
    hist = hog_histograms(nan, 8, valid=valid, luminance=luminance)
    assert torch.equal(hist, hog_histograms(x, 8, valid=valid, luminance=luminance))


def test_loss_with_nan_at_nodata_is_the_loss_with_zeros_there() -> None:
    """A library caller's nodata filled with NaN (the trainer's loader fills 0): the same
    selection, loss and gradients as with 0 at the invalid pixels, though every token, visible
    ones too, holds one."""
    x = _textured(2, 4, 64)
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[:, ::8, ::8] = False  # one pixel of each 8x8 token
    valid[:, :8, :16] = False  # and two whole tokens
    results = []
    for fill in (0.0, torch.nan):
        m = _model(norm_pix_loss=True)
        m.progress = 0.3  # the blend stage: the growth reads the embeddings
        out = m(torch.where(valid[:, None], x, fill), valid, generator=_gen(2))
        out["loss"].backward()
        results.append((out, [q.grad for q in m.parameters()]))
    (a, grads_a), (b, grads_b) = results
    assert torch.equal(a["ids_keep"], b["ids_keep"]) and torch.equal(a["ids_target"],
                                                                      b["ids_target"])
    assert torch.isfinite(b["loss"]) and torch.equal(a["loss"], b["loss"])
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)


def test_orientation_score_is_zero_when_flat_and_maximal_for_one_orientation() -> None:
    """The orientation score's range: the mean L1 distance of each cell's (eps-smoothed)
    orientation histogram from the uniform 1/bins; 0 for a flat patch (no gradient: the
    uniform histogram), its maximum 2 (bins - 1) / bins where every gradient has one
    orientation (a ramp along x)."""
    ramp = torch.arange(32.0).expand(1, 2, 32, 32).contiguous()
    flat = torch.full((1, 2, 32, 32), 5.0)
    top = 2 * (9 - 1) / 9  # the default 9 bins
    torch.testing.assert_close(semantic_score(ramp, 8, kind="orientation"),
                               torch.full((1, 16), top), atol=1e-4, rtol=0)
    torch.testing.assert_close(semantic_score(flat, 8, kind="orientation"),
                               torch.zeros(1, 16), atol=1e-4, rtol=0)


def test_sampling_logits_are_the_score_standardised_over_usable_tokens() -> None:
    """Seeds are drawn from softmax(logits): the logits are the score standardised per sample
    over its usable tokens (mean 0, spread 1), so the draw is the same whatever the score's
    scale or offset and ``temperature`` alone sets how peaked it is."""
    score = torch.rand(3, 20, generator=_gen(0))
    usable = torch.ones(3, 20, dtype=torch.bool)
    usable[1, :5] = False
    z = sampling_logits(score, usable, 1.0)
    torch.testing.assert_close(sampling_logits(10 * score + 100, usable, 1.0), z,
                               atol=1e-4, rtol=1e-4)
    for row, ok in zip(z, usable, strict=True):
        assert row[ok].mean().item() == pytest.approx(0, abs=1e-5)
        assert row[ok].std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    assert bool((z[1, :5] < -1e3).all())  # unusable: penalised, outside the statistics
    torch.testing.assert_close(sampling_logits(score, usable, 0.5)[usable], 2 * z[usable])


@pytest.mark.parametrize("total", [1, 2, 7, 10, 100, 1001, 12345])
def test_schedule_enters_each_stage_at_its_fraction_for_any_run_length(total) -> None:
    sched = SelectionSchedule((0.2, 0.5, 0.8))
    m = _model(stage_fractions=[0.2, 0.5, 0.8])
    stages = []
    for step in range(total):
        m.on_step_start(step, total)
        stages.append(m.stage)
    assert [STAGES.index(s) for s in stages] == sorted(STAGES.index(s) for s in stages)
    for i, b in enumerate(sched.boundaries, start=1):
        first = next((s for s, name in enumerate(stages) if STAGES.index(name) >= i), total)
        assert first == min(math.ceil(b * total), total)
    assert sched.complementary_share(0.2) == 0.0 and sched.complementary_share(0.35) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="stage_fractions"):
        SelectionSchedule((0.5, 0.2, 0.8))


def test_growth_follows_the_stage_similar_then_complementary() -> None:
    """Two clusters of embeddings, seeds from the first: the similar stage grows inside it,
    the complementary stage's first growth step (2 of the 5 added tokens) into the other."""
    B, N = 8, 64
    emb = torch.zeros(B, N, 4)
    emb[:, :32, 0], emb[:, 32:, 1] = 1.0, 1.0
    emb += 0.01 * torch.randn(B, N, 4, generator=_gen(4))
    logits = torch.full((B, N), -30.0)
    logits[:, :32] = 0.0  # seeds come from the first cluster
    for progress, cluster in ((0.0, "first"), (0.6, "second")):
        keep = select_visible(logits, emb, 10, progress=progress, generator=_gen())
        if cluster == "first":
            assert bool((keep < 32).all())
        else:
            assert bool((keep[:, :5] < 32).all()) and bool((keep[:, 5:7] >= 32).all())


def test_each_growth_step_ranks_against_every_token_chosen_so_far() -> None:
    """Growth ranks candidates by their maximum similarity to the seeds AND the tokens added
    by earlier steps. Three clusters: A (seeds), B opposite A (cosine -1), C orthogonal to
    both (cosine 0). The complementary stage's first step takes the least similar, B; once B
    is chosen, B is as similar as can be, so the second step takes C (ranking against the
    seeds alone would take B again)."""
    B, N = 4, 48
    emb = torch.zeros(B, N, 3)
    emb[:, :16, 0] = 1.0  # A
    emb[:, 16:32, 0] = -1.0  # B
    emb[:, 32:, 2] = 1.0  # C
    emb += 0.01 * torch.randn(B, N, 3, generator=_gen(0))
    logits = torch.full((B, N), -30.0)
    logits[:, :16] = 0.0  # seeds come from A
    # budget 8: 4 seeds, then 4 grown in 2 steps of 2; progress 0.6: complementary stage
    keep = select_visible(logits, emb, 8, progress=0.6, growth_steps=2, generator=_gen(1))
    assert bool((keep[:, :4] < 16).all())
    assert bool(((keep[:, 4:6] >= 16) & (keep[:, 4:6] < 32)).all())  # step 1: B
    assert bool((keep[:, 6:8] >= 32).all())  # step 2: C


@pytest.mark.parametrize("progress", [0.0, 0.4, 0.6, 0.9])
def test_every_sample_draws_its_own_order(progress) -> None:
    m = _model()
    m.progress = progress
    x = _textured(1, 4, 64).expand(6, -1, -1, -1).contiguous()  # six identical images
    keep, tgt, _ = m.select(x, generator=_gen())
    assert len({tuple(sorted(r)) for r in keep.tolist()}) == 6
    assert len({tuple(sorted(r)) for r in tgt.tolist()}) == 6
    keep2, tgt2, _ = m.select(x, generator=_gen())
    assert torch.equal(keep, keep2) and torch.equal(tgt, tgt2)  # reproducible from the seed


def test_decoder_sees_only_the_chosen_queries() -> None:
    m = _model()
    seen = {}
    m.decoder.register_forward_hook(lambda mod, args, out: seen.update(ids=args[1], out=out))
    m.decoder.blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(q=args[0]))
    out = m(_textured(3, 4, 64), generator=_gen())
    assert torch.equal(seen["ids"], out["ids_target"])
    assert seen["q"].shape[:2] == (3, m.num_targets) and seen["out"].shape[1] == m.num_targets
    # a target's prediction depends on its own query only, not on which other tokens are decoded
    latent = torch.randn(1, 1 + m.num_visible, m.encoder.embed_dim)
    a = m.decoder(latent, torch.tensor([[5, 9, 20]]))
    b = m.decoder(latent, torch.tensor([[5, 40, 63]]))
    torch.testing.assert_close(a[:, 0], b[:, 0])


def test_nodata_tokens_are_never_targets() -> None:
    m = _model()
    x = _textured(4, 4, 64)
    valid = torch.ones(4, 64, 64, dtype=torch.bool)
    valid[:, :, :32] = False  # left half nodata: 32 usable tokens >= 9 visible + 16 targets
    x[:, :, :, :32] = 50.0  # with a sharp fill value, which must not attract the selection
    for progress in (0.0, 0.4, 0.6, 0.9):
        m.progress = progress
        keep, tgt, usable = m.select(x, valid, generator=_gen())
        assert bool(usable.gather(1, tgt).all()) and bool(usable.gather(1, keep).all())
    valid[:, :, :48] = False  # 16 usable tokens: 9 visible, so only 7 of the 16 targets are
    out = m(x, valid, generator=_gen())  # usable; the others fill the budget, never scored
    assert float(out["scored_tokens"]) == 4 * 7 and torch.isfinite(out["loss"])


def test_loss_backpropagates_and_lr_multiplier_is_kept_over_mask() -> None:
    m = _model()
    out = m(_textured(2, 4, 64), generator=_gen())
    out["loss"].backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert m.decoder.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert m.lr_multiplier == pytest.approx(0.25 / 0.85)
    assert _model(scale_lr_by_kept=False).lr_multiplier == 1.0
    assert m.train_flops_per_sample() > 0


def test_unknown_params_and_grouped_tokenizers_are_refused() -> None:
    from eofm.pretrain.config import load_config
    from eofm.pretrain.data import BandInfo  # noqa: F401  (the builder's signature)
    from eofm.pretrain.objectives import build_objective

    with pytest.raises(ValueError, match="kept_mask_ratio"):  # at load (ConfigError)
        build_objective(load_config(None, ["objective.name=selectivemae",
                                           "objective.params.kept_mask=0.2",
                                           "data.path=unused"]),
                        type("Info", (), {"bands": BANDS})())
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32, tokenizer="grouped",
                       groups={"a": BANDS[:2], "b": BANDS[2:]})
    with pytest.raises(ValueError, match="tokenizer"):
        SelectiveMAE(enc, BANDS)


def test_short_real_run_through_the_trainer_then_export(tiny_run_config, tmp_path: Path) -> None:
    from eofm.finetune.export import export_run
    from eofm.models import from_pretrained

    cfg = tiny_run_config({
        "data": {"batch_size": 8},
        "objective": {"name": "selectivemae", "mask_ratio": 0.85, "decoder_dim": 32,
                      "decoder_depth": 2, "decoder_heads": 2,
                      "params": {"kept_mask_ratio": 0.25, "stage_fractions": [0.25, 0.5, 0.75]}},
        "schedule": {"steps": 4, "warmup_steps": 1},
        "runtime": {"out_dir": str(tmp_path / "run"), "deterministic": False},
    }, name="sel")
    done = subprocess.run([sys.executable, "-m", "eofm.pretrain", "--config", str(cfg)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in recs)
    assert max(r["lr"] for r in recs) == pytest.approx(1e-3 * 0.25 / 0.85)  # kept/mask scaling
    out = export_run(tmp_path / "run", tmp_path / "export")
    enc = from_pretrained(out)
    assert enc.contract.objective == "selectivemae" and list(enc.contract.bands) == \
        ["B02", "B03", "B04", "B08"]
    assert "| Mask ratio | 0.85 |" in (out / "README.md").read_text()  # the model card


def test_embedding_once_matches_the_encoders_own_path() -> None:
    """``forward`` embeds once and runs only the visible tokens (ViTEncoder.forward_tokens):
    the same latent as ``forward_features`` with the same ids_keep."""
    m = _model().eval()
    x = _textured(2, 4, 64)
    keep, _, _ = m.select(x, generator=_gen())
    torch.testing.assert_close(m.encoder.forward_tokens(m.encoder.embed(x), keep),
                               m.encoder.forward_features(x, ids_keep=keep))


@pytest.mark.parametrize("value", [0.0, 1.5, 50])
def test_min_valid_fraction_outside_zero_one_is_refused_by_name(value: float) -> None:
    """Above 1 no target is ever scored (a loss of exactly 0 at every step, silently)."""
    with pytest.raises(ValueError, match=r"^min_valid_fraction: .* in \(0, 1\]"):
        _model(img_size=32, min_valid_fraction=value)
    with pytest.raises(ValueError, match=r"^min_valid_fraction: "):
        token_validity(torch.ones(1, 32, 32, dtype=torch.bool), 8, 1, (4, 4), value,
                       torch.device("cpu"))
