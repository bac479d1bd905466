"""Tokenizers and fixed encodings: shapes, gradients, band-name alignment, spectral invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eofm.models.pos_embed import sincos_1d, sincos_2d
from eofm.models.tokenizers import (
    SATMAE_S2_GROUPS,
    GroupedTokenizer,
    PlainTokenizer,
    SpectralAdapter,
    SpectralTokenizer,
    Tokenizer,
    build_tokenizer,
    gather_patches,
    patchify,
    sar_stand_in,
    spectral_order,
    unpatchify,
)

P, D, HW = 4, 32, 16  # patch, width, image side: 4x4 grid
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
S2_WL = [443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190]
S2_BW = [20, 65, 35, 30, 15, 15, 20, 115, 20, 20, 30, 90, 180]
L2A = [b for b in S2 if b != "B10"]
ENMAP_WL = torch.linspace(418.0, 2445.0, 224)
ENMAP_BW = torch.full((224,), 8.0)


def _s2_spectrum(bands: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    idx = [S2.index(b) for b in bands]
    wl, bw = torch.tensor(S2_WL, dtype=torch.float32), torch.tensor(S2_BW, dtype=torch.float32)
    return wl[idx], bw[idx]


def _mae_2d_reference(dim: int, gh: int, gw: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, restated in numpy for the comparison."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(gw, dtype=np.float64), np.arange(gh, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


# ----------------------------------------------------------------------------- pos_embed
def test_sincos_2d_matches_mae_reference() -> None:
    ref = _mae_2d_reference(D, 3, 5)
    assert torch.allclose(sincos_2d(D, (3, 5)), torch.from_numpy(ref).float(), atol=1e-6)
    assert sincos_1d(8, torch.arange(6.0)).shape == (6, 8)


def test_gsd_scaled_positions() -> None:
    plain = sincos_2d(D, (4, 4))
    assert torch.equal(sincos_2d(D, (4, 4), scale=1.0), plain)
    batched = sincos_2d(D, (4, 4), scale=torch.tensor([1.0, 2.0, 0.5]))
    assert batched.shape == (3, 16, D)
    assert torch.equal(batched[0], plain)
    assert torch.allclose(batched[1], sincos_2d(D, (4, 4), scale=2.0), atol=1e-6)
    assert not torch.allclose(batched[1], plain) and not torch.allclose(batched[2], plain)
    with pytest.raises(ValueError, match="dim"):
        sincos_2d(30, (2, 2))


@pytest.mark.parametrize("kind", ["plain", "grouped", "spectral"])
def test_tokenizer_gsd_encoding(kind: str) -> None:
    tok = _make(kind)
    g = tok.num_groups
    base = tok.encoding((4, 4))
    assert base.shape == (g * 16, D) and base.dtype == torch.float32
    scaled = tok.encoding((4, 4), torch.tensor([1.0, 3.0]))
    assert scaled.shape == (2, g * 16, D)
    assert torch.equal(scaled[0], base)
    assert not torch.allclose(scaled[1], base)


# ----------------------------------------------------------------------------- every tokenizer
def _make(kind: str) -> Tokenizer:
    if kind == "plain":
        return PlainTokenizer(S2, P, D)
    if kind == "grouped":
        return GroupedTokenizer(SATMAE_S2_GROUPS, P, D, bands=S2)
    if kind == "spectral":
        return SpectralTokenizer(P, D, hidden_dim=32, code_dim=16)
    return SpectralTokenizer(P, D, hidden_dim=32, code_dim=16, adapter=SpectralAdapter(out_bands=8))


def _inputs(kind: str) -> tuple[torch.Tensor, dict]:
    if kind == "spectral_adapter":
        return torch.randn(2, 224, HW, HW), {"wavelengths": ENMAP_WL, "bandwidths": ENMAP_BW}
    wl, bw = _s2_spectrum(S2)
    return torch.randn(2, 13, HW, HW), {"bands": S2, "wavelengths": wl, "bandwidths": bw}


@pytest.mark.parametrize("kind", ["plain", "grouped", "spectral", "spectral_adapter"])
def test_shape_gradients_no_nan(kind: str) -> None:
    torch.manual_seed(0)
    tok = _make(kind)
    x, kw = _inputs(kind)
    out = tok(x, **kw)
    assert out.shape == (2, tok.num_groups, 16, D)
    assert len(tok.group_names) == tok.num_groups
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_grid_size_and_band_checks() -> None:
    tok = PlainTokenizer(["R", "G", "B"], P, D)
    assert tok.grid_size((16, 8)) == (4, 2)
    with pytest.raises(ValueError, match="img_size"):
        tok.grid_size((15, 16))
    with pytest.raises(ValueError, match="another order"):
        tok(torch.randn(1, 3, 8, 8), bands=["B", "G", "R"])
    with pytest.raises(ValueError, match=r"missing \['B'\]"):
        tok(torch.randn(1, 3, 8, 8), bands=["R", "G", "N"])
    with pytest.raises(ValueError, match="channels"):
        tok(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="duplicates"):
        PlainTokenizer(["R", "R"], P, D)


# ----------------------------------------------------------------------------- grouped
def test_grouped_round_trip_is_identity_by_band_name() -> None:
    tok = GroupedTokenizer(SATMAE_S2_GROUPS, P, D, bands=S2)
    x = torch.randn(2, 13, HW, HW)
    targets = tok.patchify_groups(x)
    assert [t.shape for t in targets] == [(2, 16, P * P * c) for c in (4, 4, 2)]
    assert [t.shape[-1] for t in targets] == tok.group_patch_dims
    y, covered = tok.unpatchify_groups(targets, (4, 4))
    grouped = [b for m in SATMAE_S2_GROUPS.values() for b in m]
    assert [b for b, c in zip(S2, covered.tolist(), strict=True) if c] == [
        b for b in S2 if b in grouped]
    assert [b for b, c in zip(S2, covered.tolist(), strict=True) if not c] == ["B01", "B09", "B10"]
    assert tok.dropped_bands == ["B01", "B09", "B10"]
    assert torch.equal(y[:, covered], x[:, covered])
    assert torch.equal(y[:, ~covered], torch.zeros_like(y[:, ~covered]))
    b08 = S2.index("B08")
    assert torch.equal(y[:, b08], x[:, b08])
    # rgbn's 4th channel is B08 (not B05, which band order would put there: the SatMAE defect).
    rgbn = unpatchify(targets[0], P, (4, 4), 4)
    assert torch.equal(rgbn[:, 3], x[:, b08])
    naive = torch.cat([unpatchify(t, P, (4, 4), t.shape[-1] // P**2) for t in targets], dim=1)
    assert not torch.equal(naive, x[:, covered])


def test_grouped_tokens_embed_exactly_their_targets() -> None:
    torch.manual_seed(0)
    tok = GroupedTokenizer(SATMAE_S2_GROUPS, P, D, bands=S2).double()
    x = torch.randn(2, 13, HW, HW, dtype=torch.float64)
    tokens = tok(x)
    for g, (target, conv) in enumerate(zip(tok.patchify_groups(x), tok.proj, strict=True)):
        w = conv.weight.permute(0, 2, 3, 1).reshape(D, -1)  # patchify layout (row, col, band)
        assert torch.allclose(tokens[:, g], target @ w.T + conv.bias, atol=1e-10)


def test_patchify_round_trip() -> None:
    x = torch.randn(2, 3, 8, 12)
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[0, 1, :3], x[0, :, 0, 4])  # channel fastest
    assert torch.equal(unpatchify(patches, 4, (2, 3), 3), x)


def test_gather_patches_is_patchify_at_the_chosen_tokens() -> None:
    """Each sample's own token positions, in their order (repeats too), on a non-square grid."""
    x = torch.randn(3, 5, 8, 12)
    ids = torch.tensor([[5, 0, 2], [1, 1, 4], [3, 2, 0]])
    got = gather_patches(x, 4, ids)
    assert got.shape == (3, 3, 80)
    for b in range(3):
        assert torch.equal(got[b], patchify(x, 4)[b, ids[b]])


def test_grouped_encoding_concatenates_group_code() -> None:
    tok = GroupedTokenizer(SATMAE_S2_GROUPS, P, D)
    dg = tok.group_embed_dim
    assert dg == D // 4 and tok.bands == [b for m in SATMAE_S2_GROUPS.values() for b in m]
    enc = tok.encoding((4, 4)).reshape(3, 16, D)
    pos, grp = enc[..., : D - dg], enc[..., D - dg:]
    assert torch.equal(grp, grp[:, :1].expand_as(grp))  # same within a group
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(grp[a, 0], grp[b, 0])  # differs across groups
        assert torch.equal(pos[a], pos[0])  # same position code in every group
    assert torch.equal(pos[0], sincos_2d(D - dg, (4, 4)))
    assert not torch.allclose(pos[0, 0], pos[0, 1])


def test_grouped_validation() -> None:
    with pytest.raises(ValueError, match="missing"):
        GroupedTokenizer(SATMAE_S2_GROUPS, P, D, bands=L2A[:5])
    with pytest.raises(ValueError, match="group_embed_dim"):
        GroupedTokenizer(SATMAE_S2_GROUPS, P, D, group_embed_dim=6)
    with pytest.raises(ValueError, match="duplicates"):
        GroupedTokenizer({"a": ["B02"], "b": ["B02"]}, P, D)


# ----------------------------------------------------------------------------- spectral
def test_spectral_accepts_any_sensor_with_one_set_of_weights() -> None:
    torch.manual_seed(0)
    tok = SpectralTokenizer(P, D, hidden_dim=32, code_dim=16)
    cases = {
        "s2": _s2_spectrum(S2),
        "l2a": _s2_spectrum(L2A),
        "s1": sar_stand_in(["VV", "VH"]),
        "enmap": (ENMAP_WL, ENMAP_BW),
        "subset": _s2_spectrum(["B11", "B04", "B8A"]),
    }
    for name, (wl, bw) in cases.items():
        out = tok(torch.randn(2, len(wl), HW, HW), wavelengths=wl, bandwidths=bw)
        assert out.shape == (2, 1, 16, D), name
        assert torch.isfinite(out).all(), name


def test_spectral_permutation_invariance_and_wavelength_sensitivity() -> None:
    torch.manual_seed(0)
    tok = SpectralTokenizer(P, D, hidden_dim=32, code_dim=16)
    x = torch.randn(2, 13, HW, HW)
    wl, bw = _s2_spectrum(S2)
    ref = tok(x, wavelengths=wl, bandwidths=bw)
    perm = torch.randperm(13)
    permuted = tok(x[:, perm], wavelengths=wl[perm], bandwidths=bw[perm])
    assert torch.allclose(permuted, ref, atol=1e-5)
    assert not torch.allclose(tok(x, wavelengths=wl + 30.0, bandwidths=bw), ref, atol=1e-4)
    assert not torch.allclose(tok(x[:, perm], wavelengths=wl, bandwidths=bw), ref, atol=1e-4)
    sar = x[:, :2]
    vv_vh = tok(sar, **dict(zip(("wavelengths", "bandwidths"), sar_stand_in(["VV", "VH"]),
                                 strict=True)))
    vh_vv = tok(sar, **dict(zip(("wavelengths", "bandwidths"), sar_stand_in(["VH", "VV"]),
                                 strict=True)))
    assert not torch.allclose(vv_vh, vh_vv, atol=1e-4)  # the polarisation code matters


def test_spectral_requires_wavelengths() -> None:
    tok = SpectralTokenizer(P, D, hidden_dim=32, code_dim=16)
    x = torch.randn(1, 3, 8, 8)
    wl, bw = _s2_spectrum(["B02", "B03", "B04"])
    with pytest.raises(ValueError, match="wavelengths"):
        tok(x, bandwidths=bw)
    with pytest.raises(ValueError, match="bandwidths"):
        tok(x, wavelengths=wl)
    with pytest.raises(ValueError, match=r"wavelengths: expected shape \(3,\)"):
        tok(x, wavelengths=wl[:2], bandwidths=bw)
    with pytest.raises(ValueError, match="polarisations"):
        sar_stand_in(["VX"])


def test_spectral_refuses_bad_values_with_a_clear_error() -> None:
    """Non-finite or non-positive band codes are refused, as a list or a tensor, also when a
    tensor that passed once is written to in place afterwards (the check is remembered per
    tensor, not per value)."""
    tok = SpectralTokenizer(P, D, hidden_dim=32, code_dim=16)
    x = torch.randn(1, 3, 8, 8)
    wl, bw = _s2_spectrum(["B02", "B03", "B04"])
    for bad in ([490.0, 0.0, 665.0], [490.0, float("nan"), 665.0], [490.0, -1.0, 665.0]):
        for given in (bad, torch.tensor(bad)):
            with pytest.raises(ValueError, match="wavelengths: expected finite positive values"):
                tok(x, wavelengths=given, bandwidths=bw)
    tok(x, wavelengths=wl, bandwidths=bw)  # passes, and is remembered
    bw[1] = float("inf")
    with pytest.raises(ValueError, match=r"bandwidths: expected finite positive values in nm, "
                                         r"got \[65.0, inf, 30.0\]"):
        tok(x, wavelengths=wl, bandwidths=bw)
    with torch.inference_mode():  # inference tensors have no write counter: checked each time
        iwl = wl.clone()
        tok(x, wavelengths=iwl, bandwidths=torch.tensor([65.0, 35.0, 30.0]))
        iwl[0] = -5.0
        with pytest.raises(ValueError, match="wavelengths: expected finite positive"):
            tok(x, wavelengths=iwl, bandwidths=torch.tensor([65.0, 35.0, 30.0]))


@pytest.mark.parametrize("adapter", [None, 2, 4])
def test_spectral_band_codes_are_checked_once_per_tensor(monkeypatch: pytest.MonkeyPatch,
                                                         adapter: int | None) -> None:
    """The trainer passes the same band-code tensors every micro-step: reading the check's
    result (``bool(tensor)``) is a host sync on an accelerator, so only the first forward may
    do it; later forwards give the same tokens without any ``Tensor.__bool__``. (With more
    bands than the adapter's output, its band sort still reads a tie count: not counted.)"""
    torch.manual_seed(0)
    tok = SpectralTokenizer(P, D, hidden_dim=32, code_dim=16,
                            adapter=None if adapter is None else SpectralAdapter(adapter))
    x = torch.randn(2, 3, 8, 8)
    wl, bw = _s2_spectrum(["B02", "B03", "B04"])
    first = tok(x, wavelengths=wl, bandwidths=bw)
    calls = []
    original = torch.Tensor.__bool__

    def counted(t: torch.Tensor) -> bool:
        calls.append(tuple(t.shape))
        return original(t)

    monkeypatch.setattr(torch.Tensor, "__bool__", counted)
    again = tok(x, wavelengths=wl, bandwidths=bw)
    monkeypatch.undo()
    assert calls == []
    assert torch.equal(first, again)


def test_spectral_adapter_reduces_bands_differentiably() -> None:
    torch.manual_seed(0)
    adapter = SpectralAdapter(out_bands=32)
    x = torch.randn(2, 224, 8, 8, requires_grad=True)
    out, wl, bw = adapter(x, wavelengths=ENMAP_WL, bandwidths=ENMAP_BW)
    assert out.shape == (2, 32, 8, 8) and torch.isfinite(out).all()
    assert wl is not None and bw is not None and wl.shape == bw.shape == (32,)
    assert bool((wl.diff() > 0).all()) and 418 < wl[0] < wl[-1] < 2445
    assert bool((bw >= ENMAP_BW[0]).all())
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    perm = torch.randperm(224)  # sorted by wavelength first: band order does not matter
    out2, wl2, _ = adapter(x.detach()[:, perm], wavelengths=ENMAP_WL[perm],
                           bandwidths=ENMAP_BW[perm])
    assert torch.allclose(out2, out.detach(), atol=1e-5) and torch.allclose(wl2, wl)
    plain_out, none_wl, none_bw = adapter(x.detach())
    assert plain_out.shape == (2, 32, 8, 8) and none_wl is None and none_bw is None
    with pytest.raises(ValueError, match=r"x: expected \(B, C, H, W\)"):
        adapter(torch.randn(13, 8, 8))


def test_spectral_adapter_passes_fewer_bands_through() -> None:
    """C < out_bands: nothing to reduce, so bands and spectra come back as given, yet every
    adapter parameter gets a (zero) gradient: DDP without find_unused_parameters needs each
    parameter in the graph at every step (pretrain/strategy.py)."""
    torch.manual_seed(0)
    adapter = SpectralAdapter(out_bands=13)
    wl, bw = _s2_spectrum(S2)
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    out, wl_out, bw_out = adapter(x, wavelengths=wl[:2], bandwidths=bw[:2])
    assert torch.equal(out, x) and torch.equal(wl_out, wl[:2]) and torch.equal(bw_out, bw[:2])
    out.square().sum().backward()
    assert torch.equal(x.grad, 2 * x.detach())  # the pass-through's own gradient, untouched
    for name, p in adapter.named_parameters():
        assert p.grad is not None, f"{name}: no gradient (DDP would fail at the next step)"
        assert not p.grad.any(), f"{name}: expected a zero gradient"
    with torch.no_grad():  # inference: x itself, no extra work
        assert adapter(x)[0] is x
    with pytest.raises(ValueError, match=r"wavelengths: expected shape \(2,\)"):
        adapter(torch.randn(1, 2, 8, 8), wavelengths=wl, bandwidths=bw)


def test_spectral_adapter_at_exactly_out_bands_runs_its_correction() -> None:
    """C == out_bands runs the adapter as it always did (skip = identity, plus the learned
    correction), so checkpoints trained with it keep their outputs."""
    torch.manual_seed(0)
    adapter = SpectralAdapter(out_bands=13)
    wl, bw = _s2_spectrum(S2)  # already in wavelength order
    x = torch.randn(2, 13, 8, 8)
    with torch.no_grad():
        out, wl_out, bw_out = adapter(x, wavelengths=wl, bandwidths=bw)
        z = x.reshape(2, 1, 13, 64)
        pool = torch.nn.functional.adaptive_avg_pool2d
        ref = (pool(adapter.conv2(adapter.act(adapter.conv1(z))), (13, 64)) + z).reshape(x.shape)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert not torch.equal(out, x)  # the correction ran
    torch.testing.assert_close(wl_out, wl)
    torch.testing.assert_close(bw_out, bw)


def test_adapter_encoder_trains_on_fewer_bands_with_every_gradient() -> None:
    """A spectral+adapter encoder on S1 (2 bands < out_bands 32): every parameter, the
    adapter's included, has a gradient after backward (what DDP checks)."""
    from eofm.models import create_model

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer="spectral", img_size=16,
                       tokenizer_kwargs={"adapter": {"out_bands": 32}})
    wl, bw = sar_stand_in(["VV", "VH"])
    enc(torch.randn(2, 2, 16, 16), wavelengths=wl, bandwidths=bw).square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_adapter_encoder_takes_any_sensor() -> None:
    """One encoder with the EnMAP adapter (out_bands 32) takes S1 (2), S2 (13) and EnMAP (224)."""
    from eofm.models import create_model

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", tokenizer="spectral", img_size=16,
                       tokenizer_kwargs={"adapter": {"out_bands": 32}}).eval()
    s1 = sar_stand_in(["VV", "VH"])
    s2 = _s2_spectrum(S2)
    with torch.no_grad():
        for wl, bw in (s1, s2, (ENMAP_WL, ENMAP_BW)):
            y = enc(torch.randn(2, wl.shape[0], 16, 16), wavelengths=wl, bandwidths=bw)
            assert y.shape == (2, 64) and torch.isfinite(y).all()


# ----------------------------------------------------------------------------- factory
def test_build_tokenizer() -> None:
    assert isinstance(build_tokenizer("plain", bands=S2, patch_size=P, embed_dim=D), PlainTokenizer)
    grouped = build_tokenizer("grouped", bands=S2, patch_size=P, embed_dim=D)
    assert isinstance(grouped, GroupedTokenizer) and grouped.group_names == list(SATMAE_S2_GROUPS)
    spectral = build_tokenizer("spectral", bands=S2, patch_size=P, embed_dim=D,
                               adapter={"out_bands": 8})
    assert isinstance(spectral, SpectralTokenizer) and spectral.bands is None
    assert isinstance(spectral.adapter, SpectralAdapter)
    with pytest.raises(ValueError, match="kind"):
        build_tokenizer("conv", bands=S2, patch_size=P, embed_dim=D)
    with pytest.raises(ValueError, match="unknown arguments"):
        build_tokenizer("plain", bands=S2, patch_size=P, embed_dim=D, depth=3)
    with pytest.raises(ValueError, match="groups"):
        build_tokenizer("grouped", groups="landsat", patch_size=P, embed_dim=D)


def test_spectral_adapter_pools_the_sar_stand_in_to_a_positive_bandwidth() -> None:
    """SAR's stand-in wavelength (5.5e7 nm) with bandwidths 1..4: in float32 the window's
    edges round together and its bandwidth became 0 (log(0): NaN in every token). Pooled
    spectra are computed in float64 and never narrower than the window's widest band."""
    torch.manual_seed(0)
    wl_s1, bw_s1 = sar_stand_in(["VV", "VH"])
    with torch.no_grad():
        _, wl, bw = SpectralAdapter(out_bands=2)(torch.randn(1, 2, 4, 4), wavelengths=wl_s1,
                                                 bandwidths=bw_s1)
    assert torch.equal(bw, torch.tensor([1.0, 2.0])) and torch.equal(wl, wl_s1)
    s2_wl, s2_bw = _s2_spectrum(S2)
    wl = torch.cat([s2_wl, wl_s1])
    bw = torch.cat([s2_bw, bw_s1])
    tok = SpectralTokenizer(8, 64, adapter=SpectralAdapter(out_bands=8)).eval()
    x = torch.randn(2, 15, 16, 16)
    with torch.no_grad():
        _, _, pbw = tok.adapter(x, wavelengths=wl, bandwidths=bw)
        assert pbw[-1] == 2.0 and bool((pbw > 0).all())  # the VV+VH window: edges -1..+1
        assert torch.isfinite(tok(x, wavelengths=wl, bandwidths=bw)).all()


def test_swapping_vv_and_vh_with_their_codes_leaves_adapter_tokens_unchanged() -> None:
    """S2 + S1 behind a reducing adapter: VV and VH share the SAR stand-in wavelength, so a
    sort by wavelength alone kept them in input order and swapping them changed the tokens.
    Bands are ordered by (wavelength, bandwidth): the same tokens either way."""
    torch.manual_seed(0)
    s2_wl, s2_bw = _s2_spectrum(L2A)
    sar_wl, sar_bw = sar_stand_in(["VV", "VH"])
    wl, bw = torch.cat([s2_wl, sar_wl]), torch.cat([s2_bw, sar_bw])
    x = torch.randn(2, 14, 16, 16)
    swap = torch.tensor([*range(12), 13, 12])
    for out_bands in (8, 14):  # fewer than the input, and as many
        tok = SpectralTokenizer(8, 64, adapter=SpectralAdapter(out_bands=out_bands)).eval()
        with torch.no_grad():
            a = tok(x, wavelengths=wl, bandwidths=bw)
            b = tok(x[:, swap], wavelengths=wl[swap], bandwidths=bw[swap])
        assert torch.equal(a, b), out_bands
        assert not torch.equal(a, tok(x[:, swap], wavelengths=wl, bandwidths=bw))  # VV is not VH


def test_bands_with_the_same_spectrum_are_indistinguishable_in_any_order() -> None:
    """Two bands with equal wavelength AND bandwidth (one band of two stacked products) cannot be
    told apart: the adapter uses their mean, so their input order does not matter; every other
    band is left as it is."""
    torch.manual_seed(0)
    wl = torch.tensor([443.0, 490.0, 443.0, 560.0, 665.0])
    bw = torch.tensor([16.0, 65.0, 16.0, 35.0, 30.0])
    order, same = spectral_order(wl, bw)
    assert order.tolist() == [0, 2, 1, 3, 4] and same is not None
    assert torch.equal(same[:2, :2], torch.full((2, 2), 0.5)) and torch.equal(same[2:, 2:],
                                                                              torch.eye(3))
    assert spectral_order(wl[1:], bw[1:])[1] is None  # no tie: no averaging at all
    adapter = SpectralAdapter(out_bands=4).eval()
    x = torch.randn(2, 5, 8, 8)
    swap = torch.tensor([2, 1, 0, 3, 4])
    with torch.no_grad():
        a = adapter(x, wavelengths=wl, bandwidths=bw)
        b = adapter(x[:, swap], wavelengths=wl[swap], bandwidths=bw[swap])
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
