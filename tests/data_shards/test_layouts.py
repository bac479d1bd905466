"""Layout detection and the array/segmentation inputs (.npy, .npz, .mat, zarr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from geotiff_like import write_like
from safe_like import img_data, make_l1c_safe

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.grid import Tile
from eofm.data_shards.ingest import IngestError, IngestOptions, seg_window
from eofm.data_shards.layout_files import band_of
from eofm.data_shards.layouts import (
    EUROSAT_FILE_BANDS,
    LayoutError,
    LayoutOptions,
    detect_layout,
    detect_sensor,
    discover,
)
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


def test_segmentation_of_a_whole_non_square_raster_keeps_its_width(tmp_path: Path) -> None:
    """Without --tile a 32x48 raster is one tile: its seg map must be 32x48 too (it was cut
    32x32, h x h, and the build succeeded with labels no longer under their pixels)."""
    src, seg = tmp_path / "img", tmp_path / "seg"
    src.mkdir()
    seg.mkdir()
    rng = np.random.default_rng(0)
    cols = np.broadcast_to(np.arange(48, dtype=np.uint8), (32, 48))  # seg = column index
    for i in range(2):
        np.save(src / f"a{i}.npy", rng.integers(1, 255, (3, 32, 48), dtype=np.uint8))
        np.save(seg / f"a{i}.npy", cols)
    out = tmp_path / "ds"
    build(BuildConfig(str(src), str(out), progress=False,
                      layout_options=LayoutOptions(sensor="rgb", file_bands=["R", "G", "B"],
                                                   seg_dir=seg)))
    got = list(ShardDataset(out, shuffle_shards=False))
    assert len(got) == 2
    for s in got:
        assert s["rgb"].shape == (3, 32, 48)
        np.testing.assert_array_equal(s["seg"], cols)


def test_a_seg_window_that_misses_its_image_tile_is_named() -> None:
    """The seg tile must cover its image tile pixel for pixel; otherwise the error names the
    segmentation file, the tile and both shapes."""
    tile = Tile(0, 8, np.zeros((3, 16, 16), np.uint8))
    np.testing.assert_array_equal(
        seg_window(np.arange(32 * 24).reshape(1, 32, 24), tile, "s.npy"),
        np.arange(32 * 24).reshape(32, 24)[:16, 8:24])
    with pytest.raises(IngestError, match=r"^s\.npy: segmentation tile at row 0, col 8 "
                                          r"expected shape \(16, 16\) like its image tile, "
                                          r"got \(16, 12\)"):
        seg_window(np.zeros((1, 32, 20), np.uint8), tile, "s.npy")


def test_exact_refusal_of_a_grid_in_degrees_says_degrees(shared_data: Path,
                                                         tmp_path: Path) -> None:
    """SSL4EO-S12 is exported in EPSG:4326: the refusal gave its 0.0001 degree pixels as
    "m grid"."""
    with pytest.raises(ValueError, match=r"B1\.tif: band B01 origin x=\S+ is not on the "
                                         r"0\.000101\d* degrees grid starting at ") as e:
        build(BuildConfig(str(shared_data / "ssl4eo_s12" / "s2c"), str(tmp_path / "a"),
                          progress=False))
    assert " m grid" not in str(e.value)


def test_centre_aligned_grids_need_nearest(shared_data: Path, tmp_path: Path) -> None:
    """SSL4EO-S12 exports each resolution centre-aligned: exact alignment refuses, nearest works."""
    src = shared_data / "ssl4eo_s12" / "s2c"
    with pytest.raises(ValueError, match=r"B1\.tif: band B01 origin .* --resample nearest") as e:
        build(BuildConfig(str(src), str(tmp_path / "a"), progress=False))
    assert "leave out" not in str(e.value)  # four 10 m bands are no pan band to drop
    m = build(BuildConfig(str(src), str(tmp_path / "b"), progress=False,
                          ingest=IngestOptions(tile=64, resample="nearest")))
    assert m is not None and m.modalities["s2"].sensor == "s2_l1c" and m.sample_count == 32
    s = next(iter(ShardDataset(tmp_path / "b", with_meta=True)))
    assert s["meta"]["modalities"]["s2"]["gsd_m"] == 10.0  # grid in degrees: band table GSD


# ---------------------------------------------------------------- EuroSAT detection, band order
def _multiband_tif(path: Path, bands: int = 13, value: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (np.arange(16 * 16 * bands, dtype=np.uint16).reshape(16, 16, bands) % 997) + 1 + value
    tifffile.imwrite(path, x, photometric="minisblack", planarconfig="contig")
    return x


def test_eurosat_detected_despite_hidden_and_empty_folders(tmp_path: Path) -> None:
    """A notebook checkpoint folder or an empty class folder must not turn a EuroSAT tree
    into `multiband` (whose sensor order would give B8A the data of B09)."""
    root = tmp_path / "es"
    _multiband_tif(root / "Forest" / "Forest_1.tif")
    _multiband_tif(root / "River" / "River_1.tif")
    (root / "Empty").mkdir()
    _multiband_tif(root / ".ipynb_checkpoints" / "River_1-checkpoint.tif")
    _multiband_tif(root / "__MACOSX" / "Forest_1.tif")
    (root / "notes.txt").write_text("x")
    assert detect_layout(root) == "eurosat"
    name, items = discover(root)
    assert name == "eurosat" and [(i.key, i.label) for i in items] == [
        ("Forest_Forest_1", "Forest"), ("River_River_1", "River")]
    assert items[0].modalities["s2"].files[0][1] == EUROSAT_FILE_BANDS
    with pytest.raises(LayoutError, match=r"--file-bands.*pass --layout eurosat"):
        discover(root, "multiband")


def test_eurosat_needs_class_folders_of_13_band_rasters_and_nothing_else(tmp_path: Path) -> None:
    """Not EuroSAT (whose B01..B12,B8A names would be pinned on the data): a folder of tiles
    beside an aux/ tree of rasters, rasters loose at the root, or class folders of 4-band
    rasters. Each such tree reads as multiband instead (which asks for --sensor)."""
    aux = tmp_path / "aux_tree"
    _multiband_tif(aux / "tiles" / "a.tif")
    _multiband_tif(aux / "aux" / "dem" / "dem.tif")
    loose = tmp_path / "loose"
    _multiband_tif(loose / "a.tif")
    _multiband_tif(loose / "Forest" / "b.tif")
    four = tmp_path / "four"
    _multiband_tif(four / "Forest" / "a.tif", bands=4)
    _multiband_tif(four / "River" / "b.tif", bands=4)
    for root in (aux, loose, four):
        assert detect_layout(root) == "multiband", root.name
    (aux / "aux" / "dem" / "dem.tif").unlink()  # aux/ now holds no raster: ignored
    assert detect_layout(aux) == "eurosat"


def test_multiband_band_order_is_declared_or_flagged(tmp_path: Path, caplog) -> None:
    """Without --file-bands the sensor order is an assumption: warned about and recorded in
    each sample's meta.json; with --file-bands it is declared and the bands land by name."""
    src = tmp_path / "flat"
    x = _multiband_tif(src / "a.tif")
    caplog.set_level("WARNING")
    build(BuildConfig(str(src), str(tmp_path / "assumed"), layout="multiband", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c")))
    assert "nothing in the files says so" in caplog.text and "--file-bands" in caplog.text
    s = next(iter(ShardDataset(tmp_path / "assumed", with_meta=True)))
    assert s["meta"]["file_band_order"] == "assumed_sensor_order"
    caplog.clear()
    build(BuildConfig(str(src), str(tmp_path / "declared"), layout="multiband", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c",
                                                   file_bands=EUROSAT_FILE_BANDS)))
    assert "nothing in the files says so" not in caplog.text
    s = next(iter(ShardDataset(tmp_path / "declared", with_meta=True,
                               bands={"s2": ["B8A", "B09"]})))
    assert s["meta"]["file_band_order"] == "declared"
    assert s["meta"]["file_bands"] == EUROSAT_FILE_BANDS
    np.testing.assert_array_equal(s["s2"], np.moveaxis(x, -1, 0)[[12, 8]])


# ---------------------------------------------------------------- Sentinel-2 L2A SAFE
def _like(ref: Path, dst: Path, data: np.ndarray | None = None) -> None:
    """Copy GeoTIFF ``ref`` to ``dst`` (with other pixels ``data`` on the same grid)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        dst.write_bytes(ref.read_bytes())
    else:
        write_like(ref, dst, data)


def test_sentinel2_l2a_safe_img_data(sample_data: Path, tmp_path: Path,
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """IMG_DATA/R10m|R20m|R60m with ``_B02_10m.jp2`` names is one L2A item; every band comes
    from its finest resolution and SCL from R20m."""
    scene = sample_data / "sentinel2_l1c_scene"
    safe = tmp_path / "S2A_MSIL2A_20200101T100000_N0213_R022_T33UUP_20200101T120000.SAFE"
    img = safe / "GRANULE" / "L2A_T33UUP_A000001_20200101T100000" / "IMG_DATA"
    stem = "T33UUP_20200101T100000"
    res = {10: ["B02", "B03", "B04", "B08"], 20: ["B05", "B06", "B07", "B8A", "B11", "B12"],
           60: ["B01", "B09"]}
    for r, bands in res.items():
        for b in bands:
            _like(scene / f"s2_{b}.jp2", img / f"R{r}m" / f"{stem}_{b}_{r}m.jp2")
    # coarser copies of a 10 m band, as real products have: must not be used
    _like(scene / "s2_B05.jp2", img / "R20m" / f"{stem}_B02_20m.jp2")
    _like(scene / "s2_B01.jp2", img / "R60m" / f"{stem}_B02_60m.jp2")
    scl = np.full(tifffile.imread(scene / "s2_B05.jp2").shape, 4, np.uint8)
    _like(scene / "s2_B05.jp2", img / "R20m" / f"{stem}_SCL_20m.jp2", scl)
    _like(scene / "s2_B01.jp2", img / "R60m" / f"{stem}_SCL_60m.jp2",
          np.full(tifffile.imread(scene / "s2_B01.jp2").shape, 9, np.uint8))
    name, items = discover(tmp_path)
    assert name == "per_band" and len(items) == 1
    mod = items[0].modalities["s2"]
    files = {bands[0]: p for p, bands in mod.files}
    assert mod.sensor == "s2_l2a" and len(files) == 12
    assert all(p.parent.name == f"R{r}m" for r, bs in res.items() for b in bs
               for p in [files[b]])
    assert mod.quality is not None and mod.quality.files[0].name == f"{stem}_SCL_20m.jp2"
    out = tmp_path_factory.mktemp("l2a") / "ds"  # apart from the input (tmp_path)
    build(BuildConfig(str(tmp_path), str(out), progress=False))
    s = next(iter(ShardDataset(out, bands={"s2": ["B02"]}, shuffle_shards=False)))
    np.testing.assert_array_equal(s["s2"][0], tifffile.imread(scene / "s2_B02.jp2"))


# ---------------------------------------------------------------- Sentinel-2 L1C SAFE, baseline 04.00
def test_quality_masks_are_never_bands() -> None:
    """The per-band masks of baseline 04.00+ products end like band names but are masks."""
    for name in ("MSK_DETFOO_B01.jp2", "MSK_QUALIT_B8A.jp2", "MSK_CLASSI_B00.jp2",
                 "msk_detfoo_b12.jp2"):
        assert band_of(Path(name)) is None, name
    assert band_of(Path("T33NZA_20220706T085611_B01.jp2")) == "B01"
    assert band_of(Path("T33UUP_20200101T100000_B8A_20m.jp2")) == "B8A"


def test_l1c_safe_with_qi_data_masks_builds(sample_data: Path, tmp_path: Path) -> None:
    """A SAFE of baseline 04.00+ ships ``QI_DATA/MSK_*_Bxx.jp2`` masks: they made QI_DATA an
    item of "band" B00 that s2_l1c refused. Now IMG_DATA is the one item, read as s2_l1c, and
    corrected by the product's RADIO_ADD_OFFSET (-1000)."""
    safe = make_l1c_safe(tmp_path / "in", sample_data / "sentinel2_l1c_scene")
    name, items = discover(safe)
    assert name == "per_band" and [i.key for i in items] == [
        f"GRANULE_{img_data(safe).parent.name}_IMG_DATA"]
    assert items[0].modalities["s2"].sensor == "s2_l1c"
    m = build(BuildConfig(str(safe), str(tmp_path / "ds"), progress=False,
                          ingest=IngestOptions(tile=192)))
    assert m is not None and m.modalities["s2"].bands == get_sensor("s2_l1c").band_names
    [group] = m.extra["s2_offset"]["groups"]
    assert (group["offset"], group["baseline"], group["origin"]) == (-1000, "04.00",
                                                                     "MTD_MSIL1C.xml")


def test_l1c_img_data_given_directly_keeps_its_safe_offset(sample_data: Path,
                                                          tmp_path: Path) -> None:
    """``X.SAFE/GRANULE/*/IMG_DATA`` as the input: the offset comes from the enclosing SAFE's
    MTD_MSIL1C.xml above the input root (it was "baseline unknown", +0)."""
    safe = make_l1c_safe(tmp_path / "in", sample_data / "sentinel2_l1c_scene")
    m = build(BuildConfig(str(img_data(safe)), str(tmp_path / "ds"), progress=False,
                          ingest=IngestOptions(tile=192)))
    assert m is not None and m.modalities["s2"].sensor == "s2_l1c"
    [group] = m.extra["s2_offset"]["groups"]
    assert (group["offset"], group["status"], group["origin"]) == (-1000, "found",
                                                                   "MTD_MSIL1C.xml")


# ---------------------------------------------------------------- Sentinel-2 processing level
L1C_ID = "S2B_MSIL1C_20200604T054639_N0209_R048_T43RCP_20200604T083537"
L2A_ID = "S2B_MSIL2A_20200604T054639_N0214_R048_T43RCP_20200604T094332"


def _s2_folder(scene: Path, folder: Path, without: tuple[str, ...] = ()) -> Path:
    """``folder`` of links to the bundled scene's band files (``B02.jp2`` ...) but ``without``."""
    folder.mkdir(parents=True)
    for f in sorted(scene.glob("s2_B*.jp2")):
        band = f.stem.split("_")[1]
        if band not in without:
            (folder / f"{band}.jp2").symlink_to(f)
    return folder


@pytest.mark.parametrize("evidence", ["metadata.json", "MTD_MSIL1C.xml", "folder name"])
def test_l1c_level_is_read_before_the_band_set(sample_data: Path, tmp_path: Path,
                                               evidence: str, caplog) -> None:
    """An L1C folder without B10 used to be labelled s2_l2a without a word: its metadata.json
    PRODUCT_ID, an MTD_MSIL1C.xml or an MSIL1C product folder above it names the level."""
    root = tmp_path / "in"
    parent = root / (L1C_ID if evidence == "folder name" else "product")
    d = _s2_folder(sample_data / "sentinel2_l1c_scene", parent / "scene", without=("B10",))
    if evidence == "metadata.json":
        (d / "metadata.json").write_text(f'{{"PRODUCT_ID": "{L1C_ID}"}}')
    elif evidence == "MTD_MSIL1C.xml":
        (parent / "MTD_MSIL1C.xml").write_text("<x/>")
    caplog.set_level("WARNING")
    _, [item] = discover(root)
    assert item.modalities["s2"].sensor == "s2_l1c"
    assert "guessed" not in caplog.text


@pytest.mark.parametrize(("without", "sensor"), [(("B10",), "s2_l2a"), ((), "s2_l1c")])
def test_s2_level_guessed_from_the_band_set_is_warned(sample_data: Path, tmp_path: Path,
                                                      without: tuple[str, ...], sensor: str,
                                                      caplog) -> None:
    """Nothing names the level: the band set decides (B10 with 13 bands: L1C, else L2A), and
    the build warns, naming the guess and --sensor."""
    d = _s2_folder(sample_data / "sentinel2_l1c_scene", tmp_path / "in" / "scene", without)
    caplog.set_level("WARNING")
    _, [item] = discover(tmp_path / "in")
    assert item.modalities["s2"].sensor == sensor
    assert f"read as {sensor}" in caplog.text and "guessed from the band set" in caplog.text
    assert "pass --sensor s2_l1c or --sensor s2_l2a" in caplog.text
    caplog.clear()
    bands = [f.stem for f in d.iterdir()]
    assert detect_sensor(d, bands) == sensor
    assert f"{d}: read as {sensor}" in caplog.text and "--sensor" in caplog.text
    caplog.clear()
    _, [item] = discover(tmp_path / "in", None, LayoutOptions(sensor="s2_l1c"))
    assert item.modalities["s2"].sensor == "s2_l1c" and "guessed" not in caplog.text


def test_l2a_product_id_with_b10_files_is_refused(sample_data: Path, tmp_path: Path) -> None:
    """A metadata.json naming an L2A product beside a B10 file (an L1C band): one of them is
    wrong, so neither level is taken; the error names both."""
    d = _s2_folder(sample_data / "sentinel2_l1c_scene", tmp_path / "in" / "scene")
    (d / "metadata.json").write_text(f'{{"PRODUCT_ID": "{L2A_ID}"}}')
    with pytest.raises(LayoutError, match=rf"metadata\.json PRODUCT_ID {L2A_ID} names a "
                                          r"Sentinel-2 L2A product, but the folder holds a B10 "
                                          r"file"):
        discover(tmp_path / "in")
    _, [item] = discover(tmp_path / "in", None, LayoutOptions(sensor="s2_l1c"))
    assert item.modalities["s2"].sensor == "s2_l1c"  # --sensor decides


# ---------------------------------------------------------------- one array as the input
@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_single_array_as_input(tmp_path: Path, fmt: str) -> None:
    import zarr

    chw = np.moveaxis(_multiband_tif(tmp_path / "x.tif"), -1, 0)
    src = tmp_path / f"solo.{fmt}"
    if fmt == "zarr":
        zarr.save_array(str(src), chw)
    else:
        np.save(src, chw)
    assert detect_layout(src) == "array"
    out = tmp_path / "ds"
    build(BuildConfig(str(src), str(out), progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS)))
    (s,) = list(ShardDataset(out, bands={"s2": EUROSAT_FILE_BANDS}))
    assert s["__key__"] == "solo"
    np.testing.assert_array_equal(s["s2"], chw)


def test_zarr_dataset_accepts_band_aliases(tmp_path: Path) -> None:
    """ZarrDataset(bands=...) takes any accepted spelling (B4, b8a), as ShardDataset does."""
    from eofm.data_shards.zarr_store import ZarrDataset

    chw = np.moveaxis(_multiband_tif(tmp_path / "x.tif"), -1, 0)
    np.save(tmp_path / "a.npy", chw)
    out = tmp_path / "ds.zarr"
    build(BuildConfig(str(tmp_path / "a.npy"), str(out), format="zarr", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS)))
    got = ZarrDataset(out, bands={"s2": ["B4", "b8a"]})[0]["s2"]
    np.testing.assert_array_equal(got, chw[[3, 12]])


# ---------------------------------------------------------------- --file-bands names, PNG/JPEG
def test_file_bands_resolve_aliases_and_refuse_unknown_names(tmp_path: Path) -> None:
    """--file-bands resolves aliases and case as --bands does (`b4,B3,b02` was a crash: "min()
    arg is an empty sequence"); a name the sensor lacks (`B99`) is refused naming it and the
    sensor's bands (it used to be dropped with its file band, exit 0); a count that differs
    from the file's band count stays refused at ingest."""
    root = tmp_path / "rgbish"
    x = _multiband_tif(root / "Forest" / "a.tif", bands=3)
    _multiband_tif(root / "River" / "b.tif", bands=3)
    for layout in ("multiband", "eurosat"):
        opts = LayoutOptions(sensor="s2_l2a", file_bands=["b4", "B3", "b02"])
        _, items = discover(root, layout, opts)
        assert items[0].modalities["s2"].files[0][1] == ["B04", "B03", "B02"], layout
        for bad, why in ((["B04", "B03", "B99"], r"unknown band\(s\) 'B99'"),
                         (["B04", "b4", "B02"], r"duplicate band\(s\) 'b4' repeats 'B04'")):
            with pytest.raises(LayoutError, match=rf"--file-bands {','.join(bad)}: .*{why}.*"
                                                  r"Valid bands: B01, B02"):
                discover(root, layout, LayoutOptions(sensor="s2_l2a", file_bands=bad))
    out = tmp_path / "out"
    build(BuildConfig(str(root), str(out), layout="multiband", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l2a", file_bands=["B4", "B3", "B2"])))
    s = next(iter(ShardDataset(out, with_meta=True)))
    assert s["meta"]["modalities"]["s2"]["bands"] == ["B02", "B03", "B04"]  # sensor order
    np.testing.assert_array_equal(s["s2"], np.moveaxis(x, -1, 0)[::-1])
    with pytest.raises(ValueError, match=r"expected 2 bands \(B04, B03\) for s2_l2a, file has 3"):
        build(BuildConfig(str(root), str(tmp_path / "two"), layout="multiband", progress=False,
                          layout_options=LayoutOptions(sensor="s2_l2a", file_bands=["B04", "B03"])))


def test_png_and_jpeg_folders_are_named_as_unsupported(tmp_path: Path) -> None:
    """Class folders of PNG/JPEG pictures: detection and a forced layout both say which files
    they read and that PNG/JPEG are not read, and how to convert them (not just "pass
    --layout" / "found no input files")."""
    root = tmp_path / "pics"
    for cls in ("Forest", "River"):
        (root / cls).mkdir(parents=True)
        (root / cls / "a.png").write_bytes(b"\x89PNG")
        (root / cls / "b.JPG").write_bytes(b"\xff\xd8")
    note = r"\. It holds 4 PNG/JPEG file\(s\) .*does not read: convert them to GeoTIFF .*--sensor rgb"
    with pytest.raises(LayoutError, match=rf"searched for .*multiband: \.tif/\.tiff files.*{note}"):
        detect_layout(root)
    for layout in ("multiband", "eurosat", "array"):
        with pytest.raises(LayoutError, match=rf"the {layout} layout found no input files "
                                              rf"\(it reads .*\){note}"):
            discover(root, layout, LayoutOptions(sensor="rgb"))
    (root / "Forest" / "a.png").unlink()
    (root / "River" / "a.png").unlink()
    for p in root.rglob("*.JPG"):
        p.unlink()
    with pytest.raises(LayoutError) as e:  # nothing to convert: no note
        detect_layout(root)
    assert "PNG" not in str(e.value)


def test_bigearthnet_refuses_a_sensor_it_would_ignore(sample_data: Path) -> None:
    """The bigearthnet layout reads S2 as s2_l2a and S1 as s1_grd whatever --sensor says: a
    --sensor s2_l1c used to be dropped without a word (exit 0, the data built as L2A). Another
    sensor is refused naming the layout, its sensors and the --sensor given; the sensors it
    uses (any spelling) are accepted and change nothing."""
    root = sample_data / "bigearthnet"
    _, plain = discover(root, None, LayoutOptions())
    for bad in ("s2_l1c", "rgb"):
        with pytest.raises(LayoutError, match=rf"^--sensor: the bigearthnet layout \(of {root}\) "
                                              r"reads its bands with fixed sensors \(S2 as s2_l2a "
                                              r"and S1 as s1_grd\); expected no --sensor or one "
                                              rf"of s2_l2a, s1_grd, got --sensor {bad}$"):
            discover(root, "bigearthnet", LayoutOptions(sensor=bad))
    with pytest.raises(ValueError, match=r"unknown sensor 'nope'; known sensors: "):
        discover(root, None, LayoutOptions(sensor="nope"))
    for ok in ("s2_l2a", "S2_L2A", "s1_grd"):
        _, items = discover(root, None, LayoutOptions(sensor=ok))
        assert items == plain, ok
    assert {m.sensor for i in plain for m in i.modalities.values()} == {"s2_l2a", "s1_grd"}


def test_a_finer_band_that_breaks_exact_alignment_is_named(sample_data: Path,
                                                           tmp_path: Path) -> None:
    """Landsat's 15 m pan band sets the finest grid, on which the 30 m bands do not nest: the
    refusal used to offer only --resample nearest (every band onto the pan grid); it now also
    names the pan band and --bands, which builds the 30 m bands exactly."""
    src = sample_data / "landsat8_scene"
    with pytest.raises(ValueError, match=r"or leave out the 15 m band B8 with --bands"):
        build(BuildConfig(str(src), str(tmp_path / "a"), progress=False))
    thirty = ["B1", "B2", "B3", "B4", "B5", "B6", "B7"]
    m = build(BuildConfig(str(src), str(tmp_path / "b"), progress=False,
                          ingest=IngestOptions(tile=64, bands={"landsat": thirty})))
    assert m is not None and m.modalities["landsat"].bands == thirty
