"""No URL credentials in anything eofm writes beyond config.yaml/config.json/the card (covered
by test_security_audit.py): checkpoints, the pretraining run folder, eofm-export, eofm-probe
reports and curves, eofm-finetune results, and the probe's error messages.

Pretraining reads its data through a real credentialed URL (``file://alice:SECRET@/path``:
the reader opens the path, as webdataset does, and ignores the user part). eofm-probe and
eofm-finetune read local data only, so there the data path is a local folder whose path reads
as a credentialed URL (``.../https://alice:SECRET@data.example.org/eurosat``): anything that
records the path as given, or through ``Path`` (``https:/alice:SECRET@...``), must redact it.
Every file under each output folder is searched byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from eofm.data_shards.remote import holds_location, redact, without_credentials

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3tT0ken"
HOST = "data.example.org"

pytestmark = pytest.mark.usefixtures("one_thread")


def _leaks(folder: Path) -> list[str]:
    """Files under ``folder`` whose bytes hold the secret."""
    assert folder.is_dir() and any(folder.rglob("*")), f"{folder}: nothing written"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and SECRET.encode() in p.read_bytes())


def _url_like(tmp: Path, target: Path) -> str:
    """A local path that reads as ``https://alice:SECRET@HOST/<name>``, linked to ``target``."""
    folder = tmp / "https:" / f"alice:{SECRET}@{HOST}" / target.name
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(target, target_is_directory=True)
    return f"{tmp}/https://alice:{SECRET}@{HOST}/{target.name}"


# ------------------------------------------------------------------ the redaction itself
@pytest.mark.parametrize("text", [
    f"https://alice:{SECRET}@{HOST}/ds",
    f"https:/alice:{SECRET}@{HOST}/ds",  # str(Path(url)) folds the double slash
    f"/tmp/x/https:/alice:{SECRET}@{HOST}/ds",
    f"fixed test set s3://{SECRET}@bucket/ds",
    f"pipe:env AWS_SECRET_ACCESS_KEY={SECRET} aws s3 cp s3://b/ds/x -",
])
def test_without_credentials_reaches_every_string_that_holds_one(text: str) -> None:
    assert holds_location(text)
    out = without_credentials({"a": [text, (text, 3)], "n": 1.5, "plain": "B02=key"})
    assert SECRET not in json.dumps(out)
    assert out["n"] == 1.5 and out["plain"] == "B02=key"  # non-locations untouched
    assert isinstance(out["a"][1], tuple)
    assert redact(f"https:/alice:{SECRET}@{HOST}/ds") == f"https:/***@{HOST}/ds"


# ------------------------------------------------------------------ eofm-probe, eofm-finetune
@pytest.fixture(scope="module")
def labelled(tmp_path_factory, eurosat_folder) -> tuple[Path, Path]:
    """(synthetic EuroSAT folder, a tiny export whose contract it satisfies)."""
    from eofm.finetune.datasets import open_labelled
    from eofm.models import InputContract, create_model, save_pretrained

    root = tmp_path_factory.mktemp("hygiene")
    src = eurosat_folder(root / "eurosat", classes=3, per_class=6)
    data = open_labelled(src, progress=False)
    bands = [b for b in data.bands if b != "B10"]
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in bands}
    contract = InputContract(sensors=("s2_l1c",), bands=tuple(bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(16, 16),
                             patch_size=8, processing_level="L1C")
    import torch

    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=bands, img_size=16, contract=contract)
    return src, save_pretrained(enc, root / "enc")


def test_probe_report_holds_no_credentials(labelled, tmp_path: Path, capsys) -> None:
    from eofm.finetune.probe_cli import main

    src, enc = labelled
    data = _url_like(tmp_path, src)
    copy = tmp_path / "copy" / f"{src.name}_test"  # a test set of other images than --data's
    for tif in sorted(src.rglob("*.tif")):  # other names, other pixels (a copy is refused)
        other = copy / tif.parent.name / f"test_{tif.name}"
        other.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(other, np.flip(tifffile.imread(tif), 0), photometric="minisblack",
                         planarconfig="contig")
    test = _url_like(tmp_path, copy)
    out = tmp_path / "report"
    assert main(["--encoder", str(enc), "--data", data, "--test-data", test, "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    assert _leaks(out) == []
    assert SECRET not in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["source"].endswith(f"***@{HOST}/eurosat")  # still says which data
    assert f"***@{HOST}/eurosat" in report["split"]


def test_probe_refusal_of_the_data_as_its_own_test_set_holds_no_credentials(
        labelled, tmp_path: Path, capsys) -> None:
    from eofm.finetune.probe_cli import main

    src, enc = labelled
    data = _url_like(tmp_path, src)
    assert main(["--encoder", str(enc), "--data", data, "--test-data", data,
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "expected a held-out test set of other images" in err
    assert f"***@{HOST}" in err and SECRET not in err


def test_probe_error_for_missing_data_holds_no_credentials(labelled, tmp_path: Path,
                                                          capsys) -> None:
    from eofm.finetune.probe_cli import main

    _, enc = labelled
    assert main(["--encoder", str(enc), "--data", f"https://alice:{SECRET}@{HOST}/none",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "labelled data not found" in err and HOST in err and SECRET not in err


def test_finetune_outputs_hold_no_credentials(labelled, tmp_path: Path, capsys) -> None:
    from eofm.finetune.finetune import main

    src, enc = labelled
    out = tmp_path / "run"
    rc = main(["--encoder", str(enc), "--data", _url_like(tmp_path, src), "--task",
               "classification", "--out", str(out), "schedule.steps=2", "data.batch_size=6",
               "runtime.ckpt_every=1", "logging.progress=false", "logging.log_every=1"])
    assert rc == 0, capsys.readouterr().err
    assert list((out / "checkpoints").iterdir()) and (out / "results.json").is_file()
    assert _leaks(out) == []
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["path"].endswith(f"https://***@{HOST}/eurosat")


def test_print_config_holds_no_credentials(labelled, tiny_run_config, tmp_path: Path,
                                           capsys) -> None:
    """--print-config goes to job logs and bug reports: a credentialed data URL reads ``***``
    there as in config.yaml, for eofm-pretrain and eofm-finetune alike."""
    from eofm.finetune.finetune import main as finetune_main
    from eofm.pretrain.cli import main as pretrain_main

    src, enc = labelled
    data = _url_like(tmp_path, src)
    assert finetune_main(["--encoder", str(enc), "--data", data, "--task", "classification",
                          "--out", str(tmp_path / "ft"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert f"path: {tmp_path}/https://***@{HOST}/eurosat" in out and SECRET not in out
    config = tiny_run_config(name="hygiene_print")
    assert pretrain_main(["--config", str(config), "--print-config",
                          f"data.build_from=https://alice:{SECRET}@{HOST}/raw"]) == 0
    out = capsys.readouterr().out
    assert f"build_from: https://***@{HOST}/raw" in out and SECRET not in out


# ------------------------------------------------------------------ pretraining, export, curve
def _pretrain(config: Path, out: Path, data: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "eofm.pretrain", "--config", str(config),
           f"runtime.out_dir={out}", f"data.path={data}", *extra]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)


def test_pretraining_export_and_probe_curve_hold_no_credentials(
        tiny_run_config: Callable[..., Path], scene_tiles_32: Path, labelled,
        tmp_path: Path) -> None:
    """Checkpoints keep config and contract without credentials; resume does not need them
    (it rebuilds from the command's config), and eofm-export / eofm-probe --run fall back to
    the checkpoint's stored contract when the redacted data.path cannot be read."""
    from eofm.finetune.export import export_run
    from eofm.finetune.probe_cli import main as probe_main

    config = tiny_run_config({"schedule": {"steps": 4}, "runtime": {"ckpt_every": 2}},
                             name="hygiene")
    data = f"file://alice:{SECRET}@{scene_tiles_32}"  # the reader opens the path
    run = tmp_path / "run"
    done = _pretrain(config, run, data)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((run / "checkpoints").glob("step_*.pt"))) == 2
    assert _leaks(run) == []
    # a resume with the credentialed URL continues where the checkpoint stopped
    again = _pretrain(config, run, data, "schedule.steps=6")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step 4" in again.stderr and SECRET not in again.stderr
    assert _leaks(run) == []
    export = export_run(run, tmp_path / "export")
    assert _leaks(export) == []
    src, _ = labelled
    curve = tmp_path / "curve"
    assert probe_main(["--run", str(run), "--data", str(src), "--out", str(curve), "--folds",
                       "2", "--quiet", "--device", "cpu", "--override-contract"]) == 0
    assert (curve / "curve.jsonl").is_file() and _leaks(curve) == []
