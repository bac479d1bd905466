"""Dense data a fine-tune cannot use as it stands is refused before training, by name:

- tiles of different sizes (a ``--seg-dir`` build without ``--tile`` from images of two
  sizes): before, the first batch holding both stopped with numpy's bare "all input arrays
  must have the same shape";
- segmentation targets whose values are sparse (0, 1, 2 and an unlabelled mark 255 with no
  ``task.ignore_value``): before, they became a 256-class head scoring 255 as a class.

And a finished run run again is evaluated again with one "test" record for its last step in
metrics.jsonl (before, a second one was appended beside the first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.finetune.finetune import main
from eofm.finetune.finetune_config import TaskConfig, load_config
from eofm.finetune.finetuner import Finetuner
from eofm.finetune.task_data import num_outputs
from eofm.finetune.tasks import DenseData, open_dense
from eofm.models import InputContract, create_model, save_pretrained
from eofm.pretrain import distributed as dist

pytestmark = pytest.mark.usefixtures("one_thread")

TILE = 32


@pytest.fixture(scope="module")
def sources(sample_data: Path, tmp_path_factory: pytest.TempPathFactory,
            ben_multiband: Callable[..., Any]) -> dict[str, Any]:
    """The bundled BigEarthNet S2 patches as multi-band GeoTIFFs (``src``) with an NDVI class
    map each (``seg``: 0, 1, 2; the top two rows 255), and a test-size ViT export whose
    contract holds their statistics."""
    root = tmp_path_factory.mktemp("dense_checks")
    s2 = ben_multiband(sample_data, root)
    (root / "seg").mkdir()
    for i, key in enumerate(s2.keys):
        x = s2.pixels(i)
        red, nir = (x[s2.bands.index(b)].astype(np.float32) for b in ("B04", "B08"))
        classes = np.digitize((nir - red) / np.maximum(nir + red, 1.0), [0.3, 0.6])
        classes = classes.astype(np.uint8)
        classes[:2] = 255
        tifffile.imwrite(root / "seg" / f"{key}.tif", classes)
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in s2.bands}
    contract = InputContract(sensors=(s2.sensor,), bands=tuple(s2.bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(TILE, TILE),
                             patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=s2.bands, img_size=TILE, contract=contract)
    return {"root": root, "sensor": s2.sensor, "bands": list(s2.bands),
            "encoder": save_pretrained(enc, root / "encoder")}


def _build(sources: dict[str, Any], src: Path, seg: Path, out: Path,
           tile: int | None = None) -> Path:
    """``eofm-shard build --seg-dir seg`` of the multi-band GeoTIFFs in ``src``."""
    opts = LayoutOptions(sensor=sources["sensor"], file_bands=sources["bands"], seg_dir=seg)
    ingest = IngestOptions(tile=tile) if tile else IngestOptions()
    build(BuildConfig(str(src), str(out), layout="multiband", layout_options=opts,
                      ingest=ingest, progress=False))
    return out


@pytest.fixture(scope="module")
def mixed(sources: dict[str, Any]) -> Path:
    """A --seg-dir build without --tile of the images cut to 96 px and 120 px in turn."""
    root = sources["root"]
    src, seg = root / "src_mixed", root / "seg_mixed"
    src.mkdir()
    seg.mkdir()
    for i, f in enumerate(sorted((root / "src").glob("*.tif"))):
        side = 120 if i % 2 else 96
        tifffile.imwrite(src / f.name, tifffile.imread(f)[:side, :side],
                         photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(seg / f.name, tifffile.imread(root / "seg" / f.name)[:side, :side])
    return _build(sources, src, seg, root / "mixed_ds")


def test_tiles_of_different_sizes_are_refused_naming_two_and_the_tile_option(
        mixed: Path) -> None:
    with pytest.raises(ValueError) as e:
        open_dense(mixed)
    msg = str(e.value)
    assert str(mixed) in msg and "different sizes" in msg
    assert "96x96 px" in msg and "120x120 px" in msg
    assert "eofm-shard build --tile N" in msg


def test_the_cli_refuses_tiles_of_different_sizes_before_training(
        sources: dict[str, Any], mixed: Path, tmp_path: Path, capsys) -> None:
    code = main(["--encoder", str(sources["encoder"]), "--data", str(mixed), "--task",
                 "segmentation", "--out", str(tmp_path / "run"), "task.ignore_value=255",
                 "data.batch_size=4", "schedule.steps=1", "logging.progress=false"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "different sizes" in err and "--tile" in err
    assert "all input arrays must have the same shape" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _seg_data(values: list[int]) -> DenseData:
    """Four 8 px samples whose targets hold ``values`` (in turn over the pixels)."""
    x = np.ones((4, 2, 8, 8), np.float32)
    y = np.resize(np.asarray(values, np.uint8), (4, 8, 8))
    return DenseData.from_arrays(x, y, bands=["B04", "B08"], sensor="s2_l2a")


def test_sparse_segmentation_values_without_ignore_value_are_refused() -> None:
    data = _seg_data([0, 1, 2, 255])
    with pytest.raises(ValueError) as e:
        num_outputs(TaskConfig("segmentation"), data, data)
    msg = str(e.value)
    assert "[0, 1, 2, 255]" in msg and "256-class" in msg
    assert "task.ignore_value=255" in msg and "task.num_classes=256" in msg
    # what the message offers is taken: 255 unlabelled, or 256 classes asked for by name
    assert num_outputs(TaskConfig("segmentation", ignore_value=255), data, data) == 3
    assert num_outputs(TaskConfig("segmentation", num_classes=256), data, data) == 256
    gaps = _seg_data([0, 7])
    with pytest.raises(ValueError, match=r"task.ignore_value=7 .* task.num_classes=8"):
        num_outputs(TaskConfig("segmentation"), gaps, gaps)
    for values in ([0, 1, 2], [1, 2, 3], [0, 2, 3, 4]):  # dense enough: the largest + 1
        data = _seg_data(values)
        assert num_outputs(TaskConfig("segmentation"), data, data) == max(values) + 1


def test_a_finished_run_run_again_keeps_one_test_record_for_its_step(
        sources: dict[str, Any], tmp_path: Path) -> None:
    root = sources["root"]
    data = _build(sources, root / "src", root / "seg", tmp_path / "seg_ds", tile=TILE)
    cfg = load_config(None, ["schedule.steps=2", "schedule.warmup_fraction=0",
                             "data.batch_size=8", "task.decoder_channels=16",
                             "task.ignore_value=255", "logging.progress=false",
                             "logging.log_every=1"],
                      flags={"encoder.path": str(sources["encoder"]), "data.path": str(data),
                             "task.kind": "segmentation", "runtime.out_dir": str(tmp_path / "r")})
    for _ in range(2):  # the run, then the finished run again: evaluated again, not trained
        try:
            assert Finetuner(cfg).fit() == 0
        finally:
            dist.teardown()
    records = [json.loads(line)
               for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "test" in r] == [2]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert next(r for r in records if "test" in r)["test"] == results["metrics"]
