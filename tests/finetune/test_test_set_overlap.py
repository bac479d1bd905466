"""A held-out test set must hold other images than the training data: eofm-finetune's
``data.test_path`` and eofm-probe's ``--test-data`` are refused (status 2, one line naming
both datasets, how many images they share and a few) when they share any source image with
``data.path`` / ``--data``, compared by sample key less a tile's ``_r<row>_c<col>``
(:func:`eofm.finetune.datasets.check_test_images`): the training data's own path,
a copy of it under another folder and a test set holding a few of its images. eofm-finetune
took all three (training on every sample, then reporting "held-out" metrics on the same
ones); eofm-probe refused only the same path, and scored a copy at kNN accuracy 1.0."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from eofm.finetune import finetune as finetune_cli
from eofm.finetune import probe_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = ("Class0/Class0_0.tif", "Class2/Class2_3.tif")  # the partial test set's two copies


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory,
          eurosat_folder: Callable[..., Path]) -> tuple[Path, Path]:
    """(a synthetic EuroSAT folder of 3 classes x 6 images, a test-size export for it)."""
    import torch

    from eofm.finetune.datasets import open_labelled
    from eofm.models import InputContract, create_model, save_pretrained

    root = tmp_path_factory.mktemp("overlap")
    src = eurosat_folder(root / "eurosat", classes=3, per_class=6)
    data = open_labelled(src, progress=False)
    bands = [b for b in data.bands if b != "B10"]
    stats = {b: {k: data.stats[b][k] for k in ("mean", "std")} for b in bands}
    contract = InputContract(sensors=(data.sensor,), bands=tuple(bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(16, 16),
                             patch_size=8, processing_level="L1C")
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=bands, img_size=16, contract=contract)
    return src, save_pretrained(enc, root / "enc")


ALL = "got 18 of its 18 source images also in {} ('Class0_Class0_0', 'Class0_Class0_1', " \
      "'Class0_Class0_2', ...; images matched by sample key"


def _test_set(how: str, src: Path, tmp: Path, other: Callable[..., Path]) -> tuple[str, str]:
    """(the test set's path, what the refusal says of it, ``{}`` for the training data) for
    ``how``: ``same`` (the training folder itself, another spelling), ``copy`` (all of its
    files in another folder) or ``partial`` (six other images and two of the training ones)."""
    if how == "same":
        return f"{src}/", ALL
    if how == "copy":
        return str(shutil.copytree(src, tmp / "copy")), ALL
    test = other(tmp / "partial", classes=3, per_class=2, seed=1, tag="other")
    for name in SHARED:
        shutil.copy(src / name, test / name)
    return str(test), ("got 2 of its 8 source images also in {} ('Class0_Class0_0', "
                       "'Class2_Class2_3'; images matched by sample key")


def _refused(err: str) -> str:
    """The one error line of a refused command (no traceback)."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if ": error: " in x]
    assert len(lines) == 1, err
    return lines[0]


def _finetune(enc: Path, data: Path, out: Path, test: str) -> int:
    """A one-step classification fine-tune of the test-size export with ``test`` held out."""
    return finetune_cli.main(["--encoder", str(enc), "--data", str(data), "--task",
                              "classification", "--out", str(out), "schedule.steps=1",
                              "data.batch_size=6", "encoder.drop_path=0",
                              "logging.progress=false", "runtime.strategy=single",
                              f"data.test_path={test}"])


def _probe(enc: Path, data: Path, out: Path, test: str) -> int:
    return probe_cli.main(["--encoder", str(enc), "--data", str(data), "--test-data", test,
                           "--out", str(out), "--quiet", "--device", "cpu"])


def test_shared_source_images_are_found_by_key_less_the_tile_suffix() -> None:
    """The check itself: tiles of one image at other positions are that image; a test set of
    other images passes; the message names both sets, the count and at most three images."""
    from eofm.finetune.datasets import check_test_images

    train = ["a_r0_c0", "a_r0_c16", "b", "c_r0_c0", "d", "e"]
    check_test_images(train, ["f", "g_r0_c0", "a_x"], train="--data T", test="--test-data S",
                      learner="L", instead="do X")  # other images: no error
    with pytest.raises(ValueError) as e:
        check_test_images(train, ["a_r16_c0", "f", "c_r8_c8"], train="--data T",
                          test="--test-data S", learner="the probes", instead="do X")
    assert str(e.value) == (
        "--test-data S: expected a held-out test set of other images, got 2 of its 3 source "
        "images also in --data T ('a', 'c'; images matched by sample key, less a tile's "
        "_r<row>_c<col>, and by pixels where a key is in both): the probes would be scored on "
        "images seen in training; do X")
    with pytest.raises(ValueError, match=r"got 5 of its 5 source images also in --data T "
                                         r"\('a', 'b', 'c', \.\.\.; images matched"):
        check_test_images(train, train[1:], train="--data T", test="--test-data S",
                          learner="L", instead="do X")
    with pytest.raises(ValueError) as e:  # a location's credentials are not repeated
        check_test_images(["b"], ["b"], train="--data https://alice:s3cret@host/ds",
                          test="--test-data x", learner="L", instead="do X")
    assert "s3cret" not in str(e.value) and "https://***@host/ds" in str(e.value)


@pytest.mark.parametrize("how", ["same", "copy", "partial"])
def test_finetune_refuses_a_test_path_of_training_images(setup, tmp_path: Path, capsys,
                                                         eurosat_folder, how: str) -> None:
    """data.test_path of data.path's images: refused before training (it trained on all 18
    and reported "held-out" metrics on the same samples, exit status 0)."""
    src, enc = setup
    test, shared = _test_set(how, src, tmp_path, eurosat_folder)
    out = tmp_path / "run"
    assert _finetune(enc, src, out, test) == 2
    line = _refused(capsys.readouterr().err)
    assert line.startswith(f"eofm-finetune: error: data.test_path {test.rstrip('/')}: expected "
                           "a held-out test set of other images, "
                           + shared.format(f"data.path {src}")), line
    assert "the fine-tuned model would be scored on images seen in training" in line
    assert "omit data.test_path to hold out data.test_fraction" in line
    assert not (out / "results.json").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("how", ["same", "copy", "partial"])
def test_probe_refuses_test_data_of_training_images(setup, tmp_path: Path, capsys,
                                                    eurosat_folder, how: str) -> None:
    """--test-data of --data's images: refused (a copy was scored at kNN accuracy 1.0, each
    test sample finding itself among the training ones)."""
    src, enc = setup
    test, shared = _test_set(how, src, tmp_path, eurosat_folder)
    out = tmp_path / "report"
    assert _probe(enc, src, out, test) == 2
    line = _refused(capsys.readouterr().err)
    assert line.startswith(f"eofm-probe: error: --test-data {test.rstrip('/')}: expected a "
                           "held-out test set of other images, "
                           + shared.format(f"--data {src}")), line
    assert "kNN: each such sample finds itself" in line
    assert "omit --test-data to cross-validate --data over --folds" in line
    assert not (out / "report.json").exists()


def test_a_test_set_of_other_images_is_taken_by_both(setup, tmp_path: Path, capsys,
                                                     eurosat_folder) -> None:
    """A separately built test set of other images (other names, other pixels) still runs:
    fine-tuning reports on its 9 samples, the probe scores once on them."""
    src, enc = setup
    test = eurosat_folder(tmp_path / "test", classes=3, per_class=3, seed=1, tag="other")
    assert _finetune(enc, src, tmp_path / "run", str(test)) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_samples"] == 9 and results["train_samples"] == 18
    assert results["test_source"] == str(test)
    assert _probe(enc, src, tmp_path / "report", str(test)) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["test_data"]["samples"] == 9 and report["split"] == f"fixed test set {test}"
    capsys.readouterr()


def test_a_test_set_reusing_the_training_files_names_for_other_images_passes(
        setup: tuple[Path, Path], tmp_path: Path, eurosat_folder, capsys, caplog) -> None:
    """Splits shipped as folders of files of the same names (train/0001.tif, test/0001.tif)
    share sample keys, not images: with other pixels under every shared key the test set is
    taken, with a warning; the same names with the same pixels (a copy) are still refused."""
    import logging

    src, enc = setup
    other = eurosat_folder(tmp_path / "renamed", classes=3, per_class=6, seed=7)  # same names
    with caplog.at_level(logging.WARNING):
        assert _probe(enc, src, tmp_path / "probe", str(other)) == 0, capsys.readouterr().err
    assert "have the names of images in --data" in caplog.text
    assert "18 of its source images" in caplog.text
