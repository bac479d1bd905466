"""eofm-probe's random-init baseline of a BatchNorm network (a ResNet-50 export): its running
statistics are re-estimated on the probe's training images, not left at mean 0 / variance 1,
which made most of "pretrained beats random init" BatchNorm buffers; a ViT is unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.manifest import LabelInfo, Manifest, ModalityInfo
from eofm.finetune.datasets import LabelledData
from eofm.finetune.features import apply_contract, batchnorm_layers, calibration_batches
from eofm.finetune.probe_cli import main, random_init
from eofm.models import InputContract, create_model, save_pretrained

BANDS = ["B02", "B03", "B04", "B08"]
TILE = 32

pytestmark = pytest.mark.usefixtures("one_thread")


def _contract(stats: dict, patch_size: int = 32) -> InputContract:
    """A full contract over BANDS at TILE px (a ResNet's output stride is its patch size)."""
    return InputContract(sensors=("s2_l2a",), bands=tuple(BANDS), gsd=10.0, nodata=0.0,
                         normalisation="meanstd", stats=stats, input_size=(TILE, TILE),
                         patch_size=patch_size)


def _data(n: int = 12) -> LabelledData:
    """``n`` in-memory 4-band tiles (two classes, class 1 brighter) with their statistics."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    x = rng.integers(200, 3000, (n, len(BANDS), TILE, TILE)).astype(np.uint16)
    x[y == 1] += 1500
    stats = {b: {"mean": float(x[:, i].mean()), "std": float(x[:, i].std())}
             for i, b in enumerate(BANDS)}
    info = ModalityInfo("s2_l2a", BANDS, "uint16", [len(BANDS), TILE, TILE], [0.0] * 4, 10.0,
                        stats)
    m = Manifest(modalities={"s2": info}, labels=LabelInfo("class", ["c0", "c1"]))
    return LabelledData(source="memory", modality="s2", manifest=m, labels=y,
                        keys=[f"k{i:02d}" for i in range(n)], pixels=lambda i: x[i])


def _resnet(data: LabelledData) -> torch.nn.Module:
    """A ResNet-50 over BANDS at TILE px whose contract holds the data's statistics."""
    torch.manual_seed(0)
    return create_model("resnet50", bands=BANDS, img_size=TILE,
                        contract=_contract({b: dict(data.stats[b]) for b in BANDS}))


def test_calibration_batches_never_end_with_one_image() -> None:
    assert calibration_batches(12, 5) == [range(0, 5), range(5, 10), range(10, 12)]
    assert calibration_batches(11, 5) == [range(0, 5), range(5, 11)]
    assert calibration_batches(3, 64) == [range(0, 3)]


@pytest.mark.parametrize("batch_size", [64, 5])
def test_resnet_random_init_batchnorm_statistics_are_those_of_the_training_images(
        batch_size: int) -> None:
    """The first BatchNorm layer's running mean and variance are the cumulative average of
    its batch statistics over one pass through the (preprocessed) training images."""
    data = _data()
    encoder = _resnet(data)
    pre = apply_contract(data, encoder.contract)
    fresh = random_init(encoder, 3)
    assert torch.equal(fresh.bn1.running_mean, torch.zeros(64))  # what the probe fed before
    model = random_init(encoder, 3, data, pre, batch_size=batch_size)
    # the same weights as without data (the same seed): only the BatchNorm buffers differ
    for (name, a), b in zip(fresh.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        conv = fresh.conv1(pre(np.stack([data.pixels(i) for i in range(len(data))])))
    batches = calibration_batches(len(data), batch_size)
    means = [conv[list(r)].mean(dim=(0, 2, 3)) for r in batches]
    variances = [conv[list(r)].permute(1, 0, 2, 3).flatten(1).var(dim=1) for r in batches]
    bn = model.bn1
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-4,
                               atol=1e-5)
    assert int(bn.num_batches_tracked) == len(batches)
    layers = batchnorm_layers(model)
    assert len(layers) == 53 and all(not m.training and m.momentum == 0.1 for m in layers)
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in layers)


def test_vit_random_init_is_unchanged_by_the_training_images() -> None:
    data = _data()
    torch.manual_seed(0)
    vit = create_model("vit_test_patch8", bands=BANDS, img_size=TILE,
                       contract=_contract({b: dict(data.stats[b]) for b in BANDS}, 8))
    pre = apply_contract(data, vit.contract)
    a, b = random_init(vit, 1), random_init(vit, 1, data, pre)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cli_resnet_export_reports_the_batchnorm_reestimation(tmp_path: Path, capsys,
                                                              eurosat_folder) -> None:
    """eofm-probe on a ResNet export: report.json's random_init_batchnorm and a report.md note
    say the baseline's BatchNorm statistics were re-estimated on --data; a ViT report has
    neither."""
    from eofm.finetune.datasets import open_labelled

    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=6, size=TILE)
    data = open_labelled(src, progress=False)
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in BANDS}
    contract = InputContract(sensors=("s2_l1c",), bands=tuple(BANDS), gsd=10.0, nodata=0.0,
                             units=data.units, processing_level="L1C", normalisation="meanstd",
                             stats=stats, input_size=(TILE, TILE), patch_size=32)
    torch.manual_seed(0)
    enc = save_pretrained(create_model("resnet50", bands=BANDS, img_size=TILE,
                                       contract=contract), tmp_path / "r50")
    out = tmp_path / "report"
    assert main(["--encoder", str(enc), "--data", str(src), "--out", str(out), "--folds", "2",
                 "--quiet", "--device", "cpu"]) == 0
    assert "note: random_init: the running statistics of its 53 BatchNorm layers" in \
        capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    bn = report["random_init_batchnorm"]
    assert bn["recalibrated"] is True and bn["layers"] == 53 and bn["images"] == 12
    assert bn["data"] == str(src)
    md = (out / "report.md").read_text()
    assert "## Notes" in md and "re-estimated on the 12 images of --data" in md
    torch.manual_seed(0)
    vit = save_pretrained(create_model("vit_test_patch8", bands=BANDS, img_size=TILE,
                                       contract=replace(contract, patch_size=8)),
                          tmp_path / "vit")
    assert main(["--encoder", str(vit), "--data", str(src), "--out", str(tmp_path / "v"),
                 "--folds", "2", "--quiet", "--device", "cpu"]) == 0
    vit_report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert "random_init_batchnorm" not in vit_report
    assert "## Notes" not in (tmp_path / "v" / "report.md").read_text()
