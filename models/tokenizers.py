"""Patch tokenizers: a plain Conv2d, SatMAE band groups, and a wavelength-conditioned hypernetwork.

Every tokenizer maps x: (B, C, H, W) to tokens (B, G, L, D) WITHOUT position encoding; the
fixed encoding for the G*L tokens comes from ``encoding(grid, gsd_scale)`` and is added by the
encoder. Pixel patches use MAE's layout everywhere (``patchify``): (B, L, p*p*C), channel fastest.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import name_tuple
from .pos_embed import sincos_1d, sincos_2d, work_dtype

__all__ = [
    "GROUP_PRESETS", "SAR_C_BAND_NM", "SAR_POLARISATION_CODES", "SATMAE_S2_GROUPS",
    "GroupedTokenizer", "PlainTokenizer", "SpectralAdapter", "SpectralTokenizer", "Tokenizer",
    "build_tokenizer", "patchify", "resolve_groups", "sar_stand_in", "spectral_order",
    "unpatchify",
]

SATMAE_S2_GROUPS: dict[str, list[str]] = {
    "rgbn": ["B02", "B03", "B04", "B08"],
    "rededge": ["B05", "B06", "B07", "B8A"],
    "swir": ["B11", "B12"],
}
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


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """patches: (B, L, p*p*C) in ``patchify`` layout -> (B, C, Gh*p, Gw*p)."""
    b, p, (gh, gw) = patches.shape[0], patch_size, grid
    x = patches.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


def _band_difference(expected: Sequence[str], got: Sequence[str]) -> str:
    """Human-readable difference between two band lists."""
    missing = [b for b in expected if b not in got]
    extra = [b for b in got if b not in expected]
    if missing or extra:
        return f"missing {missing}, unexpected {extra}"
    if len(expected) != len(got):
        return f"{len(expected)} bands expected, {len(got)} given (duplicates?)"
    i = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
    return f"same bands in another order (position {i}: expected {expected[i]!r}, got {got[i]!r})"


def _check_band_list(name: str, bands: Sequence[str]) -> list[str]:
    """Validate a non-empty list of unique band names (a single string is refused: it would
    split into characters)."""
    bands = list(name_tuple(bands, name))
    if not bands or not all(isinstance(b, str) for b in bands):
        raise ValueError(f"{name}: expected a non-empty list of band names, got {bands!r}")
    dups = sorted({b for b in bands if bands.count(b) > 1})
    if dups:
        raise ValueError(f"{name}: band names must be unique, got duplicates {dups}")
    return bands


def _init_conv(conv: nn.Conv2d) -> None:
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
                raise ValueError(f"bands: {_band_difference(self.bands, list(bands))}")
            if x.shape[1] != len(self.bands):
                raise ValueError(
                    f"x: expected {len(self.bands)} channels {self.bands}, got {x.shape[1]}")
        return self.grid_size(x.shape[-2:])

    @staticmethod
    def _to_tokens(y: Tensor) -> Tensor:
        """(B, D, Gh, Gw) -> (B, L, D)."""
        return y.flatten(2).transpose(1, 2)


class PlainTokenizer(Tokenizer):
    """One Conv2d patch embedding over a fixed, named band list; G = 1."""

    def __init__(self, bands: Sequence[str], patch_size: int, embed_dim: int) -> None:
        """bands: the input channel order the embedding is tied to."""
        super().__init__(patch_size, embed_dim)
        self.bands = _check_band_list("bands", bands)
        self.proj = nn.Conv2d(len(self.bands), self.embed_dim, self.patch_size, self.patch_size)
        _init_conv(self.proj)

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
        flat = [b for members in self.groups.values() for b in members]
        _check_band_list("groups", flat)
        self.bands = _check_band_list("bands", flat if bands is None else bands)
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
            _init_conv(conv)

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


def _spectrum(name: str, values: Tensor | Sequence[float] | None, c: int,
              device: torch.device) -> Tensor:
    """Validate a (C,) vector of positive nm values where it lives, then move it to ``device``.

    Reading the check's result is a host sync for a tensor on an accelerator, so a tensor is
    checked once: the trainer passes the same band-code tensors every step (and the adapter
    gets the tokenizer's), and :func:`_validated` remembers which tensors passed, unless they
    have been written to since."""
    if values is None:
        raise ValueError(f"{name}: required by the spectral tokenizer, shape ({c},) in nm")
    v = torch.as_tensor(values, dtype=torch.float32)
    if v.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},) for {c} bands, got {tuple(v.shape)}")
    if not (_validated(values) or _validated(v)):
        _check_spectrum(name, v)
        _remember(values)
        _remember(v)
    out = v.to(device)
    if out is not v:
        _remember(out)
    return out


def _check_spectrum(name: str, v: Tensor) -> None:
    """ValueError unless every value of ``v`` is finite and positive (nm); a host sync."""
    if not bool(torch.isfinite(v).all() & (v > 0).all()):
        raise ValueError(f"{name}: expected finite positive values in nm, got {v.tolist()}")


# id(tensor) -> (weak reference to it, its version counter when it passed _check_spectrum)
_PASSED: dict[int, tuple[weakref.ref, int]] = {}


def _version(t: object) -> int | None:
    """``t``'s in-place write counter; None for what has none (not a tensor, an inference
    tensor, which may be written to in inference mode unnoticed): never remembered."""
    if not isinstance(t, Tensor) or t.is_inference():
        return None
    return t._version


def _validated(t: object) -> bool:
    """Whether tensor ``t`` passed :func:`_check_spectrum` and was not written to since."""
    version = _version(t)
    entry = _PASSED.get(id(t)) if version is not None else None
    return entry is not None and entry[0]() is t and entry[1] == version


def _remember(t: object) -> None:
    """Record that tensor ``t`` passed :func:`_check_spectrum` (until it is freed or written
    to); anything without a version counter is not recorded."""
    version = _version(t)
    if version is None:
        return
    key = id(t)

    def forget(ref: weakref.ref) -> None:
        if _PASSED.get(key, (None,))[0] is ref:
            del _PASSED[key]

    _PASSED[key] = (weakref.ref(t, forget), version)


def pooled_spectrum(wavelengths: Tensor, bandwidths: Tensor | None, n: int
                    ) -> tuple[Tensor, Tensor | None]:
    """The spectrum of ``n`` adaptive-average-pool windows over C bands sorted by wavelength:
    centre = mean of the window's centres; bandwidth = max(upper edge) - min(lower edge), at
    least the widest band of the window (the span holds it), so it is never 0. Computed in
    float64 (float32 on MPS, which lacks it): in float32 the SAR stand-in's edges (5.5e7 nm
    +- 0.5) round to the same number and the span to 0, a log(0) in the band code. (n,) float32.
    """
    work = work_dtype(wavelengths.device)
    wl = wavelengths.to(work)[None, None]  # (1, 1, C)
    centre = F.adaptive_avg_pool1d(wl, n)[0, 0].to(torch.float32)
    if bandwidths is None:
        return centre, None
    bw = bandwidths.to(work)[None, None]
    edges = torch.cat([wl + bw / 2, bw / 2 - wl], dim=1)  # (1, 2, C): upper, -lower
    span = F.adaptive_max_pool1d(edges, n)[0].sum(0)
    widest = F.adaptive_max_pool1d(bw, n)[0, 0]
    return centre, torch.maximum(span, widest).to(torch.float32)


def spectral_order(wavelengths: Tensor, bandwidths: Tensor | None
                   ) -> tuple[Tensor, Tensor | None]:
    """Band order by (wavelength, bandwidth), and how to treat bands that tie on both.

    wavelengths, bandwidths: (C,). Returns ``order`` (C,), the positions sorted by wavelength
    then bandwidth (SAR VV and VH share the stand-in wavelength and differ in their code), and
    ``same``: None when every band's (wavelength, bandwidth) is its own, else (C, C) float, row i
    averaging the sorted bands whose pair equals band i's. Such bands occur (a stack of two
    products of one sensor: Landsat 8's L2 SR_B1 and L1 B1 are both 443 nm, 16 nm wide) and are
    indistinguishable by spectrum, so only their mean is well defined whatever their input
    order. Without bandwidths, wavelength alone decides.
    """
    order = torch.arange(wavelengths.shape[0], device=wavelengths.device)
    keys = [wavelengths] if bandwidths is None else [wavelengths, bandwidths]
    for key in reversed(keys):  # stable sorts, least significant key first: lexicographic
        order = order[torch.argsort(key[order], stable=True)]
    pairs = torch.stack([k[order] for k in keys], dim=1)  # (C, 1 or 2), sorted
    _, group = torch.unique_consecutive(pairs, dim=0, return_inverse=True)
    if int(group.max()) + 1 == group.shape[0]:
        return order, None
    same = (group[:, None] == group[None, :]).to(torch.float32)
    return order, same / same.sum(dim=1, keepdim=True)


class SpectralAdapter(nn.Module):
    """SpectralEarth-style light 1-D conv over the spectral axis: C bands -> ``out_bands``.

    Per pixel: conv(k, stride s) -> GELU -> conv(3) -> adaptive average pool to ``out_bands``,
    plus a skip that adaptive-average-pools the input bands, so output j is window j's band mean
    plus a learned correction. With wavelengths, bands are first sorted by wavelength, then by
    bandwidth (EnMAP's VNIR/SWIR overlap; SAR VV and VH share the stand-in wavelength), so the
    output does not depend on the input band order (:func:`spectral_order`: bands with the same
    wavelength and bandwidth are indistinguishable, each replaced by their mean), and the
    outputs' spectrum is the pooled one: centre = mean of the window's centres, bandwidth = span
    of the window's band edges.

    Inputs with C < ``out_bands`` bands (Sentinel-2's 13, Sentinel-1's 2 behind an EnMAP
    adapter of 32) pass through unchanged, spectra included: the pools would repeat bands and
    average neighbours into made-up ones, and the spectral tokenizer that follows takes any
    band count, so the C real bands go to it as they are. The adapter is thus a reducer, and
    one encoder takes 2, 13 or 224 bands. At C == out_bands the adapter runs as for more bands
    (the skip is then the identity, plus the learned correction), as it always has, so trained
    checkpoints keep their outputs.

    The pass-through still puts every adapter parameter in the autograd graph, with weight 0
    (``x + 0 * sum of the parameters' means``; skipped under ``torch.no_grad``): each gets a
    zero gradient, as DistributedDataParallel without ``find_unused_parameters`` (eofm's
    pretraining strategy) needs; a parameter left out of the graph fails its second step.
    """

    def __init__(self, out_bands: int = 32, hidden_channels: int = 8, kernel_size: int = 7,
                 stride: int = 2) -> None:
        """out_bands: bands after the adapter; the conv runs along the (sorted) spectral axis."""
        super().__init__()
        if min(out_bands, hidden_channels, kernel_size, stride) <= 0:
            raise ValueError("out_bands, hidden_channels, kernel_size, stride: expected positive "
                             f"ints, got {(out_bands, hidden_channels, kernel_size, stride)}")
        self.out_bands, k = int(out_bands), kernel_size
        self.conv1 = nn.Conv2d(1, hidden_channels, (k, 1), (stride, 1), (k // 2, 0))
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden_channels, 1, (3, 1), padding=(1, 0))
        nn.init.normal_(self.conv2.weight, std=0.02)  # starts close to plain band averaging
        nn.init.zeros_(self.conv2.bias)

    def _pass_through(self, x: Tensor) -> Tensor:
        """x, plus 0 * (sum of the trainable parameters' means) when autograd records: keeps
        every parameter in the graph with a zero gradient (DDP); x itself otherwise."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or not torch.is_grad_enabled():
            return x
        return x + (sum(p.mean() for p in params) * 0.0).to(x.dtype)

    def forward(
        self, x: Tensor, *, wavelengths: Tensor | None = None, bandwidths: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x: (B, C, H, W) -> (x' (B, out, H, W), wavelengths' (out,), bandwidths' (out,)).

        The spectra come back as None when not given. C < out_bands: x and the (validated)
        spectra unchanged, C bands out (see the class docstring).
        """
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        n, wl, bw = self.out_bands, None, None
        if c < n:  # nothing to reduce: the bands (and their spectra) as given
            return (self._pass_through(x),
                    None if wavelengths is None else _spectrum("wavelengths", wavelengths, c,
                                                               x.device),
                    None if bandwidths is None else _spectrum("bandwidths", bandwidths, c,
                                                              x.device))
        if wavelengths is not None:
            wl = _spectrum("wavelengths", wavelengths, c, x.device)
            if bandwidths is not None:
                bw = _spectrum("bandwidths", bandwidths, c, x.device)
            order, same = spectral_order(wl, bw)
            x, wl = x.index_select(1, order), wl[order]
            bw = None if bw is None else bw[order]
            if same is not None:  # bands it cannot tell apart: their mean, whatever the order
                x = torch.einsum("ij,bjhw->bihw", same.to(x.dtype), x)
        z = x.reshape(b, 1, c, h * w)
        z = F.adaptive_avg_pool2d(self.conv2(self.act(self.conv1(z))), (n, h * w)) + \
            F.adaptive_avg_pool2d(z, (n, h * w))
        out = z.reshape(b, n, h, w)
        if wl is None:
            return out, None, None
        return out, *pooled_spectrum(wl, bw, n)


class SpectralTokenizer(Tokenizer):
    """Wavelength-conditioned patch embedding (DOFA idea): one set of weights for any bands.

    Per band, an MLP on a sin-cos code of (log wavelength, log bandwidth) generates that band's
    (D, p, p) kernel and a bias contribution; tokens = conv of x with the stacked kernels, i.e. a
    reduction over bands of per-band responses. Bands are handled independently, so permuting
    bands with their wavelengths leaves tokens unchanged. ``band_reduction`` "mean" (default)
    divides by C so token scale does not grow with the band count (2 vs 224); "sum" does not.
    Codes use ``wavelength_scale * ln(nm)``: 400..2500 nm and the SAR stand-in (``sar_stand_in``:
    5.5e7 nm, bandwidth = polarisation code 1..4) are both representable. ``adapter``: an optional
    ``SpectralAdapter`` run first; the hypernetwork then sees the adapter's pooled spectrum (an
    input of fewer than ``out_bands`` bands passes the adapter unchanged, so any sensor fits).
    """

    def __init__(self, patch_size: int, embed_dim: int, hidden_dim: int = 128, code_dim: int = 64,
                 band_reduction: str = "mean", wavelength_scale: float = 1000.0,
                 adapter: SpectralAdapter | None = None) -> None:
        """hidden_dim: hypernetwork width; code_dim: sin-cos code (half wavelength, half width)."""
        super().__init__(patch_size, embed_dim)
        if code_dim <= 0 or code_dim % 4:
            raise ValueError(f"code_dim: expected a positive multiple of 4, got {code_dim}")
        if band_reduction not in ("mean", "sum"):
            raise ValueError(f"band_reduction: expected 'mean' or 'sum', got {band_reduction!r}")
        self.code_dim, self.band_reduction = int(code_dim), band_reduction
        self.wavelength_scale = float(wavelength_scale)
        d, p = self.embed_dim, self.patch_size
        self.adapter = adapter
        self.hyper = nn.Sequential(nn.Linear(code_dim, hidden_dim), nn.GELU(),
                                   nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.to_weight = nn.Linear(hidden_dim, d * p * p)
        self.to_bias = nn.Linear(hidden_dim, d)
        self.bias = nn.Parameter(torch.zeros(d))
        # Generated kernel entries start near 1/p so each band's response is O(1).
        nn.init.normal_(self.to_weight.weight, std=1.0 / (p * math.sqrt(hidden_dim)))
        nn.init.zeros_(self.to_weight.bias)
        nn.init.normal_(self.to_bias.weight, std=0.02)
        nn.init.zeros_(self.to_bias.bias)

    def band_code(self, wavelengths: Tensor, bandwidths: Tensor) -> Tensor:
        """wavelengths, bandwidths (C,) nm -> (C, code_dim) sin-cos code on a log scale."""
        half = self.code_dim // 2
        wl = sincos_1d(half, self.wavelength_scale * torch.log(wavelengths))
        bw = sincos_1d(half, self.wavelength_scale * torch.log(bandwidths))
        return torch.cat([wl, bw], dim=-1)

    def band_weights(self, wavelengths: Tensor, bandwidths: Tensor) -> tuple[Tensor, Tensor]:
        """(C,) nm -> conv weight (D, C, p, p) and bias (D,), reduction over bands included."""
        h = self.hyper(self.band_code(wavelengths, bandwidths).to(self.to_bias.weight.dtype))
        c, d, p = h.shape[0], self.embed_dim, self.patch_size
        weight = self.to_weight(h).reshape(c, d, p, p).transpose(0, 1)
        bias = self.to_bias(h).sum(0)
        if self.band_reduction == "mean":
            weight, bias = weight / c, bias / c
        return weight, bias + self.bias

    def forward(self, x: Tensor, *, bands: Sequence[str] | None = None,
                wavelengths: Tensor | None = None, bandwidths: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), wavelengths/bandwidths (C,) in nm (required) -> (B, 1, L, D)."""
        self._check_input(x, None)
        wl = _spectrum("wavelengths", wavelengths, x.shape[1], x.device)
        bw = _spectrum("bandwidths", bandwidths, x.shape[1], x.device)
        if self.adapter is not None:
            x, wl, bw = self.adapter(x, wavelengths=wl, bandwidths=bw)
        weight, bias = self.band_weights(wl, bw)
        y = F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype), stride=self.patch_size)
        return self._to_tokens(y).unsqueeze(1)


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
