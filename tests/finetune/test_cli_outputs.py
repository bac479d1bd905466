"""Where eofm-probe and eofm-export write, and what they say when they cannot: an --out that
cannot be made is refused up front naming --out (``/proc``: ``os.access`` says yes to root), a
write failing after the probe is one line, a Hub that cannot be reached or a missing token is
one line naming the repo (never the token), a refused ``--run`` curve leaves no --out folder,
and a raw folder that does not build says, on one line, to build shards with eofm-shard build
first. Fixtures are cheap: the bundled BigEarthNet sample as shards, a test-size export of a
fresh encoder, and a hand-made pretraining checkpoint of it (as tests/finetune/test_bad_inputs)."""

from __future__ import annotations

import importlib
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi

from eofm.finetune import export as export_cli
from eofm.finetune import probe_cli
from eofm.finetune.datasets import open_labelled
from eofm.models.hub import EXPORT_FILES

SECRET = "hf_DO_NOT_LOG_0123456789abcdef"
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def ben(bigearthnet_export: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the bundled BigEarthNet patches as shards, a matching test-size export)."""
    return bigearthnet_export


@pytest.fixture(scope="module")
def checkpoint(bigearthnet_checkpoint: Path) -> Path:
    """The shared hand-made pretraining checkpoint (tests/conftest.py)."""
    return bigearthnet_checkpoint


def _refused(err: str) -> str:
    """The one error line of a refused command (no traceback)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1, err
    return lines[0]


def _record_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[str]:
    """Calls of ``module.name`` from now on (the real function still runs)."""
    calls: list[str] = []
    real = getattr(module, name)

    def recorded(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recorded)
    return calls


# ---------------------------------------------------------------- F3: --out that cannot be made


@needs_proc
def test_probe_out_that_cannot_be_made_is_refused_before_the_probe(ben, monkeypatch,
                                                                   capsys) -> None:
    """--out /proc/...: the probe ran to its end, then write_report's mkdir was a
    FileNotFoundError traceback; now refused before the encoder is loaded."""
    data, export = ben
    loads = _record_calls(monkeypatch, probe_cli, "load_encoder")
    out = "/proc/eofm-probe-nope/report"
    assert probe_cli.main(["--encoder", str(export), "--data", str(data), "--out", out,
                           "--folds", "2", "--quiet"]) == 2
    line = _refused(capsys.readouterr().err)
    assert line == f"eofm-probe: error: --out: {out} cannot be created (No such file or directory)"
    assert not loads


def test_probe_write_failing_after_the_probe_is_one_line(ben, tmp_path, capsys) -> None:
    """A report file that cannot be written (here a folder is in report.md's place) after the
    probe ran: one line naming the file and status 2, not an OSError traceback."""
    data, export = ben
    out = tmp_path / "report"
    (out / "report.md").mkdir(parents=True)
    assert probe_cli.main(["--encoder", str(export), "--data", str(data), "--out", str(out),
                           "--folds", "2", "--quiet"]) == 2
    line = _refused(capsys.readouterr().err)
    assert line.startswith("eofm-probe: error: ") and str(out / "report.md") in line


@needs_proc
def test_export_out_that_cannot_be_made_is_refused_before_the_checkpoint_is_read(
        checkpoint, monkeypatch, capsys) -> None:
    """--out /proc/x: refused after loading the checkpoint, naming a temporary folder
    (/proc/.x.XXXX.tmp) instead of --out; now up front, naming --out."""
    loads = _record_calls(monkeypatch, export_cli, "load_checkpoint")
    out = "/proc/eofm-export-nope"
    assert export_cli.main([str(checkpoint), "--out", out]) == 2
    line = _refused(capsys.readouterr().err)
    assert line == f"eofm-export: error: --out: {out} cannot be created (No such file or directory)"
    assert not loads


def test_export_out_that_is_a_file_is_refused_before_the_checkpoint_is_read(
        checkpoint, tmp_path, monkeypatch, capsys) -> None:
    """An --out that is a file is refused naming --out, before the checkpoint is read."""
    loads = _record_calls(monkeypatch, export_cli, "load_checkpoint")
    afile = tmp_path / "a_file"
    afile.write_text("keep me\n")
    assert export_cli.main([str(checkpoint), "--out", str(afile)]) == 2
    line = _refused(capsys.readouterr().err)
    assert line == f"eofm-export: error: --out: {afile} exists and is not a folder"
    assert not loads and afile.read_text() == "keep me\n"


# ---------------------------------------------------------------- F4: --push-to-hub


def _unreachable(message: str) -> Exception:
    """The error huggingface_hub's HTTP library raises for a host it cannot reach (httpx's
    ``ConnectError``, which is no OSError; requests' ``ConnectionError`` before)."""
    from huggingface_hub.utils import HfHubHTTPError

    lib = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])
    return (getattr(lib, "ConnectError", None) or lib.ConnectionError)(message)


@pytest.mark.parametrize(("failing", "message"), [
    ("create_repo", "[Errno -2] Name or service not known"),
    ("upload_folder", f"connection reset (Authorization: Bearer {SECRET})"),
], ids=["create_repo", "upload_folder_quoting_the_token"])
def test_push_with_the_hub_unreachable_names_the_repo_and_the_export(
        checkpoint, tmp_path, monkeypatch, capsys, caplog, no_network, failing: str,
        message: str) -> None:
    """The Hub unreachable (httpx's ConnectError, no OSError) was a traceback; now one line
    naming the repo and the finished export folder, status 2, and never the token."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    calls: list[str] = []

    def call(name: str):
        def stand_in(self, *args, **kwargs):
            calls.append(name)
            if name == failing:
                raise _unreachable(message)
            return "https://huggingface.co/org/tiny"
        return stand_in

    for name in ("create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, name, call(name))
    caplog.set_level("DEBUG")
    out = tmp_path / "export"
    assert export_cli.main([str(checkpoint), "--out", str(out), "--push-to-hub",
                            "org/tiny"]) == 2
    printed = capsys.readouterr()
    line = _refused(printed.err)
    assert line.startswith("eofm-export: error: push_to_hub: could not reach the Hub to upload "
                           "to 'org/tiny' (ConnectError")
    assert f"the export is complete in {out}" in line
    assert calls == ["create_repo", "upload_folder"][:calls.index(failing) + 1]
    assert failing in calls and set(EXPORT_FILES) <= {p.name for p in out.iterdir()}
    for text in (caplog.text, printed.out, printed.err):
        assert SECRET not in text


def test_push_without_a_token_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch,
                                                         capsys, no_network) -> None:
    """No HF_TOKEN and no cached login: the export was written, then the Hub call failed;
    now refused up front, nothing read, written or asked of the Hub."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # huggingface_hub reads the token file's path from HF_HOME once, at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH",
                        str(tmp_path / "hf_home" / "token"))
    assert huggingface_hub.get_token() is None
    loads = _record_calls(monkeypatch, export_cli, "load_checkpoint")
    hub: list[str] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: hub.append("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: hub.append("upload"))
    out = tmp_path / "export"
    assert export_cli.main([str(checkpoint), "--out", str(out), "--push-to-hub",
                            "org/tiny"]) == 2
    line = _refused(capsys.readouterr().err)
    assert line.startswith("eofm-export: error: push_to_hub: expected a Hugging Face token with "
                           "write access to 'org/tiny', got none")
    assert not loads and not hub and not out.exists()


# ---------------------------------------------------------------- F6: --run curve refused


def test_a_refused_curve_leaves_no_out_folder(ben, tmp_path, capsys) -> None:
    """--run of a folder without checkpoints is refused; its --out used to be made first and
    left behind, empty."""
    data, _ = ben
    run, out = tmp_path / "run", tmp_path / "curve"
    run.mkdir()
    assert probe_cli.main(["--run", str(run), "--data", str(data), "--out", str(out),
                           "--quiet"]) == 2
    assert "--run: no checkpoint in" in _refused(capsys.readouterr().err)
    assert not out.exists()


# ---------------------------------------------------------------- F7: a raw folder's build


def test_a_raw_folder_that_does_not_build_says_build_shards_first(sample_data, ben, tmp_path,
                                                                  capsys) -> None:
    """The Landsat scene's bands do not align without --resample or --bands, options of
    eofm-shard build only: the build's reason is kept, and the same one-line advice as for a
    layout that needs options follows it (build shards first, then pass them as --data)."""
    src = sample_data / "landsat8_scene"
    with pytest.raises(ValueError) as e:
        open_labelled(src, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "pass --resample nearest" in msg  # the build's reason, kept
    assert ("--resample and --bands are eofm-shard build options, not this command's: build "
            f"labelled shards first, e.g. `eofm-shard build {src} OPTIONS --out DATASET`, then "
            "pass --data DATASET") in msg
    assert msg.endswith("then pass --data DATASET")
    _, export = ben
    assert probe_cli.main(["--encoder", str(export), "--data", str(src), "--out",
                           str(tmp_path / "report"), "--quiet"]) == 2
    assert _refused(capsys.readouterr().err) == f"eofm-probe: error: {msg}"


def test_a_raw_folder_needing_layout_options_says_so_on_one_line(tmp_path) -> None:
    """The layout's refusal (3-band class folders need --sensor) and its advice were two
    lines; one now, like every other raw build's."""
    import numpy as np
    import tifffile

    for cls in ("Forest", "River"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "src" / cls / "a.tif", np.ones((8, 8, 3), np.uint16),
                         photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError) as e:
        open_labelled(tmp_path / "src", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "the multiband layout needs --sensor" in msg
    assert (f"e.g. `eofm-shard build {tmp_path / 'src'} --layout eurosat --sensor SENSOR "
            "--file-bands B1,B2,... --out DATASET` (class = folder name), then pass --data "
            "DATASET") in msg
