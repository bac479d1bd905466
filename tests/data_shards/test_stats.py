"""Statistics: hand-computed references, and parallel writers merge to one pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.checks import recompute_stats
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.stats import BandStats


def test_band_stats_match_numpy_on_valid_pixels() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5000, size=(3, 40, 40)).astype(np.uint16)
    x[1, :10] = 0  # nodata
    st = BandStats.create(["a", "b", "c"], np.uint16, [0, 0, 0])
    st.update(x[:, :20])
    st.update(x[:, 20:])
    s = st.summary()
    for i, b in enumerate("abc"):
        v = x[i][x[i] != 0].astype(np.float64)
        assert s[b]["count"] == v.size
        assert s[b]["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert s[b]["std"] == pytest.approx(v.std(), rel=1e-10)
        assert (s[b]["min"], s[b]["max"]) == (v.min(), v.max())
        assert s[b]["p50"] == np.sort(v)[int(np.ceil(0.5 * v.size)) - 1]
    assert s["b"]["nodata_fraction"] == pytest.approx(0.25)


def test_float_stats_nan_is_nodata() -> None:
    x = np.full((1, 4, 4), -12.5, np.float32)
    x[0, 0, 0] = np.nan
    st = BandStats.create(["VV"], np.float32, [None], (-60, 40))
    st.update(x)
    s = st.summary()["VV"]
    assert s["count"] == 15 and s["mean"] == -12.5 and abs(s["p50"] + 12.5) <= 100 / 4096


def test_parallel_writers_merge_to_single_pass(sample_data: Path, tmp_path: Path) -> None:
    src = str(sample_data / "bigearthnet")
    opts = IngestOptions(tile=60)
    one = build(BuildConfig(src, str(tmp_path / "one"), ingest=opts, progress=False))
    many = build(BuildConfig(src, str(tmp_path / "many"), ingest=opts, workers=2,
                             num_writers=3, progress=False))
    assert one is not None and many is not None
    assert many.extra["writers"] == 3 and len({s.writer for s in many.shards}) == 3
    assert one.sample_count == many.sample_count == 24
    for mod in ("s1", "s2"):
        for band, a in one.modalities[mod].stats.items():
            b = many.modalities[mod].stats[band]
            assert a.keys() == b.keys()
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-9), (mod, band, k)
    # and the stored statistics equal a recomputation from the shards' pixels
    again = recompute_stats(tmp_path / "many")
    for band, a in one.modalities["s2"].stats.items():
        assert again.modalities["s2"].stats[band]["mean"] == pytest.approx(a["mean"], rel=1e-9)


def test_writer_by_writer_then_merge(sample_data: Path, tmp_path: Path) -> None:
    """Writers run separately (one per machine), then `merge` builds the manifest."""
    from eofm.data_shards.build import merge

    src, out = str(sample_data / "bigearthnet"), tmp_path / "split"
    for wid in (1, 0):
        assert build(BuildConfig(src, str(out), num_writers=2, writer_id=wid,
                                 progress=False)) is None
    assert not (out / "manifest.json").exists()
    m = merge(out)
    assert m.sample_count == 6 and {s.writer for s in m.shards} == {0, 1}
