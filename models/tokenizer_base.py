"""What every patch tokenizer shares: the :class:`Tokenizer` base, MAE's patch layout, the SAR
stand-in spectral code, and the checks of band lists.

Every tokenizer maps x: (B, C, H, W) to tokens (B, G, L, D) WITHOUT position encoding; the
fixed encoding for the G*L tokens comes from ``encoding(grid, gsd_scale)`` and is added by the
encoder. Pixel patches use MAE's layout everywhere (:func:`patchify`): (B, L, p*p*C), channel
fastest. The tokenizers themselves: :mod:`.tokenizers` (plain, grouped) and :mod:`.spectral`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .contract import name_tuple
from .pos_embed import sincos_2d

__all__ = ["SAR_C_BAND_NM", "SAR_POLARISATION_CODES", "Tokenizer", "band_difference",
           "check_band_list", "gather_patches", "init_conv", "patchify", "sar_stand_in",
           "unpatchify"]

# SAR stand-in spectral code: Sentinel-1's C-band radar wavelength c / 5.405 GHz = 5.5466 cm, in
# nm, as the "wavelength"; the polarisation code below as the "bandwidth" (no optical band is so
# narrow). Example: ``sar_stand_in(["VV", "VH"])``.
SAR_C_BAND_NM = 55465764.66
SAR_POLARISATION_CODES: dict[str, float] = {"VV": 1.0, "VH": 2.0, "HH": 3.0, "HV": 4.0}


def sar_stand_in(
    polarisations: Sequence[str], wavelength_nm: float = SAR_C_BAND_NM
) -> tuple[Tensor, Tensor]:
    """SAR stand-in (wavelengths, bandwidths), each (C,), for polarisations such as ["VV", "VH"]."""
    bad = [p for p in polarisations if p.upper() not in SAR_POLARISATION_CODES]
    if bad:
        valid = list(SAR_POLARISATION_CODES)
        raise ValueError(f"polarisations: expected some of {valid}, got {bad}")
    codes = [SAR_POLARISATION_CODES[p.upper()] for p in polarisations]
    return torch.full((len(codes),), float(wavelength_nm)), torch.tensor(codes)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """x: (B, C, H, W) -> (B, L, p*p*C), MAE layout (row in patch, column in patch, channel)."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def gather_patches(x: Tensor, patch_size: int, ids: Tensor) -> Tensor:
    """``patchify(x, p)`` at the token positions ``ids`` (B, K) only: (B, K, p*p*C), the same
    values, but only the K chosen patches are copied (not all L, then K of them)."""
    b, c, h, w = x.shape
    p, gw = patch_size, w // patch_size
    view = x.reshape(b, c, h // p, p, gw, p).permute(0, 2, 4, 3, 5, 1)  # (B, Gh, Gw, p, p, C)
    ids = ids.long()
    rows = view[torch.arange(b, device=x.device)[:, None], ids // gw, ids % gw]  # (B, K, p, p, C)
    return rows.reshape(b, ids.shape[1], p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """patches: (B, L, p*p*C) in ``patchify`` layout -> (B, C, Gh*p, Gw*p)."""
    b, p, (gh, gw) = patches.shape[0], patch_size, grid
    x = patches.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


def band_difference(expected: Sequence[str], got: Sequence[str]) -> str:
    """Human-readable difference between two band lists."""
    missing = [b for b in expected if b not in got]
    extra = [b for b in got if b not in expected]
    if missing or extra:
        return f"missing {missing}, unexpected {extra}"
    if len(expected) != len(got):
        return f"{len(expected)} bands expected, {len(got)} given (duplicates?)"
    i = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
    return f"same bands in another order (position {i}: expected {expected[i]!r}, got {got[i]!r})"


def check_band_list(name: str, bands: Sequence[str]) -> list[str]:
    """Validate a non-empty list of unique band names (a single string is refused: it would
    split into characters)."""
    bands = list(name_tuple(bands, name))
    if not bands or not all(isinstance(b, str) for b in bands):
        raise ValueError(f"{name}: expected a non-empty list of band names, got {bands!r}")
    dups = sorted({b for b in bands if bands.count(b) > 1})
    if dups:
        raise ValueError(f"{name}: band names must be unique, got duplicates {dups}")
    return bands


def init_conv(conv: nn.Conv2d) -> None:
    """MAE init: xavier-uniform on the flattened kernel, zero bias."""
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    nn.init.zeros_(conv.bias)


class Tokenizer(nn.Module):
    """Base class: x (B, C, H, W) -> tokens (B, G, L, D) plus their fixed position encoding."""

    patch_size: int
    embed_dim: int
    num_groups: int = 1
    group_names: list[str]
    bands: list[str] | None
    groups: dict[str, list[str]] | None = None

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        """Store and validate the patch size and width shared by every tokenizer."""
        super().__init__()
        if int(patch_size) <= 0:
            raise ValueError(f"patch_size: expected a positive int, got {patch_size}")
        if int(embed_dim) <= 0 or int(embed_dim) % 4:
            raise ValueError(f"embed_dim: expected a positive multiple of 4, got {embed_dim}")
        self.patch_size, self.embed_dim = int(patch_size), int(embed_dim)
        self.group_names = ["all"]
        self.bands, self.groups = None, None

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """(H // p, W // p); ValueError when H or W is not a multiple of the patch size."""
        h, w = int(img_size[0]), int(img_size[1])
        p = self.patch_size
        if h <= 0 or w <= 0 or h % p or w % p:
            raise ValueError(f"img_size: expected multiples of patch_size {p}, got {(h, w)}")
        return h // p, w // p

    def encoding(self, grid: tuple[int, int], gsd_scale: Tensor | None = None) -> Tensor:
        """Fixed 2-D sin-cos positions (L, D); (B, L, D) for gsd_scale (B,) = gsd / reference."""
        return sincos_2d(self.embed_dim, grid, scale=gsd_scale)

    def _check_input(self, x: Tensor, bands: Sequence[str] | None) -> tuple[int, int]:
        """Validate x (B, C, H, W) against the fixed band list; return the token grid."""
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        if self.bands is not None:
            if bands is not None and list(bands) != self.bands:
                raise ValueError(f"bands: {band_difference(self.bands, list(bands))}")
            if x.shape[1] != len(self.bands):
                raise ValueError(
                    f"x: expected {len(self.bands)} channels {self.bands}, got {x.shape[1]}")
        return self.grid_size(x.shape[-2:])

    @staticmethod
    def _to_tokens(y: Tensor) -> Tensor:
        """(B, D, Gh, Gw) -> (B, L, D)."""
        return y.flatten(2).transpose(1, 2)
