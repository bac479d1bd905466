"""``ZarrDataset.__getitems__``: a DataLoader batch read with one orthogonal selection per
array gives exactly what ``[ds[i] for i in indices]`` gives (every key, type, dtype, shape and
byte; arrays each sample owns), for unsorted, negative and repeated indices, labelled and
unlabelled samples (``missing_labels`` fill and absent), several modalities, a band
selection and a ``seg`` array; each chunk it reads is still checked before it is decoded
(:mod:`eofm.data_shards.chunk_guard`), and torch's DataLoader calls it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader
from zstd_like import zstd_frame

from eofm.data_shards.build import UNLABELLED_CLASS, BuildConfig, build
from eofm.data_shards.chunk_guard import ChunkTooLarge
from eofm.data_shards.reader import collate
from eofm.data_shards.zarr_store import UNLABELLED_ATTR, ZarrDataset

UNLABELLED = [1, 4, 7]  # rows of the EuroSAT store marked as built without a label
INDICES = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8],  # every sample, in order
    [7, 2, 5, 0],  # unsorted
    [-1, -9, 3, -5],  # negative (-9: row 0)
    [4, 4, 1, -5, 4, 0, 0],  # repeated (-5 is row 4 again)
    [1, 7],  # only unlabelled samples
    [6],
    [],
]


@pytest.fixture(scope="module")
def eurosat_store(tmp_path_factory: pytest.TempPathFactory, tiny_eurosat) -> Path:
    """Nine EuroSAT samples (class labels, 13 bands of 8 x 8) as a zarr store, with a ``seg``
    array and rows :data:`UNLABELLED` recorded as unlabelled (labels row -1, as a pooled
    build writes them). Read only."""
    tmp = tmp_path_factory.mktemp("zarr_batched")
    out = tmp / "ds.zarr"
    build(BuildConfig(str(tiny_eurosat(tmp / "eurosat", classes=3, per_class=3)), str(out),
                      format="zarr", progress=False))
    group = zarr.open_group(str(out), mode="r+")
    n = group["s2"].shape[0]
    seg = group.create_array("seg", shape=(n, 8, 8), chunks=(1, 8, 8), dtype="uint8",
                             fill_value=0, config={"write_empty_chunks": True})
    seg[...] = (np.arange(n * 64) % 7).astype(np.uint8).reshape(n, 8, 8)
    labels = group["labels"]
    for r in UNLABELLED:
        labels[r] = UNLABELLED_CLASS
    group.attrs[UNLABELLED_ATTR] = UNLABELLED
    return out


@pytest.fixture(scope="module")
def ben_store(tmp_path_factory: pytest.TempPathFactory, sample_data: Path) -> Path:
    """The bundled BigEarthNet pairs as a zarr store: six samples of S2 (uint16) and S1
    (float32), multi-hot labels. Read only."""
    out = tmp_path_factory.mktemp("zarr_ben") / "ben.zarr"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(out), format="zarr", progress=False))
    return out


def assert_same_samples(got: list[dict], want: list[dict]) -> None:
    """``got`` and ``want`` hold the same samples: keys in order, value types, and for arrays
    dtype, shape, bytes and ownership of their memory."""
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        assert list(g) == list(w), j
        for k, v in w.items():
            assert type(g[k]) is type(v), (j, k, type(g[k]), type(v))
            if isinstance(v, np.ndarray):
                assert (g[k].dtype, g[k].shape) == (v.dtype, v.shape), (j, k)
                assert g[k].tobytes() == v.tobytes(), (j, k)
                assert g[k].flags.owndata == v.flags.owndata, (j, k)
            else:
                assert g[k] == v, (j, k)


@pytest.mark.parametrize("missing_labels", ["fill", "absent"])
@pytest.mark.parametrize("indices", INDICES)
def test_a_batch_reads_as_its_samples_one_by_one(eurosat_store: Path, missing_labels: str,
                                                 indices: list[int]) -> None:
    ds = ZarrDataset(eurosat_store, missing_labels=missing_labels)
    assert len(ds) == 9 and set(ds.arrays) == {"s2", "s2_valid", "labels", "seg"}
    want = [ds[i] for i in indices]
    assert_same_samples(ds.__getitems__(indices), want)
    # the fixture's fields are there: labels (-1 for the unlabelled rows unless absent), seg
    for i, s in zip(indices, want, strict=True):
        unlabelled = i % 9 in UNLABELLED
        assert ("label" in s) == (missing_labels == "fill" or not unlabelled), i
        assert "seg" in s and s["seg"].shape == (8, 8)
        if "label" in s:
            assert s["label"].shape == () and (int(s["label"]) == UNLABELLED_CLASS) == unlabelled


@pytest.mark.parametrize("bands", [None, {"s2": ["B04", "B03", "B02"], "s1": ["VH"]}])
@pytest.mark.parametrize("indices", [[5, 0, -2, 3, 0], [2], list(range(6))])
def test_several_modalities_and_a_band_selection_read_alike(
        ben_store: Path, bands: dict | None, indices: list[int]) -> None:
    ds = ZarrDataset(ben_store, bands=bands)
    assert ds.modalities == ["s1", "s2"] or ds.modalities == ["s2", "s1"]
    want = [ds[i] for i in indices]
    got = ds.__getitems__(indices)
    assert_same_samples(got, want)
    assert want[0]["s1"].dtype == np.float32 and want[0]["label"].shape == (10,)
    if bands:
        assert want[0]["s2"].shape == (3, 120, 120) and want[0]["s1"].shape == (1, 120, 120)


def test_each_sample_owns_its_arrays_even_when_asked_for_twice(eurosat_store: Path) -> None:
    """The batch's block is not shared: writing into one sample (a transform working in
    place) changes no other, a row asked for twice included."""
    ds = ZarrDataset(eurosat_store)
    a, b = ds.__getitems__([3, 3])
    for k in ("s2", "s2_valid", "label", "seg"):
        assert not np.shares_memory(a[k], b[k]), k
        a[k][...] = 0 if a[k].dtype != bool else ~a[k]
    assert_same_samples([b], [ds[3]])


@pytest.mark.parametrize("bad", [9, -10, 100])
def test_an_index_out_of_range_is_refused_as_one_by_one(eurosat_store: Path, bad: int) -> None:
    ds = ZarrDataset(eurosat_store)
    msg = re.escape(f"index {bad} out of range for 9 samples")
    with pytest.raises(IndexError, match=msg):
        ds[bad]
    with pytest.raises(IndexError, match=msg):
        ds.__getitems__([0, bad, 1])


def test_a_bomb_is_refused_through_the_batched_read(eurosat_store: Path, tmp_path: Path) -> None:
    """The chunk guard checks every chunk of the orthogonal selection before decoding it:
    the bomb's file is named in the guard's words, as for ``ds[i]``; batches without it
    still read."""
    bomb = shutil.copytree(eurosat_store, tmp_path / "bomb.zarr")
    chunk = bomb / "s2_valid" / "c" / "2" / "0" / "0"
    chunk.write_bytes(zstd_frame(4 << 20))
    ds = ZarrDataset(bomb)
    expect = re.escape(f"{chunk}: its zstd frames declare {4 << 20} decoded bytes")
    with pytest.raises(ChunkTooLarge, match=expect):
        ds[2]
    for batch in ([2], [0, 5, 2, 8], [-7, 1]):
        with pytest.raises(ChunkTooLarge, match=expect):
            ds.__getitems__(batch)
    good = ZarrDataset(eurosat_store)
    assert_same_samples(ds.__getitems__([0, 1, 3, 8]), [good[i] for i in (0, 1, 3, 8)])


def test_a_label_left_out_is_not_read(eurosat_store: Path, tmp_path: Path) -> None:
    """With ``missing_labels="absent"`` the batch reads the labels of the labelled samples
    only, as ``ds[i]`` does: a damaged labels chunk of an unlabelled sample stops neither."""
    store = shutil.copytree(eurosat_store, tmp_path / "absent.zarr")
    chunk = store / "labels" / "c" / str(UNLABELLED[0])
    chunk.write_bytes(zstd_frame(1 << 20))
    ds = ZarrDataset(store, missing_labels="absent")
    batch = [UNLABELLED[0], 0, UNLABELLED[0], 2]
    assert_same_samples(ds.__getitems__(batch), [ds[i] for i in batch])
    with pytest.raises(ChunkTooLarge, match=re.escape(str(chunk))):
        ZarrDataset(store).__getitems__(batch)  # "fill" reads it


_CHILD = r"""
import json, sys
from eofm.data_shards.zarr_store import ZarrDataset
def peak_rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
good, bomb = sys.argv[1:3]
ZarrDataset(good).__getitems__([0, 1, 2, 3])  # imports, zarr's event loop: in the baseline
before = peak_rss()
try:
    ZarrDataset(bomb).__getitems__([3, 0, 1, 2])
    error = None
except Exception as e:
    error = [type(e).__name__, str(e)]
print(json.dumps({"error": error, "grew": peak_rss() - before}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS: /proc (Linux)")
def test_a_256_mib_bomb_in_a_batch_is_refused_before_decoding(eurosat_store: Path,
                                                               tmp_path: Path) -> None:
    bomb = shutil.copytree(eurosat_store, tmp_path / "bomb.zarr")
    chunk = bomb / "s2" / "c" / "0" / "0" / "0" / "0"
    chunk.write_bytes(zstd_frame(256 << 20))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(eurosat_store), str(bomb)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and out["error"][0] == "ChunkTooLarge", out
    assert str(chunk) in out["error"][1] and "(1, 13, 8, 8) of uint16" in out["error"][1]
    assert out["grew"] < 48 << 20, f"peak RSS grew {out['grew'] >> 20} MiB"


class _Counting(ZarrDataset):
    """A ZarrDataset counting how it is read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = {"__getitem__": 0, "__getitems__": 0}

    def __getitem__(self, i: int) -> dict:
        self.calls["__getitem__"] += 1
        return super().__getitem__(i)

    def __getitems__(self, indices):
        self.calls["__getitems__"] += 1
        return super().__getitems__(indices)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_dataloader_reads_each_batch_at_once(eurosat_store: Path, workers: int) -> None:
    ds = _Counting(eurosat_store, missing_labels="fill")
    order = [4, 0, 8, 8, 2, 7, 1]
    loader = DataLoader(ds, batch_size=3, sampler=order, collate_fn=collate,
                        num_workers=workers)
    batches = list(loader)
    assert len(batches) == 3
    plain = ZarrDataset(eurosat_store)
    for b, part in zip(batches, (order[:3], order[3:6], order[6:]), strict=True):
        want = collate([plain[i] for i in part])
        assert list(b) == list(want)
        for k, v in want.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k
            else:
                assert v == b[k], k
    if workers == 0:  # the workers' copies count in their own process
        assert ds.calls == {"__getitem__": 0, "__getitems__": 3}
