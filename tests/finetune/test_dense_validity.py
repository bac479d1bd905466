"""Which pixels of dense (segmentation/regression) data count: the pixels normalisation feeds as
data (one rule with :mod:`eofm.models.normalise`), never those the build marked invalid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.layouts import EUROSAT_FILE_BANDS, LayoutOptions
from eofm.finetune.features import Preprocess, apply_contract
from eofm.finetune.tasks import (
    IGNORE_INDEX,
    DenseData,
    Evaluator,
    input_valid,
    open_dense,
    task_loss,
)
from eofm.models import InputContract
from eofm.models.normalise import normalise_masked

pytestmark = pytest.mark.usefixtures("one_thread")

BANDS = ["B02", "B03", "B04", "B08"]


def _preprocess(nodata: list[float | None]) -> Preprocess:
    """Feeds dataset bands 3, 0, 2 (of 4) at their own size."""
    return Preprocess(bands=["B08", "B02", "B04"], index=[3, 0, 2],
                      source_bands=["B08", "B02", "B04"], size=None, method="meanstd",
                      shift=[1000.0] * 3, scale=[500.0] * 3, nodata=nodata,
                      wavelengths=[842.0, 490.0, 665.0], bandwidths=[115.0, 65.0, 30.0])


def _raw() -> np.ndarray:
    """(4, 4, 8, 8) uint16: 0 (nodata) in a whole fed band, in part of one, in an unfed band,
    and in every fed band of the last image."""
    x = np.random.default_rng(0).integers(100, 3000, (4, 4, 8, 8)).astype(np.uint16)
    x[0, 3] = 0  # image 0: fed B08 empty, the others whole
    x[1, 0, :3, :2] = 0  # image 1: nodata in part of fed B02
    x[2, 1] = 0  # image 2: unfed B03 empty
    x[2, 2, 5, 5] = 0
    x[3, [0, 2, 3]] = 0  # image 3: no fed band has data
    return x


@pytest.mark.parametrize("nodata", [[0.0, 0.0, 0.0], [0.0, None, 0.0]])
@pytest.mark.parametrize("kind", ["uint16", "float32 with NaN", "tensor"])
def test_input_valid_is_the_normalisation_rule(nodata: list[float | None], kind: str) -> None:
    """input_valid marks invalid exactly the pixels normalisation zeroes for being nodata (a
    band empty in its image is zeroed alone, the other bands' pixels stay data); an image
    with no data in any fed band has none valid. It used to blank image 0 whole for its
    empty B08."""
    x = _raw()
    if kind != "uint16":
        f = x.astype(np.float32)
        f[1, 2, 7, 7] = np.nan
        x = torch.from_numpy(f) if kind == "tensor" else f
    pre = _preprocess(nodata)
    valid = input_valid(x, pre.index, pre.nodata)
    sel = x[:, pre.index]
    _, invalid = normalise_masked(sel, pre.shift, pre.scale, pre.nodata)
    b02_data = nodata[1] is None  # B02's 0s are data: image 3 has data in a fed band
    expected = ~invalid[:, 0]
    expected[3] = b02_data
    assert valid.dtype == torch.bool and valid.shape == (4, 8, 8)
    assert torch.equal(valid, expected)
    assert valid[0].all()  # an empty band blanks nothing else
    assert int(valid[2].sum()) == 63 and not valid[2, 5, 5]  # nor does an unfed one
    for part in (valid[1, :3, :2], valid[3]):  # all valid or none, as B02's 0s are data
        assert bool(part.all()) is b02_data and bool(part.any()) is b02_data
    if kind != "uint16":
        assert not valid[1, 7, 7]


def test_a_tile_with_one_empty_band_keeps_its_targets() -> None:
    """A tile whose B08 is empty (fed as 0s alone) is trained on and scored at every pixel
    (it used to have a loss of 0 and no scored pixel, silently)."""
    x = np.random.default_rng(1).integers(100, 3000, (2, 4, 16, 16)).astype(np.uint16)
    x[0, 3] = 0
    y = np.random.default_rng(2).integers(0, 3, (2, 16, 16)).astype(np.int64)
    data = DenseData.from_arrays(x, y, bands=BANDS, sensor="s2_l2a", nodata=0.0)
    stats = {b: {"mean": 1000.5, "std": 500.0} for b in BANDS}  # no pixel normalises to 0
    contract = InputContract(sensors=("s2_l2a",), bands=tuple(BANDS), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(16, 16),
                             patch_size=8)
    pre = apply_contract(data, contract)
    fed = pre(x)
    assert (fed[0, pre.bands.index("B08")] == 0).all() and (fed[0, :3] != 0).all()
    valid = input_valid(x, pre.index, pre.nodata)
    target = torch.where(valid, torch.as_tensor(y), IGNORE_INDEX)  # as Finetuner.batch
    assert int((target[0] != IGNORE_INDEX).sum()) == 256
    logits = torch.randn(1, 3, 16, 16)
    assert float(task_loss("segmentation", logits, target[:1])) > 0
    ev = Evaluator("segmentation", 3)
    ev.update(logits, target[:1])
    assert ev.result()["pixels"] == 256


@pytest.mark.parametrize("fmt", ["shards", "zarr"])
def test_dense_pixels_a_build_marked_invalid_read_as_nodata(tmp_path: Path, fmt: str) -> None:
    """A pixel that is nodata in B10 only is invalid for the build (``s2.valid.npy`` /
    ``s2_valid``): dense data reads it as nodata in every band, as labelled data does
    (:func:`eofm.finetune.datasets.mark_invalid`), so an encoder fed B04 gets 0 there and its
    target is neither trained on nor scored (B04's value used to be fed and its target
    counted)."""
    rng = np.random.default_rng(0)
    src, seg = tmp_path / "src", tmp_path / "seg"
    src.mkdir()
    seg.mkdir()
    b04, b10 = EUROSAT_FILE_BANDS.index("B04"), EUROSAT_FILE_BANDS.index("B10")
    raws = {}
    for i in range(3):
        raw = rng.integers(500, 3000, (16, 16, 13)).astype(np.uint16)
        if i == 0:
            raw[:4, :4, b10] = 0  # s2_l1c nodata, in one band only
        raws[f"t{i}"] = raw
        tifffile.imwrite(src / f"t{i}.tif", raw, photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(seg / f"t{i}.tif", np.ones((16, 16), np.uint8))
    out = tmp_path / ("ds.zarr" if fmt == "zarr" else "ds")
    opts = LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS, seg_dir=seg)
    build(BuildConfig(str(src), str(out), layout="multiband", layout_options=opts,
                      progress=False, order_seed=None))
    data = open_dense(out)
    assert data.nodata[data.bands.index("B04")] == 0
    i = data.keys.index("t0")
    x = data.pixels(i)
    assert (x[:, :4, :4] == 0).all()  # every band, not only B10
    np.testing.assert_array_equal(x[data.bands.index("B04"), 4:, 4:], raws["t0"][4:, 4:, b04])
    for j, key in enumerate(data.keys):  # images without invalid pixels read as built
        if key != "t0":
            np.testing.assert_array_equal(data.pixels(j)[data.bands.index("B04")],
                                          raws[key][..., b04])
    contract = InputContract(sensors=("s2_l1c",), bands=("B04",), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats={"B04": {"mean": 1000.0, "std": 500.0}},
                             input_size=(16, 16), patch_size=8)
    pre = apply_contract(data, contract)
    fed = pre(x[None])
    assert (fed[0, 0, :4, :4] == 0).all() and (fed[0, 0, 4:, 4:] != 0).all()
    valid = input_valid(x[None], pre.index, pre.nodata)[0]
    assert not valid[:4, :4].any() and int(valid.sum()) == 16 * 16 - 16


def test_a_float32_nodata_target_is_left_out_of_the_target_statistics() -> None:
    """task.ignore_value as users type GDAL's float32 nodata (-3.4028235e38): the statistics
    masked it after widening the targets to float64, where it no longer equals the value typed,
    so the mean and std came out near 1e37 and every normalised target was one number; the
    batch's mask (torch, in the target's dtype) and the statistics now use one test."""
    from types import SimpleNamespace

    from eofm.finetune.finetune_config import TaskConfig
    from eofm.finetune.task_data import target_norm

    nodata = -3.4028235e38
    rng = np.random.default_rng(0)
    ys = [np.where(rng.random((8, 8)) < 0.2, np.float32(nodata),
                   rng.normal(1000, 30, (8, 8))).astype(np.float32) for _ in range(3)]
    data = SimpleNamespace(target=lambda i: ys[i], source="dense")
    task = TaskConfig(kind="regression", ignore_value=nodata)
    mean, std = target_norm(task, data, [0, 1, 2])
    valid = np.concatenate([y[y > -1e30] for y in ys]).astype(np.float64)
    assert (mean, std) == pytest.approx((valid.mean(), valid.std()))
    from eofm.finetune.task_data import target_valid

    batch = torch.as_tensor(np.stack(ys)) != nodata  # what a torch comparison gives
    assert np.array_equal(target_valid(np.stack(ys), nodata), batch.numpy())
