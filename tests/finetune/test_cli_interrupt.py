"""Ctrl-C in eofm-probe, eofm-export and eofm-finetune (outside the steps that take it as a
stop) printed a full traceback; it is one line saying what a rerun does, and status 130, as
eofm-shard does."""

from __future__ import annotations

from pathlib import Path

import pytest


def _interrupt(*_a, **_k) -> int:
    raise KeyboardInterrupt


def test_probe_ctrl_c_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from eofm.finetune import probe_cli

    monkeypatch.setattr(probe_cli, "_main_probe", _interrupt)
    rc = probe_cli.main(["--encoder", "x", "--data", "y", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 130 and err.startswith("eofm-probe: error: interrupted; ") and "Traceback" not in err


def test_export_ctrl_c_names_the_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    from eofm.finetune import export

    monkeypatch.setattr(export, "_export", _interrupt)
    out = tmp_path / "e"
    rc = export.main([str(tmp_path / "run"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 130 and err.startswith("eofm-export: error: interrupted; ")
    assert f"hf upload REPO {out}" in err


def test_finetune_ctrl_c_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from eofm.finetune import finetune

    monkeypatch.setattr(finetune, "run", _interrupt)
    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "finetune_eurosat_cpu.yaml"
    rc = finetune.main(["--config", str(config), "--encoder", "x", "--data", "y",
                        "--out", str(tmp_path / "ft")])
    err = capsys.readouterr().err
    assert rc == 130 and "eofm-finetune: error: interrupted; the same command resumes" in err


def test_without_a_message_ctrl_c_propagates() -> None:
    from eofm.data_shards.command import run_command

    with pytest.raises(KeyboardInterrupt):
        run_command("x", _interrupt, out=".")
