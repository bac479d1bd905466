"""Run by test_equivalence.py in one process or two forked gloo ranks: a few MAE steps on
real Sentinel-2 pixels with a fixed global batch and fixed masks, split over ranks and
micro-steps, every step clipped (:data:`GRAD_CLIP`) and at its own lr (:data:`LRS`); rank 0
saves the final parameters.

:func:`run_jobs` runs each ``STRATEGY:ACCUM`` job in turn in the same processes and process
group (a fresh model, optimiser and wrapper each; dynamo's caches reset between them) and saves
``OUT_DIR/STRATEGY_ACCUM.pt``: one start (one set of imports) for every job of the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
import torch._dynamo
from worker_run import as_torchrun_rank

from eofm.models import create_model
from eofm.pretrain import distributed as dist
from eofm.pretrain.config import load_config
from eofm.pretrain.objectives import MAE
from eofm.pretrain.strategy import wrap_model

BANDS = ["B02", "B03", "B04", "B08"]
GLOBAL, STEPS = 8, 3
# each step's lr (set_lr), none of them the lr the optimiser is built with: a strategy whose
# set_lr does not reach the optimiser (DeepSpeed's wrapped one too) steps with another lr
LRS = (3e-3, 5e-4, 2e-3)
# below every step's gradient norm (~0.45-0.5 unclipped): every step is clipped, by the norm
# over every rank's gradient (a strategy that skips clipping, or clips by a local or
# accumulation-partial norm, ends elsewhere: with optim.eps=1e-3 Adam's steps follow the scale)
GRAD_CLIP = 0.05


def real_batches(scene: Path) -> torch.Tensor:
    """(STEPS * GLOBAL, 4, 32, 32) normalised crops of the bundled 10 m bands."""
    x = np.stack([tifffile.imread(scene / f"s2_{b}.jp2") for b in BANDS]).astype(np.float32)
    crops = [x[:, r:r + 32, c:c + 32] for r in range(0, 384, 32) for c in range(0, 384, 32)]
    t = torch.from_numpy(np.stack(crops[: STEPS * GLOBAL]))
    return (t - t.mean((0, 2, 3), keepdim=True)) / t.std((0, 2, 3), keepdim=True)


def run(strategy: str, accum: int, out: Path, scene: Path) -> None:
    """One job: ``strategy`` (``single``, ``ddp``, ``fsdp2``, ``zero2``, ``zero3``, each
    optionally ``_compiled``) with ``accum`` micro-steps per step; rank 0 saves to ``out``."""
    env = dist.init_distributed()
    over = [f"runtime.strategy={strategy}", f"optim.accum_steps={accum}", "optim.scale_lr=false",
            "data.path=unused",
            # Adam divides by sqrt(v): a gradient that is zero in exact arithmetic (the key bias
            # of attention) becomes +-lr steps from rounding noise; eps keeps the comparison to
            # the gradients that exist
            "optim.eps=1e-3",
            f"data.batch_size={GLOBAL}", "runtime.precision=fp32", f"optim.grad_clip={GRAD_CLIP}"]
    if strategy.endswith("_compiled"):  # every transformer block compiled in place
        strategy = strategy.removesuffix("_compiled")
        over[0] = f"runtime.strategy={strategy}"
        # traced by dynamo and AOTAutograd as with inductor (what meets the DDP, FSDP2 and
        # ZeRO-3 hooks) without inductor's code generation, ~30-60 s of CPU per process on a
        # cold cache; inductor's numerics: test_trainer.py's and test_finetune.py's compile tests
        over += ["runtime.compile=true", "runtime.compile_backend=aot_eager"]
    if strategy.startswith("zero"):
        over[0] = "runtime.strategy=deepspeed"
        over.append(f"runtime.zero_stage={strategy[-1]}")
    cfg = load_config(None, over)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=BANDS, img_size=32)
    obj = MAE(enc, BANDS, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=True)
    s = wrap_model(obj, cfg, env, torch.device("cpu"), lr=1e-3)
    data = real_batches(scene)
    per_rank = GLOBAL // env.world_size
    micro = per_rank // accum
    for step in range(STEPS):
        s.set_lr(LRS[step])
        gx = data[step * GLOBAL:(step + 1) * GLOBAL]
        masks = obj.mask(GLOBAL, torch.device("cpu"), torch.Generator().manual_seed(step))
        for m in range(accum):
            i = slice(env.rank * per_rank + m * micro, env.rank * per_rank + (m + 1) * micro)
            def loss(model, i=i, gx=gx, mk=masks):
                return model(gx[i], masks=tuple(t[i] for t in mk))["loss"]

            s.forward_backward(loss, last=m == accum - 1)
        s.finish_step()
    if s.kind == "deepspeed":
        import deepspeed

        params = list(obj.parameters())
        with deepspeed.zero.GatheredParameters(params):
            state = {k: v.detach().clone() for k, v in obj.state_dict().items()}
    elif s.kind == "fsdp2":
        state = s.state_dict()["model"]  # gathered from the shards
    else:
        state = {k: v.detach().clone() for k, v in s.module.state_dict().items()}
    if env.rank == 0:
        torch.save(state, out)
    torch._dynamo.reset()  # the next job compiles its own blocks


def run_jobs(rank: int, port: int, world: int, out: str, scene: str, jobs: list[str]) -> None:
    """Rank ``rank`` of ``world`` (conftest's ``spawn_ranks``): every job of ``jobs``."""
    as_torchrun_rank(rank, world, port)
    for job in jobs:
        strategy, accum = job.split(":")
        run(strategy, int(accum), Path(out) / f"{strategy}_{accum}.pt", Path(scene))
    dist.teardown()
