"""Statistics: hand-computed references, and parallel writers merge to one pass."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards import checks
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
    from eofm.data_shards.merge import merge

    src, out = str(sample_data / "bigearthnet"), tmp_path / "split"
    for wid in (1, 0):
        assert build(BuildConfig(src, str(out), num_writers=2, writer_id=wid,
                                 progress=False)) is None
    assert not (out / "manifest.json").exists()
    m = merge(out)
    assert m.sample_count == 6 and {s.writer for s in m.shards} == {0, 1}


# ---------------------------------------------------------------- `eofm-shard stats` failures


def _stats_err(capsys, *argv: str) -> tuple[int, str]:
    """Run ``eofm-shard stats``; (status, stderr)."""
    from eofm.data_shards.cli import main

    status = main(["stats", *argv])
    return status, capsys.readouterr().err


def test_stats_names_a_missing_shard(ben: Path, tmp_path: Path, capsys) -> None:
    """A shard the manifest lists that is gone: one line naming it (was the bare
    ``[Errno 2] No such file or directory``), the manifest left as it was."""
    ds = tmp_path / "ben"
    shutil.copytree(ben, ds)
    before = (ds / "manifest.json").read_bytes()
    shard = sorted(ds.glob("shard-*.tar"))[2]
    shard.unlink()
    for flags in ([], ["--write"]):
        status, err = _stats_err(capsys, str(ds), *flags)
        assert status == 2 and err == (f"eofm-shard stats: error: {shard}: missing: a shard the "
                                       "manifest lists; restore it, or rebuild the dataset "
                                       "(eofm-shard build ... --overwrite)\n"), err
    assert (ds / "manifest.json").read_bytes() == before


def test_stats_write_to_a_read_only_dataset_is_refused_first(ben: Path, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    """--write on a folder that cannot be written: refused before any shard is read, naming the
    manifest (was a raw ``[Errno 30] Read-only file system: '.../.manifest.json.tmp'`` after
    reading everything). Root writes into a mode-0555 folder; ``os.access`` says what a
    read-only mount would."""
    ds = tmp_path / "ben"
    shutil.copytree(ben, ds)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: (
            False if Path(p) == ds and mode & os.W_OK else real(p, mode, **k)))
    else:
        ds.chmod(0o555)
    read = []
    monkeypatch.setattr(checks, "iter_arrays", lambda *a, **k: read.append(a) or iter(()))
    try:
        status, err = _stats_err(capsys, str(ds), "--write")
    finally:
        ds.chmod(0o755)
    assert status == 2 and err == (f"eofm-shard stats: error: {ds / 'manifest.json'}: cannot "
                                   f"write the recomputed statistics: {ds} is not writable; "
                                   "make the folder writable, or run without --write to print "
                                   "them\n"), err
    assert not read  # refused before reading the shards


def test_stats_write_failure_is_one_line_and_a_full_disk_stays_status_1(
        ben: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A write that fails anyway (permissions changed meanwhile): the file and the reason, not
    the OSError repr; a full disk keeps its own message and status 1."""
    from eofm.data_shards.manifest import Manifest

    ds = tmp_path / "ben"
    shutil.copytree(ben, ds)
    tmp = ds / ".manifest.json.tmp"
    for code, status_wanted in ((errno.EACCES, 2), (errno.ENOSPC, 1)):
        def fail(self, directory, code=code):
            raise OSError(code, os.strerror(code), str(tmp))

        monkeypatch.setattr(Manifest, "save", fail)
        status, err = _stats_err(capsys, str(ds), "--write")
        assert status == status_wanted, err
        if code == errno.EACCES:
            assert err == f"eofm-shard stats: error: {tmp}: Permission denied\n"
        else:
            assert "No space left on device" in err and "free on its filesystem" in err
