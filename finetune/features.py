"""Preprocessing from the encoder's input contract, and frozen feature extraction.

:func:`apply_contract` decides every preprocessing step from the contract, never from defaults:
bands are selected and ordered BY NAME, tiles are resized to the contract's input size and
normalised with the contract's statistics. What preprocessing can fix (band order, extra bands,
size) is fixed and listed; what it cannot (a missing band, no statistics, another pixel unit, a
size that fits no patch grid) is refused with the difference named, unless ``override`` is set,
in which case the difference is recorded for the report. An encoder that takes any bands
(``InputContract.any_bands``, the spectral tokenizer) is fed the contract bands the data has,
each with its own statistics, wavelength and bandwidth; the contract bands the data lacks are a
note, and only data with none of them is refused. A GSD that differs from the contract's
AFTER resizing is always a note, never a refusal: resizing tiles to the encoder's input size is
the field's standard protocol (EuroSAT's 64 px at 10 m fed at 224 px is 2.86 m), so the report
says at which scale the encoder was fed rather than blocking the evaluation.

:func:`recalibrate_batchnorm` re-estimates a network's BatchNorm running statistics on the
data, preprocessed the same way (the probe's random-init baseline of a ResNet export).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.models.contract import InputContract, check_input
from eofm.models.normalise import normalise_masked

from .datasets import LabelledData

POOLS = ("cls", "mean", "lastn")
# check_input messages that preprocessing fixes, and those that only go into the report;
# every other message (missing band, statistics absent, units, ...) refuses the data. The GSD
# is compared after resizing (see _gsd_note) and is always a note.
_FIXED = ("unexpected band", "different band order", "different size")
_NOTED = ("statistics differ", "statistics absent for band", "different nodata",
          "different processing_level", "different normalisation")


@dataclass
class Preprocess:
    """Contract-derived preprocessing: raw (B, C_data, H, W) -> normalised (B, C, h, w) float32."""

    bands: list[str]
    """Band names fed to the encoder, in the contract's order."""
    index: list[int]
    """Position in the dataset's bands of each fed band."""
    source_bands: list[str]
    """The dataset's names for the fed bands (same order as ``bands``)."""
    size: tuple[int, int] | None
    """Output (H, W); None keeps each tile's size."""
    method: str
    """Normalisation method: "meanstd" or "percentile"."""
    shift: list[float]
    scale: list[float]
    nodata: list[float | None]
    """Raw nodata value per fed band (such pixels become 0 after normalisation)."""
    wavelengths: list[float]
    bandwidths: list[float]
    gsd: float | None = None
    """Input GSD after resizing, m (used only by encoders with GSD-scaled positions)."""
    fixed: list[str] = field(default_factory=list)
    """Differences that preprocessing fixed (band order, extra bands, size)."""
    notes: list[str] = field(default_factory=list)
    """Differences that remain but do not refuse the data (statistics, processing level...)."""
    overridden: list[str] = field(default_factory=list)
    """Differences that would refuse the data, accepted because of ``override``."""

    def __call__(self, x: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Select bands, mask nodata, normalise, resize: (B, C_data, H, W) -> (B, C, h, w).

        The fed bands are selected before the float32 cast (in the pixels' own dtype: a
        copy of those bands only), and the nodata mask is found once, for normalising (as the
        model card's snippet, :func:`~eofm.models.normalise.normalise`) and for the resize."""
        if not isinstance(x, Tensor):
            x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        if isinstance(x, Tensor) and x.device.type != "cpu":  # uint16: few CUDA kernels
            x = x.to(torch.float32)
        y, invalid = normalise_masked(x[:, self.index], self.shift, self.scale, self.nodata,
                                      device=device)
        if self.size is not None and tuple(y.shape[-2:]) != self.size:
            y = _resize(y, invalid, self.size)
        return y

    def encoder_kwargs(self, device: torch.device | str = "cpu") -> dict:
        """Keyword arguments for the encoder's forward: band names, spectra and GSD."""
        return {"bands": self.bands,
                "wavelengths": torch.tensor(self.wavelengths, device=device),
                "bandwidths": torch.tensor(self.bandwidths, device=device),
                "gsd": self.gsd}

    def to_dict(self) -> dict:
        """JSON-ready form for reports."""
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d


def _resize(y: Tensor, invalid: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of normalised ``y`` (0 at its ``invalid`` pixels, (B, 1, H, W)) that
    keeps nodata out of valid pixels: where a tile has nodata, values are interpolated from its
    valid pixels only (normalised by the interpolated valid weight), and an output pixel that
    is mostly nodata (weight < 0.5) is nodata, 0. A plain bilinear resize would blend the 0s
    into their neighbours along every nodata edge. Tiles without nodata: plain bilinear."""
    down = y.shape[-2] > size[0] or y.shape[-1] > size[1]

    def resize(t: Tensor) -> Tensor:
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=down)

    out = resize(y)
    has = invalid.flatten(1).any(dim=1)
    if has.any():
        weight = resize((~invalid[has]).to(y.dtype))
        masked = torch.where(weight >= 0.5, out[has] / weight.clamp_min(1e-6),
                             torch.zeros_like(out[has]))
        out = out.clone()
        out[has] = masked
    return out


def _resolve_bands(data: LabelledData, wanted: Sequence[str],
                   contract: InputContract | None = None
                   ) -> tuple[list[int], list[str], list[str]]:
    """Dataset positions of the contract's bands, by name or the sensor's alias; -1 if absent.
    With a ``contract`` carrying wavelengths, a name match whose centre wavelengths differ by
    more than half the wider band is no match (-1, and a reason in the third list): the same
    name means another band in another sensor (Sentinel-2 B05, red edge 704 nm, vs Landsat's
    B5 = its alias B05, NIR 865 nm)."""
    from eofm.data_shards.sensors import get_sensor

    sensor = get_sensor(data.sensor)
    index, conflicts = [], []
    for k, b in enumerate(wanted):
        if b in data.bands:
            i = data.bands.index(b)
        else:
            try:
                name = sensor.canonical(b)
            except ValueError:
                name = None
            i = data.bands.index(name) if name in data.bands else -1
        if i >= 0 and contract is not None and contract.wavelengths is not None:
            (wl,), (bw,) = data.wavelengths([data.bands[i]])
            cwl = contract.wavelengths[k]
            cbw = contract.bandwidths[k] if contract.bandwidths is not None else bw
            if abs(wl - cwl) > max(bw, cbw, 1.0) / 2:
                conflicts.append(f"{b!r} ({cwl:g} nm in the contract) matched the data's "
                                 f"{data.bands[i]!r} of {data.sensor} by name, but that band is "
                                 f"at {wl:g} nm: another band of the same name")
                i = -1
        index.append(i)
    return (index, [data.bands[i] if i >= 0 else b for i, b in zip(index, wanted, strict=True)],
            conflicts)


def _norm_params(stats: dict[str, dict] | None, keys: Sequence[str],
                 method: str) -> list[tuple[float, float] | None]:
    """(shift, scale) per band looked up in ``stats`` under ``keys``; None when unusable."""
    out: list[tuple[float, float] | None] = []
    for key in keys:
        s = (stats or {}).get(key) or {}
        if method == "meanstd":
            sh, sc = s.get("mean"), s.get("std")
        else:
            lo, hi = s.get("p2"), s.get("p98")
            sh, sc = lo, (hi - lo if lo is not None and hi is not None else None)
        out.append(None if sh is None or not sc else (float(sh), float(sc)))
    return out


def _condense(notes: list[str]) -> list[str]:
    """One note for all per-band statistics differences (the first one as the example)."""
    stats = [n for n in notes if n.startswith("statistics differ")]
    if len(stats) <= 1:
        return notes
    bands = list(dict.fromkeys(re.findall(r"band '([^']+)'", " ".join(stats))))
    return [n for n in notes if n not in stats] + [
        f"the dataset's statistics differ from the contract's (which normalise the input) for "
        f"band(s) {bands}, e.g. {stats[0].removeprefix('statistics differ for ')}"]


def effective_gsd(gsd: float, tile: tuple[int, int] | None,
                  size: tuple[int, int] | None) -> float:
    """GSD (m) of ``tile``-px tiles at ``gsd`` once resized to ``size`` (None: not resized)."""
    if size is None or tile is None:
        return gsd
    return gsd * tile[0] / size[0]


def _gsd_note(contract: InputContract, gsd: float, tile: tuple[int, int] | None,
              size: tuple[int, int] | None) -> list[str]:
    """The contract's GSD against the data's AFTER resizing, as check_input words it plus how
    the fed GSD comes about; [] when the contract has no GSD or they agree."""
    if contract.gsd is None:
        return []
    if tile is None and size is not None:  # each tile is resized by its own factor
        return [f"different GSD: the contract expects {contract.gsd:g} m, the batch has tiles "
                f"of different sizes at {gsd:g} m resized to {size[0]} x {size[1]} px, so each "
                "is fed at its own GSD"]
    fed = effective_gsd(gsd, tile, size)
    found = [p for p in check_input(contract, gsd=fed) if p.startswith("different GSD")]
    if not found:
        return []
    if size is not None and tile is not None and size != tile:
        how = (f"{tile[0]} x {tile[1]} px at {gsd:g} m resized to {size[0]} x {size[1]} px")
    else:
        how = f"at its own {gsd:g} m, not resized"
    return [f"{found[0]} ({how})"]


def _bands_present(data: LabelledData, contract: InputContract
                   ) -> tuple[InputContract, list[str]]:
    """For an encoder that takes any of its contract's bands (``contract.any_bands``): the
    contract of the bands ``data`` has (:meth:`InputContract.subset`, contract order) and a note
    naming the contract bands it lacks ([] when none). ValueError when it has none. Any other
    contract comes back unchanged, with no note."""
    if not (contract.any_bands and contract.bands):
        return contract, []
    index, _, conflicts = _resolve_bands(data, contract.bands, contract)
    present = [b for b, i in zip(contract.bands, index, strict=True) if i >= 0]
    absent = [b for b, i in zip(contract.bands, index, strict=True) if i < 0]
    if not present:
        raise ValueError("the data does not satisfy the encoder's input contract: its bands "
                         f"{list(data.bands)} ({data.sensor}) include none of the contract's "
                         f"{list(contract.bands)}" + "".join(f"; {c}" for c in conflicts)
                         + " (the encoder takes any of those bands, but at least one: another "
                         "band has no statistics to normalise it)")
    if not absent:
        return contract, []
    return contract.subset(present), [
        f"contract band(s) {absent} absent from the data: this encoder takes any of its "
        f"bands, so it is fed the {len(present)} of its {len(contract.bands)} bands the data "
        "has, each with its own statistics, wavelength and bandwidth"
        + "".join(f"; {c}" for c in conflicts)]


def apply_contract(data: LabelledData, contract: InputContract, *,
                   override: bool = False) -> Preprocess:
    """Preprocessing that makes ``data`` satisfy ``contract``; ValueError names what cannot.

    Bands: the contract's, by name (an empty contract band list takes every dataset band). An
    encoder that takes any bands (``contract.any_bands``: a wavelength-conditioned tokenizer)
    is fed those of its contract bands the data has, and the others are a note; for any other
    encoder a missing band is refused.
    Size: the contract's input size (tiles are resized), else each tile's own size, which must
    fit the patch grid. Normalisation: the contract's method and per-band statistics.
    """
    contract, absent = _bands_present(data, contract)
    wanted = list(contract.bands) or list(data.bands)
    index, source_names, conflicts = _resolve_bands(data, wanted, contract)
    given = [wanted[index.index(i)] if i in index else b for i, b in enumerate(data.bands)]
    method = contract.normalisation or "meanstd"
    keys = ("mean", "std") if method == "meanstd" else ("p2", "p98")
    stats = {b: {k: data.stats[s].get(k) for k in keys}
             for b, s in zip(wanted, source_names, strict=True) if s in data.stats}
    problems = check_input(contract, bands=given, size=data.size, stats=stats,
                           nodata=list(data.nodata), units=data.units,  # per band
                           processing_level=data.processing_level)
    if data.size is None and contract.input_size is None:
        problems.append("tiles of different sizes and no input size in the contract to resize to")
    if contract.input_size is not None:  # resizing to the trained size fits the patch grid
        problems = [p for p in problems if "not a multiple of the patch size" not in p]
    sensors = data.sensors  # pooled data: several
    others = [s for s in sensors if s not in contract.sensors]
    if contract.sensors and others:
        what = repr(sensors[0]) if len(sensors) == 1 else f"pooled from {sensors}"
        problems.append(f"different sensor: the contract names {list(contract.sensors)}, the "
                        f"data is {what} (bands are matched by name)")
    fixed = [p for p in problems if p.startswith(_FIXED)]
    notes = [p for p in problems if p.startswith((*_NOTED, "different sensor"))]
    hard = [p for p in problems if p not in fixed and p not in notes]
    notes = absent + _condense(notes)
    if method not in ("meanstd", "percentile"):
        hard.append(f"unknown normalisation method {method!r}: expected 'meanstd' or "
                    "'percentile'")
        method = "meanstd"
    missing = [b for b, i in zip(wanted, index, strict=True) if i < 0]
    if missing:  # no override can invent a channel the encoder needs
        raise ValueError("the data does not satisfy the encoder's input contract: "
                         + "; ".join([*conflicts, *hard]) + f" (bands {missing} cannot be "
                         "overridden: the encoder needs a channel for each contract band)")
    params = _norm_params(contract.stats, wanted, method)
    own = _norm_params(data.stats, source_names, method)
    lacking = [b for b, p in zip(wanted, params, strict=True) if p is None]
    if contract.stats is None:  # already refused above unless overridden
        notes.append("normalised with the dataset's own statistics: the contract has none")
    elif lacking:
        hard.append(f"the contract has no usable {method} statistics for band(s) {lacking}")
        notes.append(f"band(s) {lacking} normalised with the dataset's own statistics")
    params = [p if p is not None else o for p, o in zip(params, own, strict=True)]
    unusable = [b for b, p in zip(wanted, params, strict=True) if p is None]
    if unusable:
        hard.append(f"no usable {method} statistics for band(s) {unusable} in the contract "
                    "or the dataset (all nodata or constant)")
    shift = [p[0] if p else 0.0 for p in params]
    scale = [p[1] if p else 1.0 for p in params]
    if hard and not override:
        raise ValueError("the data does not satisfy the encoder's input contract: "
                         + "; ".join(hard) + " (pass --override-contract to evaluate anyway; "
                         "the report then lists these differences)")
    size = contract.input_size
    if size is None and data.size is not None and contract.patch_size:
        p = contract.patch_size
        size = tuple(max(p, round(s / p) * p) for s in data.size)
        size = None if size == data.size else size
    gsd = effective_gsd(data.gsd, data.size, size)
    notes += _gsd_note(contract, data.gsd, data.size, size)
    wl, bw = data.wavelengths(source_names)
    if contract.bands and contract.wavelengths is not None:
        wl = list(contract.wavelengths)
        bw = list(contract.bandwidths) if contract.bandwidths is not None else bw
    if size is not None and data.size is not None and size != data.size:
        fixed.append(f"resized {data.size} -> {size} (bilinear)")
    return Preprocess(bands=wanted, index=index, source_bands=source_names, size=size,
                      method=method, shift=shift, scale=scale,
                      nodata=[data.nodata[i] for i in index], wavelengths=wl, bandwidths=bw,
                      gsd=gsd, fixed=fixed, notes=notes, overridden=hard if override else [])


def note_adapter_bypass(pre: Preprocess, encoder: nn.Module) -> None:
    """Add a note to ``pre.notes`` when ``encoder``'s spectral adapter, a reducer to
    ``out_bands`` bands trained on at least that many (its contract's bands), is fed fewer
    (``pre.bands``): it passes them through unchanged (:class:`eofm.models.spectral.
    SpectralAdapter`), so the spectral tokenizer meets the bands' own, narrower bandwidths,
    a range pretraining never fed it (only the adapter's pooled spectra): scores may change
    sharply at ``out_bands`` bands, whatever the bands picked."""
    adapter = getattr(getattr(encoder, "tokenizer", None), "adapter", None)
    out = getattr(adapter, "out_bands", None)
    contract = getattr(encoder, "contract", None)
    trained = len(contract.bands) if contract is not None and contract.bands else 0
    if not isinstance(out, int) or not len(pre.bands) < out <= trained:
        return
    widths = [w for w in pre.bandwidths if w]
    span = f" ({min(widths):g}-{max(widths):g} nm wide)" if widths else ""
    pre.notes.append(
        f"spectral adapter bypassed: the encoder's adapter reduces its {trained} contract bands "
        f"to {out}, but the {len(pre.bands)} bands fed are fewer, so they pass it unchanged and "
        f"reach the spectral tokenizer with their own bandwidths{span}, which pretraining never "
        f"fed it (only the adapter's pooled spectra): the scores may not be comparable with "
        f"those on {out} or more bands")


def _pool_tokens(encoder: nn.Module, tokens: Tensor, pool: str,
                 inter: list[Tensor]) -> Tensor:
    """(B, prefix + K, D) final tokens (and hooked block outputs) -> (B, F) features."""
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if pool == "cls":
        if prefix == 0:
            raise ValueError("pool: 'cls' needs a class token; this encoder has none (use 'mean')")
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, prefix:].mean(dim=1)
    outs = [encoder.norm(h) for h in inter]
    return torch.cat([o[:, 0] if prefix else o.mean(dim=1) for o in outs], dim=1)


def _preprocessed(xs: list[np.ndarray], preprocess: Preprocess, device: torch.device | str,
                  join: bool = False) -> list[Tensor]:
    """Raw tiles ``xs`` as the encoder's input batches: one batch when they share a size, else
    one per tile (tiles of different sizes), joined into one again with ``join`` when the
    preprocessing resized them to one size."""
    if len({x.shape for x in xs}) == 1:
        return [preprocess(np.stack(xs), device)]
    parts = [preprocess(x[None], device) for x in xs]
    if join and len({tuple(t.shape) for t in parts}) == 1:
        return [torch.cat(parts)]
    return parts


@torch.inference_mode()
def extract_features(encoder: nn.Module, data: LabelledData, preprocess: Preprocess, *,
                     pool: str = "cls", n: int = 4, batch_size: int = 64,
                     device: torch.device | str = "cpu",
                     progress: bool = True, desc: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Frozen features of every sample: ((N, D) float32, labels).

    ``pool``: "cls" (class token), "mean" (mean of patch tokens) or "lastn" (class token of
    each of the last ``n`` blocks through the final norm, concatenated: (N, n*D)).
    """
    from tqdm import tqdm

    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number of images, got {batch_size}")
    encoder = encoder.to(device).eval()
    kwargs = preprocess.encoder_kwargs(device)
    inter: list[Tensor] = []
    hooks = []
    if pool == "lastn":
        if not hasattr(encoder, "blocks"):
            raise ValueError(f"pool: 'lastn' needs a transformer with blocks; "
                             f"{type(encoder).__name__} has none (use 'cls' or 'mean')")
        depth = len(encoder.blocks)
        if not 0 < n <= depth:
            raise ValueError(f"lastn: expected 1..{depth} blocks (the encoder's depth), got {n}")
        hooks = [blk.register_forward_hook(lambda _m, _i, out: inter.append(out))
                 for blk in encoder.blocks[depth - n:]]
    feats = []
    try:
        with tqdm(total=len(data), desc=desc, unit="img", disable=not progress,
                  leave=False) as bar:
            for start in range(0, len(data), batch_size):
                xs = [data.pixels(i) for i in range(start, min(start + batch_size, len(data)))]
                for g in _preprocessed(xs, preprocess, device):
                    inter.clear()
                    tokens = encoder.forward_features(g, **kwargs)
                    feats.append(_pool_tokens(encoder, tokens, pool, inter).float().cpu())
                bar.update(len(xs))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(feats).numpy(), np.array(data.labels)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` (every ``torch.nn`` ``_BatchNorm``: 1-, 2-, 3-D and
    synchronised), in module order; empty for a transformer."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def calibration_batches(n: int, batch_size: int) -> list[range]:
    """Consecutive index ranges of at most ``batch_size`` covering ``0 .. n - 1``, except that
    a last batch of one image joins the one before (BatchNorm in train mode cannot take the
    statistics of a single value per channel, as a 1 x 1 final map of one image gives)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number of images, got {batch_size}")
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [range(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: LabelledData, preprocess: Preprocess, *,
                          batch_size: int = 64, device: torch.device | str = "cpu",
                          progress: bool = True, desc: str = "batchnorm statistics") -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` on ``data``;
    returns the number of layers (0: none, ``model`` untouched).

    Each layer's statistics are reset (mean 0, variance 1) and, with ``momentum=None``, become
    the cumulative average of the batch statistics over one pass through ``data`` in batches
    of ``batch_size`` (:func:`calibration_batches`), preprocessed as ``preprocess`` feeds the
    encoder (:func:`extract_features`). Only the BatchNorm layers run in train mode (the rest
    in eval mode: no dropout); gradients are off. Each layer's momentum is put back and the
    model left in eval mode. A freshly initialised network otherwise normalises with the
    defaults, unlike an export, whose statistics were tracked on its training data."""
    from tqdm import tqdm

    layers = batchnorm_layers(model)
    if not layers:
        return 0
    model = model.to(device).eval()
    kwargs = preprocess.encoder_kwargs(device)
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    try:
        with tqdm(total=len(data), desc=desc, unit="img", disable=not progress,
                  leave=False) as bar:
            for idx in calibration_batches(len(data), batch_size):
                xs = [data.pixels(i) for i in idx]
                for batch in _preprocessed(xs, preprocess, device, join=True):
                    model.forward_features(batch, **kwargs)
                bar.update(len(xs))
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return len(layers)


__all__ = ["POOLS", "Preprocess", "apply_contract", "batchnorm_layers", "calibration_batches",
           "effective_gsd", "extract_features", "note_adapter_bypass", "recalibrate_batchnorm"]
