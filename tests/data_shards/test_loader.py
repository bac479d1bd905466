"""ShardLoader: a resumed epoch continues in exactly the batch order of an uninterrupted one,
its workers outlive the stop signals meant for their rank, and ``drop_last`` counts agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eofm.data_shards.elastic import split_range
from eofm.data_shards.loader import ShardLoader, epoch_fraction, samples_read
from eofm.data_shards.reader import ShardDataset

# more workers than this machine's 2 cores: torch warns, the tests need the splits
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def _keys(loader: ShardLoader, stop: int | None = None) -> tuple[list[list[str]], dict]:
    """Batches of keys, up to ``stop`` batches (then also the position)."""
    out, state = [], {}
    for i, b in enumerate(loader):
        out.append(list(b["__key__"]))
        if stop is not None and i == stop - 1:
            state = loader.state_dict()
            break
    return out, state


# (rank, world, workers, batch, drop_last, stop): 27 samples per worker of 2, stopped at an
# odd batch; rank 1 of 4 (14 samples, even=False) in worker parts of 4, 5, 5 (2, 3, 3 batches),
# stopped once worker 0 ran dry and with worker 2 due before worker 1
@pytest.mark.parametrize("rank,world,workers,batch,drop_last,stop",
                         [(0, 1, 2, 4, True, 5), (1, 4, 3, 2, False, 5)])
def test_a_resumed_epoch_continues_in_the_uninterrupted_batch_order(
        ben: Path, rank: int, world: int, workers: int, batch: int, drop_last: bool,
        stop: int) -> None:
    def make() -> ShardLoader:
        ds = ShardDataset(ben, shuffle_buffer=6, seed=2, rank=rank, world_size=world,
                          even=False)
        return ShardLoader(ds, batch_size=batch, num_workers=workers, drop_last=drop_last)

    full, _ = _keys(make())
    head, state = _keys(make(), stop)
    assert head == full[:stop]
    resumed = make()
    resumed.load_state_dict(state)
    rest, _ = _keys(resumed)
    assert rest == full[stop:]  # the same batches in the same order, not only the same set
    # and the epoch after it starts at worker 0 again, as in a job that never stopped
    again = make()
    again.set_epoch(1)
    assert _keys(resumed)[0] == _keys(again)[0]


def test_a_rank_reads_other_shards_in_another_epoch(ben: Path) -> None:
    """The shards are laid out in a new order every epoch (seeded by seed and epoch), so a
    rank of two does not read the same half of the shards (the same scenes) every epoch;
    each epoch's two halves still cover the 54 samples once."""
    ds = [ShardDataset(ben, rank=r, world_size=2, seed=0, even=False) for r in range(2)]
    halves = []
    for epoch in range(4):
        for d in ds:
            d.set_position(epoch)
        segs = [d.segments(0, 1) for d in ds]
        assert sum(g.stop - g.start for part in segs for g in part) == 54
        halves.append(frozenset(g.shard for g in segs[0]))
    assert len(set(halves)) > 1, halves


def _pid(sample: dict, rng: np.random.Generator) -> dict:
    sample["pid"] = os.getpid()  # which worker made it
    return sample


def _signal_from_elsewhere(pid: int, *sigs: int) -> None:
    """Send ``sigs`` from another process, as torchrun's killpg or SLURM would."""
    code = f"import os\nfor s in {[int(s) for s in sigs]}: os.kill({pid}, s)"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(params=["default", "spawn"])
def start_method(request):
    """The process-wide start method: the platform's, or spawn (forkserver is Python 3.14's
    default on Linux): the loader forks its workers either way."""
    if request.param == "default":
        yield None
        return
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(request.param, force=True)
    try:
        yield request.param
    finally:
        multiprocessing.set_start_method(before, force=True)


def test_workers_outlive_the_stop_signals_of_their_rank(ben: Path, start_method) -> None:
    """SIGTERM/SIGUSR1/SIGINT sent to a DataLoader worker by another process (torchrun's
    killpg, SLURM signalling every process of the step) leave it reading: the rank stops
    at the step boundary itself. Its own parent (the DataLoader) can still end it."""
    loader = ShardLoader(ShardDataset(ben, transform=_pid), batch_size=3, num_workers=2)
    it = iter(loader)
    batches = [next(it), next(it)]
    pids = {int(p) for b in batches for p in b["pid"]}
    assert len(pids) == 2
    for pid in pids:
        _signal_from_elsewhere(pid, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    time.sleep(0.3)  # let the signals arrive; before the fix the workers die here
    batches += list(it)
    keys = [k for b in batches for k in b["__key__"]]
    assert len(keys) == len(set(keys)) == 54
    assert {int(p) for b in batches for p in b["pid"]} == pids  # the same workers throughout
    # the parent's SIGTERM (how the DataLoader ends a stuck worker) still ends it, cleanly
    worker = loader._dl._iterator._workers[0]  # torch internals: only to watch its exit
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=10)
    assert worker.exitcode == 0


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_length_and_samples_read_agree_with_what_the_loader_yields(
        ben: Path, drop_last: bool) -> None:
    """``len()``, :func:`samples_read` and the loader agree; with ``drop_last`` every worker's
    partial last batch is left out of the epoch (54 = 2 ranks x 3 workers x 9: 2 of each 9)."""
    got, batches = 0, 0
    for rank in range(2):
        loader = ShardLoader(ShardDataset(ben, rank=rank, world_size=2), batch_size=7,
                             num_workers=3, drop_last=drop_last)
        n = [len(b["__key__"]) for b in loader]
        assert len(n) == len(loader)
        got, batches = got + sum(n), batches + len(n)
    want = 2 * 3 * (7 if drop_last else 9)
    assert got == want == samples_read(54, 2, 3, True, 7, drop_last)
    assert samples_read(55, 2, 3, True, 7, drop_last) == want  # the odd sample is left out
    parts = [b - a for a, b in (split_range(54, 0, 2, w, 3, True) for w in range(3))]
    assert parts == [9, 9, 9]


def test_epoch_fraction_counts_the_samples_a_drop_last_epoch_reads(ben: Path) -> None:
    """A position at the end of a drop_last epoch is the whole epoch, not 7/9 of it."""
    loader = ShardLoader(ShardDataset(ben, rank=0, world_size=1), batch_size=7,
                         num_workers=0, drop_last=True)
    it = iter(loader)
    for _ in range(7):  # 7 full batches of the 54: the rest is a partial one, dropped
        next(it)
    epoch, share = epoch_fraction([loader.state_dict()], total=54)
    assert (epoch, share) == (0, 1.0)


def test_epoch_reads_of_a_moved_epoch_counts_what_the_new_split_yields(ben: Path) -> None:
    """1 rank read 9 of 54; 2 ranks go on with the 45 left: 22 each (one past the even share),
    in full batches of 4: 20 each, so 40 of the 45 (what the elastic-resume warning says)."""
    one = ShardLoader(ShardDataset(ben, shuffle_buffer=4, seed=1), batch_size=3)
    _, state = _keys(one, 3)
    got = 0
    for rank in range(2):
        loader = ShardLoader(ShardDataset(ben, rank=rank, world_size=2, shuffle_buffer=4,
                                          seed=1), batch_size=4, drop_last=True)
        assert loader.resume_elsewhere([state]) == 45
        assert loader.epoch_reads(0) == 40
        got += sum(len(b["__key__"]) for b in loader)
    assert got == 40


@pytest.mark.parametrize("workers", [0, 1])
def test_class_labels_collate_in_workers_as_in_the_main_process(
        tmp_path: Path, eurosat_folder, workers: int) -> None:
    """Class-labelled shards (EuroSAT: one 0-d label array per sample) batch through a
    worker process as in the main process: a (batch,) int64 label tensor (collate used to
    slice the 0-d label for its dtype in workers: IndexError at the first batch)."""
    from eofm.data_shards.cli import main

    src = eurosat_folder(tmp_path / "eurosat", classes=2, per_class=3, size=16)
    out = tmp_path / "shards"
    assert main(["build", str(src), "--out", str(out), "--quiet"]) == 0
    ds = ShardDataset(out, bands={"s2": ["B04", "B03"]})
    batches = list(ShardLoader(ds, batch_size=4, num_workers=workers))
    labels = torch.cat([b["label"] for b in batches])
    assert [tuple(b["label"].shape) for b in batches] == [(4,), (2,)]
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    keys = [k for b in batches for k in b["__key__"]]
    assert all(int(lab) == int(k.startswith("Class1")) for k, lab in zip(keys, labels, strict=True))
    assert tuple(batches[0]["s2"].shape) == (4, 2, 16, 16)
