"""Splitting across ranks and workers is disjoint and complete; resume is exact."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from eofm.data_shards.elastic import split_range
from eofm.data_shards.loader import ShardLoader, epoch_fraction
from eofm.data_shards.reader import ShardDataset, partition, segments_at, shard_order
from eofm.data_shards.transforms import Compose, RandomFlipRot, RandomResizedCrop


@pytest.mark.parametrize("counts", [[7, 7, 7, 3], [1], [5, 0, 9, 2, 11], [100]])
def test_partition_disjoint_complete(counts: list[int]) -> None:
    total = sum(counts)
    for world, workers, epoch in itertools.product((1, 2, 3, 8), (1, 2, 3), (0, 1)):
        order = shard_order(len(counts), 3, epoch, True)
        seen: list[tuple[int, int]] = []
        per_rank = []
        for rank in range(world):
            n = 0
            for w in range(workers):
                for seg in partition(counts, order, rank, world, w, workers, even=False):
                    seen += [(seg.shard, i) for i in range(seg.start, seg.stop)]
                    n += seg.stop - seg.start
            per_rank.append(n)
        assert len(seen) == len(set(seen)) == total  # disjoint and complete
        assert max(per_rank) - min(per_rank) <= 1
        even = [sum(s.stop - s.start for w in range(workers)
                    for s in partition(counts, order, r, world, w, workers, even=True))
                for r in range(world)]
        assert even == [total // world] * world  # DDP ranks get equal counts


def test_ranks_and_workers_cover_dataset(ben: Path) -> None:
    keys: list[str] = []
    for rank in range(2):
        ds = ShardDataset(ben, rank=rank, world_size=2, even=False, shuffle_buffer=8, seed=1)
        for batch in ShardLoader(ds, batch_size=4, num_workers=2):
            keys += batch["__key__"]
    assert len(keys) == len(set(keys)) == 54


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_reshuffle_deterministically(ben: Path, workers: int) -> None:
    def order(epoch: int) -> list[str]:
        loader = ShardLoader(ShardDataset(ben, shuffle_buffer=16, seed=5), batch_size=5,
                             num_workers=workers)
        loader.set_epoch(epoch)
        return [k for b in loader for k in b["__key__"]]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    # one loader across epochs (persistent workers) gives the same epochs as fresh loaders
    loader = ShardLoader(ShardDataset(ben, shuffle_buffer=16, seed=5), batch_size=5,
                         num_workers=workers)
    assert [[k for b in loader for k in b["__key__"]] for _ in range(2)] == [order(0), order(1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_and_resume_yields_exactly_the_unseen(ben: Path, workers: int) -> None:
    aug = Compose([RandomResizedCrop(32), RandomFlipRot()])

    def make() -> ShardLoader:
        ds = ShardDataset(ben, shuffle_buffer=10, seed=7, transform=aug)
        return ShardLoader(ds, batch_size=4, num_workers=workers)

    full = [(k, x) for b in make() for k, x in zip(b["__key__"], b["s2"], strict=True)]
    first = make()
    seen = []
    for i, b in enumerate(first):
        seen += b["__key__"]
        if i == 4:
            state = first.state_dict()
            break
    resumed = make()
    resumed.load_state_dict(state)
    rest = [(k, x) for b in resumed for k, x in zip(b["__key__"], b["s2"], strict=True)]
    assert sorted(seen + [k for k, _ in rest]) == sorted(k for k, _ in full)
    assert not set(seen) & {k for k, _ in rest}
    by_key = dict(full)
    for k, x in rest:  # same augmentation drawn for the same sample
        np.testing.assert_array_equal(x.numpy(), by_key[k].numpy())
    assert resumed.epoch == 1 and resumed.state_dict()["consumed"] == {}
    # the interrupted loader itself also continues where its consumer stopped
    again = [k for b in first for k in b["__key__"]]
    assert again == [k for k, _ in rest]


def test_resume_refuses_changed_split(ben: Path) -> None:
    a = ShardLoader(ShardDataset(ben), batch_size=4, num_workers=0)
    b = ShardLoader(ShardDataset(ben), batch_size=4, num_workers=2)
    with pytest.raises(ValueError, match="num_workers was 0, now 2"):
        b.load_state_dict(a.state_dict())
    # the shard order and the sample layout: a position under another one would re-read
    # seen samples and skip unseen ones (they were not compared)
    for kw, why in (({"shuffle_shards": False}, "shuffle_shards was True, now False"),
                    ({"even": False}, "even was True, now False")):
        c = ShardLoader(ShardDataset(ben, **kw), batch_size=4, num_workers=0)
        with pytest.raises(ValueError, match=why):
            c.load_state_dict(a.state_dict())
        with pytest.raises(ValueError, match=why):
            c.resume_elsewhere([a.state_dict()])
    old = {k: v for k, v in a.state_dict().items() if k not in ("even", "shuffle_shards")}
    ShardLoader(ShardDataset(ben), batch_size=4, num_workers=0).load_state_dict(old)


def test_elastic_position_continues_the_epoch_on_another_split(ben: Path) -> None:
    """2 ranks x 2 workers stop mid-epoch; 1 rank x 1 worker continues past the same share of
    the epoch: the rest of the epoch has the right length (some samples again, as many
    skipped, at most that share), and the next epoch is whole."""
    states, seen = [], []
    for rank in range(2):
        ds = ShardDataset(ben, rank=rank, world_size=2, shuffle_buffer=0, seed=3)
        loader = ShardLoader(ds, batch_size=3, num_workers=2)
        for i, b in enumerate(loader):  # 2 batches of 3 per worker: 12 of 27 samples
            seen += b["__key__"]
            if i == 3:
                states.append(loader.state_dict())
                break
    epoch, share = epoch_fraction(states, total=54, even=True)
    assert epoch == 0 and share == pytest.approx(24 / 54)
    one = ShardLoader(ShardDataset(ben, shuffle_buffer=0, seed=3), batch_size=3, num_workers=0)
    one.resume_fraction(epoch, share)
    rest = [k for b in one for k in b["__key__"]]
    assert len(seen) + len(rest) == 54 and len(set(rest)) == len(rest)
    again = set(rest) & set(seen)
    assert len(again) <= 24 and len({*seen, *rest}) == 54 - len(again)
    assert one.epoch == 1  # the epoch ended; the next one is whole and exact
    assert sorted(k for b in one for k in b["__key__"]) == sorted(
        k for b in ShardLoader(ShardDataset(ben, shuffle_buffer=0, seed=3), batch_size=3)
        for k in b["__key__"])
    with pytest.raises(ValueError, match=r"fraction: expected a value in \[0, 1\], got 1.5"):
        one.resume_fraction(0, 1.5)


def test_transforms_move_masks_with_pixels(ben: Path) -> None:
    ds = ShardDataset(ben, transform=Compose([RandomResizedCrop(24, scale=(0.3, 0.6)),
                                              RandomFlipRot()]))
    for s in itertools.islice(iter(ds), 5):
        assert s["s2"].shape == (12, 24, 24) and s["s1"].shape == (2, 24, 24)
        assert s["s2_valid"].shape == (24, 24) and s["s2"].dtype == np.uint16


def test_pipe_urls_read_the_same_samples(ben: Path) -> None:
    local = sorted(k for b in ShardLoader(ShardDataset(ben), batch_size=8) for k in b["__key__"])
    piped = ShardDataset(ben, url_template=f"pipe:cat {ben}/{{name}}")
    assert sorted(s["__key__"] for s in piped) == local
    url = ShardDataset(f"file://{ben}")
    assert sorted(s["__key__"] for s in url) == local


def test_segments_at_follows_the_epoch_layout() -> None:
    counts = [5, 0, 9, 2, 11]
    order = shard_order(len(counts), 3, 1, True)
    layout = [(s, i) for s in order for i in range(counts[s])]
    for world, workers in itertools.product((1, 2, 3), (1, 2)):
        for rank, w in itertools.product(range(world), range(workers)):
            lo, hi = split_range(27, rank, world, w, workers, even=True)
            assert segments_at(np.arange(lo, hi), counts, order) == partition(
                counts, order, rank, world, w, workers, even=True)
    picked = np.sort(np.random.default_rng(0).choice(27, 13, replace=False))
    segs = segments_at(picked, counts, order)
    assert [(g.shard, i) for g in segs for i in range(g.start, g.stop)] == [layout[p] for p in picked]
    assert all(a.shard != b.shard or a.stop < b.start for a, b in itertools.pairwise(segs))


def _stop_midway(ben: Path, world: int, workers: int, batches: int, buffer: int,
                 before: list[dict] | None = None) -> tuple[list[dict], list[str]]:
    """Every rank of a (world x workers) split reads ``batches`` batches of 3, then stops;
    ``before``: the positions of the split it continues. Returns its positions and keys."""
    states, seen = [], []
    for rank in range(world):
        loader = ShardLoader(ShardDataset(ben, rank=rank, world_size=world,
                                          shuffle_buffer=buffer, seed=3),
                             batch_size=3, num_workers=workers)
        if before is not None:
            loader.resume_elsewhere(before)
        for i, b in enumerate(loader):
            seen += b["__key__"]
            if i == batches - 1:
                break
        states.append(loader.state_dict())
    return states, seen


def _finish(ben: Path, world: int, workers: int, buffer: int, before: list[dict]
            ) -> tuple[list[list[str]], list[ShardLoader]]:
    """Each rank of a new split continues from ``before`` to the end of the epoch."""
    keys, loaders = [], []
    for rank in range(world):
        loader = ShardLoader(ShardDataset(ben, rank=rank, world_size=world,
                                          shuffle_buffer=buffer, seed=3),
                             batch_size=3, num_workers=workers)
        loader.resume_elsewhere(before)
        keys.append([k for b in loader for k in b["__key__"]])
        loaders.append(loader)
    assert loader.epoch == 1
    return keys, loaders


@pytest.mark.parametrize("buffer", [0, 6])
@pytest.mark.parametrize("new", [(1, 2), (3, 0), (4, 1)])
def test_another_split_reads_exactly_the_unread_rest(ben: Path, buffer: int,
                                                     new: tuple[int, int]) -> None:
    """2 ranks x 2 workers stop mid-epoch; another split reads exactly what they had not read
    (the tail past its last full rank share excepted, as in any even epoch), each of its ranks
    the same count, and the next epoch is read whole, as a fresh job on that split reads it."""
    states, seen = _stop_midway(ben, 2, 2, batches=3, buffer=buffer)
    assert len(seen) == 18 and states[0]["history"] == []
    rest, loaders = _finish(ben, *new, buffer=buffer, before=states)
    flat = [k for r in rest for k in r]
    assert len(flat) == len(set(flat)) and not set(flat) & set(seen)
    unread = 54 - 18
    assert len(flat) == unread // new[0] * new[0]
    assert len({len(r) for r in rest}) == 1  # DDP ranks stay in step
    nxt = [k for b in loaders[0] for k in b["__key__"]]
    fresh = ShardLoader(ShardDataset(ben, rank=0, world_size=new[0], shuffle_buffer=buffer,
                                     seed=3), batch_size=3, num_workers=new[1])
    fresh.set_epoch(1)
    assert nxt == [k for b in fresh for k in b["__key__"]]


def test_a_job_moved_twice_in_one_epoch_still_reads_each_sample_once(ben: Path) -> None:
    first, seen1 = _stop_midway(ben, 2, 2, batches=2, buffer=5)
    second, seen2 = _stop_midway(ben, 3, 1, batches=2, buffer=5, before=first)
    assert len(second[0]["history"]) == 1  # rank 0 carries it, once
    assert all("history" not in s for s in second[1:])
    rest, _ = _finish(ben, 1, 2, buffer=5, before=second)
    flat = seen1 + seen2 + rest[0]
    assert len(flat) == len(set(flat))
    # 2 ranks x 2 batches of 3 read, 42 left for 3 ranks (14 each); 3 x 2 x 3 read, 24 left
    assert (len(seen1), len(seen2), len(rest[0])) == (12, 18, 24)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_moved_epoch_resumes_exactly_on_its_own_split(ben: Path, workers: int) -> None:
    """Stopped again within the moved epoch, the job resumes on the same split at its next
    unseen sample, augmentations included."""
    aug = Compose([RandomResizedCrop(32), RandomFlipRot()])
    states, _ = _stop_midway(ben, 2, 2, batches=2, buffer=6)

    def make() -> ShardLoader:
        loader = ShardLoader(ShardDataset(ben, shuffle_buffer=6, seed=3, transform=aug),
                             batch_size=3, num_workers=workers)
        loader.resume_elsewhere(states)
        return loader

    full = [(k, x) for b in make() for k, x in zip(b["__key__"], b["s2"], strict=True)]
    first = make()
    for i, _ in enumerate(first):
        if i == 2:
            state = first.state_dict()
            break
    assert len(state["history"]) == 1
    resumed = ShardLoader(ShardDataset(ben, shuffle_buffer=6, seed=3, transform=aug),
                          batch_size=3, num_workers=workers)
    resumed.load_state_dict(state)
    rest = [(k, x) for b in resumed for k, x in zip(b["__key__"], b["s2"], strict=True)]
    # in the same order: the resumed DataLoader starts its turn at the worker that was due
    assert [k for k, _ in rest] == [k for k, _ in full[9:]]
    by_key = dict(full)
    for k, x in rest:  # the same augmentation drawn for the same sample
        np.testing.assert_array_equal(x.numpy(), by_key[k].numpy())
    assert resumed.state_dict()["history"] == []  # the next epoch is a normal one


def test_positions_that_cannot_be_continued_are_refused(ben: Path) -> None:
    states, _ = _stop_midway(ben, 2, 1, batches=1, buffer=0)
    other_seed = ShardLoader(ShardDataset(ben, seed=4), batch_size=3)
    with pytest.raises(ValueError, match="seed was 3, now 4"):
        other_seed.resume_elsewhere(states)
    one = ShardLoader(ShardDataset(ben, seed=3), batch_size=3)
    with pytest.raises(ValueError, match=r"states\[1\]: epoch is 1, rank 0 has 0"):
        one.resume_elsewhere([states[0], {**states[1], "epoch": 1}])
    with pytest.raises(ValueError, match="world_size is 2, but 1 ranks' positions were given"):
        one.resume_elsewhere(states[:1])
    with pytest.raises(ValueError, match=r"consumed: 99 positions taken from a part of 27"):
        one.resume_elsewhere([{**states[0], "consumed": {"0": 99}}, states[1]])


def test_other_ranks_take_the_history_from_rank_zero(ben: Path) -> None:
    """In a moved epoch only rank 0's position carries the earlier splits; rank 1 resumes
    exactly with rank 0's history handed to it."""
    states, _ = _stop_midway(ben, 2, 2, batches=2, buffer=4)

    def rank(r: int) -> ShardLoader:
        loader = ShardLoader(ShardDataset(ben, rank=r, world_size=2, shuffle_buffer=4, seed=3),
                             batch_size=3)
        loader.resume_elsewhere(states)
        return loader

    moved = [rank(0), rank(1)]
    its = [iter(m) for m in moved]
    for it in its:
        next(it)
    saved = [m.state_dict() for m in moved]
    assert "history" not in saved[1] and len(saved[0]["history"]) == 1
    rest = [k for b in its[1] for k in b["__key__"]]
    again = ShardLoader(ShardDataset(ben, rank=1, world_size=2, shuffle_buffer=4, seed=3),
                        batch_size=3)
    again.load_state_dict(saved[1], history=saved[0]["history"])
    assert [k for b in again for k in b["__key__"]] == rest
