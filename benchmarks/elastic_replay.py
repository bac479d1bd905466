"""What an elastic resume costs: replaying the stopped split's positions (no data touched).

A job moved to another world size replays, from integers alone, which samples every old
(rank, worker) stream had consumed (:func:`eofm.data_shards.elastic.remaining`). This measures
that replay for epochs of several sizes stopped half-way, with a shuffle buffer and without,
for a 64-rank x 8-worker job (the split barely matters: the work is one draw per consumed
sample). Prints one JSON object per line (with ``bench`` and ``machine``: benchmarks/table.py),
then a table.

Usage: ``python benchmarks/elastic_replay.py [--sizes 100000 1000000] [--buffer 1000]``.
"""

from __future__ import annotations

import argparse
import sys
import time

from table import Records, print_table

from eofm.data_shards.elastic import Split, remaining, split_range


def half_way(total: int, world: int, workers: int) -> Split:
    """Every (rank, worker) of an even split stopped half-way through its part."""
    consumed = []
    for r in range(world):
        row = []
        for w in range(workers):
            lo, hi = split_range(total, r, world, w, workers, even=True)
            row.append((hi - lo) // 2)
        consumed.append(tuple(row))
    return Split(world, workers, True, 0, tuple(consumed))


def main(argv: list[str] | None = None) -> int:
    """Time the replay for every size, with and without a shuffle buffer."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--buffer", type=int, default=1000, help="shuffle buffer of the old split")
    p.add_argument("--world", type=int, default=64)
    p.add_argument("--workers", type=int, default=8)
    a = p.parse_args(argv)
    records = Records("elastic_replay")
    rows = []
    for total in a.sizes:
        for buffer in (0, a.buffer):
            split = half_way(total, a.world, a.workers)
            split = Split(split.world_size, split.num_workers, True, buffer, split.consumed)
            t = time.perf_counter()
            left = remaining(total, seed=0, epoch=3, history=[split])
            dt = time.perf_counter() - t
            rec = {"epoch_samples": total, "consumed": total - len(left),
                   "shuffle_buffer": buffer, "world": a.world, "workers": a.workers,
                   "seconds": round(dt, 3),
                   "us_per_consumed": round(1e6 * dt / max(1, total - len(left)), 3)}
            records.emit(rec)
            rows.append(rec)
    print_table(rows, [("epoch_samples", "epoch samples"), ("consumed", "consumed"),
                       ("shuffle_buffer", "buffer"), ("seconds", "seconds"),
                       ("us_per_consumed", "us/sample")])
    return records.status()


if __name__ == "__main__":
    sys.exit(main())
