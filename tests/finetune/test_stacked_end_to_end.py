"""Sentinel-1 + Sentinel-2 stacked into one input: pretrain, export, probe, as any modality."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.finetune.export import export_run
from eofm.finetune.probe_cli import main as probe
from eofm.models import from_pretrained
from eofm.pretrain.cli import main as pretrain

ROOT = Path(__file__).resolve().parents[2]


def test_radar_and_optical_pretrain_as_one_input(sample_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "s2s1"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(data), stack="s2,s1",
                      ingest=IngestOptions(tile=40), progress=False))
    cfg = tmp_path / "stacked.yaml"
    cfg.write_text(f"""
_base_: {ROOT / 'launch' / 'configs' / 'quickstart.yaml'}
data: {{path: {data}, build_from: null, bands: {{_replace_: true}}, batch_size: 8,
        num_workers: 0}}
model: {{name: vit_test_patch8, img_size: 40, tokenizer: spectral}}
objective: {{decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}}
schedule: {{steps: 2}}
runtime: {{out_dir: {tmp_path / 'run'}}}
logging: {{progress: false, preview_every: 2}}
""")
    assert pretrain(["--config", str(cfg)]) == 0
    assert (tmp_path / "run" / "previews" / "step_000000002.png").is_file()
    enc = from_pretrained(export_run(tmp_path / "run", tmp_path / "export"))
    c = enc.contract
    assert c.sensors == ("s2_l2a+s1_grd",) and c.bands[-2:] == ("VV", "VH")
    assert len(c.bands) == 14 and c.wavelengths[-1] > 1e7  # the SAR stand-in code
    assert c.nodata is not None and len(c.nodata) == 14  # one value per band (S2's and S1's)
    # a checkpoint from before per-band nodata (none recorded where the bands' values differ)
    # exports with the dataset's per-band values, which its pretraining zeroed
    [ckpt] = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    state = torch.load(ckpt, weights_only=True)
    state["contract"]["nodata"] = None
    torch.save(state, ckpt)
    old = from_pretrained(export_run(tmp_path / "run", tmp_path / "export_old"))
    assert old.contract.nodata == c.nodata
    assert probe(["--encoder", str(tmp_path / "export"), "--data", str(data), "--out",
                  str(tmp_path / "report"), "--folds", "3", "--quiet"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["samples"] == 54 and report["preprocess"]["bands"] == list(c.bands)
