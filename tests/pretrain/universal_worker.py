"""Run by test_deepspeed_universal.py in one process or two forked gloo ranks: DeepSpeed MAE
steps on real Sentinel-2 pixels with a fixed global batch and fixed masks (as
equivalence_worker.py).

``save``: 3 steps, a checkpoint at step 3, one more step; rank 0 writes the parameters at the
checkpoint and after the extra step. ``resume``: load that checkpoint (another world size is
allowed: runtime.resume_elastic), take the same extra step; rank 0 writes the parameters right
after loading and after the step. Equal results mean weights and optimiser moments came back.

:func:`run_jobs` runs each ``(STAGE, MODE, CKPT_DIR, OUT)`` job in turn in the same processes
and process group (a fresh model and engine each), so one start serves several.
"""

from __future__ import annotations

from pathlib import Path

import torch
from equivalence_worker import BANDS, GLOBAL, real_batches
from worker_run import as_torchrun_rank

from eofm.models import create_model
from eofm.pretrain import distributed as dist
from eofm.pretrain.checkpoint import CheckpointManager
from eofm.pretrain.config import load_config
from eofm.pretrain.objectives import MAE
from eofm.pretrain.strategy import wrap_model

SAVED_AT = 3


def gathered(obj: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, ZeRO-3 partitions included."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(obj.parameters())):
        return {k: v.detach().clone() for k, v in obj.state_dict().items()}


def set_unoptimised(obj: torch.nn.Module) -> None:
    """Give the frozen parameters and the buffer values no fresh model has (every rank)."""
    import deepspeed

    frozen = list(obj.frozen.parameters())
    with deepspeed.zero.GatheredParameters(frozen, modifier_rank=0), torch.no_grad():
        obj.frozen.weight.copy_(torch.arange(12.0).view(3, 4))
        obj.frozen.bias.fill_(7.0)
    with torch.no_grad():
        obj.shadow.copy_(torch.arange(5.0) + 0.5)


def run(stage: str, mode: str, ckpt: str, out: str, scene: str) -> None:
    """One job: ``mode`` (``save`` or ``resume``) with ZeRO ``stage`` in ``ckpt``; rank 0
    writes the parameters to ``out``."""
    env = dist.init_distributed()
    cfg = load_config(None, [
        "runtime.strategy=deepspeed", f"runtime.zero_stage={stage}", "runtime.resume_elastic=true",
        "optim.scale_lr=false", "data.path=unused", "optim.eps=1e-3", f"data.batch_size={GLOBAL}",
        "runtime.precision=fp32", "optim.grad_clip=1.0"])
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32)
    obj = MAE(enc, BANDS, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=True)
    obj.frozen = torch.nn.Linear(4, 3)  # not the optimiser's: no gradient, never moves
    obj.frozen.requires_grad_(False)
    obj.register_buffer("shadow", torch.zeros(5))
    s = wrap_model(obj, cfg, env, torch.device("cpu"), lr=1e-3)
    manager = CheckpointManager(ckpt, keep_last_k=2)
    data = real_batches(Path(scene))
    per_rank = GLOBAL // env.world_size

    def step(n: int) -> None:
        s.set_lr(1e-3)
        b = n % SAVED_AT  # the bundled crops cover SAVED_AT batches
        gx = data[b * GLOBAL:(b + 1) * GLOBAL]
        masks = obj.mask(GLOBAL, torch.device("cpu"), torch.Generator().manual_seed(n))
        i = slice(env.rank * per_rank, (env.rank + 1) * per_rank)
        s.forward_backward(lambda model: model(gx[i], masks=tuple(t[i] for t in masks))["loss"],
                           last=True)
        s.finish_step()

    result: dict[str, object] = {"world": env.world_size}
    if mode == "save":
        for n in range(SAVED_AT):
            step(n)
        set_unoptimised(obj)
        s.save(manager, SAVED_AT, {"step": SAVED_AT})
        result["at_checkpoint"] = gathered(obj)
    else:
        client = s.load(manager)
        assert client is not None and client["step"] == SAVED_AT, client
        result["at_checkpoint"] = gathered(obj)
    step(SAVED_AT)
    result["after_step"] = gathered(obj)
    if env.rank == 0:
        torch.save(result, out)


def run_jobs(rank: int, port: int, world: int, scene: str,
             jobs: list[tuple[int, str, str, str]]) -> None:
    """Rank ``rank`` of ``world`` (conftest's ``spawn_ranks``): every job of ``jobs``."""
    as_torchrun_rank(rank, world, port)
    for stage, mode, ckpt, out in jobs:
        run(str(stage), mode, ckpt, out, scene)
    dist.teardown()
