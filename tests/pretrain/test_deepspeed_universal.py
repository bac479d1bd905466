"""DeepSpeed checkpoints resume on another world size through DeepSpeed's universal format:
the weights and optimiser moments come back exactly (the next step matches the job that never
stopped), and without ``runtime.resume_elastic`` the mismatch is refused, not skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from universal_worker import run_jobs

from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.zero_checkpoint import DS_MARKER, consolidate, deepspeed_layout, to_universal

pytest.importorskip("deepspeed")
UNOPTIMISED = ("frozen.weight", "frozen.bias", "shadow")  # universal_worker's: they never move




def _assert_close(a: dict, b: dict, atol: float, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=k)


def _check(ckpt: Path, saved: Path, resumed: Path, worlds: tuple[int, int], zero3: bool) -> None:
    """The job resumed on another world size continues exactly as the one that saved."""
    ref, got = (torch.load(f, weights_only=True) for f in (saved, resumed))
    assert deepspeed_layout(ckpt / "step_000000003") == (worlds[0], zero3)
    # eofm-export's reader (weights_only) reassembles the same fp32 weights from the shards
    _assert_close(ref["at_checkpoint"], consolidate(ckpt / "step_000000003")["model"], atol=0.0)
    assert (ref["world"], got["world"]) == worlds
    # what the optimiser does not own (a frozen Linear, a buffer) comes back too, not fresh
    assert torch.equal(got["at_checkpoint"]["frozen.bias"], torch.full((3,), 7.0))
    assert torch.equal(got["at_checkpoint"]["shadow"], torch.arange(5.0) + 0.5)
    _assert_close(ref["at_checkpoint"], got["at_checkpoint"], atol=0.0)  # weights exact
    # the next step's update matches only if Adam's moments, its step count and every group's
    # settings (weight decay 0 on norms, biases, tokens) came back: compared as updates, since
    # a wrong decay or bias correction is small beside the weights but not beside a step
    delta = {name: {k: r["after_step"][k] - r["at_checkpoint"][k] for k in r["at_checkpoint"]}
             for name, r in (("ref", ref), ("got", got))}
    assert all(d.abs().max() > 1e-5 for k, d in delta["ref"].items()
               if k not in UNOPTIMISED), "a parameter did not move"
    _assert_close(delta["ref"], delta["got"], atol=1e-7, rtol=1e-3)
    assert (ckpt / "universal" / "step_000000003" / DS_MARKER).is_file()  # converted once


def test_resume_on_another_world_size(sample_data: Path, tmp_path: Path,
                                      spawn_ranks) -> None:
    """ZeRO-3 saved by 2 ranks (partitions joined in rank order, padding dropped) and resumed
    by 1; ZeRO-2 saved by 1 rank and resumed by 2 (the trainer's
    test_deepspeed_job_resumes_on_another_world_size runs ZeRO-3 2 -> 1 end to end). Three
    starts of forked ranks: the two-rank one resumes ZeRO-2, then saves ZeRO-3."""
    scene = sample_data / "sentinel2_l1c_scene"
    z3, z2 = tmp_path / "zero3", tmp_path / "zero2"

    def job(stage: int, mode: str, folder: Path) -> tuple[int, str, str, str]:
        result = {"save": "saved.pt", "resume": "resumed.pt"}[mode]
        return stage, mode, str(folder / "checkpoints"), str(folder / result)

    spawn_ranks(1, run_jobs, 1, str(scene), [job(2, "save", z2)])
    spawn_ranks(2, run_jobs, 2, str(scene), [job(2, "resume", z2), job(3, "save", z3)])
    spawn_ranks(1, run_jobs, 1, str(scene), [job(3, "resume", z3)])
    wrong = {}
    for name, folder, worlds, zero3 in (("ZeRO-3, 2 -> 1 rank", z3, (2, 1), True),
                                         ("ZeRO-2, 1 -> 2 ranks", z2, (1, 2), False)):
        try:
            _check(folder / "checkpoints", folder / "saved.pt", folder / "resumed.pt", worlds,
                   zero3)
        except AssertionError as e:
            wrong[name] = str(e)[:2000]
    assert not wrong, wrong


def _fake_checkpoint(directory: Path, ranks: int) -> Path:
    folder = directory / "step_000000003"
    folder.mkdir(parents=True)
    for r in range(ranks):
        (folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"not a shard")
    (folder / DS_MARKER).write_text("3\n")
    return folder


class _Engine:
    """What load_deepspeed asks of an engine before it loads anything."""

    def __init__(self, zero3: bool) -> None:
        self.zero3 = zero3

    def zero_optimization_partition_weights(self) -> bool:
        return self.zero3


def test_other_world_size_is_refused_without_elastic(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, ranks=2)
    with pytest.raises(ValueError, match=r"written by 2 ranks, this job has 1; set "
                                         r"runtime.resume_elastic=true"):
        CheckpointManager(tmp_path, rank=0).load_deepspeed(_Engine(False), elastic=False)


def test_another_zero_stage_layout_is_refused(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path, ranks=1)
    (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")  # ZeRO-3's layout
    assert deepspeed_layout(folder) == (1, True)
    with pytest.raises(ValueError, match=r"written with ZeRO-3, this job runs ZeRO-1/2; .*resume "
                                         r"with runtime.zero_stage=3"):
        CheckpointManager(tmp_path, rank=0).load_deepspeed(_Engine(False), elastic=True)


def test_failed_conversion_names_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path, ranks=2)
    target = tmp_path / "universal" / folder.name
    with pytest.raises(RuntimeError, match=f"{folder}: DeepSpeed's ds_to_universal failed"):
        to_universal(folder, target, workers=1)
    assert not target.exists() and not any((tmp_path / "universal").iterdir())


def test_consolidate_refuses_a_folder_with_a_missing_rank(tmp_path: Path) -> None:
    folder = _fake_checkpoint(tmp_path, ranks=3)
    (folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(ValueError, match=r"optimiser files of ranks \[0, 2\]; expected 0...1"):
        consolidate(folder)


def test_consolidate_never_unpickles(tmp_path: Path) -> None:
    """A shard that pickles anything but tensors and DeepSpeed's plain classes is refused."""
    folder = tmp_path / "step_000000001"
    folder.mkdir()
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "hook": os.system}},
               folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ValueError, match=r"weights_only=True\) \(UnpicklingError: .*GLOBAL posix.system"):
        consolidate(folder)
