"""BatchNorm across the ranks of a data-parallel fine-tune.

A BatchNorm layer keeps running statistics (buffers, not parameters): gradients are averaged
over the ranks, these are not. Each rank's running statistics come from its own batches, so
after training they differ from rank to rank (DDP broadcasts rank 0's buffers only at the start
of each training forward of its wrapper; FSDP2 never does). The checkpoint and the export hold
rank 0's, so the held-out evaluation, where every rank scores its share of the test split, must
run with rank 0's on every rank: :func:`broadcast_buffers`.

In training, a BatchNorm layer normalises with the statistics of its rank's micro-batch: on
several ranks that is another batch than one process's at the same global batch, so the
results differ. On CUDA :func:`sync_batchnorm` makes the layers SyncBatchNorm (statistics
over every rank's micro-batch); gloo has no SyncBatchNorm, so on the CPU it says once that
the statistics are per rank (:func:`should_sync_batchnorm` decides).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from eofm.pretrain import distributed as dist

__all__ = ["broadcast_buffers", "should_sync_batchnorm", "sync_batchnorm",
           "training_batchnorm"]

log = logging.getLogger("eofm.finetune")


def training_batchnorm(model: nn.Module) -> list[str]:
    """Names of ``model``'s BatchNorm layers that train: outside ``model._frozen`` (the
    modules a :class:`~eofm.finetune.tasks.FinetuneModel` keeps in eval mode, whose running
    statistics stay as loaded)."""
    held = {id(m) for f in getattr(model, "_frozen", []) for m in f.modules()}
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and id(m) not in held]


def should_sync_batchnorm(device: torch.device, world_size: int, model: nn.Module) -> bool:
    """Whether to make ``model``'s BatchNorm layers SyncBatchNorm: several ranks, a CUDA
    device (gloo, the CPU backend, has no SyncBatchNorm) and a BatchNorm layer that trains."""
    return world_size > 1 and device.type == "cuda" and bool(training_batchnorm(model))


def sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` with SyncBatchNorm layers when :func:`should_sync_batchnorm` says so (the same
    parameters and running statistics, so checkpoints and exports keep their keys; the frozen
    list ``model._frozen`` follows the replaced layers); else ``model`` unchanged, with one
    warning (from the main rank) when several ranks train BatchNorm layers on the CPU, where
    their statistics are per rank."""
    if not should_sync_batchnorm(device, world_size, model):
        names = training_batchnorm(model) if world_size > 1 else []
        if names and dist.is_main_process():
            log.warning("BatchNorm statistics are per rank on %s (%d training BatchNorm layers, "
                        "e.g. %s; SyncBatchNorm needs CUDA): with %d ranks each layer "
                        "normalises over its rank's micro-batch, so results differ from one "
                        "rank's at the same global batch", device.type, len(names), names[0],
                        world_size)
        return model
    where = {id(m): n for n, m in model.named_modules()}
    frozen = [where[id(m)] for m in getattr(model, "_frozen", [])]
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if frozen:  # a frozen BatchNorm itself (a ResNet's stem bn1) was replaced: follow it
        model._frozen = [model.get_submodule(n) for n in frozen]
        model.train(model.training)
    if dist.is_main_process():
        log.info("SyncBatchNorm: BatchNorm statistics over all %d ranks' micro-batches",
                 world_size)
    return model


def _replicated_local(buf: torch.Tensor) -> torch.Tensor | None:
    """The tensor a broadcast writes into: ``buf`` itself, or a DTensor's local tensor when it
    is replicated (the whole value on every rank); None for a sharded DTensor, whose ranks
    hold different parts by design."""
    try:
        from torch.distributed.tensor import DTensor, Replicate
    except ImportError:  # an older torch without public DTensors: plain tensors only
        return buf
    if not isinstance(buf, DTensor):
        return buf
    if all(isinstance(p, Replicate) for p in buf.placements):
        return buf.to_local()
    return None


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> int:
    """Give every rank rank ``src``'s buffers of ``module`` (BatchNorm running statistics
    above all: what the checkpoint and the export hold), in place; the number of buffers
    broadcast (0 without a process group of several ranks). A collective: every rank calls it
    with the same module. Plain tensors and replicated DTensors are broadcast; a sharded
    DTensor is left as it is (each rank holds its own part)."""
    if not tdist.is_available() or not tdist.is_initialized() or tdist.get_world_size() < 2:
        return 0
    count = 0
    for _, buf in module.named_buffers():
        local = _replicated_local(buf)
        if local is None:
            continue
        if local.is_contiguous():
            tdist.broadcast(local, src=src)
        else:  # a broadcast needs contiguous memory: through a copy
            tmp = local.contiguous()
            tdist.broadcast(tmp, src=src)
            local.copy_(tmp)
        count += 1
    return count
