"""Layout detection and the array/segmentation inputs (.npy, .npz, .mat, zarr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import EUROSAT_FILE_BANDS, LayoutOptions, detect_layout
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor


@pytest.mark.parametrize(("folder", "layout"), [
    ("eurosat_ms", "eurosat"), ("bigearthnet", "bigearthnet"),
    ("sentinel2_l1c_scene", "per_band"), ("enmap_hyspecnet", "enmap"),
    ("ssl4eo_s12/s2c", "per_band"), ("landsat8_scene", "per_band"),
    ("hydro_s2l2a", "multiband"),
])
def test_detect_layout(shared_data: Path, folder: str, layout: str) -> None:
    assert detect_layout(shared_data / folder) == layout


def _tiles(shared_data: Path) -> list[np.ndarray]:
    files = sorted((shared_data / "eurosat_ms" / "River").glob("*.tif"))[:3]
    return [tifffile.imread(f) for f in files]  # (64, 64, 13) EuroSAT band order


@pytest.mark.parametrize("fmt", ["npy", "npz", "mat", "zarr"])
def test_array_inputs_round_trip(shared_data: Path, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tiles = _tiles(shared_data)
    for i, t in enumerate(tiles):
        chw = np.moveaxis(t, -1, 0)
        if fmt == "npy":
            np.save(src / f"t{i}.npy", chw)
        elif fmt == "npz":
            np.savez(src / f"t{i}.npz", image=chw)
        elif fmt == "mat":
            from scipy.io import savemat

            savemat(src / f"t{i}.mat", {"img": t})  # MATLAB style (H, W, C)
        else:
            import zarr

            zarr.save_array(str(src / f"t{i}.zarr"), chw)
    out = tmp_path / "ds"
    build(BuildConfig(str(src), str(out), layout="array", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS)))
    got = {s["__key__"]: s["s2"] for s in ShardDataset(out, shuffle_shards=False)}
    order = [EUROSAT_FILE_BANDS.index(b) for b in get_sensor("s2_l1c").band_names]
    for i, t in enumerate(tiles):
        np.testing.assert_array_equal(got[f"t{i}"], np.moveaxis(t, -1, 0)[order])


def test_segmentation_raster_tiles_with_pixels(shared_data: Path, tmp_path: Path) -> None:
    src, seg = tmp_path / "img", tmp_path / "seg"
    src.mkdir()
    seg.mkdir()
    t = tifffile.imread(sorted((shared_data / "hydro_s2l2a").glob("*.tif"))[0])
    tifffile.imwrite(src / "a.tif", t, photometric="minisblack", planarconfig="contig")
    mask = (t[..., 7] > np.median(t[..., 7])).astype(np.uint8)  # a class map
    tifffile.imwrite(seg / "a.tif", mask)
    out = tmp_path / "ds"
    m = build(BuildConfig(str(src), str(out), layout="multiband", progress=False,
                          ingest=IngestOptions(tile=64),
                          layout_options=LayoutOptions(sensor="s2_l2a", seg_dir=seg)))
    assert m is not None and m.labels is not None and m.labels.kind == "segmentation"
    for s in ShardDataset(out, with_meta=True):
        w = s["meta"]["window"]
        np.testing.assert_array_equal(
            s["seg"], mask[w["row"]:w["row"] + 64, w["col"]:w["col"] + 64])


def test_centre_aligned_grids_need_nearest(shared_data: Path, tmp_path: Path) -> None:
    """SSL4EO-S12 exports each resolution centre-aligned: exact alignment refuses, nearest works."""
    src = shared_data / "ssl4eo_s12" / "s2c"
    with pytest.raises(ValueError, match=r"B1\.tif: band B01 origin .* --resample nearest"):
        build(BuildConfig(str(src), str(tmp_path / "a"), progress=False))
    m = build(BuildConfig(str(src), str(tmp_path / "b"), progress=False,
                          ingest=IngestOptions(tile=64, resample="nearest")))
    assert m is not None and m.modalities["s2"].sensor == "s2_l1c" and m.sample_count == 32
    s = next(iter(ShardDataset(tmp_path / "b", with_meta=True)))
    assert s["meta"]["modalities"]["s2"]["gsd_m"] == 10.0  # grid in degrees: band table GSD
