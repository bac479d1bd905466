"""The layout of a timm ``pos_embed`` (class entry or not, which grid) read by
:func:`eofm.models.adapt.load_timm_vit` from the row count, the ``cls_token`` and the encoder's
grid: a class entry over a k x (k+2) grid has (k+1)^2 rows and used to be read as a square grid
without class entry; other non-square grids were refused even at the encoder's own grid."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from eofm.models import create_model
from eofm.models.adapt import load_timm_vit
from eofm.models.pos_embed import resample_grid_table

RGB = ["B04", "B03", "B02"]


def _timm(img_size: tuple[int, int], **kw: object) -> VisionTransformer:
    """A small timm ViT (patch 8) with a random, far-from-smooth position table."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                            num_classes=0, **kw).eval()
    with torch.no_grad():
        vit.pos_embed.normal_()
    return vit


def _encoder(img_size: tuple[int, int]) -> torch.nn.Module:
    return create_model("vit_test_patch8", bands=RGB, img_size=img_size, learned_pos=True).eval()


@pytest.mark.parametrize("img_size", [(24, 40), (32, 40)])  # 3x5: 16 rows; 4x5: 21 rows
def test_class_entry_over_a_non_square_grid_loads_the_same_network(
        img_size: tuple[int, int]) -> None:
    vit = _timm(img_size)
    enc = _encoder(img_size)
    report = load_timm_vit(enc, vit.state_dict())
    grid = (img_size[0] // 8, img_size[1] // 8)
    assert f"pos_embed -> pos_table: grid {grid} -> {grid}" in report.adapted
    assert torch.equal(enc.pos_table.detach(), vit.pos_embed.detach()[0, 1:])
    x = torch.randn(1, 3, *img_size)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), vit.forward_features(x))


def test_square_checkpoints_load_as_before() -> None:
    """Square grids, with a class entry or without one (``no_embed_class``), read as before,
    also into an encoder whose grid has one position fewer than the file's rows."""
    vit = _timm((32, 32))  # class entry + 4x4: 17 rows
    enc = _encoder((24, 40))  # 3x5
    assert "pos_embed -> pos_table: grid (4, 4) -> (3, 5)" in \
        load_timm_vit(enc, vit.state_dict()).adapted
    table = vit.pos_embed.detach()[0, 1:]
    assert torch.allclose(enc.pos_table.detach(), resample_grid_table(table, (4, 4), (3, 5)))
    deit3 = _timm((32, 32), no_embed_class=True)  # a class token, no class entry: 16 rows
    enc = _encoder((32, 32))
    load_timm_vit(enc, deit3.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(x), deit3.forward_features(x))
    state = _timm((32, 32), class_token=False, global_pool="avg", fc_norm=False).state_dict()
    assert "cls_token" not in state  # no class token: 16 rows are a 4x4 grid, not 1 + 3x5
    enc = create_model("vit_test_patch8", bands=RGB, img_size=(24, 40), learned_pos=True,
                       class_token=False, global_pool="avg")  # as the file's: no class token
    assert "pos_embed -> pos_table: grid (4, 4) -> (3, 5)" in load_timm_vit(enc, state).adapted


def test_a_count_that_fits_two_grids_is_refused_naming_pos_grid() -> None:
    """1 + 16 rows into a 2x8 encoder: a 4x4 file or a 2x8 one; say which with pos_grid."""
    vit = _timm((32, 32))
    enc = _encoder((16, 64))  # 2x8
    with pytest.raises(ValueError, match=r"weights: vit\.pth: pos_embed: 17 positions after a "
                                         r"class entry fit both the encoder's grid \(2, 8\) "
                                         r"and the square grid \(4, 4\); pass pos_grid"):
        load_timm_vit(enc, vit.state_dict(), source="vit.pth")
    report = load_timm_vit(enc, vit.state_dict(), pos_grid=(4, 4))
    assert "pos_embed -> pos_table: grid (4, 4) -> (2, 8)" in report.adapted
    table = vit.pos_embed.detach()[0, 1:]
    assert torch.allclose(enc.pos_table.detach(), resample_grid_table(table, (4, 4), (2, 8)))
    with pytest.raises(ValueError, match=r"pos_grid: expected the grid \(Gh, Gw\) of "
                                         r"pos_embed's 17 positions .* got \(3, 5\)"):
        load_timm_vit(enc, vit.state_dict(), pos_grid=(3, 5))
    odd = _timm((24, 56))  # 1 + 3x7 = 22 rows: neither the encoder's grid nor square
    with pytest.raises(ValueError, match=r"22 positions is neither the encoder's grid "
                                         r"\(2, 8\) nor a square grid.*pos_grid"):
        load_timm_vit(enc, odd.state_dict())
