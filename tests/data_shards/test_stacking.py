"""``eofm-shard build --stack s2,s1``: paired modalities written as one input, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import recompute_stats
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor, stack_sensor
from eofm.data_shards.stacking import Stack


def test_the_composite_sensor_keeps_each_bands_physics() -> None:
    s = get_sensor("s2_l2a+s1_grd")
    s2, s1 = get_sensor("s2_l2a"), get_sensor("s1_grd")
    assert s.band_names == s2.band_names + s1.band_names and s.dtype == "float32"
    assert s.band("VV") == s1.band("VV") and s.band("b4") == s2.band("B04")  # aliases too
    assert s.processing_level == "+".join(sorted([s1.processing_level, s2.processing_level]))
    with pytest.raises(ValueError, match=r"band name 'B01' of s2_l2a is also a band name or "
                                         r"alias of s2_l1c; stacked sensors need distinct"):
        stack_sensor(["s2_l1c", "s2_l2a"])
    with pytest.raises(ValueError, match="unknown sensor 'nope'"):
        get_sensor("s2_l2a+nope")


@pytest.mark.parametrize(("text", "problem"), [
    ("s2", "expected two or more distinct modalities"), ("s2,s2", "two or more distinct"),
    ("s2,s1=a b", "must be letters, digits or '_'")])
def test_bad_stack_specs_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Stack.parse(text)


@pytest.fixture(scope="module")
def built(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(the BigEarthNet sample built apart, and stacked), 40 px tiles."""
    tmp = tmp_path_factory.mktemp("stack")
    apart, stacked = tmp / "apart", tmp / "stacked"
    for out, stack in ((apart, None), (stacked, "s2,s1")):
        build(BuildConfig(str(sample_data / "bigearthnet"), str(out), stack=stack,
                          ingest=IngestOptions(tile=40), progress=False))
    return apart, stacked


def test_stacked_tiles_are_the_parts_side_by_side(built: tuple[Path, Path]) -> None:
    apart, stacked = built
    a = {s["__key__"]: s for s in ShardDataset(apart, shuffle_shards=False, with_meta=True)}
    b = {s["__key__"]: s for s in ShardDataset(stacked, shuffle_shards=False, with_meta=True)}
    assert a.keys() == b.keys() and len(b) == 54
    for k, s in b.items():
        x = s["s2s1"]
        assert x.dtype == np.float32 and x.shape == (14, 40, 40) and "s2" not in s
        np.testing.assert_array_equal(x[:12], a[k]["s2"].astype(np.float32))
        np.testing.assert_array_equal(x[12:], a[k]["s1"])
        np.testing.assert_array_equal(s["s2s1_valid"], a[k]["s2_valid"] & a[k]["s1_valid"])
        np.testing.assert_array_equal(s["label"], a[k]["label"])
        meta = s["meta"]["modalities"]["s2s1"]
        assert meta["sensor"] == "s2_l2a+s1_grd" and set(meta["stacked_from"]) == {"s2", "s1"}
        assert meta["bands"][-2:] == ["VV", "VH"]


def test_each_stacked_band_has_its_parts_statistics(built: tuple[Path, Path]) -> None:
    apart, stacked = built
    ma, mb = recompute_stats(apart), recompute_stats(stacked)
    info = mb.modalities["s2s1"]
    assert info.sensor == "s2_l2a+s1_grd" and info.dtype == "float32"
    for part in ("s2", "s1"):
        for band, st in ma.modalities[part].stats.items():
            got = info.stats[band]
            assert got["count"] == st["count"] and got["mean"] == pytest.approx(st["mean"])
            for q in ("p2", "p98"):  # S2 exact; S1 on the same range, finer bins
                assert got[q] == pytest.approx(st[q], abs=0.05), (band, q)
    from eofm.data_shards.manifest import load_manifest

    built_stats = load_manifest(stacked).modalities["s2s1"].stats
    assert built_stats == info.stats  # what the build wrote is what the pixels give
    assert load_manifest(stacked).extra["stack"] == {"name": "s2s1", "parts": ["s2", "s1"]}


def test_a_stack_of_a_missing_modality_is_refused_before_reading(sample_data: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--stack: the inputs have no modality \['s3'\]"):
        build(BuildConfig(str(sample_data / "bigearthnet"), str(tmp_path / "x"),
                          stack="s2,s3", ingest=IngestOptions(tile=40), progress=False))
    assert not (tmp_path / "x" / "manifest.json").exists()
