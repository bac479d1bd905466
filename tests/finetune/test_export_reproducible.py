"""Exports are reproducible: the same checkpoint exported again gives byte-identical
``model.safetensors``, ``config.json`` and model card (same checksum, so a re-upload to the
Hub changes nothing), and the weights file still loads with its metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from eofm.finetune.export import export_run
from eofm.models import InputContract, create_model, save_pretrained
from eofm.models.hub import EXPORT_FILES, WEIGHTS_NAME
from eofm.pretrain.config import load_config
from eofm.pretrain.trainer import Trainer


def _digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in EXPORT_FILES}


def test_saving_the_same_encoder_again_gives_the_same_bytes(tmp_path: Path) -> None:
    """safetensors writes its metadata map in a random order, even within one process: a
    dozen saves would almost surely (1 - 2**-11) show two orders if nothing sorted it."""
    bands = ["B02", "B03", "B04"]
    contract = InputContract(sensors=("s2_l2a",), bands=tuple(bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd",
                             stats={b: {"mean": 0.0, "std": 1.0} for b in bands},
                             input_size=(16, 16), patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=bands, img_size=16, contract=contract)
    first = _digests(save_pretrained(enc, tmp_path / "e0"))
    for i in range(1, 12):
        assert _digests(save_pretrained(enc, tmp_path / f"e{i}")) == first, i
    with safe_open(str(tmp_path / "e0" / WEIGHTS_NAME), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "architecture": "eofm_vit_test_patch8"}
        for k, v in enc.state_dict().items():
            assert torch.equal(f.get_tensor(k), v), k


@pytest.mark.parametrize("with_decoder", [False, True])
def test_exporting_a_checkpoint_twice_gives_the_same_folder(scene_tiles_32: Path, tmp_path: Path,
                                                            with_decoder: bool) -> None:
    """eofm-export of one run, four times: every file byte for byte (the card carries no
    date or time, config.json no absolute path that could differ)."""
    run = tmp_path / "run"
    cfg = load_config(None, [f"data.path={scene_tiles_32}", "data.bands={s2: [B02, B03, B04]}",
                             "data.num_workers=0", "data.batch_size=16", "data.shuffle_buffer=20",
                             "model.name=vit_test_patch8", "model.img_size=32",
                             "objective.decoder_dim=32", "objective.decoder_depth=1",
                             "objective.decoder_heads=2", "schedule.steps=1",
                             "schedule.warmup_steps=0", f"runtime.out_dir={run}",
                             "logging.progress=false"])
    assert Trainer(cfg).fit() == 0
    first = _digests(export_run(run, tmp_path / "x0", with_decoder=with_decoder))
    for i in range(1, 4):
        got = export_run(run, tmp_path / f"x{i}", with_decoder=with_decoder)
        assert _digests(got) == first, i
