"""Sample transforms: the resampling crop records its zoom (the GSD multiplier); flips and
rotations keep a batch stackable; normalisation zeroes no-data band-pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.transforms import (
    ZOOM_KEY,
    RandomCrop,
    RandomFlipRot,
    RandomResizedCrop,
    nodata_mask,
    normalize,
)


def _sample() -> dict:
    return {"__key__": "a", "s2": np.arange(2 * 64 * 64, dtype=np.uint16).reshape(2, 64, 64),
            "s2_valid": np.ones((64, 64), bool)}


def test_resized_crop_records_source_pixels_per_output_pixel() -> None:
    rng = np.random.default_rng(0)
    crop = RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    out = crop(_sample(), rng)
    assert out["s2"].shape == (2, 16, 16) and out["s2_valid"].shape == (16, 16)
    assert out[ZOOM_KEY] == pytest.approx(2.0)  # a 32 px box resized to 16 px
    full = RandomResizedCrop(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))(_sample(), rng)
    assert full[ZOOM_KEY] == pytest.approx(1.0)
    assert np.array_equal(full["s2"], _sample()["s2"])  # full box at full size: unchanged


def test_zoom_is_the_geometric_mean_of_the_box_axes() -> None:
    crop = RandomResizedCrop(32, scale=(0.2, 1.0))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, _, ch, cw = crop.box(64, 64, np.random.default_rng(seed))
        out = crop(_sample(), rng)
        assert out[ZOOM_KEY] == pytest.approx((ch * cw) ** 0.5 / 32)


def test_plain_crop_does_not_resample() -> None:
    out = RandomCrop(32)(_sample(), np.random.default_rng(0))
    assert ZOOM_KEY not in out and out["s2"].shape == (2, 32, 32)


def test_flip_rot_keeps_non_square_tiles_stackable() -> None:
    """A quarter turn made a (C, 32, 48) tile (C, 48, 32), so one batch held both shapes and
    collate failed; non-square tiles now turn by 0 or 180 degrees only, drawing from the
    random stream exactly as square tiles do (a resumed job's augmentations stay the same)."""
    from eofm.data_shards.reader import collate

    code = np.arange(32 * 48, dtype=np.int32).reshape(32, 48)
    seen, samples = set(), []
    for seed in range(32):
        s = {"__key__": "a", "x": np.stack([code, code + 7]), "x_valid": code % 3 == 0}
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        out = RandomFlipRot()(s, rng)
        assert out["x"].shape == (2, 32, 48) and out["x_valid"].shape == (32, 48)
        assert np.array_equal(out["x"][1], out["x"][0] + 7)  # the image and mask move together
        assert np.array_equal(out["x_valid"], out["x"][0] % 3 == 0)
        RandomFlipRot()({"x": np.zeros((1, 8, 8))}, twin)  # a square tile's draws
        assert rng.random() == twin.random()  # the same share of the stream
        seen.add(tuple(out["x"][0][[0, 0, -1, -1], [0, -1, 0, -1]]))  # where the corners went
        samples.append(out)
    assert len(seen) == 4  # identity, both flips and the half turn all occur
    assert collate(samples)["x"].shape == (32, 2, 32, 48)


def test_flip_rot_of_square_tiles_still_turns_a_quarter() -> None:
    code = np.arange(16, dtype=np.int32).reshape(1, 4, 4)
    outs = {RandomFlipRot(hflip=False, vflip=False)({"x": code}, np.random.default_rng(s))["x"]
            .tobytes() for s in range(32)}
    assert len(outs) == 4  # all four rotations


def test_normalize_zeroes_band_pixels_at_their_nodata_value() -> None:
    """A band left out of the valid mask because it is empty in this tile (EnMAP's
    water-vapour bands) reached the model as (-32768 - mean) / std, about -10^4; with the
    bands' nodata values it is 0 (the band mean), as an invalid pixel is."""
    x = torch.full((2, 3, 4, 4), 120, dtype=torch.int16)
    x[0, 1] = -32768  # band 1 empty in sample 0, its pixels still valid
    x[1, 2, 0, 0] = -32768  # a band without a nodata value keeps the number as data
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[1, 3, 3] = False
    shift, scale = torch.tensor([100.0, 100.0, 100.0]), torch.tensor([10.0, 10.0, 10.0])
    y = normalize(x, shift, scale, valid, [-32768.0, -32768.0, None])
    assert (y[0, 1] == 0).all() and (y[0, [0, 2]] == 2).all()
    assert y[1, 2, 0, 0] == (-32768 - 100) / 10 and (y[1, :, 3, 3] == 0).all()
    assert torch.equal(normalize(x, shift, scale, valid, None), normalize(x, shift, scale, valid))
    with pytest.raises(ValueError, match=r"nodata: expected one value \(or None\) per band of "
                                         r"x \(3\), got 2"):
        normalize(x, shift, scale, valid, [0.0, 0.0])


@pytest.mark.parametrize(("dtype", "nodata", "fill"), [
    (torch.uint16, -1.0, None),  # a value the dtype cannot hold matches nothing
    (torch.uint16, 65535.0, 65535),
    (torch.float32, -9999.0, -9999.0),
    (torch.int32, 16777217.0, 16777217),  # not exact in float32: compared in float64
])
def test_nodata_mask_compares_in_the_pixels_dtype(dtype: torch.dtype, nodata: float,
                                                  fill: float | None) -> None:
    x = torch.zeros(1, 1, 2, 2, dtype=dtype)
    if fill is not None:
        x[0, 0, 0, 0] = fill
        x[0, 0, 0, 1] = fill - 1  # a neighbouring value is data
    at = nodata_mask(x, [nodata])
    if fill is None:
        assert at is None
    else:
        assert at is not None and at.flatten().tolist() == [True, False, False, False]


def test_resized_crop_is_the_nearest_neighbour_index_of_its_box() -> None:
    """The crop reads source row ``top + i * h // size`` and column ``left + j * w // size``
    for output pixel (i, j) of every spatial array, and returns contiguous arrays."""
    rng = np.random.default_rng(3)
    sample = {"__key__": "a", "s2": rng.integers(0, 9999, (3, 40, 52), dtype=np.uint16),
              "s2_valid": rng.random((40, 52)) < 0.9}
    crop = RandomResizedCrop(24, scale=(0.3, 0.9))
    out = crop(sample, np.random.default_rng(5))
    t, left, h, w = crop.box(40, 52, np.random.default_rng(5))
    rows, cols = t + np.arange(24) * h // 24, left + np.arange(24) * w // 24
    for key in ("s2", "s2_valid"):
        assert np.array_equal(out[key], sample[key][..., rows[:, None], cols[None, :]])
        assert out[key].flags.c_contiguous


def test_band_statistics_refuse_non_finite_or_zero_statistics() -> None:
    """A band whose std is NaN (or whose mean is infinite) would normalise every pixel to NaN;
    integer pixels are no longer scrubbed of non-finite values after normalising, so such
    statistics are refused where they are read, naming the bands."""
    from types import SimpleNamespace

    from eofm.data_shards.transforms import band_statistics

    stats = {"B02": {"mean": 1.0, "std": 2.0}, "B03": {"mean": 1.0, "std": float("nan")},
             "B04": {"mean": float("inf"), "std": 1.0}, "B08": {"mean": 1.0, "std": 0.0}}
    manifest = SimpleNamespace(modalities={"s2": SimpleNamespace(bands=list(stats),
                                                                  stats=stats)})
    with pytest.raises(ValueError, match=r"s2 bands \['B03', 'B04', 'B08'\] have no usable"):
        band_statistics(manifest, "s2")  # type: ignore[arg-type]
    shift, scale = band_statistics(manifest, "s2", ["B02"])  # type: ignore[arg-type]
    assert shift.tolist() == [1.0] and scale.tolist() == [2.0]


def test_normalize_scrubs_non_finite_float_pixels_and_takes_any_valid_dtype() -> None:
    x = torch.tensor([[[[1.0, float("nan")], [float("inf"), 3.0]]]])
    shift, scale = torch.tensor([1.0]), torch.tensor([2.0])
    for valid in (torch.tensor([[[True, True], [True, False]]]),
                  torch.tensor([[[1, 1], [1, 0]]], dtype=torch.uint8)):
        y = normalize(x, shift, scale, valid)
        assert y.tolist() == [[[[0.0, 0.0], [0.0, 0.0]]]]
    assert normalize(x, shift, scale).tolist() == [[[[0.0, 0.0], [0.0, 1.0]]]]


def _draw(sample: dict, rng: np.random.Generator) -> dict:
    """A transform that records the first draw of the generator the reader hands it."""
    sample["draw"] = int(rng.integers(1 << 62))
    return sample


def test_every_sample_of_a_stream_gets_its_own_transform_draws(ben: Path) -> None:
    """The reader seeds each sample's transform generator from (seed, epoch, rank, worker,
    position in the stream): every sample gets its own crop/flip draws (one generator per
    worker reseeded alike would give every sample the same crop), reproducibly."""
    draws = [s["draw"] for s in ShardDataset(ben, transform=_draw, shuffle_buffer=4)]
    assert len(draws) == 54 and len(set(draws)) == 54
    assert [s["draw"] for s in ShardDataset(ben, transform=_draw, shuffle_buffer=4)] == draws
