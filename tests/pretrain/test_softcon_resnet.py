"""SoftCon with a ResNet-50 backbone: drop ratio refused, a few optimiser steps with a finite
loss and BatchNorm statistics following into the target (which normalises with the batch's
statistics in training), continual pretraining from a
torchvision state dict, opt-in SyncBatchNorm (conversion, CPU refusal, plain exports), and
eofm-pretrain -> eofm-export -> from_pretrained -> eofm-probe."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet50 as tv_resnet50

from eofm.models import ResNetEncoder, create_model
from eofm.pretrain.config import load_config
from eofm.pretrain.objectives import softcon
from eofm.pretrain.objectives.softcon import SoftCon
from eofm.pretrain.optim import build_optimizer

BANDS = ["B02", "B03", "B04", "B08"]
SMALL = {"proj_hidden_dim": 32, "proj_dim": 16, "pred_hidden_dim": 32, "drop_ratio": 0.0}


def _objective(**params) -> SoftCon:
    torch.manual_seed(0)
    enc = create_model("resnet50", bands=BANDS, img_size=32)
    return SoftCon(enc, BANDS, **{**SMALL, **params})


def test_token_dropping_is_refused_naming_the_param() -> None:
    with pytest.raises(ValueError, match=r"objective\.params\.drop_ratio.*cannot drop tokens"):
        _objective(drop_ratio=0.5)
    obj = _objective()
    with pytest.raises(ValueError, match="ids_keep"):
        obj(torch.randn(4, 4, 32, 32), ids_keep=torch.zeros(4, 1, dtype=torch.long))


def test_a_few_steps_train_and_the_target_follows() -> None:
    obj = _objective(momentum=0.9)
    opt = build_optimizer(obj, load_config(None, ["data.path=x"]).optim, 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 40, 40, generator=g)  # views are resampled to img_size=32
    labels = (torch.rand(4, 5, generator=g) > 0.5).float()
    before = obj.encoder.conv1.weight.detach().clone()
    for step in range(3):
        out = obj(x, generator=g, labels=labels)
        assert math.isfinite(float(out["loss"].detach()))
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is None for p in obj.target_encoder.parameters())
        opt.step()
        obj.on_step_end(step, 3)
    assert not torch.equal(obj.encoder.conv1.weight, before)
    assert not torch.equal(obj.target_encoder.conv1.weight, obj.encoder.conv1.weight)
    for (n, tb), ob in zip(obj.target_encoder.named_buffers(), obj.encoder.buffers(), strict=True):
        assert torch.equal(tb, ob), n  # BatchNorm statistics copied from the online encoder
    assert obj.encoder.bn1.num_batches_tracked.item() == 3
    flops = obj.train_flops_per_sample()
    assert flops > 4 * obj.encoder.forward_flops() > 0


def test_the_target_normalises_with_the_batchs_statistics_in_training() -> None:
    """BYOL/MoCo v3: the momentum encoder's BatchNorm uses batch statistics, so its running
    statistics (at the start of continual pretraining the source model's, made for other
    bands) do not shape the targets; in eval mode they do."""
    obj = _objective()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 32, 32, generator=g)
    views = (x, x.flip(-1))
    labels = (torch.rand(4, 5, generator=g) > 0.5).float()

    def loss() -> float:
        with torch.no_grad():
            return float(obj(x, labels=labels, views=views)["loss"])

    def scramble_target_stats() -> None:
        for m in obj.target_encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(40.0)

    state = {k: v.clone() for k, v in obj.state_dict().items()}
    clean = loss()
    obj.load_state_dict(state)
    scramble_target_stats()
    assert loss() == pytest.approx(clean, rel=1e-5)
    obj.eval()  # eval mode: the running statistics are what normalises
    obj.load_state_dict(state)
    clean_eval = loss()
    scramble_target_stats()
    assert abs(loss() - clean_eval) > 1e-3


def test_continual_pretraining_from_torchvision_weights(tmp_path: Path) -> None:
    torch.manual_seed(2)
    tv = tv_resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    obj = _objective(weights=str(path), weights_init="random")
    assert obj.load_report["unexpected"] == ["fc.bias", "fc.weight"]
    assert obj.load_report["missing"] == []
    w = obj.encoder.conv1.weight
    for c, band in enumerate(("B04", "B03", "B02")):
        assert torch.equal(w[:, BANDS.index(band)], tv.conv1.weight[:, c])
    assert torch.equal(obj.encoder.layer4[2].conv3.weight, tv.layer4[2].conv3.weight)
    assert torch.equal(obj.target_encoder.conv1.weight, w)  # the target starts from the load


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_sync_batchnorm_is_opt_in_and_a_no_op_in_one_process() -> None:
    for params in ({}, {"sync_batchnorm": True, "head_norm": "bn"}):
        obj = _objective(**params)
        assert obj.sync_bn_layers == 0
        assert _batchnorms(obj) and not any(isinstance(m, torch.nn.SyncBatchNorm)
                                            for m in obj.modules())


def _two_gpus(monkeypatch) -> None:
    """What SoftCon sees as rank 0 of a 2-GPU DDP job (no process group is created)."""
    monkeypatch.setattr(softcon.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(softcon.dist, "device_for", lambda env: torch.device("cuda", 0))


def test_sync_batchnorm_converts_every_batchnorm_and_exports_plain_weights(
        tmp_path: Path, monkeypatch) -> None:
    from eofm.models import from_pretrained, save_pretrained

    plain = _objective(head_norm="bn")
    n_bn = len(_batchnorms(plain))
    _two_gpus(monkeypatch)
    obj = _objective(head_norm="bn", sync_batchnorm=True)
    assert obj.sync_bn_layers == n_bn == 2 * (53 + 1) + 1  # 2 ResNets, 2 projectors, predictor
    assert all(type(m) is torch.nn.SyncBatchNorm for m in _batchnorms(obj))
    assert obj.state_dict().keys() == plain.state_dict().keys()  # checkpoints are unchanged
    for (n, a), b in zip(plain.state_dict().items(), obj.state_dict().values(), strict=True):
        assert torch.equal(a, b), n  # the same initial weights (same seed), nothing re-drawn
    opt = build_optimizer(obj, load_config(None, ["data.path=x"]).optim, 1e-3)
    g = torch.Generator().manual_seed(0)
    out = obj(torch.randn(4, 4, 32, 32, generator=g), generator=g)  # no group: plain BN maths
    out["loss"].backward()
    opt.step()
    obj.on_step_end(0, 3)  # the EMA pairs parameters and buffers as before
    assert obj.encoder.bn1.num_batches_tracked.item() == 1
    assert torch.equal(obj.target_encoder.bn1.running_mean, obj.encoder.bn1.running_mean)

    fresh = create_model("resnet50", bands=BANDS, img_size=32)  # eofm-export's encoder. keys
    online = {k[len("encoder."):]: v for k, v in obj.state_dict().items()
              if k.startswith("encoder.")}
    assert online.keys() == fresh.state_dict().keys()
    fresh.load_state_dict(online, strict=True)
    loaded = from_pretrained(save_pretrained(obj.encoder, tmp_path / "export"))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in loaded.modules())
    assert all(type(m) is torch.nn.BatchNorm2d for m in _batchnorms(loaded))
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        ref = obj.encoder.eval()(x)
        assert torch.equal(loaded(x), ref) and torch.equal(fresh.eval()(x), ref)


def test_sync_batchnorm_is_refused_on_cpu_with_several_processes(monkeypatch) -> None:
    monkeypatch.setattr(softcon.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(softcon.dist, "device_for", lambda env: torch.device("cpu"))
    with pytest.raises(ValueError, match=r"objective\.params\.sync_batchnorm: .* on cpu with 2 "
                                         r"processes; set it to false"):
        _objective(sync_batchnorm=True)
    assert _objective(sync_batchnorm=False).sync_bn_layers == 0  # the default is accepted


def _gloo_worker(rank: int, port: int) -> None:
    from eofm.pretrain import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    D.init_distributed(backend="gloo")
    torch.set_num_threads(1)
    try:
        bn = torch.nn.SyncBatchNorm(3).train()  # why the setting is refused on CPU:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            bn(torch.randn(4, 3, 2, 2))
        with pytest.raises(ValueError, match=r"objective\.params\.sync_batchnorm"):
            _objective(sync_batchnorm=True)
        assert _objective().sync_bn_layers == 0
    finally:
        D.teardown()


def test_sync_batchnorm_refusal_under_two_gloo_ranks(spawn_two_ranks) -> None:
    spawn_two_ranks(_gloo_worker)


def _write_eurosat(root: Path, size: int = 32, per_class: int = 6) -> Path:
    """A 13-band EuroSAT-layout folder with two classes differing in B03."""
    import tifffile

    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"Class{c}").mkdir(parents=True)
        for i in range(per_class):
            t = rng.integers(500, 3000, (size, size, 13)).astype(np.uint16)
            t[..., 2] += 3000 * c
            tifffile.imwrite(root / f"Class{c}" / f"Class{c}_{i}.tif", t,
                             photometric="minisblack", planarconfig="contig")
    return root


@pytest.mark.slow
def test_trainer_export_and_probe(sample_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from eofm.finetune.export import export_run
    from eofm.finetune.probe_cli import main as probe
    from eofm.models import from_pretrained
    from eofm.pretrain.cli import main

    cfg = tmp_path / "softcon_r50.yaml"
    cfg.write_text(f"""
data:
  path: {tmp_path / "ben"}
  build_from: {sample_data / "bigearthnet"}
  build_args: [--tile, "40", --stride, "40"]
  modalities: [s2]
  crop_size: 32
  shuffle_buffer: 10
  num_workers: 0
  batch_size: 4
model: {{name: resnet50, img_size: 32}}
objective:
  name: softcon
  params: {{proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32, drop_ratio: 0.0}}
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 2, warmup_steps: 1}}
runtime: {{out_dir: {tmp_path / "run"}, ckpt_every: 0}}
logging: {{log_every: 1, progress: false}}
""")
    assert main(["--config", str(cfg)]) == 0
    recs = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)
    ckpt = torch.load(next((tmp_path / "run" / "checkpoints").glob("step_*.pt")),
                      weights_only=True)
    online = ckpt["model"]["encoder.layer1.0.conv1.weight"]
    out = export_run(tmp_path / "run", tmp_path / "export")
    assert torch.equal(load_file(str(out / "model.safetensors"))["layer1.0.conv1.weight"], online)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "eofm_resnet50" and config["eofm_contract"]["patch_size"] == 32
    card = (out / "README.md").read_text()
    assert "| Token drop ratio | 0 |" in card and "timm.create_model" in card
    enc = from_pretrained(out)
    assert isinstance(enc, ResNetEncoder) and enc.tokenizer.bands == tuple(
        config["eofm_contract"]["bands"])
    report_dir = tmp_path / "report"
    src = _write_eurosat(tmp_path / "eurosat")
    assert probe(["--encoder", str(out), "--data", str(src), "--out", str(report_dir),
                  "--folds", "2", "--pool", "mean", "--quiet"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    acc = report["pretrained"]["linear"]["accuracy"]["mean"]
    assert 0.0 <= acc <= 1.0 and report["data"]["samples"] == 12
