"""Labels a dataset cannot hold are refused when it is read (:func:`open_labelled`), naming the
dataset, the sample and the manifest's class count: a class index outside 0..K-1 (a label of
-1 or 7, or a hand-edited manifest listing fewer classes than the labels use) and a multi-hot
vector of another length than K. Unchecked, eofm-probe and eofm-finetune failed with a
traceback in the loss (``IndexError: Target 7 is out of bounds``)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.finetune.datasets import open_labelled


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, tiny_eurosat) -> Path:
    """Two classes, two samples each, built as tar shards (one shard)."""
    tmp = tmp_path_factory.mktemp("labels")
    out = tmp / "shards"
    build(BuildConfig(str(tiny_eurosat(tmp / "eurosat")), str(out), progress=False))
    return out


def _edit_manifest(src: Path, dst: Path, labels: dict) -> Path:
    """A copy of the shards ``src`` at ``dst`` whose manifest's ``labels`` is ``labels``."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["labels"] = labels
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _set_label(src: Path, dst: Path, key: str, label: np.ndarray) -> Path:
    """A copy of the shards ``src`` at ``dst`` with sample ``key``'s labels.npy ``label``
    (the manifest's shard bytes and sha256 updated)."""
    shutil.copytree(src, dst)
    m = json.loads((src / "manifest.json").read_text())
    for s in m["shards"]:
        out = io.BytesIO()
        with tarfile.open(src / s["name"]) as t, tarfile.open(fileobj=out, mode="w") as w:
            for ti in t.getmembers():
                data = t.extractfile(ti).read()
                if ti.name == f"{key}.labels.npy":
                    b = io.BytesIO()
                    np.save(b, label, allow_pickle=False)
                    data = b.getvalue()
                info = tarfile.TarInfo(ti.name)
                info.size = len(data)
                w.addfile(info, io.BytesIO(data))
        (dst / s["name"]).write_bytes(out.getvalue())
        s["bytes"], s["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("label", [7, -1])
def test_a_class_label_outside_the_classes_is_refused_naming_the_sample(
        shards: Path, tmp_path: Path, label: int) -> None:
    bad = _set_label(shards, tmp_path / "bad", "Class1_Class1_0", np.array(label, np.int64))
    with pytest.raises(ValueError, match=rf"^{bad}: sample Class1_Class1_0: label {label} "
                                         r"outside 0\.\.1 \(manifest labels\.classes has 2 "
                                         r"classes\)$"):
        open_labelled(bad)


def test_a_manifest_listing_fewer_classes_than_the_labels_use_is_refused(
        shards: Path, tmp_path: Path) -> None:
    bad = _edit_manifest(shards, tmp_path / "short", {"kind": "class", "classes": ["Class0"]})
    with pytest.raises(ValueError, match=r"sample Class1_Class1_0: label 1 outside 0\.\.0 "
                                         r"\(manifest labels\.classes has 1 classes\)"):
        open_labelled(bad)


def test_a_multilabel_vector_of_another_length_than_the_classes_is_refused(
        shards: Path, tmp_path: Path) -> None:
    bad = _edit_manifest(shards, tmp_path / "ml", {"kind": "multilabel",
                                                   "classes": ["Class0", "Class1"]})
    with pytest.raises(ValueError, match=r"sample Class0_Class0_0: expected a multi-hot vector "
                                         r"of 2 values \(manifest labels\.classes has 2 "
                                         r"classes\), got 1 values"):
        open_labelled(bad)


def test_a_zarr_store_label_outside_the_classes_is_refused(tmp_path: Path, tiny_eurosat
                                                          ) -> None:
    import zarr

    store = tmp_path / "e.zarr"
    build(BuildConfig(str(tiny_eurosat(tmp_path / "eurosat")), str(store), format="zarr",
                      progress=False))
    labels = zarr.open_group(str(store), mode="r+")["labels"]
    labels[0] = 7
    with pytest.raises(ValueError, match=r"label 7 outside 0\.\.1 \(manifest labels\.classes "
                                         r"has 2 classes\)"):
        open_labelled(store)


def test_labels_in_range_read_as_built(shards: Path) -> None:
    data = open_labelled(shards)
    assert data.labels.tolist() == [0, 0, 1, 1] and data.labels.dtype == np.int64
