"""Samples whose members disagree with each other or with the manifest are named, shard and key,
by the reader (skipped, or SampleError with ``errors="strict"``) and by ``verify``: a valid mask
that is not bool of the pixels' (H, W) (it used to reach the transforms, an IndexError the
reader does not skip, or collate, a stacking error naming no sample), pixels of another shape
than the manifest's, class labels outside 0..K-1 and multi-hot vectors of another length than
K (``verify`` used to say OK)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.checks import verify
from eofm.data_shards.codec import encode_npy
from eofm.data_shards.reader import SampleError, ShardDataset
from eofm.data_shards.transforms import RandomFlipRot
from eofm.data_shards.writer import ShardWriter

BANDS = ["B02", "B03", "B04"]
SHARD = "shard-00-000000.tar"


def _pixels(value: int = 1, hw: tuple[int, int] = (4, 4)) -> bytes:
    return encode_npy(np.full((3, *hw), value, np.uint16))


def _dataset(root: Path, samples: list[dict[str, bytes]], labels: dict | None = None) -> Path:
    """A one-shard S2 dataset at ``root`` (3 bands, manifest shape [3, 4, 4]) whose sample
    ``k<i>`` holds the members ``samples[i]``, with the manifest's ``labels``."""
    root.mkdir(parents=True)
    with ShardWriter(root, "shard-00") as w:
        for i, members in enumerate(samples):
            w.write({"__key__": f"k{i}", **members})
    shards = [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
               "writer": 0} for s in w.finished]
    manifest = {"format": "eofm-shards", "format_version": 1,
                "modalities": {"s2": {"sensor": "s2_l1c", "bands": BANDS, "dtype": "uint16",
                                      "shape": [3, 4, 4], "nodata": [0.0] * 3, "gsd_m": 10.0}},
                "labels": labels, "shards": shards, "extra": {"s2_offset": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


BAD_VALID = {
    "shape": np.ones((2, 2), bool),
    "uint8": np.ones((4, 4), np.uint8),
    "float": np.zeros((4, 4), np.float32),
}


@pytest.mark.parametrize("bad", sorted(BAD_VALID))
def test_a_valid_mask_of_another_shape_or_dtype_is_a_named_skipped_sample(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    mask = BAD_VALID[bad]
    root = _dataset(tmp_path / "ds", [
        {"s2.npy": _pixels(1), "s2.valid.npy": encode_npy(mask)},
        {"s2.npy": _pixels(2), "s2.valid.npy": encode_npy(np.ones((4, 4), bool))}])
    for transform in (RandomFlipRot(), None):  # a transform used to raise IndexError
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="eofm.data_shards.reader"):
            got = list(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0,
                                    transform=transform, max_skip_fraction=1.0))
        assert [s["__key__"] for s in got] == ["k1"]
        assert f"{SHARD}/k0: s2.valid.npy is {mask.dtype} {mask.shape}; expected bool (4, 4)" \
            in caplog.text
    with pytest.raises(SampleError, match=rf"{SHARD}/k0: s2\.valid\.npy is {mask.dtype}"):
        list(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0, errors="strict"))
    assert [str(p) for p in verify(root)] == [
        f"{root / SHARD}: sample k0: s2.valid.npy is {mask.dtype} {list(mask.shape)}, expected "
        "bool [4, 4] (the pixels' height and width)"]


def test_pixels_of_another_shape_than_the_manifest_are_a_sample_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", [{"s2.npy": _pixels(1, (2, 2))}, {"s2.npy": _pixels(2)}])
    with pytest.raises(SampleError, match=rf"{SHARD}/k0: s2\.npy is uint16 \(3, 2, 2\); "
                                          r"manifest says uint16 with 3 bands, shape \(3, 4, 4\)"):
        list(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0, errors="strict"))
    got = list(ShardDataset(root, shuffle_shards=False, shuffle_buffer=0, max_skip_fraction=1.0))
    assert [s["__key__"] for s in got] == ["k1"]
    assert any("k0: s2 is uint16 [3, 2, 2], manifest says uint16 [3, 4, 4]" in str(p)
               for p in verify(root))


CLASSES = {"kind": "class", "classes": ["a", "b", "c"]}


@pytest.mark.parametrize(("label", "what"), [
    (np.array(7, np.int64), "is class 7, outside 0..2 (the manifest lists 3 classes)"),
    (np.array(-2, np.int64), "is class -2, outside 0..2 (the manifest lists 3 classes)"),
    (np.array(1.0, np.float32), "is float32 [], expected one integer class index 0..2 (the "
                                "manifest lists 3 classes)"),
])
def test_verify_names_class_labels_outside_the_manifests_classes(
        tmp_path: Path, label: np.ndarray, what: str) -> None:
    root = _dataset(tmp_path / "ds", [
        {"s2.npy": _pixels(1), "labels.npy": encode_npy(np.array(2, np.int64))},
        {"s2.npy": _pixels(2), "labels.npy": encode_npy(label)}], labels=CLASSES)
    assert [str(p) for p in verify(root)] == [f"{root / SHARD}: sample k1: labels.npy {what}"]


def test_verify_names_multi_hot_labels_of_another_length(tmp_path: Path) -> None:
    labels = {"kind": "multilabel", "classes": ["a", "b", "c"]}
    root = _dataset(tmp_path / "ds", [
        {"s2.npy": _pixels(1), "labels.npy": encode_npy(np.array([1, 0, 1], np.uint8))},
        {"s2.npy": _pixels(2), "labels.npy": encode_npy(np.array([1, 0], np.uint8))}],
        labels=labels)
    assert [str(p) for p in verify(root)] == [
        f"{root / SHARD}: sample k1: labels.npy is a multi-hot vector of shape [2], expected "
        "[3] (the manifest lists 3 classes)"]


def test_verify_passes_labels_within_the_manifests_classes(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", [
        {"s2.npy": _pixels(i), "labels.npy": encode_npy(np.array(i, np.int64)),
         "s2.valid.npy": encode_npy(np.eye(4, dtype=bool))} for i in range(3)], labels=CLASSES)
    assert verify(root) == []
