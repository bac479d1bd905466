"""Two forked gloo ranks, started once for three checks of what differs from one process:

- a checkpoint written by one process (its optimiser state numbers the parameters) resumed
  by two FSDP2 ranks (whose optimiser state is keyed by parameter names): the AdamW moments
  arrive, and the next checkpoint is written. Before, FSDP2's ``set_state_dict`` dropped the
  numbered state without a word (the moments restarted from zero) and the next save failed
  with ``KeyError: '0'``;
- the ranks' global torch RNGs differ once the model is built (dropout and drop path are
  not the same draws on every rank), while the initial weights are the same on every rank
  (FSDP2 does not broadcast them: each rank keeps its shard of its own initialisation);
- SIGUSR1 on rank 0 while it builds ``data.build_from`` and rank 1 waits for it: the build
  is cut short and both ranks end with the requeue status. Before, the signal's default
  action killed rank 0 and left rank 1 waiting.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from worker_run import as_torchrun_rank

from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import load_config
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE
from eofm.pretrain.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BUILD_S = 20.0  # what the stand-in build would take if nothing cut it short


@pytest.fixture(scope="module")
def config(tiny_run_config) -> Path:
    """The trainer tests' tiny run (144 tiles of 32 px, batch 16: 8 per rank)."""
    return tiny_run_config({"logging": {"sample_keys": False}}, name="rank_startup")


def _worker(rank: int, port: int, cfg_path: str, root: str) -> None:
    """Rank ``rank`` of two (conftest's ``spawn_two_ranks``)."""
    import eofm.data_shards.cli as shard_cli
    from eofm.pretrain import distributed as D
    from eofm.pretrain.trainer import run

    as_torchrun_rank(rank, 2, port)
    base = Path(root)
    single = torch.load(base / "single.pt", weights_only=True)

    # a one-process checkpoint (step 3) resumed by two FSDP2 ranks, one more step
    t = Trainer(load_config(cfg_path, [f"runtime.out_dir={base / 'run'}", "schedule.steps=4",
                                       "runtime.strategy=fsdp2", "runtime.resume_elastic=true"]))
    init = t.strategy.state_dict()["model"]  # gathered from the shards (on rank 0)
    streams = D.all_gather_object(torch.get_rng_state())
    if rank == 0:
        assert init.keys() == single["init"].keys()
        for k, v in single["init"].items():
            assert torch.equal(init[k], v), f"initial {k} differs from one process's"
        assert not torch.equal(streams[0], streams[1]), "the ranks share one RNG stream"
    t.resume()
    assert t.step == 3
    optimizer = t.strategy.state_dict()["optimizer"]  # gathered on rank 0 (others: empty)
    if rank == 0:
        moments = optimizer["state"]
        assert moments.keys() == single["moments"].keys()
        for name, saved in single["moments"].items():
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(moments[name][key], saved[key]), f"{key} of {name}"
    assert t.fit() == 0 and t.step == 4  # and its checkpoint written

    # SIGUSR1 on rank 0 while it builds the dataset; rank 1 waits for the build
    finished: list[bool] = []

    def slow_build(argv: list[str]) -> int:
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + BUILD_S
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)
        return 1

    shard_cli.main = slow_build  # what ensure_dataset runs on rank 0
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # a rank killed would hang the other
    status = run(load_config(cfg_path, [f"runtime.out_dir={base / 'built_run'}",
                                        f"data.path={base / 'ds'}",
                                        f"data.build_from={base / 'raw'}"]))
    assert status == REQUEUE_EXIT_CODE, f"rank {rank}: status {status}"
    assert not finished, f"rank {rank}: the build was not cut short"  # it ran to its end


def test_two_ranks_resume_one_process_under_fsdp2_draw_apart_and_stop_during_a_build(
        config: Path, tmp_path: Path, spawn_two_ranks) -> None:
    out = tmp_path / "run"
    single = Trainer(load_config(str(config), [f"runtime.out_dir={out}", "schedule.steps=3"]))
    init = {k: v.detach().clone() for k, v in single.objective.state_dict().items()}
    assert single.fit() == 0
    opt = single.strategy.optimizer
    names = {id(p): n for n, p in single.strategy.module.named_parameters()}
    moments = {names[id(p)]: {k: v.clone() for k, v in opt.state[p].items()}
               for g in opt.param_groups for p in g["params"]}
    torch.save({"init": init, "moments": moments}, tmp_path / "single.pt")
    spawn_two_ranks(_worker, str(config), str(tmp_path))
    after = CheckpointManager.load(out / "checkpoints" / "step_000000004.pt")
    assert after["step"] == 4 and len(after["rng"]) == 2
    assert sorted(after["optimizer"]["state"]) == sorted(moments)  # keyed by name, complete
    assert {float(s["step"]) for s in after["optimizer"]["state"].values()} == {4.0}
    assert (tmp_path / "built_run" / "REQUEUE").is_file()
    assert not (tmp_path / "ds" / "manifest.json").exists()
