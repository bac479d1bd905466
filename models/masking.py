"""Random token masking for MAE-style objectives, over plain (N) or grouped (G*L) token sequences.

Every function returns the MAE triple:
  ids_keep (B, K) long      indices of the visible tokens, the order the encoder sees them in;
  ids_restore (B, N) long   argsort of ``cat([ids_keep, ids_masked])``: gathering
                            ``cat([visible, mask_tokens])`` with it restores the original order;
  mask (B, N) float         1 = masked (dropped), 0 = kept, in the original order.
Grouped sequences are in (g, l) order: token ``g * L + l`` is group g at spatial cell l.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("independent", "consistent")


def num_keep(n: int, keep_ratio: float) -> int:
    """floor(n * keep_ratio), robust to float error (MAE's ``int(L * (1 - mask_ratio))``)."""
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio: expected a value in [0, 1], got {keep_ratio}")
    return int(n * keep_ratio + 1e-6)


def _noise(B: int, N: int, generator: torch.Generator | None,
           device: torch.device | str | None) -> Tensor:
    """Uniform noise (B, N) on the generator's device unless ``device`` says otherwise."""
    if device is None and generator is not None:
        device = generator.device
    return torch.rand(B, N, generator=generator, device=device)


def _from_shuffle(ids_shuffle: Tensor, keep: int) -> tuple[Tensor, Tensor, Tensor]:
    """The MAE triple from a per-sample permutation whose first ``keep`` entries are kept."""
    B, N = ids_shuffle.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, N, device=ids_shuffle.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], ids_restore, mask


def random_masking(B: int, N: int, keep: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Keep ``keep`` of N tokens per sample, uniformly at random -> (ids_keep, ids_restore, mask)."""
    if not 0 <= keep <= N:
        raise ValueError(f"keep: expected 0 <= keep <= N={N}, got {keep}")
    ids_shuffle = torch.argsort(_noise(B, N, generator, device), dim=1)
    return _from_shuffle(ids_shuffle, keep)


def grouped_masking(B: int, G: int, L: int, keep_ratio: float, mode: str = "independent",
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Mask G*L grouped tokens -> (ids_keep, ids_restore, mask) over the (g, l) sequence.

    ``independent`` (SatMAE's default): one shuffle over all G*L tokens, K = floor(G*L*ratio).
    ``consistent``: the same K_s = floor(L*ratio) spatial cells kept in every group (K = G*K_s).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "independent":
        return random_masking(B, G * L, num_keep(G * L, keep_ratio), generator, device)
    keep = num_keep(L, keep_ratio)
    spatial = torch.argsort(_noise(B, L, generator, device), dim=1)  # (B, L)
    offsets = torch.arange(G, device=spatial.device)[None, :, None] * L  # (1, G, 1)
    per_group = spatial[:, None, :] + offsets  # (B, G, L)
    kept = per_group[:, :, :keep].reshape(B, G * keep)
    dropped = per_group[:, :, keep:].reshape(B, G * (L - keep))
    return _from_shuffle(torch.cat([kept, dropped], dim=1), G * keep)


def ids_from_mask(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The MAE triple from a given mask (B, N) (bool True or float 1 = masked); kept in order.

    Every sample must keep the same number of tokens, since the kept tokens form one batch.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask: expected (B, N), got shape {tuple(mask.shape)}")
    drop = mask.bool()
    counts = (~drop).sum(dim=1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(f"mask: every sample must keep the same number of tokens, got kept "
                         f"counts {counts.tolist()}")
    keep = int(counts[0]) if counts.numel() else 0
    ids_shuffle = torch.argsort(drop.to(torch.int8), dim=1, stable=True)
    return _from_shuffle(ids_shuffle, keep)


def masked_ids(ids_restore: Tensor, keep: int) -> Tensor:
    """Indices of the masked tokens (B, N - keep), in the order mask tokens are appended."""
    return torch.argsort(ids_restore, dim=1)[:, keep:]


def check_ids_keep(ids: Tensor, n: int, name: str = "ids_keep") -> None:
    """A ValueError unless ``ids`` (B, K) are token indices an encoder can keep: an integer
    dtype (a float or bool ``mask`` passed here would be cast to indices 0 and 1), and, for a
    tensor on the CPU (its values read at no cost), each in 0..``n``-1 and distinct within its
    row (a repeated token would run twice and weigh double in attention). On an accelerator
    only the dtype is checked: reading the values would wait for the device every step."""
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer token indices (B, K), got dtype "
                         f"{ids.dtype} (a boolean or float mask goes to mask=)")
    if ids.device.type != "cpu" or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"{name}: expected token indices in 0..{n - 1}, got values from {lo} "
                         f"to {hi}")
    if ids.shape[-1] > 1 and not bool((ids.sort(dim=-1).values.diff(dim=-1) > 0).all()):
        raise ValueError(f"{name}: expected distinct token indices in each row, got a repeated "
                         "one (it would run twice and weigh double in attention)")


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: (B, N, D), ids: (B, K) long -> x[b, ids[b]]: (B, K, D)."""
    return torch.gather(x, 1, ids.long()[..., None].expand(-1, -1, x.shape[-1]))
