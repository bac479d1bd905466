"""The distributed module: environment detection, single-process fallback, two real gloo ranks.

(Named apart from tests/data_shards/test_distributed.py: pytest's default import mode needs
unique basenames.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from eofm.pretrain import distributed as D

VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")


def test_detect_torchrun_slurm_and_single() -> None:
    env = D.detect_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                        "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "n1", "MASTER_PORT": "29500",
                        "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})  # torchrun wins
    assert env == D.DistEnv(3, 8, 1, 4, "n1", 29500, "torchrun") and not env.is_main
    slurm = D.detect_env({"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "16",
                          "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
                          "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_ID": "123456"})
    assert slurm == D.DistEnv(5, 8, 1, 4, "gpu007", 20000 + 123456 % 20000, "slurm")
    # The batch script's own step (no srun) has no SLURM_STEP_NUM_TASKS: one process.
    assert D.detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == D.DistEnv()
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.detect_env({"RANK": "0", "WORLD_SIZE": "two"})


@pytest.mark.parametrize(("nodelist", "host"), [
    ("node1", "node1"), ("gpu[007-009,12],cpu1", "gpu007"), ("a-b[3,5]", "a-b3"),
    ("x[1]", "x1"), ("n001,n002", "n001"),
])
def test_first_host(nodelist: str, host: str) -> None:
    assert D.first_host(nodelist) == host


def test_single_process_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    env = D.init_distributed()
    assert env.world_size == 1 and not dist.is_initialized()
    assert (D.get_rank(), D.get_world_size(), D.get_local_rank()) == (0, 1, 0)
    assert D.is_main_process() and D.any_across_ranks(True) and not D.any_across_ranks(False)
    D.barrier()
    t = torch.tensor([1, 2])
    assert torch.equal(D.all_reduce_mean(t), torch.tensor([1.0, 2.0], dtype=torch.float64))
    obj = {"a": [1]}
    assert D.broadcast_object(obj) is obj and D.all_gather_object(3) == [3]
    assert D.device_for(env).type == ("cuda" if torch.cuda.is_available() else "cpu")
    D.teardown()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    env = D.init_distributed(backend="gloo")
    t = torch.tensor([float(rank), 10.0 * rank])
    result = {
        "env": [env.rank, env.world_size, env.launcher],
        "getters": [D.get_rank(), D.get_world_size(), D.is_main_process()],
        "mean": D.all_reduce_mean(t).tolist(),
        "input_untouched": t.tolist() == [float(rank), 10.0 * rank],
        "bcast": D.broadcast_object({"from": rank, "data": [rank] * 3}),
        "gather": D.all_gather_object(rank * 2),
        "any": D.any_across_ranks(rank == 1),
    }
    D.barrier()
    D.teardown()
    result["after_teardown"] = dist.is_initialized()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_gloo_ranks(tmp_path: Path, spawn_two_ranks) -> None:
    spawn_two_ranks(_worker, str(tmp_path))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["env"] == [rank, 2, "torchrun"]
        assert r["getters"] == [rank, 2, rank == 0]
        assert r["mean"] == [0.5, 5.0] and r["input_untouched"]
        assert r["bcast"] == {"from": 0, "data": [0, 0, 0]}
        assert r["gather"] == [0, 2] and r["any"] is True
        assert r["after_teardown"] is False
