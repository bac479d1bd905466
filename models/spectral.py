"""The wavelength-conditioned tokenizer and the spectral adapter: one encoder for any bands.

:class:`SpectralTokenizer` (DOFA idea) generates each band's patch-embedding kernel from its
centre wavelength and bandwidth; :class:`SpectralAdapter` (SpectralEarth) reduces hundreds of
hyperspectral bands with a light 1-D convolution along the sorted spectral axis first. Band
spectra are checked once per tensor (:func:`_spectrum`: a host sync on an accelerator).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pos_embed import sincos_1d, work_dtype
from .tokenizer_base import Tokenizer

__all__ = ["SpectralAdapter", "SpectralTokenizer", "pooled_spectrum", "spectral_order"]


def _spectrum(name: str, values: Tensor | Sequence[float] | None, c: int,
              device: torch.device) -> Tensor:
    """Validate a (C,) vector of positive nm values where it lives, then move it to ``device``.

    Reading the check's result is a host sync for a tensor on an accelerator, so a tensor is
    checked once: the trainer passes the same band-code tensors every step (and the adapter
    gets the tokenizer's), and :func:`_validated` remembers which tensors passed, unless they
    have been written to since (their version counter moved). A tensor whose memory may be
    written past that counter where torch can tell (memory torch did not allocate, such as a
    numpy array's; CPU shared memory) is never remembered: it is checked on every call
    (:func:`_version`). Limitation: writes that bypass the counter of memory torch allocated
    -- ``t.data[...] = v``, writes through ``t.numpy()`` -- are not seen; pass a new tensor (or
    ``t.clone()``) after such a write."""
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
    """``t``'s in-place write counter; None, never remembered, for what has none (not a
    tensor, an inference tensor, which may be written to in inference mode unnoticed) or whose
    memory is written past it: memory torch did not allocate (its storage is not resizable: a
    numpy array behind ``torch.from_numpy``/``as_tensor``, ``torch.frombuffer``, DLPack) and
    CPU shared memory (another process writes it)."""
    if not isinstance(t, Tensor) or t.is_inference():
        return None
    if not t.untyped_storage().resizable() or (t.device.type == "cpu" and t.is_shared()):
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
        # Generated kernel entries start near 1/p so each band's response is O(1): the std
        # divides by the hypernetwork features' own rms over optical and SAR spectra at init
        # (~0.065 with torch's default Linear init, not 1: entries were ~16x under 1/p and the
        # tokens ~18x smaller than a plain tokenizer's, the position code drowning them)
        nn.init.normal_(self.to_weight.weight,
                        std=1.0 / (p * math.sqrt(hidden_dim) * self._hyper_rms()))
        nn.init.zeros_(self.to_weight.bias)
        nn.init.normal_(self.to_bias.weight, std=0.02)
        nn.init.zeros_(self.to_bias.bias)

    @torch.no_grad()
    def _hyper_rms(self) -> float:
        """The rms of the hypernetwork's features at init over reference spectra: 400-2500 nm
        at 10-200 nm widths, and the SAR stand-in codes (no random draw)."""
        wl = torch.cat([torch.linspace(400.0, 2500.0, 64).repeat(2), torch.full((4,), 5.5e7)])
        bw = torch.cat([torch.full((64,), 10.0), torch.full((64,), 200.0),
                        torch.arange(1.0, 5.0)])
        if self.to_bias.weight.is_meta:  # built for its shapes only: no values to measure
            return 1.0
        h = self.hyper(self.band_code(wl, bw).to(self.to_bias.weight))
        return max(float(h.pow(2).mean().sqrt()), 1e-3)

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
