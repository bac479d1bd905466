"""Damage ``eofm-shard verify`` and ``stats`` must name (the review of the shard commands):

- a manifest whose band order or sensor was edited: every sample's ``meta.json`` (and a zarr
  store's ``meta.jsonl`` line) records the bands and sensor it was built with, and verify now
  compares them (exit 1, naming the shard, the sample and both lists); pooled sensors each
  keep their own and are not a problem;
- a manifest that is there but damaged (a shard's sample count raised) is a problem verify
  found (exit 1, at ``manifest.json``), not refused input (2, kept for no dataset at all);
- a URL is refused up front by verify and stats (they read every shard file), not mangled
  into a path that "has no manifest";
- ``stats`` over a sample of another shape (or without its modality) names the shard, the
  sample, the modality and the manifest's shape, not a bare ``expected (C=13, H, W)``;
- a zarr store's ``meta.jsonl`` is required: one JSON line per sample key.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.cli import main
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.manifest import MANIFEST_NAME, load_manifest
from eofm.data_shards.tario import iter_samples

TILE = 16
S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def raw(eurosat_folder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eurosat_folder(tmp_path_factory.mktemp("verify") / "raw", classes=2, per_class=3,
                          size=TILE)


@pytest.fixture(scope="module")
def shards(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 EuroSAT-like samples in shards of 4 (read only: tests damage a copy)."""
    out = tmp_path_factory.mktemp("verify") / "ds"
    assert main(["build", str(raw), "--out", str(out), "--quiet", "--shard-samples", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def store(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same samples as a zarr store (read only)."""
    out = tmp_path_factory.mktemp("verify") / "ds.zarr"
    assert main(["build", str(raw), "--out", str(out), "--quiet"]) == 0
    return out


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _edit_manifest(ds: Path, change: Callable[[dict], object]) -> None:
    path = ds / MANIFEST_NAME
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m, indent=1))


def _samples(ds: Path) -> list[tuple[Path, str]]:
    """(shard, sample key) of every sample, in shard order."""
    out = []
    for tar in sorted(ds.glob("shard-*.tar")):
        with open(tar, "rb") as f:
            out += [(tar, raw["__key__"]) for raw in iter_samples(f, str(tar))]
    return out


def _swap_b02_b04(m: dict) -> None:
    bands = m["modalities"]["s2"]["bands"]
    i, j = bands.index("B02"), bands.index("B04")
    bands[i], bands[j] = bands[j], bands[i]


def test_verify_compares_each_samples_bands_and_sensor_with_the_manifest(
        shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(shards, ds)
    swapped = list(S2)
    swapped[1], swapped[3] = "B04", "B02"

    def edit(m: dict) -> None:
        _swap_b02_b04(m)
        m["modalities"]["s2"]["sensor"] = "s2_l2a"

    _edit_manifest(ds, edit)
    status, out, err = _run(capsys, "verify", str(ds))
    assert status == 1 and out == "", (status, out, err)
    lines = err.splitlines()
    samples = _samples(ds)
    assert len(lines) == 2 * len(samples) == 12, err
    tar, key = samples[0]
    assert lines[0] == (f"FAIL {tar}: sample {key}: meta.json records s2 bands {S2}, the "
                        f"manifest lists {swapped}")
    assert lines[1] == (f"FAIL {tar}: sample {key}: meta.json records s2 sensor 's2_l1c', the "
                        "manifest says sensor 's2_l2a'")
    # --no-decode reads no sample (sizes and checksums only): the samples' records unread
    assert _run(capsys, "verify", "--no-decode", str(ds))[0] == 0


def test_pooled_sensors_each_keep_their_own_but_an_unlisted_one_is_found(
        sample_data: Path, shared_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    """Sentinel-2 L1C and L2A pooled into one modality: each sample records its own sensor,
    one of the manifest's ``sensors`` (not a problem); a manifest that lists only L1C leaves
    every L2A sample's sensor unlisted."""
    ds = tmp_path / "pooled"
    build(BuildConfig(str(sample_data / "sentinel2_l1c_scene"), str(ds),
                      more_sources=[str(shared_data / "ssl4eo_s12" / "s2a")],
                      ingest=IngestOptions(tile=128, stride=128, resample="nearest",
                                           bands={"s2": ["B02", "B03", "B04", "B08"]}),
                      progress=False))
    assert load_manifest(ds).modalities["s2"].sensor_ids == ["s2_l1c", "s2_l2a"]
    status, _, err = _run(capsys, "verify", str(ds))
    assert (status, err) == (0, ""), err
    l2a = json.loads((ds / MANIFEST_NAME).read_text())["extra"]["counters"]["samples[s2:s2_l2a]"]
    _edit_manifest(ds, lambda m: m["modalities"]["s2"].update(sensors=["s2_l1c"]))
    status, _, err = _run(capsys, "verify", str(ds))
    lines = err.splitlines()
    assert status == 1 and len(lines) == l2a > 0, err
    assert all(line.endswith("meta.json records s2 sensor 's2_l2a', the manifest says sensor "
                             "'s2_l1c'") for line in lines), err


def test_a_damaged_manifest_is_a_problem_found_not_refused_input(
        shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(shards, ds)
    _edit_manifest(ds, lambda m: m["shards"][0].update(samples=m["shards"][0]["samples"] + 1))
    status, out, err = _run(capsys, "verify", str(ds))
    assert status == 1 and out == "", (status, err)
    assert err == (f"FAIL {ds / MANIFEST_NAME}: invalid manifest:\n  sample_count: 6 disagrees "
                   "with the shards' sum 7\n"), err
    (ds / MANIFEST_NAME).write_text("{not json")
    status, _, err = _run(capsys, "verify", str(ds))
    assert status == 1 and err.startswith(f"FAIL {ds / MANIFEST_NAME}: manifest is not valid "
                                          "JSON"), err
    # no dataset there at all: still refused input
    status, _, err = _run(capsys, "verify", str(tmp_path / "nothing"))
    assert status == 2 and "no manifest found" in err, err


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_a_url_is_refused_up_front(command: str, capsys: pytest.CaptureFixture) -> None:
    """Nothing is contacted: the URL is refused before any read, its password not shown."""
    status, _, err = _run(capsys, command, "https://alice:s3cret@127.0.0.1:9/ds_euro")
    assert status == 2
    assert err == (f"eofm-shard {command}: error: {command} needs a local dataset folder; got "
                   "URL https://***@127.0.0.1:9/ds_euro: download the dataset first "
                   "(`eofm-shard inspect` and `preview` read a URL)\n"), err


def _rewrite_member(tar: Path, name: str, data: bytes | None) -> None:
    """``tar`` with member ``name`` replaced by ``data`` (None: removed)."""
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, d in members:
            if m.name == name:
                if data is None:
                    continue
                d, m.size = data, len(data)
            t.addfile(m, io.BytesIO(d))


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.mark.parametrize(("member", "what"), [
    (_npy(np.zeros((12, 2 * TILE, 2 * TILE), np.uint16)),
     f"s2 is [12, {2 * TILE}, {2 * TILE}], the manifest says [13, {TILE}, {TILE}] (13 bands)"),
    (None, "has no s2.npy (the manifest lists modality s2)"),
], ids=["foreign_shape", "no_member"])
def test_stats_names_the_shard_and_sample_that_do_not_fit(
        shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        member: bytes | None, what: str) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(shards, ds)
    tar, key = _samples(ds)[5]
    _rewrite_member(tar, f"{key}.s2.npy", member)
    status, out, err = _run(capsys, "stats", str(ds))
    sep = ": " if member is not None else " "
    assert (status, out) == (2, ""), err
    assert err == (f"eofm-shard stats: error: {tar}: sample {key}{sep}{what}; run `eofm-shard "
                   "verify` for every problem\n"), err


def _lines(store: Path) -> list[str]:
    return (store / "meta.jsonl").read_text().splitlines(keepends=True)


def test_zarr_verify_requires_one_meta_line_per_sample(store: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    z = tmp_path / "ds.zarr"
    shutil.copytree(store, z)
    meta = z / "meta.jsonl"
    good = _lines(z)
    assert len(good) == 6 and _run(capsys, "verify", str(z))[0] == 0
    keys = json.loads((z / "zarr.json").read_text())["attributes"]["keys"]

    meta.write_text("".join(good[:-1]))  # a line lost
    status, _, err = _run(capsys, "verify", str(z))
    assert status == 1 and err == (f"FAIL {meta}: 5 lines, expected one per sample: 6 (lines "
                                   "lost or added); restore it or rebuild the store\n"), err

    meta.write_text("".join([*good[:2], "{cut\n", *good[3:]]))  # a line damaged
    status, _, err = _run(capsys, "verify", str(z))
    assert status == 1 and err.startswith(f"FAIL {meta}:3: sample {keys[2]}: not a JSON "
                                          "line"), err

    line = json.loads(good[1])
    line["modalities"]["s2"]["bands"] = line["modalities"]["s2"]["bands"][::-1]
    meta.write_text("".join([good[0], json.dumps(line) + "\n", *good[2:]]))  # bands edited
    status, _, err = _run(capsys, "verify", str(z))
    assert status == 1 and err == (f"FAIL {meta}:2: sample {keys[1]}: records s2 bands "
                                   f"{S2[::-1]}, the manifest lists {S2}\n"), err

    meta.unlink()
    status, _, err = _run(capsys, "verify", str(z))
    assert status == 1 and err == (f"FAIL {meta}: missing: the store keeps each sample's "
                                   "metadata there, one JSON line per sample (6); restore it "
                                   "or rebuild the store (eofm-shard build ... --format zarr "
                                   "--overwrite)\n"), err
