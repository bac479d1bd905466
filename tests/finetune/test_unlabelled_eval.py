"""Evaluation data refuses unlabelled samples, whatever the format. A labelled dataset may hold
samples built without a label (``eofm-shard build EUROSAT SCENE`` pools class folders with an
unlabelled scene); pretraining reads them as class -1 or an all-zero multi-hot vector, but the
probe and fine-tuning must not score or train on a made-up label: :func:`open_labelled`
refuses such a dataset, naming a sample, from tar shards (no ``labels.npy``) and from a zarr
store (the rows its build lists in ``unlabelled_rows``). A zarr store of such a build used to
be refused only because its ``labels`` array lacked the unlabelled rows, and a class build
listed a class named "None".

A multilabel sample labelled with no class at all (a labels file listing none) is no
unlabelled sample: both formats read it as its all-zero vector (a zarr store's zero row alone
does not make a sample unlabelled)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.finetune.datasets import open_labelled

SCENE = "sentinel2_l1c_scene"  # a 384 px Sentinel-2 L1C scene without labels
TILE = 128  # the scene -> 9 unlabelled tiles; EuroSAT files of 128 px -> one sample each
BEN_S2 = "BigEarthNet-S2-Example"  # the bundled BigEarthNet S2 patches (120 px, multi-labels)
FORMATS = {"wds": "ds", "zarr": "ds.zarr"}
FIRST_UNLABELLED = f"{SCENE}_{SCENE}_r0_c0"  # the scene's first tile, the smallest such key


def _build(src: Path, out: Path, fmt: str, *more: Path, **ingest) -> Path:
    build(BuildConfig(str(src), str(out), more_sources=[str(m) for m in more], format=fmt,
                      progress=False, ingest=IngestOptions(**ingest)))
    return out


def _refusal(path: Path, fmt: str) -> str:
    """The message open_labelled gives for the pooled dataset at ``path``."""
    what = ("has no labels.npy" if fmt == "wds" else
            r"has no label \(one of 9 samples built without one: group attribute "
            r"unlabelled_rows\)")
    return rf"^{re.escape(str(path))}: sample {FIRST_UNLABELLED} {what}; expected a labelled dataset$"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_pooled_class_dataset_is_refused_naming_an_unlabelled_sample(
        sample_data: Path, eurosat_folder, tmp_path: Path, fmt: str) -> None:
    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=2, size=TILE)
    path = _build(src, tmp_path / FORMATS[fmt], fmt, sample_data / SCENE, tile=TILE)
    with pytest.raises(ValueError, match=_refusal(path, fmt)):
        open_labelled(path)
    # the labelled part alone opens
    alone = open_labelled(_build(src, tmp_path / f"alone_{FORMATS[fmt]}", fmt, tile=TILE))
    assert len(alone) == 4 and alone.classes == ["Class0", "Class1"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_pooled_multilabel_dataset_is_refused_naming_an_unlabelled_sample(
        sample_data: Path, tmp_path: Path, fmt: str) -> None:
    path = _build(sample_data / "bigearthnet" / BEN_S2, tmp_path / FORMATS[fmt], fmt,
                  sample_data / SCENE, tile=120, bands={"s2": ["B02", "B03", "B04", "B08"]})
    with pytest.raises(ValueError, match=_refusal(path, fmt)):
        open_labelled(path)


def test_a_multilabel_sample_labelled_with_no_class_opens_alike_in_both_formats(
        sample_data: Path, tmp_path: Path) -> None:
    """Its all-zero row is its label, in the zarr store as in the shards: the store's record
    of unlabelled rows decides, not the row's value."""
    src = tmp_path / BEN_S2
    shutil.copytree(sample_data / "bigearthnet" / BEN_S2, src)
    labels_file = sorted(src.rglob("*_labels_metadata.json"))[0]
    meta = json.loads(labels_file.read_text())
    labels_file.write_text(json.dumps({**meta, "labels": []}))
    opened = {fmt: open_labelled(_build(src, tmp_path / name, fmt))
              for fmt, name in FORMATS.items()}
    shards, store = opened["wds"], opened["zarr"]
    assert len(shards) == 6 and shards.keys == store.keys and shards.classes == store.classes
    assert np.array_equal(shards.labels, store.labels)
    empty = [k for k, y in zip(shards.keys, shards.labels, strict=True) if not y.any()]
    assert empty == [labels_file.parent.name]
