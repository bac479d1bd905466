"""AdamW with the usual exemptions from weight decay, gradient clipping and a non-finite guard."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import OptimConfig

__all__ = ["NonFiniteGuard", "adamw", "build_optimizer", "clip_and_check", "exempt_names",
           "param_groups", "set_lr"]


def exempt_names(model: nn.Module) -> set[str]:
    """Full parameter names (or fnmatch patterns) that submodules exempt via ``no_weight_decay()``.

    Every module may define ``no_weight_decay()`` returning names relative to itself (timm's
    convention, e.g. ``{"pos_embed", "cls_token", "mask_token"}``); wrappers need not forward it.
    """
    out: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            out |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return out


def _matches(name: str, patterns: set[str]) -> bool:
    """Exact name, a component-wise suffix (``module.pos_embed`` ~ ``pos_embed``) or a glob."""
    return any(name == p or name.endswith("." + p) or fnmatch.fnmatchcase(name, p)
               for p in patterns)


def param_groups(model: nn.Module, weight_decay: float,
                 no_decay_names: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weights, and 1-D params (norms, biases) plus listed tokens at 0.

    ``no_decay_names`` adds to what the model's modules name in ``no_weight_decay()``. Frozen
    parameters are left out; empty groups are dropped.
    """
    skip = set(no_decay_names) | exempt_names(model)
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or _matches(name, skip) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


_FUSED_DEVICES = ("cuda", "cpu")  # torch >= 2.4 has a fused AdamW kernel for both


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
          ) -> torch.optim.AdamW:
    """AdamW over ``groups``, fused (one kernel over all tensors) when every parameter is a
    floating tensor on the same CUDA or CPU device type; torch's default otherwise.

    On CPU the fused step is ~5x faster than torch's default per-tensor loop (a 26M-parameter
    MAE: 98 -> 18 ms per step here), on CUDA it saves hundreds of kernel launches per step.
    """
    params = [p for g in groups for p in g["params"]]
    kinds = {p.device.type for p in params}
    fused = (len(kinds) == 1 and kinds <= set(_FUSED_DEVICES)
             and all(p.is_floating_point() for p in params))
    return torch.optim.AdamW(groups, lr=lr, betas=(betas[0], betas[1]), eps=eps,
                             fused=True if fused else None)


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.AdamW:
    """:func:`adamw` over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return adamw(groups, lr, (cfg.betas[0], cfg.betas[1]), cfg.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (times its optional ``lr_scale``)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def clip_and_check(params: Iterable[torch.Tensor], max_norm: float | None) -> tuple[float, bool]:
    """Total gradient L2 norm (before clipping) and whether it is finite; clips to ``max_norm``.

    One host sync per optimiser step (reading the norm). The gradients are rescaled only when
    the norm is finite and above ``max_norm`` (by ``max_norm / (norm + 1e-6)``, as
    ``clip_grad_norm_`` does): below it they are left untouched, not multiplied by 1.0 (a pass
    over every gradient, ~7x the cost of the norm alone on CPU). A non-finite norm leaves them
    as they are: the step is skipped and they are zeroed. Under DDP the gradients are already
    averaged, so every rank gets the same answer and skips the same steps; FSDP2's DTensor
    gradients give a DTensor norm whose full value every rank reads. ``max_norm`` None or 0:
    no clipping.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0, True
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is None:  # older torch: clip_grad_norm_ (rescales every step) does both
        total = torch.nn.utils.clip_grad_norm_(params, max_norm or math.inf,
                                               error_if_nonfinite=False)
    else:
        total = total_norm([p.grad for p in params])
    value = float(total.full_tensor() if hasattr(total, "full_tensor") else total)  # FSDP2
    finite = math.isfinite(value)
    if total_norm is not None and max_norm and finite and value > max_norm:
        # the norm as get_total_norm gave it (a DTensor under FSDP2), as clip_grad_norm_ passes
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return value, finite


class NonFiniteGuard:
    """Counts skipped non-finite steps; raises once ``max_in_a_row`` come back to back."""

    def __init__(self, max_in_a_row: int) -> None:
        if max_in_a_row < 1:
            raise ValueError(f"max_in_a_row: expected >= 1, got {max_in_a_row}")
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0

    def update(self, finite: bool, step: int | None = None) -> bool:
        """True when the step may be applied; False to skip it (after counting)."""
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.max_in_a_row:
            at = f" (last at step {step})" if step is not None else ""
            raise RuntimeError(
                f"{self.in_a_row} non-finite losses or gradients in a row{at}, "
                f"{self.skipped} skipped in all (limit runtime.max_nonfinite_in_a_row="
                f"{self.max_in_a_row}): lower the learning rate, check the data for nodata/NaN "
                f"values or unnormalised inputs, or try precision=fp32")
        return False

    def state_dict(self) -> dict[str, int]:
        """The counters, for the checkpoint."""
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the counters from a checkpoint (missing counters read as 0)."""
        self.in_a_row, self.skipped = int(state.get("in_a_row", 0)), int(state.get("skipped", 0))
