"""One dataset pooled from several raw inputs (``eofm-shard build A B ...``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.cli import main as shard_main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutError
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.reader import ShardDataset
from eofm.pretrain.config import ConfigError, TrainConfig, validate


def _cfg(sources: list[Path], out: Path, tile: int = 64) -> BuildConfig:
    return BuildConfig(str(sources[0]), str(out), more_sources=[str(s) for s in sources[1:]],
                       ingest=IngestOptions(tile=tile, stride=tile, resample="nearest"),
                       progress=False)


def test_pooled_build_holds_every_input(sample_data: Path, shared_data: Path,
                                        tmp_path: Path) -> None:
    scene = sample_data / "sentinel2_l1c_scene"
    ssl = shared_data / "ssl4eo_s12" / "s2c"
    alone = [build(_cfg([src], tmp_path / f"alone{i}")) for i, src in enumerate((scene, ssl))]
    pooled = build(_cfg([scene, ssl], tmp_path / "pooled"))
    assert pooled is not None and all(m is not None for m in alone)
    assert pooled.sample_count == sum(m.sample_count for m in alone)  # type: ignore[union-attr]
    assert str(ssl) in pooled.source and str(scene) in pooled.source
    # statistics are those of all pixels together: counts add, the mean is the weighted mean
    for band in ("B02", "B08", "B12"):
        parts = [m.modalities["s2"].stats[band] for m in alone]  # type: ignore[union-attr]
        st = pooled.modalities["s2"].stats[band]
        assert st["count"] == sum(p["count"] for p in parts)
        mean = sum(p["count"] * p["mean"] for p in parts) / st["count"]
        assert st["mean"] == pytest.approx(mean, rel=1e-6)
    keys = {s["__key__"] for s in ShardDataset(str(tmp_path / "pooled"), shuffle_buffer=0)}
    assert len(keys) == pooled.sample_count
    assert {k.split("_", 1)[0] for k in keys} == {"sentinel2", "s2c"}


def test_pooled_inputs_must_share_sensor_and_bands(shared_data: Path, tmp_path: Path) -> None:
    ssl = shared_data / "ssl4eo_s12"
    with pytest.raises(ValueError, match=r"s2_l2a.*s2_l1c|s2_l1c.*s2_l2a"):
        build(_cfg([ssl / "s2c", ssl / "s2a"], tmp_path / "mixed", tile=132))


def test_pooled_inputs_with_the_same_name_are_refused(shared_data: Path, tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "s2c").symlink_to(shared_data / "ssl4eo_s12" / "s2c")
    with pytest.raises(LayoutError, match="same sample keys"):
        build(_cfg([tmp_path / "a" / "s2c", tmp_path / "b" / "s2c"], tmp_path / "out", tile=132))


def test_cli_pools_several_inputs(sample_data: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    status = shard_main(["build", str(sample_data / "sentinel2_l1c_scene"),
                         str(shared_data / "ssl4eo_s12" / "s2c"), "--out", str(out), "--tile",
                         "132", "--resample", "nearest", "--quiet"])
    assert status == 0
    m = load_manifest(out)
    assert m.layout == "per_band" and m.modalities["s2"].sensor == "s2_l1c"
    assert "ssl4eo_s12" in m.source


def test_build_more_needs_build_from() -> None:
    cfg = TrainConfig()
    cfg.data.path = "out/x"
    cfg.data.build_more = ["../shared/data/ssl4eo_s12/s2c"]
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert any(p.startswith("data.build_more:") for p in err.value.problems)


def test_long_sample_keys_round_trip(shared_data: Path, tmp_path: Path) -> None:
    """Keys past ustar's 100-byte names (product names, pooled prefixes) write and read back."""
    import numpy as np
    import tifffile
    import webdataset as wds

    from eofm.data_shards.layouts import EUROSAT_FILE_BANDS, LayoutOptions

    src = tmp_path / "src"
    src.mkdir()
    tile = tifffile.imread(sorted((shared_data / "eurosat_ms" / "Forest").glob("*.tif"))[0])
    stem = "S2B_MSIL1C_20200223T032739_N9999_R018_T48QUE_20230924T183543_" + "x" * 60
    np.save(src / f"{stem}.npy", np.moveaxis(tile, -1, 0))
    out = tmp_path / "ds"
    build(BuildConfig(str(src), str(out), layout="array", progress=False,
                      layout_options=LayoutOptions(sensor="s2_l1c", file_bands=EUROSAT_FILE_BANDS)))
    got = [s["__key__"] for s in ShardDataset(str(out), shuffle_shards=False)]
    assert got == [stem] and len(f"{stem}.s2.npy") > 100
    tar = next(out.glob("*.tar"))
    assert [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)] == [stem]


def test_ssl4eo_s1_and_s2_pair_by_location_and_season(shared_data: Path, tmp_path: Path) -> None:
    """SSL4EO-S12 s1 + s2a: each location's seasons pair in acquisition order into items
    holding both modalities (S1 sampled on the S2 grid, nearest); unequal seasons refused."""
    import shutil

    ssl = shared_data / "ssl4eo_s12"
    if not (ssl / "s1").is_dir():
        pytest.skip("ssl4eo_s12/s1 not available")
    m = build(_cfg([ssl / "s1", ssl / "s2a"], tmp_path / "ds", tile=128))
    assert m is not None and set(m.modalities) == {"s1", "s2"} and m.sample_count == 8
    seen = {}
    for s in ShardDataset(tmp_path / "ds", with_meta=True, shuffle_shards=False):
        assert s["s1"].shape == (2, 128, 128) and s["s2"].shape == (12, 128, 128)
        meta = s["meta"]
        seen[meta["season"]] = (meta["s1_acquisition_time"][:8], meta["s2_acquisition_time"][:8])
    assert seen == {0: ("20200607", "20200604"), 1: ("20200903", "20200813")}
    s1 = shutil.copytree(ssl / "s1", tmp_path / "s1")
    shutil.rmtree(sorted((s1 / "0000200").iterdir())[-1])
    with pytest.raises(LayoutError, match=r"location 0000200 has 1 seasons in .*s1, 2 seasons"):
        build(_cfg([s1, ssl / "s2a"], tmp_path / "bad"))
