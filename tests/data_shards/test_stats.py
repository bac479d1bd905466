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


# ---------------------------------------------------------------- repairing damaged statistics


def _s2(d: dict) -> dict:
    return d["modalities"]["s2"]


def _drop_band(d: dict) -> None:
    del _s2(d)["stats"]["B02"]


def _extra_band(d: dict) -> None:
    _s2(d)["stats"]["B99"] = dict(_s2(d)["stats"]["B02"])


def _string(d: dict) -> None:
    _s2(d)["stats"]["B03"]["mean"] = "high"


def _nan(d: dict) -> None:  # json.dumps writes it as NaN, json.loads reads it back
    _s2(d)["stats"]["B04"]["std"] = float("nan")


def _negative_std(d: dict) -> None:
    _s2(d)["stats"]["B04"]["std"] = -1.0


def _missing_key(d: dict) -> None:
    del _s2(d)["stats"]["B08"]["mean"]


def _not_a_mapping(d: dict) -> None:
    _s2(d)["stats"] = [1.0, 2.0]


def _both_modalities(d: dict) -> None:
    _string(d)
    d["modalities"]["s1"]["stats"]["VV"]["min"] = float("inf")


# (id, damage, the damaged field: start of its problem line)
DAMAGES = [
    ("wrong_count", _drop_band, "modalities.s2.stats: expected statistics of every band"),
    ("unknown_band", _extra_band, "modalities.s2.stats.B99: expected statistics of bands listed"),
    ("string", _string, "modalities.s2.stats.B03.mean: expected a number or null, got a string"),
    ("nan", _nan, "modalities.s2.stats.B04.std: expected a finite number or null, got a number "
                  "nan"),
    ("negative_std", _negative_std, "modalities.s2.stats.B04.std: expected a standard deviation"),
    ("missing_key", _missing_key, "modalities.s2.stats.B08.mean: required field missing"),
    ("not_a_mapping", _not_a_mapping, "modalities.s2.stats: expected a mapping of band name"),
    ("both_modalities", _both_modalities, "modalities.s1.stats.VV.min: expected a finite number"),
]


def _damaged_copy(ben: Path, where: Path, damage) -> Path:
    """A copy of ``ben`` (shards too) whose manifest.json has ``damage`` applied."""
    import json

    shutil.copytree(ben, where)
    d = json.loads((where / "manifest.json").read_text())
    damage(d)
    (where / "manifest.json").write_text(json.dumps(d, indent=1))
    return where


def _assert_same_stats(got: dict, want: dict) -> None:
    """``{modality: {band: {statistic: value}}}`` equal, to rounding (None: None)."""
    assert got.keys() == want.keys()
    for mod in want:
        assert got[mod].keys() == want[mod].keys(), mod
        for band, st in want[mod].items():
            assert got[mod][band].keys() == st.keys(), (mod, band)
            for k, v in st.items():
                assert got[mod][band][k] == (None if v is None else pytest.approx(
                    v, rel=1e-9, abs=1e-9)), (mod, band, k)


@pytest.mark.parametrize(("damage", "field"), [c[1:] for c in DAMAGES],
                         ids=[c[0] for c in DAMAGES])
def test_stats_repairs_a_manifest_whose_statistics_are_damaged(
        ben: Path, tmp_path: Path, capsys, damage, field: str) -> None:
    """Damaged statistics are refused when read, with the repair named once; `eofm-shard stats`
    (which used to be refused the same way) prints the statistics of the pixels, and with
    --write stores them: the manifest then loads, equal to the undamaged one."""
    import json

    from eofm.data_shards.cli import main
    from eofm.data_shards.manifest import ManifestError, load_manifest

    ds = _damaged_copy(ben, tmp_path / "ben", damage)
    hint = ("to repair the statistics, recompute them from the pixels with "
            f"`eofm-shard stats {ds} --write`")
    with pytest.raises(ManifestError) as e:
        load_manifest(ds)
    lines = str(e.value).split("\n")
    assert lines[0] == f"{ds / 'manifest.json'}: invalid manifest:"
    assert any(line.strip().startswith(field) for line in lines[1:]), lines
    assert str(e.value).count("eofm-shard stats") == 1 and lines[-1].endswith(f"; {hint}"), lines

    damaged = (ds / "manifest.json").read_bytes()
    want = load_manifest(ben)
    assert main(["stats", str(ds)]) == 0
    _assert_same_stats(json.loads(capsys.readouterr().out),
                       {k: v.stats for k, v in want.modalities.items()})
    assert (ds / "manifest.json").read_bytes() == damaged  # printing writes nothing

    assert main(["stats", str(ds), "--write"]) == 0
    assert "modality s2" in capsys.readouterr().out  # the summary of the repaired dataset
    repaired = load_manifest(ds)
    _assert_same_stats({k: v.stats for k, v in repaired.modalities.items()},
                       {k: v.stats for k, v in want.modalities.items()})
    for m in (repaired, want):  # nothing but the statistics changed
        for info in m.modalities.values():
            info.stats = {}
    assert repaired == want


def test_stats_still_checks_every_other_field(ben: Path, tmp_path: Path, capsys) -> None:
    """Reading without the statistics' checks (check_stats=False) drops the stored statistics
    and reports every other problem as before; `eofm-shard stats` refuses such a manifest
    naming that field, not the statistics, and leaves it as it was."""
    from eofm.data_shards.cli import main
    from eofm.data_shards.manifest import ManifestError, load_manifest

    def shape_too(d: dict) -> None:
        _string(d)
        _s2(d)["shape"] = [99, 40, 40]

    ds = _damaged_copy(ben, tmp_path / "ben", shape_too)
    with pytest.raises(ManifestError) as e:
        load_manifest(ds, check_stats=False)
    assert str(e.value).split("\n")[1:] == [
        "  modalities.s2.shape: expected 12 channels first (one per entry of modalities.s2.bands,"
        " which lists 12), got [99, 40, 40]"]
    before = (ds / "manifest.json").read_bytes()
    for flags in ([], ["--write"]):
        assert main(["stats", str(ds), *flags]) == 2
        err = capsys.readouterr().err
        assert "modalities.s2.shape" in err and ".stats" not in err, err
        assert "repair the statistics" not in err, err
    assert (ds / "manifest.json").read_bytes() == before

    ok = _damaged_copy(ben, tmp_path / "ok", _string)
    assert all(info.stats == {} for info in load_manifest(ok, check_stats=False)
               .modalities.values())


def test_stats_write_on_a_zarr_store_is_refused_before_any_pixel_is_read(
        sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zarr store's statistics are written when it is built; --write (tar datasets only) is
    refused up front, not after reading every pixel. An empty store is named like an empty
    tar dataset."""

    import zarr

    from eofm.data_shards.manifest import ManifestError
    from eofm.data_shards.zarr_store import ZarrDataset

    z = tmp_path / "ben.zarr"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(z), format="zarr", progress=False))
    read: list[str] = []
    monkeypatch.setattr(checks, "iter_arrays", lambda *a, **k: read.append("pixels") or iter(()))
    with pytest.raises(ValueError, match=r"--write is supported for tar datasets only .*"
                                         r"rebuild it with `eofm-shard build \.\.\. --format zarr`"):
        recompute_stats(z, write=True)
    assert read == []
    group = zarr.open_group(str(z), mode="r+")
    group.attrs["keys"] = []
    with pytest.raises(ManifestError, match=rf"{z}: the zarr store holds no samples"):
        ZarrDataset(z)


def test_writers_that_drew_another_write_order_are_not_merged(sample_data: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """A writer on a machine whose numpy draws another permutation for the same seed deals
    other items to itself: merged, some items were lost and others written twice."""
    from eofm.data_shards import build as b
    from eofm.data_shards.merge import merge

    src, out = str(sample_data / "bigearthnet"), tmp_path / "split"
    assert build(BuildConfig(src, str(out), num_writers=2, writer_id=0, progress=False)) is None
    monkeypatch.setattr(b, "write_order", lambda items, seed: list(reversed(items)))
    assert build(BuildConfig(src, str(out), num_writers=2, writer_id=1, progress=False)) is None
    with pytest.raises(ValueError):
        merge(out)
