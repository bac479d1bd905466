"""The reader's split over ranks x workers on shapes a 2-CPU CI never runs: more streams than
shards (a one-shard dataset on 8 GPUs x 8 workers) and more streams than samples. The reader
splits samples, not shards, so no stream fails for want of a shard (webdataset's "No samples
found"); a stream with nothing to read yields nothing, and the pretraining loader refuses a
rank with no full batch up front (tests/pretrain/test_data.py)."""

from __future__ import annotations

import pytest

from eofm.data_shards.reader import ShardDataset, partition


@pytest.mark.parametrize(("counts", "world", "workers"), [
    ([121], 8, 8),  # the quickstart's one shard on 8 ranks x 8 workers: 64 streams
    ([2465, 1016], 64, 8),  # s2_l1c_64's two shards on 64 ranks x 8 workers
    ([18], 8, 8),  # mae_enmap_cpu's 18 samples over 64 streams: most get none
])
def test_more_streams_than_shards_read_every_sample_once(counts: list[int], world: int,
                                                        workers: int) -> None:
    seen: list[tuple[int, int]] = []
    for rank in range(world):
        for w in range(workers):
            for seg in partition(counts, list(range(len(counts))), rank, world, w, workers,
                                 even=False):
                seen += [(seg.shard, i) for i in range(seg.start, seg.stop)]
    assert sorted(seen) == [(s, i) for s, n in enumerate(counts) for i in range(n)]
    parts = [sum(g.stop - g.start for g in partition(counts, [0, *range(1, len(counts))], r,
                                                     world, w, workers, even=True))
             for r in range(world) for w in range(workers)]
    total = sum(counts)
    assert max(parts) - min(parts) <= 1 and sum(parts) == total // world * world


def test_a_rank_past_the_last_sample_reads_nothing_without_error(scene_tiles_32) -> None:
    """144 tiles on 200 ranks (even split: 0 per rank): the dataset iterates empty."""
    ds = ShardDataset(scene_tiles_32, rank=199, world_size=200)
    assert len(ds) == 0 and list(ds) == []
