"""The real CLI end to end on the bundled sample (what the quickstart runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eofm.data_shards.cli import build_parser, main


def test_quickstart_commands_on_bundled_sample(sample_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s2scene"
    assert main(["build", str(sample_data / "sentinel2_l1c_scene"), "--out", str(out),
                 "--tile", "96", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "samples   16 in 1 shards" in text and "sensor s2_l1c" in text and "B8A" in text
    assert main(["verify", str(out)]) == 0
    assert main(["inspect", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert manifest["sample_count"] == 16 and manifest["format_version"] == 1
    assert main(["stats", str(out)]) == 0
    # an existing dataset is not replaced silently
    assert main(["build", str(sample_data / "sentinel2_l1c_scene"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "eofm.data_shards", "build", "--help"],
                          capture_output=True, text=True, check=True)
    for opt in ("--layout", "--tile", "--stride", "--max-nodata", "--format", "--workers",
                "--bands", "--sensor", "--resample", "--nan-policy", "--shard-size"):
        assert opt in proc.stdout


@pytest.mark.parametrize("sub", ["build", "inspect", "verify", "stats", "merge"])
def test_every_option_has_help(sub: str) -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    for a in action.choices[sub]._actions:
        if a.dest not in ("help", "source", "dataset"):
            assert a.help, f"{sub} {a.option_strings} has no help text"
