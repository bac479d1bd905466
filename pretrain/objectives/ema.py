"""Exponential moving averages of a network's weights: the momentum schedule and an fp32 shadow.

:func:`ema_momentum` is BYOL's cosine schedule; :class:`FP32Shadow` keeps fp32 copies of
low-precision parameters so that an EMA at momentum near 1 is not rounded away (see
:mod:`.softcon`, "EMA precision").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FP32Shadow", "ema_momentum"]


class FP32Shadow(nn.Module):
    """fp32 copies of named tensors, kept as persistent buffers (so they are in the state dict).

    A cast of the module (``.bfloat16()``, ``.half()``, ``.to(dtype)``) leaves them fp32; device
    moves apply. Buffer names are the tensor names with ``.`` written as ``__``.
    """

    def __init__(self, tensors: Sequence[tuple[str, Tensor]]) -> None:
        super().__init__()
        self.names: list[str] = []
        for name, t in tensors:
            key = name.replace(".", "__")
            self.register_buffer(key, t.detach().to(torch.float32, copy=True))
            self.names.append(key)

    def tensors(self) -> list[Tensor]:
        """The fp32 copies, in the order they were given."""
        return [self._buffers[k] for k in self.names]  # type: ignore[misc]

    def _apply(self, fn: Any, recurse: bool = True) -> FP32Shadow:
        for k, b in self._buffers.items():
            if b is None:
                continue
            out = fn(b)
            if out.dtype != torch.float32:  # a cast: follow the device only, keep fp32
                out = b.to(device=out.device, dtype=torch.float32)
            self._buffers[k] = out
        return self


def ema_momentum(step: int, total: int, m0: float, m1: float = 1.0) -> float:
    """Cosine momentum schedule: m0 at step 0, m1 at ``total`` (BYOL)."""
    frac = min(max(step / max(total, 1), 0.0), 1.0)
    return m1 - (m1 - m0) * (math.cos(math.pi * frac) + 1.0) / 2.0
