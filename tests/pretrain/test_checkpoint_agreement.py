"""Every rank agrees on whether a checkpoint was written (``checkpoint.agree_written``).

Two forked gloo ranks, each the first rank of its "node" (``LOCAL_RANK=0``, as torchrun sets on
two nodes): rank 1 is asked to stop (SIGUSR1) at step 2 and rank 0's write of that step's
checkpoint fails with a full disk, written in the foreground or in the background
(``runtime.async_checkpoint``). Every rank must exit with the failure status, none may log the
checkpoint written, and no node may leave the ``REQUEUE`` marker. Before, rank 0 left for the
process group's teardown, whose barrier met the one rank 1 waited in after the save (or, with
the background write, rank 1 never waited): rank 1 logged "checkpoint at step 2 written" and
wrote ``REQUEUE``, so the launchers turned status 1 into 75 and the job was requeued to resume
from an older checkpoint, or from nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
from pathlib import Path

import pytest
from worker_run import as_torchrun_rank

from eofm.data_shards.command import OUT_OF_SPACE_STATUS
from eofm.pretrain.preemption import REQUEUE_EXIT_CODE, REQUEUE_MARKER

pytestmark = pytest.mark.usefixtures("one_thread")

STOP_AT = 2  # the step rank 1 is asked to stop after


@pytest.fixture(scope="module")
def config(tiny_run_config) -> Path:
    """The trainer tests' tiny run (144 tiles of 32 px, batch 16: 8 per rank)."""
    return tiny_run_config({"logging": {"sample_keys": False}}, name="ckpt_agreement")


class _Messages(logging.Handler):
    """Keeps the text of every record it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def _worker(rank: int, port: int, cfg_path: str, out: str, background: bool) -> None:
    """Rank ``rank`` of two on two "nodes": ``eofm-pretrain`` to a stop at :data:`STOP_AT`
    whose checkpoint write fails on rank 0; its status, log and stderr go to ``out``."""
    import io

    import eofm.pretrain.checkpoint as C
    from eofm.data_shards.outputs import write_failure
    from eofm.pretrain.cli import main
    from eofm.pretrain.trainer import Trainer

    as_torchrun_rank(rank, 2, port)
    os.environ.update({"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})  # each its node's first
    attempted: list[int] = []
    if rank == 0:
        real = C._atomic_save

        def full_disk(state: dict, final: Path) -> Path:
            if C._NAME.match(final.name):  # the checkpoint itself, not a rank's own file
                attempted.append(int(state["step"]))
                raise write_failure(final, OSError(errno.ENOSPC, "No space left on device"))
            return real(state, final)

        C._atomic_save = full_disk
    else:
        log_step = Trainer._log_step

        def then_stop(self: Trainer, *args: object, **kwargs: object) -> None:
            log_step(self, *args, **kwargs)
            if self.step == STOP_AT:
                os.kill(os.getpid(), signal.SIGUSR1)  # the trainer's handler: a stop request

        Trainer._log_step = then_stop
    messages = _Messages()
    logging.getLogger("eofm").addHandler(messages)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status: int | str = main([
                "--config", cfg_path, f"runtime.out_dir={out}/run",
                f"runtime.async_checkpoint={str(background).lower()}"])
        except BaseException as e:  # recorded: the parent names what each rank did
            status = f"{type(e).__name__}: {e}"
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"status": status, "log": messages.texts, "stderr": stderr.getvalue(),
         "attempted": attempted}))


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "async"])
def test_a_checkpoint_write_failing_at_a_stop_fails_every_rank_and_requeues_nothing(
        config: Path, tmp_path: Path, spawn_two_ranks, background: bool) -> None:
    """Rank 0's write of the stop's checkpoint fails: both ranks exit with the full-disk
    status (1), neither logs the checkpoint written nor asks for a requeue."""
    spawn_two_ranks(_worker, str(config), str(tmp_path), background)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["attempted"] == [STOP_AT], "rank 0 did not try the stop's checkpoint"
    run = tmp_path / "run"
    said = [f"rank {r}: {t}" for r, done in enumerate(ranks) for t in done["log"]
            if ("written" in t and "not written" not in t) or "requeue" in t]
    assert not said, f"a rank took the failed checkpoint for written: {said}"
    assert not (run / REQUEUE_MARKER).exists(), "a node asks for a requeue"
    statuses = [done["status"] for done in ranks]
    assert REQUEUE_EXIT_CODE not in statuses, f"exit statuses {statuses}"
    assert statuses == [OUT_OF_SPACE_STATUS] * 2, \
        f"exit statuses {statuses}; stderr: {[done['stderr'] for done in ranks]}"
    # rank 1's error names the rank that failed, the checkpoint and its step
    checkpoints = run / "checkpoints"
    assert f"{checkpoints}: the checkpoint of step {STOP_AT} was not written: rank 0 failed" \
        in ranks[1]["stderr"]
    assert "No space left on device" in ranks[1]["stderr"]
    assert not list(checkpoints.glob("step_*.pt")), "a checkpoint file was left"


def _deepspeed_worker(rank: int, port: int, root: str) -> None:
    """Rank ``rank`` of two saving a DeepSpeed ZeRO-2 checkpoint whose ``COMPLETE`` marker
    rank 0 fails to write (a full disk); what each rank's save did goes to ``root``."""
    import torch
    from torch import nn

    from eofm.pretrain import distributed as dist
    from eofm.pretrain.checkpoint import DS_MARKER, CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.strategy import wrap_model

    as_torchrun_rank(rank, 2, port)
    env = dist.init_distributed()
    cfg = load_config(None, ["runtime.strategy=deepspeed", "runtime.zero_stage=2",
                             "data.path=unused", "data.batch_size=4", "runtime.precision=fp32"])
    torch.manual_seed(0)
    s = wrap_model(nn.Linear(4, 3), cfg, env, torch.device("cpu"), lr=1e-2)
    s.forward_backward(lambda model: model(torch.randn(2, 4)).square().mean(), last=True)
    s.finish_step()
    if rank == 0:
        replace = os.replace

        def full_disk(src: str | os.PathLike, dst: str | os.PathLike) -> None:
            if Path(dst).name == DS_MARKER:
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            replace(src, dst)

        os.replace = full_disk
    try:
        s.save(CheckpointManager(Path(root) / "ckpt"), 2, {"step": 2})
        outcome = "saved"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    Path(root, f"ds{rank}.json").write_text(json.dumps({"outcome": outcome}))
    with contextlib.suppress(RuntimeError):  # old code: rank 0 may be gone already
        dist.teardown()


def test_a_deepspeed_marker_write_failing_on_rank_zero_fails_every_rank(
        tmp_path: Path, spawn_two_ranks) -> None:
    """Rank 0 writes a DeepSpeed folder's ``COMPLETE`` marker after every shard is on disk; its
    failure is every rank's (``save_deepspeed``'s closing agreement). Before, rank 1 waited in
    the closing barrier, which rank 0's teardown met: rank 1's save returned as written."""
    pytest.importorskip("deepspeed")
    spawn_two_ranks(_deepspeed_worker, str(tmp_path))
    outcomes = [json.loads((tmp_path / f"ds{r}.json").read_text())["outcome"] for r in (0, 1)]
    assert outcomes[0].startswith("OSError: [Errno 28] No space left on device"), outcomes
    folder = tmp_path / "ckpt" / "step_000000002"
    assert outcomes[1].startswith(
        f"CheckpointWriteFailed: {folder}: the checkpoint of step 2 was not written: rank 0 "
        f"failed: OSError: [Errno 28]"), outcomes
    assert not (folder / "COMPLETE").exists()


def test_every_rank_keeps_its_file_of_the_newest_checkpoint_its_listing_lags_behind(
        tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime.async_checkpoint: the run's last prune of the ranks' own files keeps those of the
    checkpoint just written even where a rank's listing of the shared folder does not show it
    yet (another node, an NFS directory cache; simulated: the newest file is left out). Before,
    only the per-step prune kept it (pending=step): the last one deleted the rank's file of the
    newest checkpoint, and a resume from it failed on that rank."""
    from eofm.pretrain.checkpoint import CheckpointManager
    from eofm.pretrain.config import load_config
    from eofm.pretrain.trainer import Trainer

    cfg = tiny_run_config({"objective": {"name": "selectivemae", "mask_ratio": 0.85, "params": {
        "kept_mask_ratio": 0.25, "prune_low_loss_ratio": 0.5, "prune_anneal_fraction": 0.0}},
        "schedule": {"steps": 3, "warmup_steps": 1},
        "logging": {"sample_keys": False}}, name="lagging")
    listing, prune = CheckpointManager.checkpoints, CheckpointManager.prune_rank_states
    lagging: list[bool] = []

    def lagged(self: CheckpointManager) -> list[tuple[int, Path]]:
        found = listing(self)
        return found[1:] if lagging else found  # the newest not listed yet

    def pruning(self: CheckpointManager, *args: object, **kwargs: object) -> None:
        lagging.append(True)
        try:
            prune(self, *args, **kwargs)
        finally:
            lagging.clear()

    monkeypatch.setattr(CheckpointManager, "checkpoints", lagged)
    monkeypatch.setattr(CheckpointManager, "prune_rank_states", pruning)
    out = tmp_path / "run"
    assert Trainer(load_config(str(cfg), [f"runtime.out_dir={out}",
                                          "runtime.async_checkpoint=true"])).fit() == 0
    monkeypatch.undo()
    ckpts = CheckpointManager(out / "checkpoints", rank=0)
    assert [s for s, _ in ckpts.checkpoints()] == [3]
    assert "loss_record" in ckpts.load_rank_state(3), "rank 0's file of step 3 was pruned"
