"""eofm-finetune with a ResNet-50 export: its stem + 4 stages are the layers of layer-wise lr
decay and last-n freezing, dense heads read its stage maps, and tiny real runs (64 px, 4 bands,
a few steps) of segmentation and multi-label fine-tuning train, evaluate and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.finetune.datasets import open_labelled
from eofm.finetune.finetune import main
from eofm.finetune.finetune_config import load_config
from eofm.finetune.finetuner import Finetuner
from eofm.finetune.tasks import FinetuneModel, apply_freeze, lrd_param_groups, task_loss
from eofm.models import InputContract, ResNetEncoder, create_model, from_pretrained, save_pretrained
from eofm.pretrain import distributed as dist
from eofm.pretrain.optim import set_lr

BANDS = ["B02", "B03", "B04", "B08"]
TILE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet(stats: dict | None = None, img_size: int = TILE) -> ResNetEncoder:
    """A ResNet-50 over BANDS with a full contract (10 m, 64 px)."""
    torch.manual_seed(0)
    stats = stats or {b: {"mean": 0.0, "std": 1.0} for b in BANDS}
    contract = InputContract(sensors=("s2_l2a",), bands=tuple(BANDS), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(img_size, img_size),
                             patch_size=32)
    return create_model("resnet50", bands=BANDS, img_size=img_size, contract=contract)


@pytest.fixture(scope="module")
def real(sample_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Real BigEarthNet S2 patches (multi-label) and, built from them through `eofm-shard build
    --seg-dir` into 64 px tiles, an NDVI class map (0: < 0.3, 1: 0.3-0.6, 2: > 0.6; the top two
    rows 255 = unlabelled); plus a ResNet-50 export whose contract holds the data's statistics."""
    root = tmp_path_factory.mktemp("resnet_ft")
    build(BuildConfig(str(sample_data / "bigearthnet"), str(root / "ben"), progress=False))
    s2 = open_labelled(root / "ben", modality="s2", progress=False)
    for d in ("src", "seg"):
        (root / d).mkdir()
    for i, key in enumerate(s2.keys):
        x = s2.pixels(i)
        red, nir = (x[s2.bands.index(b)].astype(np.float32) for b in ("B04", "B08"))
        classes = np.digitize((nir - red) / np.maximum(nir + red, 1.0), [0.3, 0.6]).astype(
            np.uint8)
        classes[:2] = 255
        tifffile.imwrite(root / "src" / f"{key}.tif", np.moveaxis(x, 0, -1),
                         photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(root / "seg" / f"{key}.tif", classes)
    opts = LayoutOptions(sensor=s2.sensor, file_bands=s2.bands, seg_dir=root / "seg")
    build(BuildConfig(str(root / "src"), str(root / "seg_64"), layout="multiband",
                      layout_options=opts, ingest=IngestOptions(tile=TILE), progress=False))
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in BANDS}
    encoder = save_pretrained(_resnet(stats), root / "encoder")
    return {"ben": root / "ben", "seg": root / "seg_64", "encoder": encoder}


# ---------------------------------------------------------------- layer decay and freezing
def _model(task: str = "classification") -> FinetuneModel:
    """A ResNet-50 at 32 px with a 4-way head."""
    return FinetuneModel(_resnet(img_size=32), task, 4, encoder_kwargs={"bands": BANDS})


def test_layer_wise_lr_decay_over_stem_and_stages() -> None:
    model = _model()
    groups = lrd_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    expect = {"encoder.conv1.weight": 0.5 ** 5, "encoder.bn1.weight": 0.5 ** 5,
              "encoder.layer1.0.conv1.weight": 0.5 ** 4,
              "encoder.layer2.3.bn2.bias": 0.5 ** 3,
              "encoder.layer3.0.downsample.0.weight": 0.5 ** 2,
              "encoder.layer4.2.conv3.weight": 0.5, "head.fc.weight": 1.0, "head.norm.bias": 1.0}
    for name, s in expect.items():
        assert scale[id(named[name])][0] == pytest.approx(s), name
    assert len(scale) == len(named)  # every parameter in exactly one group
    for name in ("encoder.bn1.weight", "encoder.layer4.2.bn3.bias", "head.fc.bias"):
        assert scale[id(named[name])][1] == 0.0, name  # BatchNorm and biases: no decay
    assert scale[id(named["encoder.layer1.0.conv1.weight"])][1] == 0.05
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 3.2e-2)
    lrs = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({5: 3.2e-2, 4: 1.6e-2, 3: 8e-3, 2: 4e-3, 1: 2e-3, 0: 1e-3})


def _train_steps(model: FinetuneModel, steps: int = 2) -> None:
    """A few AdamW steps of cross-entropy on random 32 px inputs."""
    opt = torch.optim.AdamW(lrd_param_groups(model, 0.05, 0.75), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(2, len(BANDS), 32, 32, generator=gen)
        task_loss("classification", model(x), torch.tensor([0, 3])).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("mode", ["frozen", "last_n"])
def test_freezing_keeps_frozen_stages_and_their_batchnorm_statistics(mode: str) -> None:
    model = _model()
    trainable = apply_freeze(model, mode, last_n=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    head = {k for k in before if k.startswith("head.")}
    assert head <= changed
    if mode == "frozen":
        assert changed == head and trainable == sum(p.numel() for p in model.head.parameters())
        assert not model.encoder.training and model.training
    else:
        assert changed == head | {k for k in before if k.startswith("encoder.layer4.")}
        assert "encoder.layer4.0.bn1.running_mean" in changed  # the trained stage's statistics
        assert not model.encoder.layer3.training and model.encoder.layer4.training
        assert not model.encoder.bn1.training
    with pytest.raises(ValueError,
                       match=r"^encoder\.last_n: expected 1\.\.4 \(the ResNet's stages\)"):
        apply_freeze(model, "last_n", last_n=5)


def test_dense_head_reads_the_four_stage_maps() -> None:
    model = _model("segmentation")
    assert model.indices == [0, 1, 2, 3]
    assert [lat[0].in_channels for lat in model.head.lateral] == [256, 512, 1024, 2048]
    assert model.head.scales == [1.0] * 4  # the stages are already a pyramid (strides 4 .. 32)
    x = torch.randn(2, len(BANDS), 32, 32)
    assert model(x).shape == (2, 4, 32, 32)
    assert model(x, (20, 24)).shape == (2, 4, 20, 24)
    reg = FinetuneModel(_resnet(img_size=32), "regression", 1, encoder_kwargs={"bands": BANDS})
    out = reg(x)
    assert out.shape == (2, 32, 32)
    out.square().mean().backward()
    assert all(p.grad is not None for p in reg.encoder.layer1.parameters())  # finest map used


# ---------------------------------------------------------------- tiny real runs
def test_segmentation_finetune_of_a_resnet_export(real, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    cfg = load_config(None, ["schedule.steps=3", "schedule.warmup_fraction=0",
                             "optim.base_lr=1e-3", "optim.scale_lr=false", "data.batch_size=2",
                             "data.test_fraction=0.34", "task.decoder_channels=16",
                             "task.ignore_value=255", "encoder.drop_path=0",
                             "encoder.freeze=last_n", "encoder.last_n=2", "logging.log_every=1",
                             "logging.progress=false"],
                      flags={"encoder.path": str(real["encoder"]), "data.path": str(real["seg"]),
                             "task.kind": "segmentation", "runtime.out_dir": str(out)})
    ft = Finetuner(cfg)
    try:
        assert isinstance(ft.encoder, ResNetEncoder) and ft.num_outputs == 3
        assert ft.fit() == 0
    finally:
        dist.teardown()
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").open()]
    assert len([v for v in losses if v is not None]) == 3
    assert all(np.isfinite(v) for v in losses if v is not None)
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 and 0 <= results["metrics"]["miou"] <= 1
    assert results["metrics"]["pixels"] > 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "eofm_resnet50" and config["extra_state"] == ["head"]
    tuned, start = from_pretrained(out / "model"), from_pretrained(real["encoder"])
    assert isinstance(tuned, ResNetEncoder)
    assert torch.equal(tuned.layer2[0].conv1.weight, start.layer2[0].conv1.weight)  # frozen
    assert torch.equal(tuned.bn1.running_mean, start.bn1.running_mean)
    assert not torch.equal(tuned.layer4[0].conv1.weight, start.layer4[0].conv1.weight)


def test_multilabel_cli_of_a_resnet_export_and_drop_path_refused(real, tmp_path: Path,
                                                                 capsys) -> None:
    def args(out: Path, *overrides: str) -> list[str]:
        return ["--encoder", str(real["encoder"]), "--data", str(real["ben"]), "--task",
                "multilabel", "--out", str(out), "schedule.steps=2", "data.batch_size=2",
                "data.test_fraction=0.34", "logging.progress=false", *overrides]

    assert main(args(tmp_path / "refused", "encoder.drop_path=0.2")) == 2
    err = capsys.readouterr().err
    assert "encoder.drop_path: a ResNet (eofm_resnet50) has no stochastic depth" in err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "ml"  # the default (null) is the architecture's: none for a ResNet
    assert main(args(out, "encoder.pool=token")) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["test_samples"] == 2 and 0 <= results["metrics"]["micro_map"] <= 1
    assert any("resized (120, 120) -> (64, 64)" in f for f in results["preprocess"]["fixed"])
    assert isinstance(from_pretrained(out / "model"), ResNetEncoder)


# ---------------------------------------------------------------- one sample per rank
def test_single_value_batchnorm_found_before_training() -> None:
    """One 32 px sample leaves a ResNet's last stage 1x1: its training BatchNorm layers would
    see one value per channel (torch refuses that step), found in advance; frozen stages keep
    running statistics, and 2 samples or a 2x2 map are fine."""
    from eofm.finetune.batchnorm_check import single_value_batchnorm

    model = _model()
    apply_freeze(model, "full")
    one = torch.zeros(1, len(BANDS), 32, 32)
    found = single_value_batchnorm(model, one, model._frozen)
    assert found and all(n.startswith("encoder.layer4.") for n in found)
    assert model.training  # the probe pass restores train mode
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(one)  # what the check foresees
    assert single_value_batchnorm(model, torch.zeros(2, len(BANDS), 32, 32), model._frozen) == []
    assert single_value_batchnorm(model, torch.zeros(1, len(BANDS), 64, 64), model._frozen) == []
    apply_freeze(model, "frozen")
    assert single_value_batchnorm(model, one, model._frozen) == []


def test_one_sample_per_rank_on_a_1x1_map_is_refused_up_front(real, tmp_path: Path,
                                                               capsys) -> None:
    """eofm-finetune names the setting (data.batch_size) instead of torch's BatchNorm error
    at the first step, and writes nothing."""
    encoder = save_pretrained(_resnet(img_size=32), tmp_path / "enc32")
    out = tmp_path / "run"
    assert main(["--encoder", str(encoder), "--data", str(real["ben"]), "--task", "multilabel",
                 "--out", str(out), "schedule.steps=2", "data.batch_size=1",
                 "data.test_fraction=0.34", "logging.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size: 1 is one sample per rank" in err and "encoder.layer4." in err
    assert "Expected more than 1 value" not in err
    assert not (out / "checkpoints").exists()
