"""A real DeepSpeed ZeRO-2 engine (one forked process): a newest complete checkpoint that a
resume cannot load (a damaged shard) is written anew when the run, fallen back to the step
before, trains up to its step again, and the next resume loads it. Before, the save was skipped
because the folder had its ``COMPLETE`` marker: the damaged folder stayed the newest, every
relaunch fell back and retrained to it (exit 0 each time), and eofm-export picked it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from worker_run import as_torchrun_rank

from eofm.pretrain import distributed as dist
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import load_config
from eofm.pretrain.strategy import wrap_model

pytest.importorskip("deepspeed")
SHARD = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _worker(rank: int, port: int, root: str) -> None:
    """Save steps 2 and 4, damage step 4's optimiser shard, resume (a new manager: the next
    process), train to step 4 again and save, resume once more; results to ``root``."""
    as_torchrun_rank(rank, 1, port)
    env = dist.init_distributed()
    cfg = load_config(None, ["runtime.strategy=deepspeed", "runtime.zero_stage=2",
                             "data.path=unused", "data.batch_size=2", "runtime.precision=fp32"])
    torch.manual_seed(0)
    s = wrap_model(nn.Linear(4, 3), cfg, env, torch.device("cpu"), lr=1e-2)
    x = torch.randn(2, 4)

    def train_to(step: int) -> None:
        s.forward_backward(lambda model: model(x).square().mean(), last=True)
        s.finish_step()
        s.save(CheckpointManager(Path(root) / "ckpt"), step, {"step": step})

    folder = Path(root) / "ckpt"
    train_to(2)
    train_to(4)
    shard = folder / "step_000000004" / SHARD
    shard.write_bytes(shard.read_bytes()[:1000])  # a damaged shard in a complete folder
    relaunch = CheckpointManager(folder)
    resumed = s.load(relaunch)["step"]  # falls back to step 2
    s.forward_backward(lambda model: model(x).square().mean(), last=True)
    s.finish_step()
    s.save(relaunch, 4, {"step": 4})  # trained up to step 4 again
    again = s.load(CheckpointManager(folder))["step"]
    Path(root, "result.json").write_text(json.dumps(
        {"resumed": resumed, "again": again, "shard_bytes": shard.stat().st_size}))
    dist.teardown()


def test_a_complete_checkpoint_a_resume_fell_back_past_is_saved_anew(
        tmp_path: Path, spawn_ranks) -> None:
    spawn_ranks(1, _worker, str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["resumed"] == 2  # the damaged step 4 was skipped
    assert result["again"] == 4  # the step saved anew loads
    assert result["shard_bytes"] > 1000
