"""``eofm-shard build --out`` against the inputs and what is already there: an ``--out`` that is
an input, inside one or holds one is refused before anything is read (it wrote shards among the
raw files, and ``--overwrite`` then deleted the raw input); ``--overwrite`` removes only what a
build writes and refuses a folder holding anything else (it removed the whole folder); an
``--out`` that cannot be made is refused up front, naming ``--out``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import eofm.data_shards.build as b
from eofm.data_shards.cli import main


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _build(src: Path, out: Path, *flags: str) -> list[str]:
    """``eofm-shard build`` argv of a EuroSAT-layout input."""
    return ["build", str(src), "--out", str(out), "--layout", "eurosat", "--quiet", *flags]


@pytest.fixture
def raw(tmp_path: Path, eurosat_folder: Callable[..., Path]) -> Path:
    """A small EuroSAT-layout folder of raw rasters (2 classes, 2 images each)."""
    return eurosat_folder(tmp_path / "raw", classes=2, per_class=2)


@pytest.mark.parametrize(("where", "needle"), [
    ("same", "got the input {src} itself"),
    ("inside", "got a folder inside the input {src}"),
    ("symlink", "got the input {src} itself"),  # compared resolved
])
@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_out_that_is_inside_or_holds_an_input_is_refused(raw: Path, tmp_path: Path, capsys,
                                                         where: str, needle: str,
                                                         fmt: str) -> None:
    """F1: refused with status 2 and one line naming --out, the input and what is expected;
    the input is left exactly as it was (with and without --overwrite)."""
    src = raw
    out = {"same": raw, "inside": raw / "ds", "symlink": tmp_path / "link"}[where]
    if where == "symlink":
        out.symlink_to(raw)
    before = _files(raw)
    for flags in ([], ["--overwrite"]):
        status = main(_build(src, out, "--format", fmt, *flags))
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.startswith(f"eofm-shard build: error: --out {out}: expected a folder apart "
                              "from every input"), err
        assert needle.format(src=src) in err and err.count("\n") == 1, err
        assert _files(raw) == before and sorted(p.name for p in raw.iterdir()) == [
            "Class0", "Class1"]


def test_out_inside_the_seg_dir_is_refused(tmp_path: Path, capsys) -> None:
    """--seg-dir is an input too (the dataset was written among the segmentation rasters)."""
    src, seg = tmp_path / "img", tmp_path / "seg"
    src.mkdir()
    seg.mkdir()
    rng = np.random.default_rng(0)
    np.save(src / "a.npy", rng.integers(1, 255, (3, 16, 16), dtype=np.uint8))
    np.save(seg / "a.npy", np.zeros((16, 16), np.uint8))
    out = seg / "ds"
    status = main(["build", str(src), "--out", str(out), "--seg-dir", str(seg), "--sensor",
                   "rgb", "--file-bands", "R,G,B", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and f"got a folder inside the --seg-dir {seg}" in err, err
    assert not out.exists()


def test_a_pooled_input_counts_too(raw: Path, tmp_path: Path,
                                   eurosat_folder: Callable[..., Path], capsys) -> None:
    other = eurosat_folder(tmp_path / "other", classes=2, per_class=2, tag="o")
    status = main(["build", str(raw), str(other), "--out", str(other / "ds"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and f"got a folder inside the input {other}" in err, err


def test_overwrite_removes_only_what_a_build_wrote(raw: Path, tmp_path: Path, capsys) -> None:
    """--overwrite of a dataset folder that holds another file is refused, the dataset and the
    file left as they were (the whole folder was removed); without it the dataset is replaced
    (shards of the first build gone) and the folder itself stays."""
    out = tmp_path / "ds"
    assert main(_build(raw, out, "--shard-samples", "1")) == 0
    notes = out / "notes.txt"
    notes.write_text("mine")
    (out / "preview").mkdir()
    before = _files(out)
    assert main(_build(raw, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard build: error: --out {out}: --overwrite replaces only "
                          "what `eofm-shard build` writes (manifest.json, shard-*.tar, *.tmp "
                          "and .parts/), but the folder also holds notes.txt, preview/;"), err
    assert _files(out) == before
    notes.unlink()
    (out / "preview").rmdir()
    inode = out.stat().st_ino
    assert main(_build(raw, out, "--overwrite", "--shard-samples", "3")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".parts", "manifest.json", "shard-00-000000.tar", "shard-00-000001.tar"]
    assert out.stat().st_ino == inode  # emptied, not removed and made again


def test_zarr_overwrite_of_a_folder_that_is_no_dataset_is_refused(raw: Path, tmp_path: Path,
                                                                  capsys) -> None:
    """A zarr build replaces --out whole: a folder holding anything but a zarr store or a shard
    dataset is refused (it was removed); a shard dataset or a store is replaced."""
    out = tmp_path / "ds.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_build(raw, out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: --overwrite replaces only" in err and "notes.txt" in err, err
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    shards = tmp_path / "shards"
    assert main(_build(raw, shards)) == 0
    for target in (out, shards):  # an empty folder, then a shard dataset
        assert main(_build(raw, target, "--format", "zarr", "--overwrite")) == 0
        assert (target / "zarr.json").is_file() and not (target / "manifest.json").exists()
    assert main(_build(raw, out, "--overwrite")) == 0  # a store replaces a store


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_out_that_cannot_be_made_is_refused_before_reading(raw: Path, monkeypatch,
                                                           capsys) -> None:
    """F3: ``os.access`` says root may write into /proc; making the folder tells it cannot be
    made, before any input is read (the build read every input, then failed with
    "[Errno 2] No such file or directory" naming neither --out nor what was expected)."""
    def read(cfg: b.BuildConfig) -> b.Plan:
        raise AssertionError(f"inputs read for an --out that cannot be made ({cfg.out})")

    monkeypatch.setattr(b, "make_plan", read)
    out = Path(f"/proc/eofm-test-{os.getpid()}/ds")
    assert main(_build(raw, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eofm-shard build: error: --out: {out} cannot be created"), err
    assert "choose a folder this job can write" in err and err.count("\n") == 1


def test_out_holding_an_input_builds_but_is_never_overwritten(raw: Path, tmp_path: Path,
                                                              capsys) -> None:
    """An --out folder that holds the input (``eofm-shard build raw --out .``) is written as any
    new dataset folder; --overwrite of it is refused, as of any folder holding files a build
    does not write, so the input can never be deleted."""
    out = tmp_path / "proj"
    src = out / "raw"
    out.mkdir()
    raw.rename(src)
    before = _files(src)
    assert main(_build(src, out)) == 0, capsys.readouterr().err
    assert (out / "manifest.json").is_file()
    capsys.readouterr()
    assert main(_build(src, out, "--overwrite")) == 2
    assert "but the folder also holds raw/" in capsys.readouterr().err
    assert _files(src) == before
