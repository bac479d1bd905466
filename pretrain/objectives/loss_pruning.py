"""Loss-aware sample pruning (InfoBatch, Qin et al. ICLR 2024) for streaming shards. OFF by default.

InfoBatch keeps every sample's last loss; each epoch it drops, with probability ``ratio``, the
samples whose recorded loss is below the mean of the record, scales the loss of the low-loss
samples it keeps by 1 / (1 - ratio) so the expected gradient is unchanged, and stops pruning
for the last ``anneal_fraction`` of the run. Here samples come from streaming shards, so the
record is keyed by the sample's key (the loader's ``__key__``) and the decision is taken per
batch, before the encoder runs (the compute saving).

- :class:`LossRecord`: the per-key loss record and its running mean. Memory: one Python float
  per distinct key plus the key string and a dict slot (~100-200 bytes per key: ~0.2 GB for a
  million samples). Not checkpointed: after a restart it is empty and refills within an epoch
  (until then fewer samples are pruned). Each process keeps its own record (under DDP every rank
  sees its own shards, so its record covers those).
- :func:`prune_low_loss`: which samples of a batch to drop.
- :func:`validate_pruning`: the two settings, refused by name when out of range.

Speed claims for any objective are measured with pruning off: it changes how many samples a
step trains on, not how fast the model processes one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RESUM_EVERY", "LossRecord", "prune_low_loss", "validate_pruning"]

RESUM_EVERY = 1 << 20  # updates between exact re-summations of the record (float drift)


def validate_pruning(ratio: float, anneal_fraction: float) -> tuple[float, float]:
    """(ratio, anneal_fraction) as floats; ValueError naming the setting when out of range."""
    r, a = float(ratio), float(anneal_fraction)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"prune_low_loss_ratio: expected a value in [0, 1) (0 = off; the kept "
                         f"low-loss samples are scaled by 1 / (1 - ratio)), got {ratio}")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"prune_anneal_fraction: expected a value in [0, 1] (the final share of "
                         f"the run trained without pruning), got {anneal_fraction}")
    return r, a


class LossRecord:
    """The last loss of every sample seen, keyed by sample key, and the mean of the record."""

    def __init__(self) -> None:
        self._loss: dict[str, float] = {}
        self._sum = 0.0
        self._updates = 0

    def __len__(self) -> int:
        return len(self._loss)

    @property
    def mean(self) -> float:
        """Mean of the recorded losses; NaN while the record is empty."""
        return self._sum / len(self._loss) if self._loss else math.nan

    def lookup(self, keys: Sequence[str]) -> Tensor:
        """(B,) float64 CPU tensor of the recorded losses; NaN for keys never recorded."""
        return torch.tensor([self._loss.get(k, math.nan) for k in keys], dtype=torch.float64)

    def update(self, keys: Sequence[str], losses: Sequence[float]) -> None:
        """Record ``losses`` (plain floats, one per key), replacing any earlier value."""
        if len(keys) != len(losses):
            raise ValueError(f"losses: expected one per key ({len(keys)}), got {len(losses)}")
        for k, v in zip(keys, losses, strict=True):
            v = float(v)
            if not math.isfinite(v):
                continue  # a non-finite step must not poison the mean
            self._sum += v - self._loss.get(k, 0.0)
            self._loss[k] = v
            self._updates += 1
        if self._updates >= RESUM_EVERY:  # bound the running sum's float drift
            self._sum, self._updates = math.fsum(self._loss.values()), 0

    def clear(self) -> None:
        """Forget every record."""
        self._loss.clear()
        self._sum, self._updates = 0.0, 0


def prune_low_loss(recorded: Tensor, mean: float, ratio: float,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(pruned, low): (B,) bool CPU tensors; ``low`` = recorded loss below ``mean``.

    A low-loss sample is pruned with probability ``ratio`` in [0, 1] (one uniform draw per
    sample from the CPU ``generator``); unseen samples (NaN) and those at or above the mean are
    always kept, and when every sample would go, the one with the largest draw is kept.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: expected a value in [0, 1], got {ratio}")
    recorded = recorded.detach().cpu()
    u = torch.rand(recorded.shape, generator=generator, dtype=torch.float64)
    low = recorded < mean  # NaN (unseen, or an empty record's NaN mean) compares False
    pruned = low & (u < ratio)
    if recorded.numel() and bool(pruned.all()):
        pruned[int(u.argmax())] = False
    return pruned, low
