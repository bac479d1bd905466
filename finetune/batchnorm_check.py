"""Will a training BatchNorm layer see one value per channel? (torch refuses that batch.)

A BatchNorm layer in train mode normalises over the batch and the spatial positions of its
input; with one sample per rank and a 1x1 map (a ResNet's last stage at 32 px input) that is one
value per channel, and torch stops the first training step with "Expected more than 1 value per
channel when training". :func:`single_value_batchnorm` finds such layers before any training,
from one forward pass in eval mode on a batch shaped like a training micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn, no_grad
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["single_value_batchnorm"]


def single_value_batchnorm(model: nn.Module, x: Tensor, frozen: list[nn.Module]) -> list[str]:
    """Names of ``model``'s BatchNorm layers outside ``frozen`` (modules kept in eval mode,
    whose running statistics are used, not batch ones) that a training micro-batch shaped like
    ``x`` would give one value per channel; empty when none would (or the model has none)."""
    held = {id(m) for f in frozen for m in f.modules()}
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, _BatchNorm) and id(m) not in held]
    if not layers:
        return []
    found: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(_module: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            a = inputs[0]
            if a.numel() // max(a.shape[1], 1) <= 1:
                found.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    was_training = model.training
    try:
        model.eval()  # eval: the probe pass itself must not fail, nor update running statistics
        with no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found
