"""Two forked gloo ranks resume plain (DDP) checkpoints together: when one rank cannot read
the newest file (a node's I/O error, NFS lag) every rank falls back to the same earlier step,
and when none loads on some rank every rank raises UnreadableCheckpoints. Before, each rank
searched on its own: rank 1 resumed step 2 while rank 0 resumed step 4, they trained a mix of
the two and hung at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from worker_run import as_torchrun_rank

from eofm.pretrain.checkpoint import CheckpointManager, UnreadableCheckpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def _strategy(env: Any) -> Any:
    """A Strategy around a tiny model (DDP over two ranks, single in one process)."""
    from eofm.pretrain.config import load_config
    from eofm.pretrain.strategy import Strategy

    torch.manual_seed(0)
    return Strategy(nn.Linear(4, 3), load_config(None, ["data.path=/d", "runtime.strategy=ddp"]),
                    env, torch.device("cpu"), 1e-3)


def _worker(rank: int, port: int, root: str) -> None:
    """Rank ``rank`` of two; rank 1 cannot read ``step_000000004.pt``, then any file."""
    from eofm.pretrain import distributed as dist

    as_torchrun_rank(rank, 2, port)
    env = dist.init_distributed(backend="gloo")
    real = CheckpointManager.load
    unreadable = {"step_000000004.pt"}

    def load(path: str | Path) -> dict[str, Any]:
        if rank == 1 and (Path(path).name in unreadable or "*" in unreadable):
            raise OSError(5, "Input/output error", str(path))
        return real(path)

    CheckpointManager.load = staticmethod(load)  # type: ignore[method-assign]
    s = _strategy(env)
    client = s.load(CheckpointManager(Path(root) / "ckpt"))
    result: dict[str, Any] = {"step": client["step"],
                              "weight": s.module.weight.flatten().tolist()}
    unreadable.add("*")  # now rank 1 reads none of them
    try:
        s.load(CheckpointManager(Path(root) / "ckpt"))
        result["none"] = "loaded"
    except UnreadableCheckpoints as e:
        result["none"] = str(e)
    Path(root, f"rank{rank}.json").write_text(json.dumps(result))
    dist.teardown()


def test_ranks_resume_the_same_step_when_one_cannot_read_the_newest(
        tmp_path: Path, spawn_two_ranks) -> None:
    from eofm.pretrain.distributed import DistEnv

    saver = _strategy(DistEnv())
    weights = {}
    for step in (2, 4):
        with torch.no_grad():
            saver.module.weight.fill_(float(step))
        weights[step] = saver.module.weight.flatten().tolist()
        saver.save(CheckpointManager(tmp_path / "ckpt", rank=0), step, {"step": step})
    spawn_two_ranks(_worker, str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in results] == [2, 2]  # rank 0 could read step 4, but fell back
    assert [r["weight"] for r in results] == [weights[2], weights[2]]
    for r in results:  # every rank raises, naming rank 1's failure
        assert "none of its 2 checkpoint(s) could be loaded" in r["none"]
        assert "step_000000004.pt: " in r["none"] and "step_000000002.pt: " in r["none"]
    assert "rank 1: OSError: [Errno 5] Input/output error" in results[0]["none"]
