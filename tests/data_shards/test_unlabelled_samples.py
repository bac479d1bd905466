"""Samples without labels in a labelled dataset, one convention for every format. A labelled
dataset may hold samples without ``labels.npy`` (e.g. EuroSAT class folders pooled with an
unlabelled scene: ``eofm-shard build EUROSAT SCENE``): the reader gives a multilabel one an
all-zero multi-hot vector and a class one the class index -1 (``UNLABELLED_CLASS``), so every
batch has ``label`` and SoftCon gives exactly those samples an identity row (it used to yield
them without ``label``, and ``collate``, which took the fields of a batch's first sample,
dropped the labels of the whole batch when that one was unlabelled: every sample got the
identity target; or raised a bare KeyError naming no sample). ``collate`` refuses samples
whose fields differ, naming the sample and field.

Such a pooled build used to list a class named "None" (class datasets) or fail with a bare
TypeError (multilabel ones), and its zarr store held only the labelled rows of ``labels`` (a
store no reader opens, or with ``check=False`` reads the wrong rows). The class list is that of
the labelled items, the manifest counts the unlabelled samples, the zarr store writes their
fill row (and lists them in ``unlabelled_rows``), so both formats read alike; ``verify``
accepts class -1 and refuses other labels outside the classes, in both formats.

The bigearthnet layout names the patch folders it leaves out for lacking a labels file (it
used to drop them without a word)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from eofm.data_shards.build import UNLABELLED_CLASS, UNLABELLED_COUNTER, BuildConfig, build
from eofm.data_shards.checks import summary, verify
from eofm.data_shards.codec import encode_npy
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import discover
from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.manifest import load_manifest
from eofm.data_shards.preview import preview
from eofm.data_shards.reader import ShardDataset, collate
from eofm.data_shards.writer import ShardWriter
from eofm.data_shards.zarr_store import ZarrDataset
from eofm.models import create_model
from eofm.pretrain.objectives.softcon import SoftCon, soft_targets

BANDS = ["B02", "B03", "B04", "B08"]
SHARD = "shard-00-000000.tar"
MULTILABEL = {"kind": "multilabel", "classes": ["a", "b", "c"]}
CLASSES = {"kind": "class", "classes": ["a", "b", "c"]}
HOT = np.array([1, 0, 1], np.uint8)  # what the build writes for a multilabel sample


def _dataset(root: Path, labels: list[np.ndarray | None], manifest_labels: dict) -> Path:
    """A one-shard S2 dataset (4 bands of 16 x 16) whose sample ``k<i>`` has ``labels.npy``
    ``labels[i]`` (none for None), with the manifest's ``labels`` ``manifest_labels``."""
    root.mkdir(parents=True)
    with ShardWriter(root, "shard-00") as w:
        for i, y in enumerate(labels):
            members = {"s2.npy": encode_npy(np.full((4, 16, 16), i + 1, np.uint16))}
            if y is not None:
                members["labels.npy"] = encode_npy(y)
            w.write({"__key__": f"k{i}", **members})
    shards = [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
               "writer": 0} for s in w.finished]
    manifest = {"format": "eofm-shards", "format_version": 1,
                "modalities": {"s2": {"sensor": "s2_l1c", "bands": BANDS, "dtype": "uint16",
                                      "shape": [4, 16, 16], "nodata": [0.0] * 4,
                                      "gsd_m": 10.0}},
                "labels": manifest_labels, "shards": shards, "extra": {"s2_offset": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _read(root: Path, **kw) -> list[dict]:
    return list(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0, rank=0,
                             world_size=1, even=False, **kw))


def test_an_unlabelled_multilabel_sample_reads_as_an_all_zero_vector(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", [None, HOT, None], MULTILABEL)
    got = _read(root)
    assert [s["__key__"] for s in got] == ["k0", "k1", "k2"]
    assert all("label" in s for s in got)
    for s, want in zip(got, [np.zeros(3, np.uint8), HOT, np.zeros(3, np.uint8)], strict=True):
        assert s["label"].dtype == np.uint8 and np.array_equal(s["label"], want)
    batch = collate(got)  # the unlabelled sample first: its batch keeps the labels
    assert batch["label"].dtype == torch.uint8
    assert torch.equal(batch["label"], torch.tensor([[0, 0, 0], [1, 0, 1], [0, 0, 0]],
                                                    dtype=torch.uint8))
    # absent on request (a reader that tells unlabelled samples apart), as before
    assert ["label" in s for s in _read(root, missing_labels="absent")] == [False, True, False]
    with pytest.raises(ValueError, match=r"^missing_labels: expected one of fill, absent, got "
                                         r"the str 'zeros'$"):
        ShardDataset(root, missing_labels="zeros")


@pytest.mark.parametrize("workers", [0, 1])  # 1: the batch is stacked in a worker
def test_softcon_gives_only_the_unlabelled_samples_an_identity_row(
        tmp_path: Path, workers: int) -> None:
    """Through the loader: the labelled samples keep their soft targets (two alike labels are
    positives of each other), the unlabelled one gets the identity row, whichever sample
    comes first in the batch."""
    root = _dataset(tmp_path / "ds", [None, HOT, HOT, None], MULTILABEL)
    loader = ShardLoader(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0, rank=0,
                                      world_size=1), batch_size=4, num_workers=workers)
    batches = list(loader)
    assert len(batches) == 1 and list(batches[0]["__key__"]) == ["k0", "k1", "k2", "k3"]
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=16)
    obj = SoftCon(enc, BANDS, proj_hidden_dim=8, proj_dim=8, pred_hidden_dim=8)
    y = obj.batch_inputs(batches[0], torch.device("cpu"))["labels"]
    t = soft_targets(y, y, 0, 4)
    assert torch.equal(t, torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0],
                                        [0, 0, 0, 1]]))


def test_an_unlabelled_class_sample_reads_as_class_minus_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A class label is one index; an unlabelled sample's is UNLABELLED_CLASS (-1, which no
    class has), an int64 scalar as the build writes class labels: no sample is skipped or
    refused (it used to be a SampleError, so pretraining on a pooled class dataset stopped)."""
    assert UNLABELLED_CLASS == -1
    root = _dataset(tmp_path / "ds", [np.array(2, np.int64), None, np.array(0, np.int64)],
                    CLASSES)
    with caplog.at_level(logging.WARNING, logger="eofm.data_shards.reader"):
        got = _read(root, errors="strict")
    assert not caplog.records
    assert [(s["__key__"], s["label"].dtype, s["label"].shape, int(s["label"])) for s in got] == [
        ("k0", np.int64, (), 2), ("k1", np.int64, (), -1), ("k2", np.int64, (), 0)]
    batch = collate(got)
    assert torch.equal(batch["label"], torch.tensor([2, -1, 0]))
    assert [("label" in s) for s in _read(root, missing_labels="absent")] == [True, False, True]


def test_a_dataset_without_labels_reads_without_label(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", [None, None], None)  # type: ignore[arg-type]
    assert [sorted(s) for s in _read(root)] == [
        ["__key__", "__pos__", "__worker__", "s2", "s2_valid"]] * 2


def _sample(key: str, label: np.ndarray | None) -> dict:
    s = {"__key__": key, "s2": np.zeros((4, 2, 2), np.uint16)}
    if label is not None:
        s["label"] = label
    return s


@pytest.mark.parametrize("first_labelled", [True, False])
def test_collate_refuses_samples_with_other_fields_naming_them(first_labelled: bool) -> None:
    """Neither the first sample's fields (the labels of the whole batch dropped) nor a bare
    KeyError 'label'."""
    a, b = _sample("a", HOT), _sample("b", None)
    batch = [a, b] if first_labelled else [b, a]
    what = ("sample 'b' lacks the field(s) ['label']" if first_labelled
            else "sample 'a' has the extra field(s) ['label']")
    first, fields = (("'a'", "['__key__', 'label', 's2']") if first_labelled
                     else ("'b'", "['__key__', 's2']"))
    with pytest.raises(ValueError, match=rf"^collate: {re.escape(what)}: expected the fields "
                                         rf"of sample {first}, the batch's first, "
                                         rf"{re.escape(fields)} .*missing_labels='fill'"):
        collate(batch)


def test_collate_refuses_an_array_of_another_dtype_naming_sample_and_field() -> None:
    with pytest.raises(ValueError, match=r"^collate: sample 'b': field 'label' is float32 "
                                         r"\(3,\); expected uint8 \(3,\) as in sample 'a'"):
        collate([_sample("a", HOT), _sample("b", HOT.astype(np.float32))])
    with pytest.raises(ValueError, match=r"^collate: sample 'b': field 'label' is uint8 \(2,\); "
                                         r"expected uint8 \(3,\)"):
        collate([_sample("a", HOT), _sample("b", HOT[:2])])
    ok = collate([_sample("a", HOT), _sample("b", HOT)])
    assert ok["label"].shape == (2, 3) and ok["__key__"] == ["a", "b"]


# ------------------------------------------------------------------ bigearthnet layout
S2_PATCH = "S2A_MSIL2A_20170617T113321_36_85"
S1_PATCH = "S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85"  # its S1 pair


def test_bigearthnet_names_patch_folders_without_a_labels_file(
        sample_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A patch pair whose labels files are gone is left out (its labels and the S1 patch's
    pairing are in them) with one warning counting the folders and naming one."""
    root = tmp_path / "ben"
    shutil.copytree(sample_data / "bigearthnet", root)
    gone = [root / "BigEarthNet-S2-Example" / S2_PATCH, root / "BigEarthNet-S1-Example" / S1_PATCH]
    for folder in gone:
        for f in folder.glob("*_labels_metadata.json"):
            f.unlink()
    with caplog.at_level(logging.WARNING, logger="eofm.data_shards.layout_readers"):
        layout, items = discover(root)
    assert layout == "bigearthnet" and len(items) == 5
    assert S2_PATCH not in {i.key for i in items}
    warned = [r.getMessage() for r in caplog.records if "patch folder" in r.getMessage()]
    assert warned == [
        f"{root}: 2 patch folder(s) hold band files but no *_labels_metadata.json, so the "
        "bigearthnet layout leaves them out (the file holds a patch's labels, and an S1 patch's "
        f"S2 pair), e.g. {min(gone)}"]


def test_bigearthnet_with_every_labels_file_warns_nothing(
        sample_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eofm.data_shards.layout_readers"):
        layout, items = discover(sample_data / "bigearthnet")
    assert layout == "bigearthnet" and len(items) == 6
    assert not [r for r in caplog.records if "patch folder" in r.getMessage()]


# ------------------------------------------------------------------ pooled builds
SCENE = "sentinel2_l1c_scene"  # a 384 px Sentinel-2 L1C scene without labels
TILE = 128  # the scene -> 9 unlabelled tiles; EuroSAT files of 128 px -> one sample each
BEN_TILE = 120  # a BigEarthNet S2 patch (120 px) -> one sample; the scene -> 9
BEN_BANDS = ["B02", "B03", "B04", "B08"]  # shared by the L2A patches and the L1C scene
FORMATS = {"wds": "ds", "zarr": "ds.zarr"}


def _pool(root: Path, labelled: Path, unlabelled: Path, **kw) -> dict[str, Path]:
    """``labelled`` and ``unlabelled`` built as one dataset (``eofm-shard build LABELLED
    UNLABELLED``) in each format: ``{format: path}``."""
    out = {}
    for fmt, name in FORMATS.items():
        build(BuildConfig(str(labelled), str(root / name), more_sources=[str(unlabelled)],
                          format=fmt, progress=False, **kw))
        out[fmt] = root / name
    return out


@pytest.fixture(scope="module")
def pooled_class(sample_data: Path, eurosat_folder, tmp_path_factory) -> dict[str, Path]:
    """Two EuroSAT classes of 2 images pooled with the unlabelled scene: 4 + 9 samples."""
    root = tmp_path_factory.mktemp("pooled_class")
    src = eurosat_folder(root / "eurosat", classes=2, per_class=2, size=TILE)
    return _pool(root, src, sample_data / SCENE, ingest=IngestOptions(tile=TILE))


@pytest.fixture(scope="module")
def pooled_multilabel(sample_data: Path, tmp_path_factory) -> dict[str, Path]:
    """The 6 bundled BigEarthNet S2 patches pooled with the unlabelled scene: 6 + 9 samples."""
    return _pool(tmp_path_factory.mktemp("pooled_multilabel"),
                 sample_data / "bigearthnet" / "BigEarthNet-S2-Example", sample_data / SCENE,
                 ingest=IngestOptions(tile=BEN_TILE, bands={"s2": BEN_BANDS}))


def _labels(path: Path, fmt: str, **kw) -> dict[str, np.ndarray | None]:
    """Each sample's ``label`` (None: none) by key, read by the format's reader."""
    if fmt == "zarr":
        ds = ZarrDataset(path, **kw)
        return {s["__key__"]: s.get("label") for s in map(ds.__getitem__, range(len(ds)))}
    return {s["__key__"]: s.get("label") for s in _read(path, **kw)}


def _manifest(path: Path, fmt: str):
    return ZarrDataset(path).manifest if fmt == "zarr" else load_manifest(path)


def _unlabelled(key: str) -> bool:
    return key.startswith(f"{SCENE}_")  # pooled keys start with the input's folder name


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_pooled_class_build_lists_the_labelled_classes_and_reads_minus_one(
        pooled_class: dict[str, Path], fmt: str) -> None:
    """No class "None"; the manifest counts the unlabelled samples; both formats read them as
    class -1 (the shard reader fills it in, the zarr store holds it) and the others as their
    folder's class; ``absent`` leaves exactly them without a label; verify finds nothing."""
    path = pooled_class[fmt]
    m = _manifest(path, fmt)
    assert (m.labels.kind, m.labels.classes) == ("class", ["Class0", "Class1"])
    assert m.extra["counters"][UNLABELLED_COUNTER] == 9
    got = _labels(path, fmt)
    assert len(got) == 13 and sum(map(_unlabelled, got)) == 9
    for key, y in got.items():
        want = -1 if _unlabelled(key) else m.labels.classes.index(key.split("_")[1])
        assert (y.dtype, y.shape, int(y)) == (np.int64, (), want), key
    assert {k for k, y in _labels(path, fmt, missing_labels="absent").items()
            if y is None} == {k for k in got if _unlabelled(k)}
    assert verify(path) == []
    assert "labels    class, 2 classes: Class0 | Class1; 9 samples unlabelled" in summary(path)


def test_both_formats_of_a_pooled_build_read_the_same_labels(
        pooled_class: dict[str, Path], pooled_multilabel: dict[str, Path]) -> None:
    for pooled in (pooled_class, pooled_multilabel):
        shards, store = (_labels(pooled[fmt], fmt) for fmt in FORMATS)
        assert shards.keys() == store.keys()
        for key, y in shards.items():
            z = store[key]
            assert (z.dtype, z.shape) == (y.dtype, y.shape) and np.array_equal(z, y), key


def test_pretraining_reads_a_pooled_class_dataset(pooled_class: dict[str, Path]) -> None:
    """The training loader (default reader options) stacks labelled and unlabelled samples
    into one batch: it used to stop at the first unlabelled sample (SampleError, or a batch
    losing its labels, or a KeyError)."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.data import build_loader

    cfg = load_config(None, [f"data.path={pooled_class['wds']}", "data.num_workers=0",
                             "data.batch_size=13", "data.shuffle_buffer=13"])
    loader, _ = build_loader(cfg, 0, 1)
    (batch,) = list(loader)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (13,)
    assert sorted(batch["label"].tolist()) == [-1] * 9 + [0, 0, 1, 1]
    assert [int(y) for k, y in zip(batch["__key__"], batch["label"], strict=True)
            if _unlabelled(k)] == [-1] * 9


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_pooled_multilabel_build_reads_all_zero_vectors(
        pooled_multilabel: dict[str, Path], sample_data: Path, fmt: str) -> None:
    """It used to fail with "TypeError: 'NoneType' object is not iterable"; the classes are the
    patches' label names, the scene's samples read as all-zero vectors, a batch stacks."""
    path = pooled_multilabel[fmt]
    names = sorted({n for f in (sample_data / "bigearthnet").rglob("*_labels_metadata.json")
                    for n in json.loads(f.read_text())["labels"]})
    m = _manifest(path, fmt)
    assert (m.labels.kind, m.labels.classes) == ("multilabel", names)
    assert m.extra["counters"][UNLABELLED_COUNTER] == 9
    got = _labels(path, fmt)
    assert len(got) == 15 and sum(map(_unlabelled, got)) == 9
    for key, y in got.items():
        assert y.dtype == np.uint8 and y.shape == (len(names),), key
        assert (y.sum() == 0) == _unlabelled(key), key
    batch = collate([{"__key__": k, "label": y} for k, y in got.items()])
    assert batch["label"].shape == (15, len(names))
    assert {k for k, y in _labels(path, fmt, missing_labels="absent").items()
            if y is None} == {k for k in got if _unlabelled(k)}
    assert verify(path) == []


def test_the_zarr_store_lists_its_unlabelled_rows(pooled_class: dict[str, Path]) -> None:
    ds = ZarrDataset(pooled_class["zarr"])
    assert ds.arrays["labels"].shape == (len(ds),)  # one row per sample, as every array
    assert {ds.keys[r] for r in ds.unlabelled} == {k for k in ds.keys if _unlabelled(k)}
    with pytest.raises(ValueError, match=r"^missing_labels: expected one of fill, absent, got "
                                         r"'zeros'$"):
        ZarrDataset(pooled_class["zarr"], missing_labels="zeros")


def test_a_zarr_store_with_a_bad_unlabelled_rows_attribute_is_refused(
        pooled_class: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "ds.zarr"
    shutil.copytree(pooled_class["zarr"], store)
    zarr.open_group(str(store), mode="r+").attrs["unlabelled_rows"] = [0, 13]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(store / 'zarr.json'))}: the group "
                                         r"attribute 'unlabelled_rows' \(the rows of unlabelled "
                                         r"samples\): expected a list of row numbers in 0\.\.12, "
                                         r"got \[0, 13\]$"):
        ZarrDataset(store)


def test_verify_accepts_class_minus_one_and_refuses_other_labels_outside_the_classes(
        tmp_path: Path, pooled_class: dict[str, Path]) -> None:
    """-1 is the class of an unlabelled sample, written or filled in; 3 of 3 classes and -2
    are refused, in shards (labels.npy) and, now checked too, in a zarr store's rows."""
    root = _dataset(tmp_path / "ds", [np.array(v, np.int64) for v in (2, -1, 3, -2)] + [None],
                    CLASSES)
    assert [str(p) for p in verify(root)] == [
        f"{root / SHARD}: sample k2: labels.npy is class 3, outside 0..2 (the manifest lists 3 "
        "classes)",
        f"{root / SHARD}: sample k3: labels.npy is class -2, outside 0..2 (the manifest lists 3 "
        "classes)"]
    store = tmp_path / "ds.zarr"
    shutil.copytree(pooled_class["zarr"], store)
    ds = ZarrDataset(store)
    row = min(set(range(len(ds))) - ds.unlabelled)
    zarr.open_group(str(store), mode="r+")["labels"][row] = 2
    assert [str(p) for p in verify(store)] == [
        f"{store}/labels[{row}]: sample {ds.keys[row]}: label is class 2, outside 0..1 (the "
        "manifest lists 2 classes)"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_preview_shows_unlabelled_samples_without_a_label(
        pooled_class: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """Not as class -1 with no name, nor as class 0 (a zarr row read as is)."""
    rep = preview(pooled_class[fmt], tmp_path / "sheet.png", samples=13, cols=5)
    tiles = {t["key"]: t for t in rep["tiles"]}
    assert len(tiles) == 13
    for key, t in tiles.items():
        if _unlabelled(key):
            assert "label" not in t and "label_names" not in t, key
        else:
            assert t["label_names"] == [key.split("_")[1]], key
