"""Samples lost with a damaged shard (``errors="skip"``) and resume.

A resumed stream counts the skipped share as the uninterrupted run does (it used to count the
lost samples again over the rest of the epoch alone, and a job that lost 2% ran a whole epoch
fine but failed with TooManySkipped at every requeue). Another split continues a damaged
epoch with each intact sample read once (positions after a lost sample used to be replayed
shifted: samples read twice, others never). An elastic resume from ranks that drifted into
different epochs (a rank that lost samples has fewer batches an epoch) is refused by a
ConfigError naming the cause (it used to be a bare ValueError)."""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.codec import encode_npy
from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.writer import ShardWriter
from eofm.pretrain.config import ConfigError
from eofm.pretrain.resume import resume_elastic

SHARDS, PER = 6, 9  # 54 samples


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="eofm.data_shards.reader")  # the skip warnings


def _dataset(root: Path) -> Path:
    """A synthetic S2 dataset of :data:`SHARDS` shards of :data:`PER` samples (3 bands, 4 x 4
    pixels and a valid mask), sample ``s<shard>_<i>``."""
    with ShardWriter(root, "shard-00", max_samples=PER) as w:
        for n in range(SHARDS * PER):
            w.write({"__key__": f"s{n // PER}_{n % PER}",
                     "s2.npy": encode_npy(np.full((3, 4, 4), n, np.uint16)),
                     "s2.valid.npy": encode_npy(np.ones((4, 4), bool))})
    shards = [{"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
               "writer": 0} for s in w.finished]
    manifest = {"format": "eofm-shards", "format_version": 1,
                "modalities": {"s2": {"sensor": "s2_l1c", "bands": ["B02", "B03", "B04"],
                                      "dtype": "uint16", "shape": [3, 4, 4],
                                      "nodata": [0.0] * 3, "gsd_m": 10.0}},
                "labels": None, "shards": shards, "extra": {"s2_offset": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _damage(root: Path, shard: int, keep: int) -> list[str]:
    """Cut shard number ``shard`` inside the valid mask of its sample ``keep`` (an
    interrupted copy): its first ``keep`` samples stay readable (the one before is complete
    once ``keep``'s first member is read). Returns the keys of those lost."""
    path = root / f"shard-00-{shard:06d}.tar"
    with tarfile.open(path) as t:
        cut = next(m.offset_data for m in t.getmembers()
                   if m.name == f"s{shard}_{keep}.s2.valid.npy")
    path.write_bytes(path.read_bytes()[: cut + 10])
    return [f"s{shard}_{i}" for i in range(keep, PER)]


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, list[str]]:
    """The synthetic dataset with its shard 1 cut after 8 samples: 1 of 54 lost."""
    root = _dataset(tmp_path / "ds")
    return root, _damage(root, 1, 8)


def _loader(root: Path, workers: int, buffer: int, limit: float, rank: int = 0, world: int = 1,
            **kw) -> ShardLoader:
    ds = ShardDataset(root, shuffle_shards=False, shuffle_buffer=buffer, seed=2,
                      max_skip_fraction=limit, rank=rank, world_size=world, **kw)
    return ShardLoader(ds, batch_size=3, num_workers=workers)


@pytest.mark.parametrize(("workers", "buffer", "limit"), [(0, 0, 0.03), (2, 6, 0.05)])
def test_a_resumed_stream_counts_the_skips_as_the_uninterrupted_run(
        damaged: tuple[Path, list[str]], workers: int, buffer: int, limit: float) -> None:
    """One stream loses 1 sample (1 of 54, or 1 of 27 with 2 workers: under ``limit``); the
    job stops after 14 batches, past the damaged shard, and resumes: no TooManySkipped, and
    the same samples in the same order as the uninterrupted epoch."""
    root, lost = damaged
    whole = [k for b in _loader(root, workers, buffer, limit) for k in b["__key__"]]
    assert len(whole) == 53 and not set(lost) & set(whole)
    first, before = _loader(root, workers, buffer, limit), []
    for i, b in enumerate(first):
        before += b["__key__"]
        if i == 13:
            break
    assert lost[0][:3] in {k[:3] for k in before}  # the damaged shard was read before the stop
    resumed = _loader(root, workers, buffer, limit)
    resumed.load_state_dict(first.state_dict())
    after = [k for b in resumed for k in b["__key__"]]  # used to raise TooManySkipped
    assert before + after == whole


@pytest.mark.parametrize("buffer", [0, 6])
def test_another_split_continues_a_damaged_epoch_with_each_intact_sample_once(
        tmp_path: Path, buffer: int) -> None:
    """2 ranks, one of which lost 4 samples of shard 1, stop mid-epoch after reading past it;
    3 ranks x 2 workers read the rest: every intact sample exactly once over both jobs."""
    root = _dataset(tmp_path / "ds")
    lost = _damage(root, 1, 5)
    seen, states = [], []
    for rank in range(2):
        loader = _loader(root, 0, buffer, 0.5, rank, 2, even=False)
        for i, b in enumerate(loader):
            seen += b["__key__"]
            if i == 5:
                break
        states.append(loader.state_dict())
    assert set(lost) < {f"s{n // PER}_{n % PER}" for n in range(27)}  # rank 0's part
    after = []
    for rank in range(3):
        loader = _loader(root, 2, buffer, 0.5, rank, 3, even=False)
        loader.resume_elsewhere(states)
        after += [k for b in loader for k in b["__key__"]]
    twice = [k for k, n in Counter(seen + after).items() if n > 1]
    assert twice == []
    intact = {f"s{n // PER}_{n % PER}" for n in range(SHARDS * PER)} - set(lost)
    assert set(seen + after) == intact


def test_an_elastic_resume_from_ranks_in_different_epochs_is_refused_with_its_cause(
        tmp_path: Path) -> None:
    """Rank 0's part (27 samples) loses 4 of shard 0, so with ``drop_last`` it has 5 batches
    of 4 an epoch, rank 1 six: after 6 steps rank 0 is in epoch 1, rank 1 in epoch 0. An
    elastic resume from there is a ConfigError that names the drift and its cause; the
    positions themselves an ``EpochsDiffer`` listing each rank's epoch."""
    root = _dataset(tmp_path / "ds")
    _damage(root, 0, 5)

    def rank(r: int, world: int) -> ShardLoader:
        ds = ShardDataset(root, shuffle_shards=False, seed=2, max_skip_fraction=0.2, rank=r,
                          world_size=world)
        return ShardLoader(ds, batch_size=4, drop_last=True)

    loaders = [rank(0, 2), rank(1, 2)]
    assert [sum(1 for _ in rank(r, 2)) for r in range(2)] == [5, 6]

    def endless(loader: ShardLoader):
        while True:
            yield from loader

    steps = [endless(x) for x in loaders]
    for _ in range(6):
        for s in steps:
            next(s)
    states = [x.state_dict() for x in loaders]
    assert [s["epoch"] for s in states] == [1, 0]
    with pytest.raises(ConfigError, match=r"different epochs \(epoch 0: 1 rank, epoch 1: 1 "
                                          r"rank\).*skipped as damaged.*\(2 ranks x 0 workers\)"):
        resume_elastic(rank(0, 3), states, "written by 2 ranks, this job has 3", allowed=True,
                       world_size=3, log_layout=lambda line: None)
    from eofm.data_shards.elastic import EpochsDiffer, split_from_states  # new in this fix

    with pytest.raises(EpochsDiffer, match=r"states\[1\]: epoch is 0, rank 0 has 1") as e:
        split_from_states(states)
    assert e.value.epochs == [1, 0]
