"""DeepSpeed checkpoints resume on another world size through DeepSpeed's universal format:
the weights and optimiser moments come back exactly (the next step matches the job that never
stopped), and without ``runtime.resume_elastic`` the mismatch is refused, not skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from universal_worker import run_jobs

from eofm.pretrain import zero_checkpoint
from eofm.pretrain.checkpoint import CheckpointManager, UnreadableCheckpoints
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, PreemptionHandler, StopRequested
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


def _conversion_ending(monkeypatch: pytest.MonkeyPatch, code: str) -> list[list[str]]:
    """Make to_universal's ds_to_universal a stand-in that starts writing its output folder,
    then runs ``code`` (which ends it); the commands it was given, one per conversion."""
    calls: list[list[str]] = []
    real = subprocess.Popen

    def popen(cmd: list[str], **kwargs: Any) -> Any:
        calls.append(cmd)
        out = cmd[cmd.index("--output_folder") + 1]
        script = (f"import os, signal, sys; os.makedirs({out!r}); "
                  f"open(os.path.join({out!r}, 'part'), 'w').close(); {code}")
        return real([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(zero_checkpoint.subprocess, "Popen", popen)
    return calls


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_stop_signal_during_the_conversion_is_a_stop_not_a_damaged_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: str) -> None:
    """SLURM's SIGTERM/SIGUSR1 or Ctrl-C reach the whole process group, ds_to_universal too:
    killed by one, the conversion raises StopRequested (the requeue status) on every rank,
    with no fallback to an earlier checkpoint and no universal folder left. Before, it was a
    failed conversion: each earlier checkpoint was tried, then UnreadableCheckpoints (exit 2,
    'move them away'), and the job was not requeued."""
    _fake_checkpoint(tmp_path, ranks=2)
    older = tmp_path / "step_000000001"
    older.mkdir()
    for r in range(2):
        (older / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"not a shard")
    (older / DS_MARKER).write_text("1\n")
    calls = _conversion_ending(
        monkeypatch, f"signal.signal(signal.{sig}, signal.SIG_DFL); "
                     f"os.kill(os.getpid(), signal.{sig}); signal.pause()")
    with pytest.raises(StopRequested, match=rf"step_000000003: the conversion to DeepSpeed's "
                                            rf"universal format was cut short \(ds_to_universal "
                                            rf"was killed by {sig}\)") as stop:
        CheckpointManager(tmp_path, rank=0).load_deepspeed(_Engine(False), elastic=True)
    assert stop.value.code == REQUEUE_EXIT_CODE
    assert len(calls) == 1  # no fallback to step 1
    assert not any((tmp_path / "universal").iterdir())  # nothing half converted left


def test_a_conversion_failing_while_a_stop_is_requested_is_a_stop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that exits with an error while the job's handler holds a stop (its
    workers killed first, say) is a stop too; without one, the same exit is a failure."""
    folder = _fake_checkpoint(tmp_path, ranks=2)
    target = tmp_path / "universal" / folder.name
    _conversion_ending(monkeypatch, "sys.exit(1)")
    with pytest.raises(RuntimeError, match="ds_to_universal failed \\(exit 1\\)"):
        to_universal(folder, target, workers=1, progress=False)
    with PreemptionHandler() as preempt:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preempt.should_stop
        with pytest.raises(StopRequested, match=r"cut short \(received SIGUSR1; "
                                                r"ds_to_universal exited with 1\)"):
            to_universal(folder, target, workers=1, progress=False)
    assert not target.exists() and not any((tmp_path / "universal").iterdir())
    with pytest.raises(UnreadableCheckpoints):  # the handler is gone: a failure again
        CheckpointManager(tmp_path, rank=0).load_deepspeed(_Engine(False), elastic=True)


def test_every_rank_stops_when_rank_zero_s_conversion_was_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank other than 0 (which converts nothing itself) raises the stop rank 0 broadcasts,
    not a failure it would fall back past."""
    from eofm.pretrain import distributed

    _fake_checkpoint(tmp_path, ranks=2)
    from_rank0: list[Any] = [[("step_000000003", 2, False)],
                             ("StopRequested", "step_000000003: the conversion was cut short")]
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: from_rank0.pop(0))
    with pytest.raises(StopRequested, match="the conversion was cut short"):
        CheckpointManager(tmp_path, rank=1).load_deepspeed(_Engine(False), elastic=True)
    assert not from_rank0


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
