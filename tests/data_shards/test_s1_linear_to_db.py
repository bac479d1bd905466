"""Sentinel-1 linear power -> dB at ingest (``--s1-linear-to-db``), on the real BigEarthNet-S1
patches of ../shared/data (sigma0 in dB): a linear copy (10**(dB/10)) built with the flag gives
the dB build's pixels and statistics back; power 0 becomes nodata; dB input with the flag is
refused; without the flag linear input is only warned about, naming the flag."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from geotiff_like import write_like

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import open_manifest
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestError, IngestOptions
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.raster_io import read_raster
from eofm.data_shards.reader import ShardDataset

POLS = ("VV", "VH")
ATOL_DB = 1e-4


@pytest.fixture(scope="module")
def s1_patches(shared_data: Path) -> list[Path]:
    """The BigEarthNet-S1 example patch folders (each with ``*_VV.tif`` and ``*_VH.tif``)."""
    root = shared_data / "bigearthnet" / "BigEarthNet-S1-Example"
    patches = sorted(d for d in root.glob("*") if d.is_dir()
                     and all(next(d.glob(f"*_{p}.tif"), None) for p in POLS))
    if not patches:
        pytest.skip(f"no BigEarthNet-S1 patches in {root}")
    return patches


def _copy_db(patches: list[Path], dst: Path) -> Path:
    """The patches' VV/VH rasters as they are (dB), one per-band folder per patch."""
    for d in patches:
        (dst / d.name).mkdir(parents=True)
        for p in POLS:
            f = next(d.glob(f"*_{p}.tif"))
            shutil.copyfile(f, dst / d.name / f.name)
    return dst


def _copy_linear(patches: list[Path], dst: Path, edit=None) -> Path:
    """The patches as linear power 10**(dB/10) (float32, same grid); ``edit(name, pol, x)``
    may change a plane before it is written."""
    for d in patches:
        (dst / d.name).mkdir(parents=True)
        for p in POLS:
            f = next(d.glob(f"*_{p}.tif"))
            x = (10.0 ** (read_raster(f).data[0].astype(np.float64) / 10.0)).astype(np.float32)
            if edit is not None:
                edit(d.name, p, x)
            write_like(f, dst / d.name / f.name, x)
    return dst


def _build(src: Path, out: Path, **ingest) -> None:
    build(BuildConfig(str(src), str(out), progress=False, ingest=IngestOptions(**ingest)))


def _samples(out: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in ShardDataset(out, with_meta=True, shuffle_shards=False)}


@pytest.fixture(scope="module")
def db_build(s1_patches: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The original dB patches built without conversion (the reference)."""
    root = tmp_path_factory.mktemp("s1db")
    _build(_copy_db(s1_patches, root / "in"), root / "out")
    return root / "out"


def test_linear_copy_built_with_the_flag_matches_the_db_build(
        s1_patches: list[Path], db_build: Path, tmp_path: Path) -> None:
    lin = _copy_linear(s1_patches, tmp_path / "lin")
    _build(lin, tmp_path / "out", s1_linear_to_db=True)
    ref, got = _samples(db_build), _samples(tmp_path / "out")
    assert sorted(got) == sorted(ref) and len(got) == len(s1_patches)
    for key, s in got.items():
        assert s["s1"].dtype == np.float32
        assert s["s1"].min() < 0  # dB again, not power
        np.testing.assert_allclose(s["s1"], ref[key]["s1"], rtol=0, atol=ATOL_DB, err_msg=key)
        np.testing.assert_array_equal(s["s1_valid"], ref[key]["s1_valid"])
    m, m_ref = load_manifest(tmp_path / "out"), load_manifest(db_build)
    assert m.extra["s1_linear_to_db"]["modalities"] == ["s1"]
    assert "s1_linear_to_db" not in m_ref.extra
    assert m.extra["counters"]["s1_linear_to_db"] == len(s1_patches)
    assert "s1_looks_linear" not in m.extra["counters"]
    for pol in POLS:  # statistics were taken after the conversion
        for k in ("mean", "std", "min", "max"):
            assert m.modalities["s1"].stats[pol][k] == pytest.approx(
                m_ref.modalities["s1"].stats[pol][k], abs=1e-3), (pol, k)


def test_zero_power_becomes_nodata_and_nodata_stays_nodata(
        s1_patches: list[Path], db_build: Path, tmp_path: Path) -> None:
    first = s1_patches[0].name

    def edit(name: str, pol: str, x: np.ndarray) -> None:
        if name == first and pol == "VV":
            x[:10, :10] = 0.0  # no power: log10 would give -inf
        if name == first and pol == "VH":
            x[50, :] = np.nan  # already nodata (S1 has no nodata value: NaN)

    lin = _copy_linear(s1_patches, tmp_path / "lin", edit)
    _build(lin, tmp_path / "out", s1_linear_to_db=True, nan_policy="nodata")
    s, ref = _samples(tmp_path / "out")[first], _samples(db_build)[first]
    bad = np.zeros(s["s1"].shape[1:], bool)
    bad[:10, :10] = True
    bad[50, :] = True
    assert np.isnan(s["s1"][0][:10, :10]).all() and np.isnan(s["s1"][1][50]).all()
    np.testing.assert_array_equal(s["s1_valid"], ~bad)
    assert np.isfinite(s["s1"][:, ~bad]).all()
    np.testing.assert_allclose(s["s1"][:, ~bad], ref["s1"][:, ~bad], rtol=0, atol=ATOL_DB)
    m = load_manifest(tmp_path / "out")
    assert m.extra["counters"]["s1_zero_power_px"] == 100
    assert m.modalities["s1"].stats["VV"]["min"] > -100  # no -inf reached the statistics


def test_db_input_with_the_flag_is_refused(s1_patches: list[Path], tmp_path: Path) -> None:
    src = _copy_db(s1_patches[:1], tmp_path / "in")
    with pytest.raises(IngestError, match=rf"{s1_patches[0].name}.*--s1-linear-to-db expects "
                                          r"linear power .*negative pixels .*already in dB"):
        _build(src, tmp_path / "out", s1_linear_to_db=True)
    assert main(["build", str(src), "--out", str(tmp_path / "cli"), "--quiet",
                 "--s1-linear-to-db"]) == 2


def test_without_the_flag_linear_input_only_warns(s1_patches: list[Path], tmp_path: Path,
                                                  caplog) -> None:
    lin = _copy_linear(s1_patches[:2], tmp_path / "lin")
    with caplog.at_level(logging.WARNING):
        _build(lin, tmp_path / "out")
    said = [r.getMessage() for r in caplog.records if "linear power" in r.getMessage()]
    assert len(said) == 2 and all("--s1-linear-to-db" in t for t in said)
    m = load_manifest(tmp_path / "out")
    assert m.extra["counters"]["s1_looks_linear"] == 2 and "s1_linear_to_db" not in m.extra
    for s in _samples(tmp_path / "out").values():
        assert s["s1"].min() >= 0  # written as given: power, unconverted


def test_cli_flag_and_zarr_record_the_conversion(s1_patches: list[Path], tmp_path: Path) -> None:
    lin = _copy_linear(s1_patches[:2], tmp_path / "lin")
    for out in (tmp_path / "wds", tmp_path / "s1.zarr"):
        assert main(["build", str(lin), "--out", str(out), "--quiet", "--s1-linear-to-db"]) == 0
        m = open_manifest(out)
        assert m.extra["s1_linear_to_db"] == {"modalities": ["s1"],
                                              "formula": "dB = 10*log10(power)",
                                              "nonpositive_power": "nodata"}
        assert m.modalities["s1"].stats["VV"]["max"] < 40  # dB, not power


def test_flag_without_a_db_modality_is_refused(sample_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--s1-linear-to-db: no modality .* stores dB.*"
                                         r"s2 \(s2_l1c\)"):
        _build(sample_data / "sentinel2_l1c_scene", tmp_path / "out", s1_linear_to_db=True)
