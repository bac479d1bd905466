"""Decompression bombs: a raw input file whose header declares more decoded bytes than
``--max-raster-bytes`` (default 4 GiB) is refused from its header, before any pixel is decoded.

The "bomb" files here are a few hundred KB on disk and declare tens of GB. Decoding is
replaced by a guard that raises :class:`Decoded` (a BaseException, so no reader's broad
``except Exception`` can hide it): a test fails, instead of allocating, if a reader decodes
before checking the declared size.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.quality import QualityError, QualitySource, read_quality
from eofm.data_shards.raster_io import (
    DEFAULT_MAX_RASTER_BYTES,
    RasterError,
    RasterTooLarge,
    read_raster,
)


class Decoded(BaseException):
    """A reader started decoding pixels."""


def _decoded(*args: object, **kwargs: object) -> None:
    raise Decoded("pixels were decoded before the declared size was checked")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pixel decoder the raster readers use raises :class:`Decoded`."""
    import scipy.io
    import zarr

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", _decoded)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", _decoded)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", _decoded)
    monkeypatch.setattr(np.lib.format, "read_array", _decoded)  # np.load of .npy and .npz
    monkeypatch.setattr(scipy.io, "loadmat", _decoded)
    from eofm.data_shards import mat5

    monkeypatch.setattr(mat5, "read_numeric", _decoded)  # what reads a v5 .mat's data now
    monkeypatch.setattr(zarr.Array, "__getitem__", _decoded)


def _sparse_tiff(path: Path, shape: tuple[int, ...], dtype: type, tile: int = 1024) -> Path:
    """A zlib-compressed tiled TIFF declaring ``shape``: one zero tile written, every other
    tile left empty (tifffile fills those with zeros on reading)."""
    planes = shape[0] if len(shape) == 3 else 1
    n = planes * -(-shape[-2] // tile) * -(-shape[-1] // tile)
    tiles = itertools.chain([np.zeros((tile, tile), dtype)], itertools.repeat(None, n - 1))
    tifffile.imwrite(path, tiles, shape=shape, dtype=dtype, tile=(tile, tile),
                     compression="zlib", photometric="minisblack",
                     **({"planarconfig": "separate"} if planes > 1 else {}))
    return path


def _npy_header_only(shape: tuple[int, ...], descr: str = "<u2") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + b"\x00" * 64  # a few bytes of payload: far from what it declares


def _assert_names_everything(err: str, path: Path, shape: str, dtype: str, size: int,
                             limit: int) -> None:
    for part in (str(path), shape, dtype, f"{size} bytes", f"limit of {limit} bytes",
                 "--max-raster-bytes"):
        assert part in err, f"{part!r} missing from: {err}"


# ------------------------------------------------------------------ readers, default limit
def test_tiff_bomb_is_refused_from_its_header_at_the_default_limit(tmp_path: Path,
                                                                   no_decoding: None) -> None:
    bomb = _sparse_tiff(tmp_path / "bomb.tif", (3, 100_000, 100_000), np.uint16)
    assert bomb.stat().st_size < 1_000_000  # ~230 KB declaring 56 GiB
    with pytest.raises(RasterTooLarge) as e:
        read_raster(bomb)
    _assert_names_everything(str(e.value), bomb, "(3, 100000, 100000)", "uint16",
                             60_000_000_000, DEFAULT_MAX_RASTER_BYTES)


def test_npy_bomb_is_refused_from_its_header(tmp_path: Path, no_decoding: None) -> None:
    bomb = tmp_path / "bomb.npy"
    bomb.write_bytes(_npy_header_only((13, 100_000, 100_000)))
    with pytest.raises(RasterTooLarge) as e:
        read_raster(bomb)
    _assert_names_everything(str(e.value), bomb, "(13, 100000, 100000)", "uint16",
                             260_000_000_000, DEFAULT_MAX_RASTER_BYTES)


def test_npz_member_bomb_is_refused_from_its_header(tmp_path: Path, no_decoding: None) -> None:
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header_only((100_000, 100_000, 4), "<f4"))
    with pytest.raises(RasterTooLarge) as e:
        read_raster(bomb)
    _assert_names_everything(str(e.value), bomb, "(100000, 100000, 4)", "float32",
                             160_000_000_000, DEFAULT_MAX_RASTER_BYTES)
    assert "array 'x'" in str(e.value)


def test_zarr_array_declaring_too_much_is_refused_from_its_metadata(
        tmp_path: Path, no_decoding: None) -> None:
    import zarr

    store = tmp_path / "bomb.zarr"
    zarr.create_array(str(store), shape=(3, 100_000, 100_000), dtype="uint16",
                      chunks=(1, 4096, 4096), fill_value=0)  # no chunk written
    with pytest.raises(RasterTooLarge) as e:
        read_raster(store)
    _assert_names_everything(str(e.value), store, "(3, 100000, 100000)", "uint16",
                             60_000_000_000, DEFAULT_MAX_RASTER_BYTES)


# ------------------------------------------------------------------ readers, lowered limit
def test_small_compressed_tiff_of_400_mb_is_refused_under_a_lowered_limit(
        tmp_path: Path, no_decoding: None) -> None:
    tif = _sparse_tiff(tmp_path / "big.tif", (20_000, 20_000), np.uint8)
    with pytest.raises(RasterTooLarge) as e:
        read_raster(tif, max_bytes=100 * 2**20)
    _assert_names_everything(str(e.value), tif, "(20000, 20000)", "uint8", 400_000_000,
                             100 * 2**20)


def test_compressed_mat_variable_is_refused_under_a_lowered_limit(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from scipy.io import savemat

    mat = tmp_path / "big.mat"
    savemat(mat, {"cube": np.zeros((1000, 1000, 4), np.uint16), "name": "scene"},
            do_compression=True)
    assert mat.stat().st_size < 100_000  # 8 MB of zeros, compressed
    monkeypatch.setattr("scipy.io.loadmat", _decoded)
    with pytest.raises(RasterTooLarge) as e:
        read_raster(mat, max_bytes=2**20)
    _assert_names_everything(str(e.value), mat, "(1000, 1000, 4)", "uint16", 8_000_000,
                             2**20)
    assert "variable 'cube'" in str(e.value)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".tif", ".zarr"])
def test_the_limit_is_inclusive_and_files_within_it_still_read(tmp_path: Path,
                                                               suffix: str) -> None:
    x = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez_compressed(path, x=x)
    elif suffix == ".mat":
        from scipy.io import savemat

        savemat(path, {"x": x}, do_compression=True)
    elif suffix == ".tif":
        tifffile.imwrite(path, x, photometric="minisblack", compression="zlib")
    else:
        import zarr

        zarr.create_array(str(path), shape=x.shape, dtype=x.dtype)[...] = x
    r = read_raster(path, max_bytes=x.nbytes, channel_axis=0)
    np.testing.assert_array_equal(r.data, x)
    with pytest.raises(RasterTooLarge, match=f"{x.nbytes} bytes"):
        read_raster(path, max_bytes=x.nbytes - 1, channel_axis=0)


def test_damaged_npy_header_is_a_raster_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}  \n")
    with pytest.raises(RasterError, match=r"bad\.npy.*header"):
        read_raster(bad)


def test_quality_masks_obey_the_limit(sample_data: Path) -> None:
    bqa = sample_data / "landsat8_scene" / "l8_BQA.tif"
    with pytest.raises(QualityError, match=r"l8_BQA\.tif.*--max-raster-bytes"):
        read_quality(QualitySource("landsat_bqa", [bqa]), max_bytes=1000)
    assert read_quality(QualitySource("landsat_bqa", [bqa])).flagged.size > 1000


# ------------------------------------------------------------------ options and the build CLI
@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_ingest_option_must_be_a_positive_byte_count(bad: object) -> None:
    with pytest.raises(ValueError, match="max_raster_bytes: expected a positive"):
        IngestOptions(max_raster_bytes=bad)  # type: ignore[arg-type]


def test_build_refuses_a_bomb_named_by_the_flag(tmp_path: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    tif = _sparse_tiff(src / "big.tif", (20_000, 20_000), np.uint8)
    out = tmp_path / "out"
    assert main(["build", str(src), "--out", str(out), "--layout", "multiband", "--sensor",
                 "rgb", "--file-bands", "R", "--max-raster-bytes", "100M", "--quiet"]) == 2
    err = capsys.readouterr().err
    _assert_names_everything(err, tif, "(20000, 20000)", "uint8", 400_000_000, 100 * 2**20)
    assert not (out / "manifest.json").exists()


def test_build_flag_bounds_real_files_exactly(tmp_path: Path, eurosat_folder, capsys) -> None:
    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=1, size=16)
    size = 16 * 16 * 13 * 2  # one 13-band uint16 tile
    out = tmp_path / "out"
    assert main(["build", str(src), "--out", str(out), "--max-raster-bytes", str(size - 1),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Class0_0.tif" in err and "(16, 16, 13)" in err and f"{size} bytes" in err
    assert main(["build", str(src), "--out", str(out), "--max-raster-bytes", str(size),
                 "--quiet"]) == 0
    assert (out / "manifest.json").exists()
