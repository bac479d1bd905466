"""SoftCon continual pretraining resumed: ``objective.params.weights`` is read by a fresh run
only, so a requeued job resumes its checkpoint when the weights file is gone (another node),
and the saved config and the export's card still name the file the run started from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from eofm.pretrain.config import load_config
from eofm.pretrain.resume_changes import NOT_TRAINING, changed_settings
from eofm.pretrain.startup import objective_config


def _timm_vit_weights(path: Path) -> Path:
    """A tiny timm ViT state dict (3 RGB input channels, patch 8, width 64: the shape of
    eofm's ``vit_test_patch8``) written as safetensors."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                            num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def _args(data: Path, out: Path, weights: Path, steps: int) -> list[str]:
    return [f"data.path={data}", "data.bands={s2: [B02, B03, B04, B08]}", "data.crop_size=32",
            "data.shuffle_buffer=0", "data.num_workers=0", "data.batch_size=4",
            "model.name=vit_test_patch8", "model.img_size=32", "objective.name=softcon",
            "objective.params={proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32, "
            f"weights: {weights}}}", "optim.base_lr=1.0e-3", "optim.scale_lr=false",
            f"schedule.steps={steps}", "schedule.warmup_steps=0", "runtime.ckpt_every=0",
            f"runtime.out_dir={out}", "logging.log_every=1", "logging.progress=false"]


def test_resume_without_the_weights_file_continues_and_keeps_its_name(
        scene_tiles_32: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from eofm.finetune.export import export_run
    from eofm.pretrain.cli import main

    weights = _timm_vit_weights(tmp_path / "donor_vit.safetensors")
    out = tmp_path / "run"
    config = tmp_path / "softcon.yaml"
    config.write_text("objective: {name: softcon}\n")
    with caplog.at_level(logging.INFO):
        assert main(["--config", str(config), *_args(scene_tiles_32, out, weights, 2)]) == 0
    assert any(r.getMessage().startswith(f"loaded {weights}") for r in caplog.records)
    caplog.clear()
    ckpts = out / "checkpoints"
    first = torch.load(next(ckpts.glob("step_*.pt")), weights_only=True)
    assert first["step"] == 2
    weights.unlink()  # a requeued job on a node without the file
    with caplog.at_level(logging.INFO):
        assert main(["--config", str(config), *_args(scene_tiles_32, out, weights, 3)]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"objective.params.weights {weights} not read" in m for m in messages)
    assert not any("settings differ" in m for m in messages)
    assert any("resumed from step 2" in m for m in messages)
    assert max(int(p.stem.split("_")[1]) for p in ckpts.glob("step_*.pt")) == 3
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["objective"]["params"]["weights"] == str(weights)  # the original value
    card = (export_run(out, tmp_path / "export") / "README.md").read_text()
    assert "donor_vit.safetensors" in card  # continued_from: the file it started from


def test_objective_config_drops_the_weights_only_when_a_checkpoint_is_resumed(
        tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    args = ["data.path=x", "objective.name=softcon",
            f"objective.params={{weights: {tmp_path / 'w.safetensors'}, tau: 0.1}}",
            f"runtime.out_dir={tmp_path / 'run'}"]
    cfg = load_config(None, args)
    assert objective_config(cfg) is cfg  # no checkpoint yet: a fresh run reads the file
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"step": 1}, ckpts / "step_000000001.pt")
    built = objective_config(cfg)
    assert built.objective.params == {"weights": None, "tau": 0.1}
    assert cfg.objective.params["weights"] == str(tmp_path / "w.safetensors")  # untouched
    fresh = load_config(None, [*args, "runtime.resume=false"])
    assert objective_config(fresh) is fresh  # not resuming: the file is read


def test_another_weights_file_on_resume_is_no_changed_setting() -> None:
    assert "objective.params.weights" in NOT_TRAINING
    saved = {"objective": {"name": "softcon", "params": {"weights": "/a/w.pt", "tau": 0.2}}}
    now = {"objective": {"name": "softcon", "params": {"weights": "/b/w.pt", "tau": 0.1}}}
    assert changed_settings(saved, now) == ["objective.params.tau 0.2 -> 0.1"]


def test_a_checkpoint_from_before_loss_norm_is_no_changed_setting(
        caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint's config written before optim.loss_norm existed lacks it; those runs
    normalised per micro-batch, so resuming with the default is no change (it warned
    'optim.loss_norm null -> "micro_batch"' on every resume). Switching to step, or any other
    key only one side has, still counts as a change."""
    from eofm.pretrain.config import to_dict
    from eofm.pretrain.resume import warn_resume_changes

    now = to_dict(load_config(None, ["data.path=/d"]))
    saved = {**now, "optim": {k: v for k, v in now["optim"].items() if k != "loss_norm"}}
    assert now["optim"]["loss_norm"] == "micro_batch"
    assert changed_settings(saved, now) == []
    with caplog.at_level(logging.WARNING, logger="eofm.pretrain.resume"):
        warn_resume_changes({"config": saved}, now, {}, 6)
    assert "settings differ" not in caplog.text
    step = {**now, "optim": {**now["optim"], "loss_norm": "step"}}
    assert changed_settings(saved, step) == ['optim.loss_norm "micro_batch" -> "step"']
    other = {**now, "optim": {**now["optim"], "new_key": 1}}
    assert changed_settings(now, other) == ["optim.new_key null -> 1"]
