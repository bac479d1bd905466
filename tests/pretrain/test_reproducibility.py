"""Reproducibility of pretraining: a run stopped by SIGUSR1 and resumed equals an uninterrupted
one bit for bit on the CPU (every logged loss, the weights, the optimiser, the data position,
the objective's own state and the saved RNG states), for every objective, with and without
loader workers; and the loader never draws from the global RNG that checkpoints save.

tests/pretrain/test_trainer.py covers a SIGKILLed MAE run with no workers (weights and sample
order) and test_selectivemae_pruning.py SelectiveMAE's loss record; this module covers the
objectives' own draws and schedules (SatMAE++ pyramids, SelectiveMAE's PSTS stages across a
stop, SoftCon's views, EMA target and momentum schedule) and what a resumed run leaves in its
checkpoint for the next resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.reader import ShardDataset
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import load_config
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE
from eofm.pretrain.trainer import Trainer

STEPS, STOP_AT = 6, 3  # 144 tiles / 16 = 9 steps an epoch

OBJECTIVES = {
    "mae": [],
    # drop path draws from the global torch RNG every step (the other cases draw nothing
    # from it): only here does a resume that did not restore the saved RNG state part
    "mae_droppath": ["model.overrides={drop_path_rate: 0.2}"],
    "satmaepp": ["objective.name=satmaepp", "objective.norm_pix_loss=false", "model.img_size=16",
                 "data.crop_size=32", "objective.params={num_scales: 2}"],
    # PSTS stages at 1/6, 2/6, 4/6 of the run: the stop falls between two stage changes;
    # pruning on: the loss record decides which samples step 4 on keeps
    "selectivemae": ["objective.name=selectivemae", "objective.mask_ratio=0.85",
                     "objective.params={kept_mask_ratio: 0.25, stage_fractions: [0.17, 0.34, "
                     "0.67], prune_low_loss_ratio: 0.5, prune_anneal_fraction: 0.0}"],
    # a low momentum so the EMA target moves visibly; random crops, flips and brightness
    "softcon": ["objective={_replace_: true, name: softcon, params: {proj_hidden_dim: 64, "
                "proj_dim: 32, pred_hidden_dim: 64, momentum: 0.9, brightness: 0.1}}"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def config(tiny_run_config) -> Path:
    """test_trainer.py's tiny run, with radiometric jitter on (one more per-step draw)."""
    return tiny_run_config({"data": {"jitter_gain": 0.3, "jitter_shift": 0.5},
                            "schedule": {"steps": STEPS}}, name="repro")


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in
            map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _final(out: Path) -> dict:
    path = CheckpointManager(out / "checkpoints", rank=0).latest()
    assert path is not None, out
    return CheckpointManager.load(path)


def _assert_same(a: object, b: object, where: str) -> None:
    """Nested checkpoint contents equal exactly (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _stop_with_sigusr1_at(monkeypatch: pytest.MonkeyPatch, stop_at: int) -> None:
    """SIGUSR1 (SLURM's warning) arrives during step ``stop_at``; the trainer's handler
    catches it and the run checkpoints at the end of that step and exits for requeue."""
    hook = Trainer._hook

    def signalling(self: Trainer, name: str, *args: object) -> None:
        if name == "on_step_start" and args[0] == stop_at - 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        hook(self, name, *args)

    monkeypatch.setattr(Trainer, "_hook", signalling)


@pytest.mark.parametrize(("objective", "workers"), [
    ("mae", 0), ("mae", 2), ("mae_droppath", 0), ("satmaepp", 0), ("selectivemae", 0),
    ("softcon", 1)])
def test_a_run_stopped_and_resumed_equals_an_uninterrupted_one(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: str,
        workers: int) -> None:
    over = [*OBJECTIVES[objective], f"data.num_workers={workers}"]

    def trainer(name: str) -> Trainer:
        return Trainer(load_config(str(config), [f"runtime.out_dir={tmp_path / name}", *over]))

    assert trainer("ref").fit() == 0
    with monkeypatch.context() as m:
        _stop_with_sigusr1_at(m, STOP_AT)
        assert trainer("split").fit() == REQUEUE_EXIT_CODE
    assert _final(tmp_path / "split")["step"] == STOP_AT
    resumed = trainer("split")
    assert resumed.fit() == 0 and resumed.step == STEPS
    ref, split = _losses(tmp_path / "ref"), _losses(tmp_path / "split")
    assert sorted(ref) == sorted(split) == list(range(1, STEPS + 1))
    assert split == ref  # bit for bit: before the stop (the same run twice) and after it
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "split")
    for key in ("step", "model", "optimizer", "data", "rng", "schedule", "nonfinite",
                "objective_files"):
        _assert_same(a.get(key), b.get(key), key)
    if a["objective_files"] == [True]:  # SelectiveMAE's loss record
        _assert_same(*(CheckpointManager(tmp_path / n / "checkpoints", rank=0)
                       .load_rank_state(STEPS) for n in ("ref", "split")), "objective")


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_leaves_the_global_rng_alone(scene_tiles_32: Path, workers: int) -> None:
    """Checkpoints save the global torch RNG; a DataLoader iterator draws its base seed from it
    unless given its own generator, and a resumed run opens its iterator at another point of
    the RNG stream than the uninterrupted run did, so the two streams part (any dropout or drop
    path would then differ). The loader's workers seed every sample from its position."""
    ds = ShardDataset(str(scene_tiles_32), bands={"s2": ["B02"]}, shuffle_buffer=20)
    loader = ShardLoader(ds, batch_size=16, num_workers=workers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = next(iter(loader))["__key__"]
    assert torch.equal(torch.get_rng_state(), before)
    loader.set_epoch(0)
    assert next(iter(loader))["__key__"] == first


def _two_rank_worker(rank: int, port: int, cfg_path: str, root: str, objective: str) -> None:
    """Under 2 gloo ranks: an uninterrupted run, then one that rank 1 alone is told to stop
    (SIGUSR1: every rank must agree to stop at the same step) and that resumes."""
    from eofm.pretrain import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)

    def trainer(name: str) -> Trainer:
        return Trainer(load_config(cfg_path, [f"runtime.out_dir={Path(root) / name}",
                                              f"schedule.steps={STEPS - 2}",
                                              *OBJECTIVES[objective]]))

    try:
        assert trainer("ref").fit() == 0
        hook = Trainer._hook

        def signalling(self: Trainer, name: str, *args: object) -> None:
            if name == "on_step_start" and args[0] == STOP_AT - 2 and rank == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            hook(self, name, *args)

        Trainer._hook = signalling  # type: ignore[method-assign]
        assert trainer("split").fit() == REQUEUE_EXIT_CODE
        Trainer._hook = hook  # type: ignore[method-assign]
        assert trainer("split").fit() == 0
    finally:
        D.teardown()


@pytest.mark.parametrize("objective", ["softcon", "selectivemae"])
def test_two_ranks_stopped_and_resumed_equal_an_uninterrupted_run(
        config: Path, tmp_path: Path, spawn_two_ranks, objective: str) -> None:
    """DDP over 2 gloo ranks (SoftCon: soft targets over the gathered global batch, an EMA
    target on every rank; SelectiveMAE: a loss record per rank): 4 steps straight, or stopped
    after 2 by a signal to one rank and resumed: the same losses and the same checkpoint,
    every rank's RNG, data position and objective state."""
    spawn_two_ranks(_two_rank_worker, str(config), str(tmp_path), objective)
    ref, split = _losses(tmp_path / "ref"), _losses(tmp_path / "split")
    assert sorted(ref) == list(range(1, STEPS - 1)) and split == ref
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "split")
    assert a["step"] == b["step"] == STEPS - 2 and len(a["rng"]) == 2
    assert (tmp_path / "split" / "checkpoints" / "step_000000002.pt").exists()  # the stop
    for key in ("model", "optimizer", "data", "rng", "schedule", "objective_files"):
        _assert_same(a.get(key), b.get(key), key)
    for rank, own in enumerate(a["objective_files"]):
        if own:
            _assert_same(*(CheckpointManager(tmp_path / n / "checkpoints", rank=rank)
                           .load_rank_state(STEPS - 2) for n in ("ref", "split")), "objective")
