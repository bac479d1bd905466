"""An interrupted multi-writer build re-run reuses a finished writer's part only when the
plan record covers everything that changes the pixels written: the files and band order each
item is read with (``--file-bands``), ``--nan-policy`` and ``--resample``. A part recorded by
an older build (no ``reads`` entry) is rebuilt, not reused and not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

import eofm.data_shards.build as b
from eofm.data_shards.build import PARTS, BuildConfig
from eofm.data_shards.checks import verify
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.sensors import get_sensor

# EuroSAT-MS files store B8A last; the Sentinel-2 L1C sensor order has it after B08
FILE_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
              "B12", "B8A"]


def _inputs(root: Path, n: int = 4) -> Path:
    """``n`` 13-band uint16 rasters whose file band ``i`` holds ``100 * (i + 1) + file``."""
    root.mkdir()
    for f in range(n):
        x = np.stack([np.full((8, 8), 100 * (i + 1) + f, np.uint16) for i in range(13)], -1)
        tifffile.imwrite(root / f"img_{f}.tif", x, photometric="minisblack",
                         planarconfig="contig")
    return root


def _cfg(src: Path, out: Path, file_bands: list[str] | None = None, **kw) -> BuildConfig:
    return BuildConfig(str(src), str(out), layout="multiband", num_writers=2, progress=False,
                       layout_options=LayoutOptions(sensor="s2_l1c", file_bands=file_bands),
                       **kw)


@pytest.fixture
def writers_run(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The writer ids :func:`build.run_writer` is called for (a reused part is not rerun)."""
    ran: list[int] = []
    real = b.run_writer

    def counting(cfg, plan, wid, n):
        ran.append(wid)
        return real(cfg, plan, wid, n)

    monkeypatch.setattr(b, "run_writer", counting)
    return ran


def test_rerun_with_corrected_file_bands_rewrites_the_finished_writer(tmp_path: Path) -> None:
    """Writer 0 finished with the sensor order assumed; the re-run with the files' true order
    (--file-bands) must rewrite it: every sample reads its bands by the declared order."""
    src, out = _inputs(tmp_path / "in"), tmp_path / "ds"
    assert b.build(_cfg(src, out, writer_id=0)) is None
    m = b.build(_cfg(src, out, file_bands=FILE_BANDS))
    assert m is not None and m.sample_count == 4 and verify(out) == []
    bands = get_sensor("s2_l1c").band_names
    samples = list(ShardDataset(out, shuffle_shards=False, with_meta=True))
    assert len(samples) == 4
    for s in samples:
        f = int(s["__key__"].rsplit("_", 1)[1])
        got = [int(s["s2"][j, 0, 0]) for j in range(len(bands))]
        want = [100 * (FILE_BANDS.index(name) + 1) + f for name in bands]
        assert got == want, f"{s['__key__']}: bands {bands} hold {got}, expected {want}"
        assert s["meta"]["file_band_order"] == "declared", s["__key__"]


@pytest.mark.parametrize("ingest", [IngestOptions(nan_policy="nodata"),
                                    IngestOptions(resample="nearest")],
                         ids=["nan_policy", "resample"])
def test_rerun_with_other_pixel_options_rewrites_the_finished_writer(
        tmp_path: Path, writers_run: list[int], ingest: IngestOptions) -> None:
    src, out = _inputs(tmp_path / "in"), tmp_path / "ds"
    b.build(_cfg(src, out, file_bands=FILE_BANDS, writer_id=0))
    assert writers_run == [0]
    m = b.build(_cfg(src, out, file_bands=FILE_BANDS, ingest=ingest))
    assert writers_run == [0, 0, 1]  # writer 0 rewritten, not reused
    assert m is not None and m.sample_count == 4 and verify(out) == []


def test_unchanged_rerun_reuses_the_finished_writer(tmp_path: Path,
                                                    writers_run: list[int]) -> None:
    src, out = _inputs(tmp_path / "in"), tmp_path / "ds"
    b.build(_cfg(src, out, file_bands=FILE_BANDS, writer_id=0))
    part = (out / PARTS / "writer-00.json").read_bytes()
    m = b.build(_cfg(src, out, file_bands=FILE_BANDS))
    assert writers_run == [0, 1]  # only the unfinished writer ran again
    assert (out / PARTS / "writer-00.json").read_bytes() == part
    assert m is not None and m.sample_count == 4 and verify(out) == []


def test_part_recorded_by_an_older_build_is_rebuilt(tmp_path: Path,
                                                    writers_run: list[int]) -> None:
    """A finished part whose plan lacks the ``reads`` entry (written before it existed) says
    nothing about the band order it was read with: rebuilt, and the merge agrees."""
    src, out = _inputs(tmp_path / "in"), tmp_path / "ds"
    b.build(_cfg(src, out, file_bands=FILE_BANDS, writer_id=0))
    path = out / PARTS / "writer-00.json"
    part = json.loads(path.read_text())
    part["plan"].pop("reads", None)
    path.write_text(json.dumps(part))
    m = b.build(_cfg(src, out, file_bands=FILE_BANDS))
    assert writers_run == [0, 0, 1]  # writer 0 rebuilt, not reused
    reads = json.loads(path.read_text())["plan"]["reads"]
    assert set(reads) == {"items_sha256", "nan_policy", "resample"}
    assert m is not None and m.sample_count == 4 and verify(out) == []
