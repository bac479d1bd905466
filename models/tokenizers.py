"""Patch tokenizers: a plain Conv2d, SatMAE band groups, and a wavelength-conditioned hypernetwork.

Every tokenizer maps x: (B, C, H, W) to tokens (B, G, L, D) WITHOUT position encoding; the
fixed encoding for the G*L tokens comes from ``encoding(grid, gsd_scale)`` and is added by the
encoder. Pixel patches use MAE's layout everywhere (``patchify``): (B, L, p*p*C), channel fastest.
Here: the plain and grouped tokenizers and :func:`build_tokenizer`; the base class, patch layout
and SAR stand-in live in :mod:`.tokenizer_base`, the spectral tokenizer and adapter in
:mod:`.spectral` (all re-exported here).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import name_tuple
from .masking import check_ids_keep
from .pos_embed import sincos_1d, sincos_2d
from .spectral import SpectralAdapter, SpectralTokenizer, spectral_order
from .tokenizer_base import (
    SAR_C_BAND_NM,
    SAR_POLARISATION_CODES,
    Tokenizer,
    check_band_list,
    gather_patches,
    init_conv,
    patchify,
    sar_stand_in,
    unpatchify,
)

__all__ = [
    "GROUP_PRESETS", "SAR_C_BAND_NM", "SAR_POLARISATION_CODES", "SATMAE_S2_GROUPS",
    "GroupedTokenizer", "PlainTokenizer", "SpectralAdapter", "SpectralTokenizer", "Tokenizer",
    "build_tokenizer", "gather_patches", "patchify", "resolve_groups", "sar_stand_in", "spectral_order",
    "unpatchify",
]

SATMAE_S2_GROUPS: dict[str, list[str]] = {
    "rgbn": ["B02", "B03", "B04", "B08"],
    "rededge": ["B05", "B06", "B07", "B8A"],
    "swir": ["B11", "B12"],
}


class PlainTokenizer(Tokenizer):
    """One Conv2d patch embedding over a fixed, named band list; G = 1."""

    def __init__(self, bands: Sequence[str], patch_size: int, embed_dim: int) -> None:
        """bands: the input channel order the embedding is tied to."""
        super().__init__(patch_size, embed_dim)
        self.bands = check_band_list("bands", bands)
        self.proj = nn.Conv2d(len(self.bands), self.embed_dim, self.patch_size, self.patch_size)
        init_conv(self.proj)

    def forward(self, x: Tensor, *, bands: Sequence[str] | None = None,
                wavelengths: Tensor | None = None, bandwidths: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) -> (B, 1, L, D); wavelengths/bandwidths are ignored."""
        self._check_input(x, bands)
        return self._to_tokens(self.proj(x)).unsqueeze(1)

    def forward_kept(self, x: Tensor, ids_keep: Tensor, *,
                     bands: Sequence[str] | None = None) -> Tensor:
        """x: (B, C, H, W), ids_keep (B, K) long (indices of the L patches, row-major) ->
        tokens (B, K, D) of those patches only: ``forward(x)[:, 0]`` gathered at ``ids_keep``
        (equal to float rounding: the same Conv2d parameters, as a linear map of the kept
        patches' pixels), without embedding the patches an MAE mask drops (75% of them)."""
        gh, gw = self._check_input(x, bands)
        if ids_keep.ndim != 2 or ids_keep.shape[0] != x.shape[0]:
            raise ValueError(f"ids_keep: expected (B={x.shape[0]}, K), got "
                             f"{tuple(ids_keep.shape)}")
        check_ids_keep(ids_keep, gh * gw)
        b, c, p = x.shape[0], x.shape[1], self.patch_size
        patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(
            b, gh * gw, c * p * p)  # (B, L, C*p*p) in the conv weight's (C, p, p) order
        patches = torch.gather(patches, 1, ids_keep.long()[..., None].expand(-1, -1, c * p * p))
        weight = self.proj.weight.reshape(self.embed_dim, c * p * p)  # (D, C*p*p), conv order
        return F.linear(patches, weight, self.proj.bias)


class GroupedTokenizer(Tokenizer):
    """SatMAE band groups: one patch embedding per named group, G*L tokens.

    Everything is aligned by band NAME: group g's pixels are its bands in group order
    (``scatter``/``patchify_groups``) and go back to their input positions by name
    (``gather``/``unpatchify_groups``), so a per-group head can never be scored against
    another group's band (the SatMAE/SatMAE++ B08 defect). Input bands in no group are dropped.
    """

    def __init__(self, groups: Mapping[str, Sequence[str]], patch_size: int, embed_dim: int,
                 group_embed_dim: int | None = None, bands: Sequence[str] | None = None) -> None:
        """groups: name -> band names (output order); bands: input order (default: groups)."""
        super().__init__(patch_size, embed_dim)
        if not groups:
            raise ValueError("groups: expected at least one group, got none")
        self.groups = {str(g): list(name_tuple(b, f"groups[{g!r}]")) for g, b in groups.items()}
        for g in groups:  # else a Conv2d over 0 bands, failing in its first forward
            if not self.groups[str(g)]:
                raise ValueError(f"groups[{g!r}]: expected at least one band name, got none")
        flat = [b for members in self.groups.values() for b in members]
        check_band_list("groups", flat)
        self.bands = check_band_list("bands", flat if bands is None else bands)
        self.group_names = list(self.groups)
        self.num_groups = len(self.groups)
        self.dropped_bands = [b for b in self.bands if b not in flat]
        d = self.embed_dim
        dg = (d // 4) // 4 * 4 if group_embed_dim is None else int(group_embed_dim)
        if dg <= 0 or dg % 2 or dg >= d or (d - dg) % 4:
            raise ValueError(f"group_embed_dim: expected an even int in (0, {d}) with "
                             f"embed_dim - group_embed_dim a multiple of 4, got {dg}")
        self.group_embed_dim = dg
        for i, idx in enumerate(self.group_index()):
            self.register_buffer(f"_index{i}", torch.tensor(idx), persistent=False)
        self.proj = nn.ModuleList(
            nn.Conv2d(len(m), d, self.patch_size, self.patch_size) for m in self.groups.values())
        for conv in self.proj:
            init_conv(conv)

    def group_index(self, bands: Sequence[str] | None = None) -> list[list[int]]:
        """Per group, the positions of its bands (group order) in ``bands`` (default self.bands)."""
        bands = self.bands if bands is None else list(bands)
        assert self.groups is not None
        absent = [b for m in self.groups.values() for b in m if b not in bands]
        if absent:
            raise ValueError(f"bands: group bands {absent} are missing from {bands}")
        return [[bands.index(b) for b in m] for m in self.groups.values()]

    def _indices(self) -> list[Tensor]:
        """The group index buffers, one (C_g,) long tensor per group."""
        return [getattr(self, f"_index{i}") for i in range(self.num_groups)]

    @property
    def group_channels(self) -> list[int]:
        """C_g per group, in group order."""
        return [len(m) for m in (self.groups or {}).values()]

    @property
    def group_patch_dims(self) -> list[int]:
        """p*p*C_g per group: the width of a per-group pixel head."""
        return [self.patch_size**2 * c for c in self.group_channels]

    def band_coverage(self) -> Tensor:
        """(C,) bool over the input bands: True where the band belongs to some group."""
        return torch.tensor([b not in self.dropped_bands for b in self.bands or []])

    def forward(self, x: Tensor, *, bands: Sequence[str] | None = None,
                wavelengths: Tensor | None = None, bandwidths: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) in input band order -> (B, G, L, D); wavelengths are ignored."""
        self._check_input(x, bands)
        parts = [x.index_select(1, idx) for idx in self._indices()]
        tokens = [self._to_tokens(conv(p)) for conv, p in zip(self.proj, parts, strict=True)]
        return torch.stack(tokens, dim=1)

    def scatter(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) in input band order -> per group (B, C_g, H, W) in group band order."""
        self._check_input(x, None)
        return [x.index_select(1, idx) for idx in self._indices()]

    def gather(self, parts: Sequence[Tensor], fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Inverse of ``scatter``: per group (B, C_g, H, W) -> ((B, C, H, W), covered (C,)).

        Bands in no group are ``fill``; ``covered`` (bool, input band order) says which are real.
        """
        if len(parts) != self.num_groups:
            raise ValueError(
                f"parts: expected {self.num_groups} groups {self.group_names}, got {len(parts)}")
        for name, part, c in zip(self.group_names, parts, self.group_channels, strict=True):
            if part.ndim != 4 or part.shape[1] != c:
                raise ValueError(
                    f"parts[{name!r}]: expected (B, {c}, H, W), got {tuple(part.shape)}")
        b, _, h, w = parts[0].shape
        out = parts[0].new_full((b, len(self.bands or []), h, w), fill)
        for idx, part in zip(self._indices(), parts, strict=True):
            out = out.index_copy(1, idx, part)
        return out, self.band_coverage().to(out.device)

    def patchify_groups(self, x: Tensor) -> list[Tensor]:
        """x: (B, C, H, W) -> per group pixel targets (B, L, p*p*C_g), bands in group order."""
        return [patchify(part, self.patch_size) for part in self.scatter(x)]

    def unpatchify_groups(self, patches: Sequence[Tensor], grid: tuple[int, int],
                          fill: float = 0.0) -> tuple[Tensor, Tensor]:
        """Per group (B, L, p*p*C_g) -> ((B, C, H, W) in input band order by name, covered (C,))."""
        if len(patches) != self.num_groups:
            raise ValueError(f"patches: expected {self.num_groups} groups, got {len(patches)}")
        p = self.patch_size
        parts = [unpatchify(t, p, grid, c)
                 for t, c in zip(patches, self.group_channels, strict=True)]
        return self.gather(parts, fill)

    def encoding(self, grid: tuple[int, int], gsd_scale: Tensor | None = None) -> Tensor:
        """SatMAE: [2-D position (D-Dg) | group index (Dg)] concatenated; (G*L, D) or (B, G*L, D)"""
        pos = sincos_2d(self.embed_dim - self.group_embed_dim, grid, scale=gsd_scale)
        grp = sincos_1d(self.group_embed_dim, torch.arange(self.num_groups, device=pos.device))
        lead, (n_tok, _) = pos.shape[:-2], pos.shape[-2:]
        pos = pos.unsqueeze(-3).expand(*lead, self.num_groups, n_tok, pos.shape[-1])
        grp = grp[:, None, :].expand(*lead, self.num_groups, n_tok, self.group_embed_dim)
        return torch.cat([pos, grp], dim=-1).flatten(-3, -2)


_KINDS: dict[str, type[Tokenizer]] = {
    "plain": PlainTokenizer, "grouped": GroupedTokenizer, "spectral": SpectralTokenizer}
GROUP_PRESETS: dict[str, dict[str, list[str]]] = {"satmae_s2": SATMAE_S2_GROUPS}


def resolve_groups(groups: Mapping[str, Sequence[str]] | str | None
                   ) -> Mapping[str, Sequence[str]]:
    """A grouped tokenizer's ``groups`` as a mapping: None is SatMAE's S2 groups, a string a
    preset of :data:`GROUP_PRESETS`; a ValueError names what was expected otherwise."""
    if groups is None:
        return SATMAE_S2_GROUPS
    if isinstance(groups, str):
        if groups not in GROUP_PRESETS:
            raise ValueError(
                f"groups: expected a mapping or one of {sorted(GROUP_PRESETS)}, got {groups!r}")
        return GROUP_PRESETS[groups]
    if not isinstance(groups, Mapping) or not all(
            isinstance(v, Sequence) and not isinstance(v, str) for v in groups.values()):
        raise ValueError(f"groups: expected a mapping group -> list of bands, got {groups!r}")
    return groups


def build_tokenizer(kind: str, **kwargs: object) -> Tokenizer:
    """Build a tokenizer by kind ("plain" | "grouped" | "spectral") from constructor kwargs.

    ``bands`` may be passed to every kind (spectral drops it: it takes any bands); grouped
    ``groups`` defaults to SatMAE's S2 groups and may name a preset ("satmae_s2"); spectral
    ``adapter`` may be a SpectralAdapter or its kwargs (e.g. ``{"out_bands": 32}``).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    kwargs = dict(kwargs)
    if kind == "spectral":
        kwargs.pop("bands", None)
        if isinstance(kwargs.get("adapter"), Mapping):
            kwargs["adapter"] = SpectralAdapter(**kwargs["adapter"])  # type: ignore[arg-type]
    if kind == "grouped":
        kwargs["groups"] = resolve_groups(kwargs.get("groups"))  # type: ignore[arg-type]
    cls = _KINDS[kind]
    valid = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(f"{kind} tokenizer: unknown arguments {bad}; valid: {valid}")
    return cls(**kwargs)  # type: ignore[arg-type]
