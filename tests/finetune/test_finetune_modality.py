"""eofm-finetune on a dataset of several modalities (the bundled BigEarthNet sample: s2 + s1):
with data.modality unset it reads the modality holding most of the encoder's bands, as
eofm-probe does, for class/multi-label data and for per-pixel targets alike; when that one does
not satisfy the encoder, the refusal lists the modalities and says to set data.modality."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.manifest import MANIFEST_NAME
from eofm.data_shards.sensors import get_sensor
from eofm.finetune.datasets import open_labelled
from eofm.finetune.finetune import main
from eofm.finetune.task_data import contract_preprocess, open_task_data
from eofm.models import InputContract, create_model, from_pretrained, save_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
TILE = 32
RUN = ["schedule.steps=1", "data.batch_size=2", "data.test_fraction=0.34",
       "encoder.freeze=frozen", "logging.progress=false"]


def _export(data: Path, modality: str, bands: list[str], sensor: str, out: Path) -> Path:
    """A test-size ViT export taking ``bands`` of ``sensor``, its statistics those of
    ``modality`` in ``data`` (a band the data lacks gets mean 1000, std 500)."""
    d = open_labelled(data, modality=modality, progress=False)
    stats = {b: ({k: d.stats[b][k] for k in ("mean", "std")} if b in d.stats
                 else {"mean": 1000.0, "std": 500.0}) for b in bands}
    contract = InputContract(sensors=(sensor,), bands=tuple(bands), gsd=10.0,
                             nodata=d.nodata[0], normalisation="meanstd", stats=stats,
                             input_size=(TILE, TILE), patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=bands, img_size=TILE, contract=contract)
    return save_pretrained(enc, out)


@pytest.fixture(scope="module")
def ben(bigearthnet_export: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
        ) -> dict[str, Path]:
    """The bundled BigEarthNet sample as shards (modalities s2 then s1, multi-labels), an
    export of an S1 (VV, VH) encoder and one of an S2 L1C encoder (B10, which neither
    modality has)."""
    data = bigearthnet_export[0]
    root = tmp_path_factory.mktemp("modality")
    s1 = open_labelled(data, modality="s1", progress=False)
    l1c = get_sensor("s2_l1c").band_names
    return {"data": data,
            "s1": _export(data, "s1", ["VV", "VH"], s1.sensor, root / "s1"),
            "l1c": _export(data, "s2", l1c, "s2_l1c", root / "l1c")}


def _with_targets(data: Path, out: Path) -> Path:
    """A copy of the shards at ``data`` whose samples carry per-pixel targets (``seg.npy``:
    1 where the sample's S2 B08 is above its median) instead of multi-labels: a dense dataset
    of two modalities, as no layout builds one."""
    shutil.copytree(data, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    nir = manifest["modalities"]["s2"]["bands"].index("B08")
    for shard in manifest["shards"]:
        path = out / shard["name"]
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(path, "w") as tar:
            for m, raw in members:
                if m.name.endswith(".labels.npy"):
                    continue
                tar.addfile(m, io.BytesIO(raw))
                if m.name.endswith(".s2.npy"):
                    band = np.load(io.BytesIO(raw))[nir]
                    buf = io.BytesIO()
                    np.save(buf, (band > np.median(band)).astype(np.uint8))
                    info = tarfile.TarInfo(m.name.removesuffix(".s2.npy") + ".seg.npy")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
        shard["bytes"] = path.stat().st_size
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["labels"] = {"kind": "segmentation", "classes": []}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def _run(encoder: Path, data: Path, task: str, out: Path, *extra: str) -> int:
    return main(["--encoder", str(encoder), "--data", str(data), "--task", task,
                 "--out", str(out), *RUN, *extra])


def test_an_s1_encoder_fine_tunes_the_s1_modality_without_data_modality(
        ben: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The S1 encoder on s2 + s1 data read s2 (the first) and stopped at its missing VV, VH."""
    rc = _run(ben["s1"], ben["data"], "multilabel", tmp_path / "run")
    assert rc == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["preprocess"]["bands"] == ["VV", "VH"]
    assert results["preprocess"]["source_bands"] == ["VV", "VH"]


def test_dense_data_of_two_modalities_is_read_as_labelled_data_is(
        ben: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Per-pixel targets follow the same rule: the modality holding most of the encoder's
    bands (the first without any), or the one data.modality names."""
    seg = _with_targets(ben["data"], tmp_path / "seg")
    assert open_task_data(str(seg), "segmentation", None, prefer_bands=["VV", "VH"]
                          ).modality == "s1"
    assert open_task_data(str(seg), "segmentation", None, prefer_bands=["B02", "B03"]
                          ).modality == "s2"
    assert open_task_data(str(seg), "segmentation", None).modality == "s2"
    named = open_task_data(str(seg), "segmentation", "s2", prefer_bands=["VV", "VH"])
    assert named.modality == "s2" and "B08" in named.bands
    rc = _run(ben["s1"], seg, "segmentation", tmp_path / "run")
    assert rc == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["preprocess"]["bands"] == ["VV", "VH"]


def test_no_modality_that_fits_says_to_set_data_modality(ben: dict[str, Path], tmp_path: Path,
                                                         capsys) -> None:
    """An L1C encoder needs B10, which neither s2 (L2A) nor s1 holds: the contract's refusal
    names the dataset's modalities, the one read and data.modality."""
    data = ben["data"]
    assert _run(ben["l1c"], data, "multilabel", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "missing band(s) ['B10']" in err
    assert (f"data.path {data}: has modalities ['s2', 's1'] and data.modality is unset, so "
            "'s2' was read, the one holding most of the encoder's bands") in err
    assert "set data.modality to one of ['s2', 's1']" in err
    assert not (tmp_path / "run").exists()
    # data.modality set: the contract's refusal alone, nothing to choose
    assert _run(ben["l1c"], data, "multilabel", tmp_path / "run", "data.modality=s2") == 2
    err = capsys.readouterr().err
    assert "missing band(s) ['B10']" in err and "data.modality" not in err
    # a test set is named by its own field
    contract = from_pretrained(ben["l1c"]).contract
    test = open_task_data(str(data), "multilabel", None, prefer_bands=contract.bands)
    with pytest.raises(ValueError, match=r"data\.test_path .*: has modalities \['s2', 's1'\]"):
        contract_preprocess(test, contract, path=str(data), modality=None,
                            field="data.test_path")
