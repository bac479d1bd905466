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


def test_every_subcommand_has_a_description() -> None:
    """`eofm-shard stats --help` / `merge --help` printed no description."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    for name, sub in action.choices.items():
        assert sub.description, f"eofm-shard {name} has no description"


def test_malformed_bands_is_a_parser_error(tmp_path: Path, capsys) -> None:
    """`--bands B04,B03` (no MODALITY=) exited 1 through a bare SystemExit without the
    `eofm-shard build: error:` prefix; now argparse's error, exit 2, before any input is read.
    A modality given twice is refused instead of the second silently replacing the first."""
    for bad in ("B04,B03", "s2=", "=B04"):
        with pytest.raises(SystemExit) as e:
            main(["build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                  "--bands", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "usage: eofm-shard build" in err
        assert ("eofm-shard build: error: argument --bands: expected MODALITY=B1,B2,... "
                "(e.g. s2=B04,B03,B02") in err and repr(bad) in err
    assert main(["build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--bands", "s2=B04", "--bands", "s2=B03"]) == 2
    assert "eofm-shard build: error: --bands: modality 's2' given twice" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "bad"), [("--shard-size", "10X"),
                                         ("--max-raster-bytes", "16Q"),
                                         ("--shard-size", "1.5"), ("--shard-size", "infG")])
def test_malformed_size_names_what_was_expected(tmp_path: Path, capsys, flag: str,
                                                bad: str) -> None:
    """`--shard-size 10X` said "invalid _size value: '10X'" (the parser function's internal
    name) and `infG` ended in an OverflowError traceback; now what a size looks like."""
    with pytest.raises(SystemExit) as e:
        main(["build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), flag, bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "_size" not in err and "Traceback" not in err
    assert (f"eofm-shard build: error: argument {flag}: expected a size like 256M or 16G (K, "
            f"M, G: powers of 1024) or a whole number of bytes, got {bad!r}") in err
    a = build_parser().parse_args(["build", "x", "--out", "o", "--shard-size", "1.5mb",
                                   "--max-raster-bytes", "4096"])
    assert (a.shard_size, a.max_raster_bytes) == (int(1.5 * 2**20), 4096)


USER_SENSOR = """\
sensors:
  - id: f2_test_cam
    name: Test camera
    modality: cam
    dtype: uint16
    band_defaults: {gsd_m: 5, units: DN, nodata: 0, bandwidth_nm: 50}
    bands:
      - {name: C1, center_wavelength_nm: 500, aliases: [blue]}
      - {name: C2, center_wavelength_nm: 600}
      - {name: C3, center_wavelength_nm: 700}
"""


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_user_sensor_dataset_reads_without_its_yaml(tmp_path: Path, monkeypatch, capsys,
                                                    fmt: str) -> None:
    """A dataset built with --sensors-yaml records the definition in its manifest: `stats`
    and the readers (band aliases included) work in a process that never saw the YAML."""
    import numpy as np

    from eofm.data_shards import sensors
    from eofm.data_shards.reader import ShardDataset
    from eofm.data_shards.zarr_store import ZarrDataset

    monkeypatch.setattr(sensors, "_REGISTRY", dict(sensors._REGISTRY))  # restored after
    (tmp_path / "cam.yaml").write_text(USER_SENSOR)
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.arange(1, 3 * 8 * 8 + 1, dtype=np.uint16).reshape(3, 8, 8))
    out = tmp_path / ("ds.zarr" if fmt == "zarr" else "ds")
    assert main(["build", str(src), "--out", str(out), "--sensor", "f2_test_cam",
                 "--sensors-yaml", str(tmp_path / "cam.yaml"), "--file-bands", "C1,C2,C3",
                 "--quiet"]) == 0
    monkeypatch.delitem(sensors._REGISTRY, "f2_test_cam")  # a fresh process: never loaded
    capsys.readouterr()
    if fmt == "wds":
        assert main(["stats", str(out)]) == 0
        assert json.loads(capsys.readouterr().out)["cam"]["C3"]["max"] == 192
        ds = ShardDataset(out, bands={"cam": ["c3", "blue"]})
        got = next(iter(ds))["cam"]
    else:
        got = ZarrDataset(out, bands={"cam": ["c3", "blue"]})[0]["cam"]
    assert sensors.get_sensor("f2_test_cam").band_names == ["C1", "C2", "C3"]
    np.testing.assert_array_equal(got[:, 0, 0], [129, 1])


def test_build_order_flags_reach_the_build_config(tmp_path: Path) -> None:
    from eofm.data_shards.cli import _build_config

    p = build_parser()
    base = ["build", str(tmp_path), "--out", str(tmp_path / "o")]
    assert _build_config(p.parse_args(base)).order_seed == 0
    assert _build_config(p.parse_args([*base, "--order-seed", "7"])).order_seed == 7
    assert _build_config(p.parse_args([*base, "--keep-order"])).order_seed is None
