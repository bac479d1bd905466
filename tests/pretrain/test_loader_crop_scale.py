"""The loader's random resized crop takes the area range its objective declares: SatMAE++ the
published (0.6, 1.0) (its loaded crop is the top-scale L1 target, and the crop resamples by
nearest neighbour, so a small box is a block-upsampled target), the others (0.35, 1.0)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eofm.data_shards.transforms import ZOOM_KEY, RandomResizedCrop
from eofm.pretrain.config import load_config
from eofm.pretrain.data import CROP_SCALE, build_loader
from eofm.pretrain.objectives import register_objective

S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
SATMAEPP = ["objective.name=satmaepp", "objective.norm_pix_loss=false",
            "model.name=vit_test_patch8", "model.tokenizer=grouped", "model.img_size=16",
            "objective.params.num_scales=2", f"data.bands={{s2: [{', '.join(S2)}]}}"]


def _overrides(tiles: Path) -> list[str]:
    """A loader of the 32 px scene tiles cropped to 32 px (tiles the size of the crop, as in
    satmaepp_s2_cpu.yaml: every box under the whole tile is upsampled)."""
    return [f"data.path={tiles}", "data.modalities=[s2]", "data.num_workers=0",
            "data.crop_size=32", "data.batch_size=8", "data.shuffle_buffer=16"]


def _crop(loader) -> RandomResizedCrop:
    """The random resized crop among the built loader's dataset transforms."""
    crops = [t for t in loader.dataset.transform.transforms if isinstance(t, RandomResizedCrop)]
    assert len(crops) == 1
    return crops[0]


def test_satmaepp_loader_crops_the_published_area_share(scene_tiles_32: Path) -> None:
    """Every crop box the SatMAE++ loader draws covers >= 60% of the tile: its transform's
    range, the boxes it draws, and the zoom of the samples it ships (the old loader drew down
    to 35% for every objective: up to 1.69x nearest upsampling of the L1 target)."""
    import numpy as np

    cfg = load_config(None, [*_overrides(scene_tiles_32), *SATMAEPP])
    loader, info = build_loader(cfg, 0, 1)
    crop = _crop(loader)
    h, w = info.tile
    # each side is rounded to whole pixels: the share falls short of the drawn one by at most
    # (ch + cw) / 2 / (h * w) <= 1 / min(h, w)
    slack = 1.0 / min(h, w)
    rng = np.random.default_rng(0)
    shares = [ch * cw / (h * w) for *_, ch, cw in (crop.box(h, w, rng) for _ in range(500))]
    assert 0.6 - slack <= min(shares) and max(shares) <= 1.0, min(shares)
    # the samples it ships: __zoom__ = sqrt(box area) / crop size
    shipped = [float(z) ** 2 * cfg.data.crop_size ** 2 / (h * w)
               for b in loader for z in b[ZOOM_KEY]]
    assert len(shipped) >= 16
    assert 0.6 - slack <= min(shipped), min(shipped)
    assert crop.scale == (0.6, 1.0)  # the published range, declared by the objective


def test_mae_loader_keeps_the_default_area_share(scene_tiles_32: Path) -> None:
    """MAE's loader still crops 35-100% of the tile (as before the objectives declared one)."""
    loader, _ = build_loader(load_config(None, _overrides(scene_tiles_32)), 0, 1)
    assert _crop(loader).scale == CROP_SCALE == (0.35, 1.0)


def test_only_satmaepp_declares_its_own_area_share() -> None:
    """The range comes from the registry by ``objective.name`` (the loader is built before the
    objective): SatMAE++ its published one, the others the loader's default."""
    from eofm.pretrain.data import loader_crop_scale
    from eofm.pretrain.objectives import satmaepp

    for name in ("mae", "selectivemae", "softcon"):
        assert loader_crop_scale(load_config(None, [f"objective.name={name}"],
                                             check=False)) == CROP_SCALE
    assert (loader_crop_scale(load_config(None, SATMAEPP, check=False))
            == satmaepp.LOADER_CROP_SCALE == (0.6, 1.0))


@pytest.mark.parametrize("bad", [(0.0, 1.0), (0.7, 0.5), (0.5, 1.5), (0.5,), "ab", (math.nan, 1)])
def test_a_crop_scale_outside_zero_one_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match=r"register_objective\('bad_crop'\): crop_scale: "
                                         r"expected \(lo, hi\) with 0 < lo <= hi <= 1, got "):
        register_objective("bad_crop", crop_scale=bad)  # type: ignore[arg-type]
