"""Decoders and heads: gradients everywhere, token order, CrossMAE independence, band alignment."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from eofm.models.attention import attention_backend
from eofm.models.decoders import (
    CrossAttentionDecoder,
    GroupPixelHeads,
    MAEDecoder,
    MultiScaleUpsampler,
    decoder_encoding,
)
from eofm.models.heads import (
    LinearHead,
    MLPHead,
    PredictionMLP,
    ProjectionMLP,
    SegmentationDecoder,
)
from eofm.models.masking import gather_tokens, grouped_masking, random_masking
from eofm.models.tokenizers import (
    SATMAE_S2_GROUPS,
    GroupedTokenizer,
    PlainTokenizer,
    patchify,
    unpatchify,
)
from eofm.models.vit import ViTEncoder

DE, DD, P, GRID = 32, 32, 4, (3, 4)  # encoder width, decoder width, patch, token grid
L = GRID[0] * GRID[1]
L2A = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_grads(module: nn.Module, out: Tensor | list[Tensor] | dict[str, Tensor]) -> None:
    """Random-weighted loss: finite outputs, and every parameter gets a finite, nonzero grad."""
    outs = list(out.values()) if isinstance(out, dict) else out if isinstance(out, list) else [out]
    assert all(torch.isfinite(o).all() for o in outs)
    loss = sum((o * torch.randn(o.shape, generator=_gen(7))).sum() for o in outs)
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def _latent(b: int, k: int, prefix: int = 1, seed: int = 0) -> Tensor:
    return torch.randn(b, prefix + k, DE, generator=_gen(seed))


# ---- MAE decoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [GRID, (3, *GRID)])
def test_mae_decoder_forward_backward(layout: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    dec = MAEDecoder(layout, DE, DD, depth=2, num_heads=4, out_dim=P * P * 3)
    n = dec.num_tokens
    _, ids_restore, _ = random_masking(2, n, n // 4, generator=_gen())
    out = dec(_latent(2, n // 4), ids_restore)
    assert out.shape == (2, n, P * P * 3)
    _check_grads(dec, out)


def test_mae_decoder_follows_ids_restore() -> None:
    """Encoder order is ids_keep; unshuffling with argsort(ids_keep) gives the natural order."""
    torch.manual_seed(0)
    dec = MAEDecoder(GRID, DE, DD, depth=2, num_heads=4, out_dim=5).eval()
    lat = _latent(2, L)
    ident = torch.arange(L).expand(2, L)
    perm = torch.stack([torch.randperm(L, generator=_gen(s)) for s in (1, 2)])
    shuffled = torch.cat([lat[:, :1], gather_tokens(lat[:, 1:], perm)], dim=1)
    ref = dec(lat, ident)
    assert torch.allclose(dec(shuffled, torch.argsort(perm, dim=1)), ref, atol=1e-5)
    assert not torch.allclose(dec(shuffled, ident), ref, atol=1e-3)


def test_mae_decoder_depth0_matches_manual() -> None:
    """Depth 0: visible token j lands at ids_keep[j]; masked cells get mask token + position."""
    torch.manual_seed(0)
    dec = MAEDecoder(GRID, DE, DD, depth=0, num_heads=4, out_dim=3).eval()
    keep = 5
    ids_keep, ids_restore, mask = random_masking(2, L, keep, generator=_gen(3))
    lat = _latent(2, keep)
    out = dec(lat, ids_restore)
    pos = decoder_encoding(DD, GRID)
    for b in range(2):
        for j in range(keep):
            n = int(ids_keep[b, j])
            want = dec.pred(dec.norm(dec.embed(lat[b, 1 + j]) + pos[n]))
            assert torch.allclose(out[b, n], want, atol=1e-5)
        for n in torch.nonzero(mask[b]).flatten().tolist():
            want = dec.pred(dec.norm(dec.mask_token[0, 0] + pos[n]))
            assert torch.allclose(out[b, n], want, atol=1e-5)


def test_decoder_encoding_matches_tokenizers() -> None:
    grouped = GroupedTokenizer(SATMAE_S2_GROUPS, P, DD)
    enc = decoder_encoding(DD, GRID, 3, grouped.group_embed_dim)
    assert torch.equal(enc, grouped.encoding(GRID))
    assert torch.equal(decoder_encoding(DD, GRID), PlainTokenizer(["R"], P, DD).encoding(GRID))
    scaled = decoder_encoding(DD, GRID, 3, 8, gsd_scale=torch.tensor([1.0, 2.0]))
    assert scaled.shape == (2, 3 * L, DD) and torch.equal(scaled[0], decoder_encoding(DD, GRID,
                                                                                      3, 8))


def test_mae_decoder_per_group_outputs_and_encoder_composition() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder(GroupedTokenizer(SATMAE_S2_GROUPS, P, DE, bands=L2A), DE, 1, 2,
                     img_size=(12, 16))
    widths = {g: len(b) * P * P for g, b in SATMAE_S2_GROUPS.items()}
    dec = MAEDecoder.from_encoder(enc, decoder_dim=DD, depth=1, num_heads=2, out_dim=widths)
    assert dec.group_dim == 8 and dec.num_tokens == 3 * L
    ids_keep, ids_restore, _ = grouped_masking(2, 3, L, 0.25, generator=_gen())
    x = torch.randn(2, len(L2A), 12, 16, generator=_gen(1))
    out = dec(enc.forward_features(x, ids_keep=ids_keep), ids_restore)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        g: (2, L, w) for g, w in widths.items()}
    with pytest.raises(ValueError, match="grid"):
        dec(enc.forward_features(x, ids_keep=ids_keep), ids_restore[:, :-3])


def test_mae_decoder_backends_agree() -> None:
    torch.manual_seed(0)
    dec = MAEDecoder(GRID, DE, DD, depth=1, num_heads=4, out_dim=3).eval()
    _, ids_restore, _ = random_masking(2, L, 4, generator=_gen())
    lat = _latent(2, 4)
    with attention_backend("reference"):
        ref = dec(lat, ids_restore)
    assert torch.allclose(dec(lat, ids_restore), ref, atol=1e-5)


# ---- cross-attention decoder ----------------------------------------------------------------


@pytest.mark.parametrize("self_attn", [False, True])
def test_cross_decoder_all_tokens_and_grads(self_attn: bool) -> None:
    torch.manual_seed(0)
    dec = CrossAttentionDecoder(GRID, DE, DD, depth=2, num_heads=4, out_dim=7,
                                self_attn=self_attn)
    ids = torch.arange(L).expand(2, L)
    out = dec(_latent(2, 4), ids)
    assert out.shape == (2, L, 7)
    _check_grads(dec, out)


def test_cross_decoder_targets_are_independent() -> None:
    """Without self-attention a target's output depends only on itself and the encoder output."""
    torch.manual_seed(0)
    lat = _latent(2, 4)
    a = torch.tensor([[3, 0, 7, 9], [5, 1, 2, 11]])
    b = torch.tensor([[3, 10], [5, 8]])  # same first target, other companions
    dec = CrossAttentionDecoder(GRID, DE, DD, depth=2, num_heads=4, out_dim=6).eval()
    assert torch.allclose(dec(lat, a)[:, 0], dec(lat, b)[:, 0], atol=1e-6)
    full = dec(lat, torch.arange(L).expand(2, L))
    assert torch.allclose(gather_tokens(full, a), dec(lat, a), atol=1e-5)
    mixed = CrossAttentionDecoder(GRID, DE, DD, depth=2, num_heads=4, out_dim=6,
                                  self_attn=True).eval()
    assert not torch.allclose(mixed(lat, a)[:, 0], mixed(lat, b)[:, 0], atol=1e-4)


# ---- per-group pixel heads ------------------------------------------------------------------


class _Const(nn.Module):
    """Stands in for a head: returns a fixed (B, T, p*p*C_g) tensor whatever its input."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return self.value


def test_group_heads_align_by_band_name() -> None:
    """Each head emits its group's exact pixel targets; assembling must give the image back."""
    heads = GroupPixelHeads(SATMAE_S2_GROUPS, DD, P, target_bands=L2A)
    assert heads.uncovered_bands == ["B01", "B09"]
    assert heads.covered.tolist() == [b not in ("B01", "B09") for b in L2A]
    img = torch.randn(2, len(L2A), GRID[0] * P, GRID[1] * P, generator=_gen())
    tok = GroupedTokenizer(SATMAE_S2_GROUPS, P, DD, bands=L2A)
    heads.heads = nn.ModuleList(_Const(t) for t in tok.patchify_groups(img))
    out = heads(torch.zeros(2, 3 * L, DD))
    target = heads.target(img)
    assert out.shape == target.shape == (2, L, P * P * len(L2A))
    covered = heads.covered.repeat(P * P)  # patchify layout: channel fastest
    assert torch.equal(out[..., covered], target[..., covered])
    assert (out[..., ~covered] == 0).all()
    back = unpatchify(out, P, GRID, len(L2A))
    b08 = L2A.index("B08")
    assert torch.equal(back[:, b08], img[:, b08])  # B08 comes from the rgbn head


def test_group_heads_b08_is_rgbn_head() -> None:
    torch.manual_seed(0)
    heads = GroupPixelHeads(SATMAE_S2_GROUPS, DD, P, target_bands=L2A)
    x = torch.randn(2, 3 * L, DD, generator=_gen())
    out = heads(x).reshape(2, L, P * P, len(L2A))
    rgbn = heads.heads[0](x[:, :L]).reshape(2, L, P * P, 4)
    assert torch.equal(out[..., L2A.index("B08")], rgbn[..., 3])
    _check_grads(heads, heads(x))


def test_group_heads_token_subset_and_per_band_mask() -> None:
    torch.manual_seed(0)
    heads = GroupPixelHeads(SATMAE_S2_GROUPS, DD, P, target_bands=L2A)
    x = torch.randn(2, 3 * L, DD, generator=_gen())
    full = heads(x).reshape(2, L, P * P, len(L2A))
    ids = torch.tensor([[0, L + 5, 2 * L + 11], [2 * L, 3, L + 1]])
    pred, band_mask = heads.predict_tokens(gather_tokens(x, ids), ids, L)
    pred = pred.reshape(2, 3, P * P, len(L2A))
    assert band_mask.shape == (2, 3, len(L2A)) and band_mask[0, 0].sum() == 4
    for bi in range(2):
        for t in range(3):
            cell, m = int(ids[bi, t]) % L, band_mask[bi, t]
            assert torch.allclose(pred[bi, t][:, m], full[bi, cell][:, m], atol=1e-6)
            assert (pred[bi, t][:, ~m] == 0).all()
    mask = torch.zeros(2, 3 * L)
    mask[0, L + 2] = 1  # red-edge token of cell 2
    per_band = heads.per_band(mask)
    assert per_band.shape == (2, L, len(L2A))
    assert per_band[0, 2].tolist() == [float(b in SATMAE_S2_GROUPS["rededge"]) for b in L2A]
    with pytest.raises(ValueError, match="target_bands"):
        GroupPixelHeads(SATMAE_S2_GROUPS, DD, P, target_bands=["B02", "B03"])


def test_patchify_roundtrip() -> None:
    img = torch.randn(2, 5, 8, 12, generator=_gen())
    assert torch.equal(unpatchify(patchify(img, P), P, (2, 3), 5), img)


# ---- SatMAE++ multi-scale branch ------------------------------------------------------------


def test_multiscale_upsampler_three_scales() -> None:
    torch.manual_seed(0)
    up = MultiScaleUpsampler(channels=3, num_scales=3)
    outs = up(torch.randn(2, 3, 8, 6, generator=_gen()))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 12), (2, 3, 32, 24)]
    _check_grads(up, outs)
    with pytest.raises(ValueError, match="img"):
        up(torch.randn(2, 4, 8, 8))


# ---- heads ----------------------------------------------------------------------------------


def test_segmentation_decoder_shapes_and_grads() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(2, DE, *GRID, generator=_gen(i)) for i in range(4)]
    seg = SegmentationDecoder(DE, num_classes=5, patch_size=P, channels=16)
    out = seg(feats)
    assert out.shape == (2, 5, GRID[0] * P, GRID[1] * P)
    _check_grads(seg, out)
    single = SegmentationDecoder(DE, 3, P, channels=8, scales=(1.0,))
    assert single(feats[:1], size=(20, 20)).shape == (2, 3, 20, 20)


def test_segmentation_decoder_on_encoder_intermediates() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder(PlainTokenizer(["R", "G", "B"], P, DE), DE, 2, 2, img_size=16)
    maps = enc.forward_intermediates(torch.randn(1, 3, 16, 16), indices=[0, 1, 1, 1])
    assert SegmentationDecoder(DE, 4, P, channels=8)(maps).shape == (1, 4, 16, 16)


@pytest.mark.parametrize("norm", ["bn", "ln", None])
def test_mlps_shapes_and_grads(norm: str | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, DE, generator=_gen())
    proj = ProjectionMLP(DE, hidden_dim=48, out_dim=16, num_layers=3, norm=norm, last_norm=True)
    pred = PredictionMLP(16, hidden_dim=24, norm=norm)
    z = pred(proj(x))
    assert z.shape == (4, 16)
    model = nn.ModuleList([proj, pred])
    _check_grads(model, z)
    tokens = ProjectionMLP(DE, 16, 8, norm=norm)(torch.randn(2, 5, DE))
    assert tokens.shape == (2, 5, 8)


@pytest.mark.parametrize("norm", ["bn", "ln", None])
def test_classifier_heads(norm: str | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, DE, generator=_gen())
    lin = LinearHead(DE, 10, norm=norm, dropout=0.1)
    _check_grads(lin, lin(x))
    mlp = MLPHead(DE, 10, hidden_dim=24, num_layers=3, norm=norm)
    out = mlp(x)
    assert out.shape == (4, 10)
    _check_grads(mlp, out)
    with pytest.raises(ValueError, match="norm"):
        LinearHead(DE, 3, norm="group")
