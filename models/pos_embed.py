"""Fixed sin-cos encodings: 1-D codes, 2-D patch positions (MAE), GSD-scaled ones (Scale-MAE)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sincos_1d", "sincos_2d", "work_dtype"]


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """MAE 1-D sin-cos code, pos: (N,) or (..., N) float -> (..., N, dim) laid out [sin | cos].

    omega_i = 1 / 10000^(2i/dim) for i < dim/2. Computed in float64, returned as float32 on
    ``pos.device``.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim: expected a positive even number, got {dim}")
    pos = torch.as_tensor(pos)
    work = work_dtype(pos.device)
    omega = torch.arange(dim // 2, dtype=work, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    out = pos.to(work).unsqueeze(-1) * omega
    return torch.cat([torch.sin(out), torch.cos(out)], dim=-1).to(torch.float32)


def sincos_2d(
    dim: int, grid: tuple[int, int], *, scale: float | Tensor | None = None
) -> Tensor:
    """MAE 2-D sin-cos position code for a (Gh, Gw) patch grid -> (Gh*Gw, dim), row-major.

    Token l = r*Gw + c. As in MAE's ``get_2d_sincos_pos_embed`` the first dim/2 channels encode
    the column index c and the last dim/2 the row index r, so MAE position tables line up.
    ``scale`` (Scale-MAE GSD-aware positions): positions are multiplied by it, i.e. by
    gsd / reference_gsd; a float gives (L, dim), a Tensor (B,) gives (B, L, dim). scale == 1 gives
    exactly the unscaled code.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"dim: expected a positive multiple of 4, got {dim}")
    gh, gw = int(grid[0]), int(grid[1])
    if gh <= 0 or gw <= 0:
        raise ValueError(f"grid: expected two positive ints, got {tuple(grid)}")
    device = scale.device if isinstance(scale, Tensor) else torch.device("cpu")
    work = work_dtype(device)
    rows = torch.arange(gh, device=device).repeat_interleave(gw).to(work)
    cols = torch.arange(gw, device=device).repeat(gh).to(work)
    pos = torch.stack([cols, rows])  # (2, L)
    if isinstance(scale, Tensor):
        if scale.ndim != 1:
            raise ValueError(
                f"scale: expected a float or a (B,) tensor, got shape {tuple(scale.shape)}")
        pos = pos * scale.to(work)[:, None, None]  # (B, 2, L)
    elif scale is not None:
        pos = pos * float(scale)
    code = sincos_1d(dim // 2, pos)  # (..., 2, L, dim/2)
    return torch.cat([code[..., 0, :, :], code[..., 1, :, :]], dim=-1)


def resample_grid_table(table: Tensor, old_grid: tuple[int, int],
                        new_grid: tuple[int, int]) -> Tensor:
    """A (Gh*Gw, D) row-major position table resampled (bicubic) to ``new_grid``: (L', D)."""
    gh, gw = int(old_grid[0]), int(old_grid[1])
    if table.ndim != 2 or table.shape[0] != gh * gw:
        raise ValueError(f"table: expected ({gh}*{gw}, D) for grid {(gh, gw)}, got shape "
                         f"{tuple(table.shape)}")
    if (gh, gw) == tuple(new_grid):
        return table
    grid = table.reshape(1, gh, gw, -1).permute(0, 3, 1, 2).float()
    out = torch.nn.functional.interpolate(grid, size=tuple(new_grid), mode="bicubic",
                                          align_corners=False, antialias=True)
    return out.permute(0, 2, 3, 1).reshape(-1, table.shape[1]).to(table.dtype)
