"""eofm-finetune's held-out split and test sets: the tiles of one image (``eofm-shard build
--tile``, overlapping with ``--stride`` < ``--tile``) stay on one side of the split unless
``data.group_tiles=false``, stratified by class, reproducibly; a separately built
``data.test_path`` with a subset of the classes in another order is aligned by class name,
as eofm-probe aligns ``--test-data``."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.finetune.datasets import align_classes, open_labelled, tile_source
from eofm.finetune.finetune import main
from eofm.finetune.finetune_config import load_config, to_dict
from eofm.finetune.finetuner import Finetuner
from eofm.finetune.held_out import check_test_bands, group_tiles_problem, held_out_split
from eofm.finetune.probe import class_metrics
from eofm.finetune.resume_checks import split_fingerprint
from eofm.finetune.tasks import DenseData, split_indices
from eofm.models import InputContract, create_model, save_pretrained
from eofm.pretrain import distributed as dist

pytestmark = pytest.mark.usefixtures("one_thread")

TILE, STRIDE = 16, 8  # 32 px images -> 3 x 3 overlapping tiles each


def _tiled_keys(images: int, side: int = 3) -> list[str]:
    """Keys as ``eofm-shard build --tile`` writes them: ``img<i>_r<row>_c<col>``."""
    return [f"img{i}_r{r * STRIDE}_c{c * STRIDE}" for i in range(images)
            for r in range(side) for c in range(side)]


def _old_per_sample_split(n: int, fraction: float, seed: int,
                          labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The per-sample split eofm-finetune made before data.group_tiles, written out: per
    class (or over all samples), round(fraction * size) drawn by one seeded generator."""
    rng = np.random.default_rng(seed)
    strata = ([np.flatnonzero(labels == c) for c in np.unique(labels)]
              if labels is not None else [np.arange(n)])
    test = np.sort(np.concatenate([s[rng.permutation(len(s))[:round(fraction * len(s))]]
                                   for s in strata]))
    return np.setdiff1d(np.arange(n), test), test


def test_split_keeps_each_group_on_one_side_stratified_and_reproducible() -> None:
    keys = _tiled_keys(20)
    groups = [tile_source(k) for k in keys]
    image_class = np.arange(20) % 4  # 5 images per class
    labels = np.repeat(image_class, 9)
    train, test = split_indices(len(keys), 0.2, 3, labels, groups)
    g = np.asarray(groups)
    assert not set(g[train]) & set(g[test]) and len(train) + len(test) == len(keys)
    assert len(test) == 4 * 9  # round(0.2 * 5) = 1 image per class, with its 9 tiles
    held = Counter(labels[i] for i in test)
    assert held == {c: 9 for c in range(4)}  # every class holds one image out
    again = split_indices(len(keys), 0.2, 3, labels, groups)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again, strict=True))
    other = split_indices(len(keys), 0.2, 4, labels, groups)[1]
    assert not np.array_equal(test, other)  # the seed draws the images
    # one stratum without labels (segmentation, regression): round(0.2 * 20) = 4 images
    _, test = split_indices(len(keys), 0.2, 0, None, groups)
    assert len(test) == 4 * 9 and len(set(g[test])) == 4
    # rounding to no image at all still holds one out (3 images, 0.1)
    _, test = split_indices(27, 0.1, 0, None, groups[:27])
    assert len(test) == 9 and len(set(g[test])) == 1


@pytest.mark.parametrize("with_labels", [False, True])
def test_untiled_or_ungrouped_data_keeps_the_per_sample_split(with_labels: bool) -> None:
    """Distinct groups (untiled samples) and no groups (data.group_tiles=false) both give the
    per-sample split of earlier versions: their runs resume and reproduce."""
    n, labels = 47, np.arange(47) % 5 if with_labels else None
    want = _old_per_sample_split(n, 0.3, 7, labels)
    for groups in (None, [f"s{i}" for i in np.random.default_rng(0).permutation(n)]):
        got = split_indices(n, 0.3, 7, labels, groups)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_one_tiled_image_is_refused_naming_group_tiles() -> None:
    keys = _tiled_keys(1)
    x = np.zeros((len(keys), 2, 4, 4), np.float32)
    data = DenseData(source="one", sensor="s2_l2a", bands=["B02", "B03"], stats={},
                     nodata=[None, None], gsd=10.0, keys=keys, pixels=x.__getitem__,
                     targets=np.zeros((len(keys), 4, 4), np.uint8).__getitem__)
    cfg = load_config(None, ["data.test_fraction=0.3"], flags={
        "encoder.path": "e", "data.path": "one", "runtime.out_dir": "out",
        "task.kind": "segmentation"})
    with pytest.raises(ValueError, match="all 9 samples are tiles of one image") as e:
        held_out_split(data, "segmentation", cfg.data)
    assert "data.group_tiles=false" in str(e.value) and "data.test_path" in str(e.value)
    cfg.data.group_tiles = False
    train, test = held_out_split(data, "segmentation", cfg.data)
    assert len(test) == round(0.3 * 9) and len(train) == 9 - len(test)


# ---------------------------------------------------------------- through eofm-finetune
@pytest.fixture(scope="module")
def tiled(eurosat_folder,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic EuroSAT (3 classes x 4 images of 32 px) built into 16 px tiles at stride 8
    (9 overlapping tiles an image), a test set of other images in 2 classes listed in another
    order (``Class2``, ``Class0``; tiled alike), one with a class the training data lacks,
    and a test-size encoder export for 16 px tiles."""
    root = tmp_path_factory.mktemp("tiled")
    ingest = IngestOptions(tile=TILE, stride=STRIDE)
    build(BuildConfig(str(eurosat_folder(root / "raw", classes=3, per_class=4, size=32)),
                      str(root / "train"), ingest=ingest, progress=False))
    sub = eurosat_folder(root / "sub_raw", classes=3, per_class=2, size=32, seed=1, tag="other")
    shutil.rmtree(sub / "Class1")
    build(BuildConfig(str(sub), str(root / "sub"), ingest=ingest, classes=["Class2", "Class0"],
                      progress=False))
    build(BuildConfig(str(eurosat_folder(root / "extra_raw", classes=4, per_class=1, size=32)),
                      str(root / "extra"), ingest=ingest, progress=False))
    data = open_labelled(root / "train", progress=False)
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in data.bands}
    contract = InputContract(sensors=(data.sensor,), bands=tuple(data.bands), gsd=10.0,
                             nodata=0.0, normalisation="meanstd", stats=stats,
                             input_size=(TILE, TILE), patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=data.bands, img_size=TILE, contract=contract)
    return {"train": root / "train", "sub": root / "sub", "extra": root / "extra",
            "encoder": save_pretrained(enc, root / "encoder")}


def _args(tiled: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """eofm-finetune's command line: a one-step classification run on the tiled data."""
    return ["--encoder", str(tiled["encoder"]), "--data", str(tiled["train"]), "--task",
            "classification", "--out", str(out), "schedule.steps=1", "data.batch_size=8",
            "data.test_fraction=0.25", "encoder.drop_path=0", "logging.progress=false", *extra]


def _finetuner(tiled: dict[str, Path], out: Path, *extra: str) -> Finetuner:
    """A Finetuner built as :func:`_args`' command line would build it."""
    a = _args(tiled, out, *extra)
    overrides = a[8:]
    return Finetuner(load_config(None, overrides, flags={
        "encoder.path": a[1], "data.path": a[3], "task.kind": a[5], "runtime.out_dir": a[7]}))


def test_finetune_holds_out_whole_images_of_overlapping_tiles(tiled, tmp_path: Path,
                                                             capsys) -> None:
    out = tmp_path / "run"
    try:
        ft = _finetuner(tiled, out)
        groups = np.asarray([tile_source(k) for k in ft.data.keys])
        assert len(groups) == 12 * 9 and len(set(groups)) == 12
        train, test = ft.train_idx, ft.test_idx
        assert not set(groups[train]) & set(groups[test])
        assert len(test) == 3 * 9  # round(0.25 * 4) = 1 image of each class
        assert Counter(ft.data.labels[test].tolist()) == {0: 9, 1: 9, 2: 9}
        # data.group_tiles=false: the per-sample split of earlier versions, leaky on tiles
        flat = _finetuner(tiled, tmp_path / "flat", "data.group_tiles=false")
        want = _old_per_sample_split(len(groups), 0.25, 0, np.asarray(ft.data.labels))
        assert all(np.array_equal(a, b) for a, b in zip((flat.train_idx, flat.test_idx), want,
                                                        strict=True))
        assert set(groups[flat.train_idx]) & set(groups[flat.test_idx])
    finally:
        dist.teardown()
    assert main(_args(tiled, out, "runtime.ckpt_every=1")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_samples"] == 27 and results["test_images"] == 3
    assert results["train_samples"] == 81 and results["train_images"] == 9
    assert "held out 0.25 of its 12 source images with all their tiles" in results["test_source"]
    card = (out / "model" / "README.md").read_text()
    assert "of its 12 source images with all their tiles" in card
    capsys.readouterr()
    # a resume must hold out the same images; data.group_tiles would change them: refused
    assert main(_args(tiled, out, "data.group_tiles=false", "schedule.steps=2")) == 2
    err = capsys.readouterr().err
    assert ("data.group_tiles: the checkpoint's run" in err and "had True, this one False"
            in err and "resume with data.group_tiles=true" in err), err
    assert main(_args(tiled, out, "schedule.steps=2")) == 0  # the same split: it resumes


def test_a_checkpoint_from_before_group_tiles_is_told_how_to_resume(tiled,
                                                                  tmp_path: Path) -> None:
    """A run saved before data.group_tiles held out tiles one by one: its split fingerprint
    is that of data.group_tiles=false, and the refusal says so."""
    try:
        ft = _finetuner(tiled, tmp_path / "run")
        saved = to_dict(ft.cfg)
        del saved["data"]["group_tiles"]
        flat = _old_per_sample_split(len(ft.data), 0.25, 0, np.asarray(ft.data.labels))
        old = split_fingerprint(ft.data, flat[0], ft.data, flat[1])
        why = group_tiles_problem(ft.data, "classification", ft.cfg.data, saved, old, ft.split,
                                  tmp_path / "ckpt")
        assert why is not None and "had none (it predates the key and held out tiles one by " \
            "one), this one True" in why and "resume with data.group_tiles=false" in why
        assert group_tiles_problem(ft.data, "classification", ft.cfg.data, saved, ft.split,
                                   ft.split, tmp_path / "ckpt") is None
    finally:
        dist.teardown()


def test_test_set_with_fewer_classes_in_another_order_is_aligned(tiled, tmp_path: Path,
                                                                 capsys) -> None:
    out = tmp_path / "run"
    try:
        ft = _finetuner(tiled, out, f"data.test_path={tiled['sub']}")
        test = ft.test_data
        assert ft.data.classes == ["Class0", "Class1", "Class2"] == test.classes
        by_name = [ft.data.classes.index(k.split("_")[0]) for k in test.keys]
        assert list(test.labels) == by_name and set(by_name) == {0, 2}
        assert ft.fit() == 0
        results = json.loads((out / "results.json").read_text())
        model = ft.strategy.module.eval()
        with torch.no_grad():
            x, _, _ = ft.batch(test, ft.test_pre, ft.test_idx)
            pred = model(x).argmax(1).numpy()
    finally:
        dist.teardown()
    want = class_metrics(np.asarray(by_name), pred, 3)
    assert results["metrics"]["confusion"] == want["confusion"]
    assert results["metrics"]["accuracy"] == pytest.approx(want["accuracy"])
    rows = np.asarray(results["metrics"]["confusion"]).sum(1)
    assert rows.tolist() == [18, 0, 18]  # Class0, Class1 (absent), Class2: 2 images x 9 tiles
    assert results["test_images"] == 4 and results["test_source"] == str(tiled["sub"])
    assert results["test_data"]["source"] == str(tiled["sub"]) == results["test_source"]
    assert results["test_data"]["samples"] == 36 and results["data"]["source"] != str(tiled["sub"])
    capsys.readouterr()
    assert main(_args(tiled, tmp_path / "extra", f"data.test_path={tiled['extra']}")) == 2
    err = capsys.readouterr().err
    assert "data.test_path classes ['Class3'] are not in data.path" in err
    assert "eofm-shard build --classes FILE" in err


def test_multilabel_test_set_columns_are_moved_by_class_name(bigearthnet_export) -> None:
    data = open_labelled(bigearthnet_export[0], modality="s2", progress=False)
    present = [c for j, c in enumerate(data.classes) if data.labels[:, j].any()]
    sub = present[::-1]  # a subset, in another order
    test = copy.copy(data)
    test.classes = sub
    test.labels = data.labels[:, [data.classes.index(c) for c in sub]]
    aligned = align_classes(data, test, test_flag="data.test_path", train_flag="data.path")
    assert aligned.classes == data.classes and aligned.labels.shape == data.labels.shape
    assert np.array_equal(aligned.labels, data.labels)  # absent columns were all zero
    assert test.classes == sub  # the test set itself is left as it was
    test.classes = [*sub[:-1], "Atlantis"]
    with pytest.raises(ValueError, match=r"data.test_path classes \['Atlantis'\] are not in "
                                         r"data.path"):
        align_classes(data, test, test_flag="data.test_path", train_flag="data.path")


def test_a_test_set_feeding_other_bands_is_refused() -> None:
    """A spectral encoder takes whichever of its bands a dataset has, so data.test_path could
    feed it other bands than data.path: the model trained on one set would be scored on
    another. Refused, naming both paths and band lists; the same bands pass."""
    d = load_config(None, [], flags={"encoder.path": "enc", "data.path": "train",
                                     "data.test_path": "test", "runtime.out_dir": "out"}).data
    check_test_bands(["B02", "B03"], ["B02", "B03"], d)
    with pytest.raises(ValueError, match=r"data.test_path test: the encoder would be fed bands "
                                         r"\['B02'\], but data.path train feeds it "
                                         r"\['B02', 'B03'\]"):
        check_test_bands(["B02", "B03"], ["B02"], d)


def test_a_fine_tuned_spectral_encoder_is_exported_for_the_bands_it_was_trained_on(
        tmp_path: Path, eurosat_folder) -> None:
    """A spectral encoder (13 S2 bands + VV/VH) fine-tuned on S2-only data: the export's card
    said any subset in any order and its contract listed VV/VH, but the fine-tuned model
    takes the 13 bands it was trained on, in their order (their wavelengths are recorded).
    The export's contract lists exactly those and its card says the order matters."""
    from eofm.data_shards.sensors import get_sensor
    from eofm.finetune import load_finetuned
    from eofm.models.tokenizers import sar_stand_in

    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=8, size=16)
    data = open_labelled(src, progress=False)
    s2, bands = get_sensor("s2_l1c"), list(data.bands)
    sar_wl, sar_bw = sar_stand_in(["VV", "VH"])
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in bands}
    stats.update(VV={"mean": -12.0, "std": 4.0}, VH={"mean": -19.0, "std": 4.0})
    contract = InputContract(
        sensors=("s2_l1c", "s1_grd"), bands=(*bands, "VV", "VH"),
        wavelengths=[s2.band(b).center_wavelength_nm for b in bands] + sar_wl.tolist(),
        bandwidths=[s2.band(b).bandwidth_nm for b in bands] + sar_bw.tolist(), gsd=10.0,
        normalisation="meanstd", stats=stats, input_size=(16, 16), patch_size=8)
    torch.manual_seed(0)
    export = save_pretrained(create_model("vit_test_patch8", tokenizer="spectral", img_size=16,
                                          contract=contract), tmp_path / "enc")
    out = tmp_path / "run"
    try:
        assert main(["--encoder", str(export), "--data", str(src), "--task", "classification",
                     "--out", str(out), "schedule.steps=2", "schedule.warmup_steps=1",
                     "data.batch_size=4", "data.test_fraction=0.25", "logging.progress=false",
                     "runtime.strategy=single"]) == 0
    finally:
        dist.teardown()
    card = (out / "model" / "README.md").read_text()
    assert "It takes any subset" not in card and "(the order matters)" in card
    saved = json.loads((out / "model" / "config.json").read_text())["eofm_contract"]
    assert saved["bands"] == bands
    model = load_finetuned(out / "model")
    assert list(model.contract.bands) == bands and not model.contract.any_bands
