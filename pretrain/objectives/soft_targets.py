"""SoftCon's soft targets and loss over the global batch (see :mod:`.softcon`).

:func:`gather_global` all-gathers rows across ranks with gradients through the local part only;
:func:`soft_targets` turns label vectors into T_ij = cosine(y_i, y_j) (identity rows for
unlabelled samples); :func:`softcon_loss` is the soft cross-entropy (or per-entry BCE) of the
scaled similarities against them.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "gather_global", "soft_targets", "softcon_loss"]

LOSSES = ("soft_ce", "bce")


def gather_global(t: Tensor) -> tuple[Tensor, int]:
    """(every rank's rows concatenated on dim 0, offset of this rank's rows).

    The local slice of the result is ``t`` itself, so gradients flow through the local part
    only. Ranks may hold different row counts. Without a process group: ``(t, 0)``.
    """
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return t, 0
    world, rank = tdist.get_world_size(), tdist.get_rank()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    tdist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    pad = max(counts) - t.shape[0]
    src = t.detach()
    if pad:
        src = torch.cat([src, src.new_zeros(pad, *t.shape[1:])])
    parts = [torch.empty_like(src) for _ in range(world)]
    tdist.all_gather(parts, src.contiguous())
    parts = [p[:c] for p, c in zip(parts, counts, strict=True)]
    parts[rank] = t
    return torch.cat(parts), sum(counts[:rank])


def soft_targets(labels: Tensor | None, labels_all: Tensor | None, offset: int, n_all: int,
                 batch_size: int | None = None, device: torch.device | None = None) -> Tensor:
    """(B, n_all) soft targets T_ij = cosine(y_i, y_j); identity rows for unlabelled samples.

    labels: (B, K) this rank's label vectors; labels_all: (n_all, K) the global batch's, whose
    rows ``offset .. offset + B`` are this rank's. Both None: every row is the identity (give
    ``batch_size``).
    """
    if (labels is None) != (labels_all is None):
        raise ValueError("labels, labels_all: give both or neither")
    if labels is None:
        if batch_size is None:
            raise ValueError("batch_size: required when there are no labels")
        B = batch_size
    else:
        B, device = labels.shape[0], labels.device
    if not 0 <= offset <= n_all - B:
        raise ValueError(f"offset: expected 0 <= offset <= n_all - B = {n_all - B}, got {offset}")
    eye = torch.zeros(B, n_all, device=device)
    eye.diagonal(offset).fill_(1.0)  # (i, offset + i); no index tensor, so no host sync on CUDA
    if labels is None or labels_all is None:
        return eye
    y = F.normalize(labels.float(), dim=1)  # all-zero rows stay zero
    ya = F.normalize(labels_all.float(), dim=1)
    t = (y @ ya.T).clamp(0.0, 1.0)
    same = (labels[:, None, :] == labels_all[None, :, :].to(labels.dtype)).all(-1)
    t = torch.where(same, torch.ones_like(t), t)  # exactly 1 for identical vectors
    labelled = labels.float().abs().sum(1, keepdim=True) > 0
    return torch.where(labelled, torch.maximum(t, eye), eye)


def softcon_loss(z: Tensor, z_all: Tensor, targets: Tensor, tau: float,
                 kind: str = "soft_ce") -> Tensor:
    """Mean over rows of the soft contrastive loss; z: (B, d), z_all: (n_all, d) normalised,
    targets: (B, n_all) non-negative with a positive row sum."""
    logits = z.float() @ z_all.float().T / tau
    if kind == "soft_ce":
        p = targets / targets.sum(1, keepdim=True)
        return -(p * F.log_softmax(logits, dim=1)).sum(1).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean() \
            / targets.shape[1]
    raise ValueError(f"loss: expected one of {LOSSES}, got {kind!r}")
