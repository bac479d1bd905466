"""What a failed or interrupted command leaves, and says: a first build that fails or is stopped
leaves no empty ``--out`` (finished writers' parts stay for the re-run); Ctrl-C is one line and
status 130, not a traceback; ``preview --out`` under a file is refused naming ``--out``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import eofm.data_shards.build as b
from eofm.data_shards.cli import main

INTERRUPTED = "eofm-shard build: error: interrupted; rerun to continue from finished writers"


@pytest.fixture
def raw(tmp_path: Path, eurosat_folder: Callable[..., Path]) -> Path:
    """A small EuroSAT-layout folder of raw rasters (2 classes, 2 images each)."""
    return eurosat_folder(tmp_path / "raw", classes=2, per_class=2)


def _build(src: Path, out: Path, *flags: str) -> list[str]:
    """``eofm-shard build`` argv of a EuroSAT-layout input."""
    return ["build", str(src), "--out", str(out), "--layout", "eurosat", "--quiet", *flags]


def _main(argv: list[str]) -> int:
    """:func:`main`'s status; a KeyboardInterrupt escaping it fails the test (it would stop
    the test session)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped eofm-shard as a KeyboardInterrupt (a traceback)")


def _stop(*args: object) -> dict:
    """A stand-in that is stopped by Ctrl-C."""
    raise KeyboardInterrupt


def test_a_failed_first_build_leaves_no_empty_out(raw: Path, tmp_path: Path, capsys) -> None:
    """F5: a raster that cannot be read stops the build after --out (and its missing parent)
    was made; both were left empty. A folder that was there before the run stays."""
    good = next(raw.glob("Class1/*.tif"))
    (raw / "Class1" / "Class1_cut.tif").write_bytes(good.read_bytes()[:3000])
    out = tmp_path / "new" / "ds"
    assert main(_build(raw, out)) == 2
    err = capsys.readouterr().err
    assert "Class1_cut.tif" in err, err
    assert not out.parent.exists(), sorted(map(str, out.parent.rglob("*")))
    out.mkdir(parents=True)  # the user's own folder: not this run's to remove
    assert main(_build(raw, out)) == 2
    assert out.is_dir()


def test_ctrl_c_is_one_line_with_status_130(raw: Path, tmp_path: Path, monkeypatch,
                                            capsys) -> None:
    """F5: Ctrl-C during the first build: status 130 and one line saying what a re-run does
    (it was a KeyboardInterrupt traceback), and no empty --out left."""
    monkeypatch.setattr(b, "sample_bytes", _stop)  # while writing the first sample
    out = tmp_path / "ds"
    assert _main(_build(raw, out)) == 130
    assert capsys.readouterr().err.splitlines()[-1] == INTERRUPTED
    assert not out.exists()
    monkeypatch.setattr(b, "make_plan", _stop)  # a zarr store: no writers to continue from
    assert _main(_build(raw, tmp_path / "ds.zarr")) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "eofm-shard build: error: interrupted; a zarr store is put in place only when complete "
        "(an existing one is kept): rerun to build it")


def test_ctrl_c_signal_in_a_real_process(raw: Path, tmp_path: Path) -> None:
    """The same with a real SIGINT (as a terminal's Ctrl-C), sent by the build to itself while
    it writes its first sample: no traceback on stderr."""
    script = ("import os, signal, sys\n"
              "import eofm.data_shards.build as b\n"
              "from eofm.data_shards.cli import main\n"
              "real = b.sample_bytes\n"
              "def ctrl_c(s):\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "    return real(s)\n"
              "b.sample_bytes = ctrl_c\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-c", script, *_build(raw, out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.splitlines()[-1] == INTERRUPTED
    assert not out.exists()


def test_finished_writers_stay_for_the_rerun(raw: Path, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    """A build stopped in its second writer keeps the first writer's shards and part; the
    re-run writes only the second writer."""
    real = b.run_writer
    ran: list[int] = []

    def second_stops(cfg: b.BuildConfig, plan: b.Plan, wid: int, n: int) -> dict:
        ran.append(wid)
        if wid == 1:
            raise KeyboardInterrupt
        return real(cfg, plan, wid, n)

    monkeypatch.setattr(b, "run_writer", second_stops)
    out = tmp_path / "ds"
    assert _main(_build(raw, out, "--num-writers", "2")) == 130
    assert capsys.readouterr().err.splitlines()[-1] == INTERRUPTED
    assert (out / b.PARTS / "writer-00.json").is_file() and list(out.glob("shard-00-*.tar"))
    ran.clear()
    monkeypatch.setattr(b, "run_writer", lambda *a: (ran.append(a[2]), real(*a))[1])
    assert main(_build(raw, out, "--num-writers", "2")) == 0
    assert ran == [1]


def test_preview_out_under_a_file_is_refused_naming_out(raw: Path, tmp_path: Path,
                                                        capsys) -> None:
    """F8: ``--out run.sh/x.png`` (run.sh a file) said only "[Errno 17] File exists:
    '.../run.sh'" after reading and drawing the samples; a folder that is not there yet is
    made."""
    ds = tmp_path / "ds"
    assert main(_build(raw, ds)) == 0
    capsys.readouterr()
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    out = script / "x.png"
    assert main(["preview", str(ds), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"eofm-shard preview: error: --out {out}: {script} is not a folder; "
                   "expected a .png file in a folder this job can write (it is made when "
                   "missing)\n"), err
    assert script.read_text() == "#!/bin/sh\n"
    made = tmp_path / "new" / "sheet.png"
    assert main(["preview", str(ds), "--out", str(made)]) == 0
    assert made.is_file() and made.with_suffix(".json").is_file()
