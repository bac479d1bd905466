"""Continual pretraining: load RGB weights (timm/DINOv2 ViT, torchvision ResNet-50) from a local
file into a multispectral or SAR encoder.

- :func:`read_state_dict` (:mod:`eofm.models.weight_files`) reads safetensors (known by its
  header bytes, whatever the name) or a torch file with ``torch.load(weights_only=True)``
  (never unpickles), unwrapping ``state_dict``/``model`` entries and ``module.``/``backbone.``
  prefixes, and taking the network out of a DINO teacher, a DDP student or an
  ``AveragedModel``; what it sets aside is reported as unused by the loaders below.
- :func:`adapt_input_weight` turns a 3-channel input filter into one over named bands: the
  source's RGB filters go to their bands BY NAME (default red, green, blue = ``B04``, ``B03``,
  ``B02``, also found under eofm's generic RGB names ``R``, ``G``, ``B``: :data:`RGB_ALIASES`),
  every other band gets the mean RGB filter (``init="mean"``) or a random filter of the same
  spread (``init="random"``). An image whose non-RGB bands are zero therefore gives exactly the
  original RGB response. When no band of the encoder takes a filter, the load is refused (it
  would be a grey model: every filter the mean one), naming ``source_bands`` (SoftCon:
  ``objective.params.weights_rgb_bands``) to set to the data's red, green and blue band names
  (Landsat 8/9: ``B4``, ``B3``, ``B2``); ``source_bands=None`` starts every band from ``init``
  on purpose, and an encoder of radar polarisations only (``VV``/``VH``/``HH``/``HV``: no colour
  to lose) does so without being told.
- :func:`load_timm_vit` maps a timm ViT state dict (incl. DINOv2: layer scale ``ls*.gamma``,
  patch 14, a 37x37 ``pos_embed``) onto a :class:`~eofm.models.vit.ViTEncoder`: the patch
  embedding is adapted to the encoder's bands (and resampled to its patch size), the class
  token's position code is folded into the class token (the encoder gives the class token no
  position code; exact for timm ViTs), the position table is interpolated to the encoder's grid
  (the file's grid and class entry are read from the row count, the ``cls_token`` and the
  encoder's grid, so a non-square grid such as 3x5 with a class entry loads; a count that fits
  two grids is refused, naming ``pos_grid``) and stored in ``pos_table`` (build the encoder
  with ``learned_pos=True``; otherwise the encoder keeps its fixed sin-cos code and
  ``pos_embed`` is reported as unused).
  Trunk tensors with no place in the encoder (``norm_pre.*`` of CLIP-style pre-norm ViTs,
  ``reg_token`` of DINOv2 with registers) are refused: only head tensors and ``mask_token``
  may go unused. So are encoder tensors the file lacks (layer scale ``ls*.gamma`` of an
  encoder built with ``layer_scale_init`` for a plain ViT, ``norm.*``, a class token ...),
  naming the model override that drops them: left as initialised they make another network.
  The one tensor that may be missing (:data:`_ZERO_IF_MISSING`): the patch embedding's bias,
  set to 0 (a file without it is that function).
- :func:`adapt_resnet_state` does the same for a torchvision ResNet-50 ``conv1``.
- :func:`load_eofm_encoder` starts an encoder from another eofm encoder (an export, loaded
  with ``from_pretrained``): every tensor by name; the input filter (each family's own:
  ``tokenizer.proj.weight`` of the ViT's plain tokenizer, the ResNet's ``conv1.weight``, its
  ``input_filter``) goes to the new band list by SPECTRUM when both sides know it
  (:func:`match_bands`: the donor band a band overlaps, across sensors), else by name (new
  bands: mean or random as above), a ViT's resampled to the patch size; a learned position
  table is resampled to the grid. Donor tensors the encoder has no place for (layer scale
  ``ls*.gamma``, a learned ``pos_table``, a spectral adapter, more blocks ...) are refused,
  naming the model override that makes one.

Every loader returns a :class:`LoadReport` naming each missing, unexpected and adapted tensor,
and logs it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .weight_files import WeightState, key_prefixes, name_list, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    from .resnet import ResNetEncoder
    from .vit import ViTEncoder

__all__ = ["INIT_MODES", "RADAR_BANDS", "RGB_ALIASES", "RGB_BANDS", "LoadReport", "WeightState",
           "adapt_input_weight", "adapt_resnet_state", "load_eofm_encoder", "load_timm_vit",
           "match_bands", "match_by_name", "read_state_dict"]

log = logging.getLogger(__name__)

RGB_BANDS = ("B04", "B03", "B02")  # Sentinel-2 names of an RGB model's input channels, in order
# The same colours under eofm's generic RGB names (registry.DEFAULT_BANDS, resnet50's default
# bands): either name of a pair finds the other's filter. Landsat's B4/B3/B2 are not aliases:
# the name B4 is red on Landsat 8/9 but near-infrared on Landsat 4-7 (TM/ETM+); name them with
# source_bands (SoftCon: objective.params.weights_rgb_bands)
RGB_ALIASES = {"B04": "R", "B03": "G", "B02": "B"}
# radar polarisations: an encoder of these only has no colour to lose, so every band starting
# from the mean (or a random) RGB filter is what is meant (launch/configs/softcon_s1.yaml)
RADAR_BANDS = ("VV", "VH", "HH", "HV")
INIT_MODES = ("mean", "random")
_VIT_FILTER = "tokenizer.proj.weight"  # the ViT plain tokenizer's input filter (its patch conv)


@dataclass
class LoadReport:
    """What a weight load did: tensors missing from the file, unused from it, and adapted."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def log(self) -> LoadReport:
        """Log every entry (warnings for missing/unexpected); returns self."""
        log.info("loaded %s: adapted %s", self.source, self.adapted or "nothing")
        if self.missing:
            log.warning("%s: %d encoder tensors missing from the file (left as initialised): %s",
                        self.source, len(self.missing), self.missing)
        if self.unexpected:
            log.warning("%s: %d tensors in the file not used: %s", self.source,
                        len(self.unexpected), self.unexpected)
        return self

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"source": self.source, "missing": self.missing, "unexpected": self.unexpected,
                "adapted": self.adapted}


def match_by_name(bands: Sequence[str], source_bands: Sequence[str] | None) -> dict[str, str]:
    """Each band -> the source channel of its name, or of its other name in
    :data:`RGB_ALIASES` (``R`` <-> ``B04``, ``G`` <-> ``B03``, ``B`` <-> ``B02``).

    A ValueError when no band finds a channel although ``bands`` has some: every filter would
    be the mean one (a grey model that lost the file's colour filters). Not refused: an empty
    match asked for with ``source_bands=None``, and an encoder of radar polarisations only
    (:data:`RADAR_BANDS`)."""
    if source_bands is None:
        return {}
    other = {**RGB_ALIASES, **{v: k for k, v in RGB_ALIASES.items()}}
    pairs = {}
    for b in bands:
        if b in source_bands:
            pairs[b] = b
        elif other.get(b) in source_bands:
            pairs[b] = other[b]
    if pairs or not bands or all(b.upper() in RADAR_BANDS for b in bands):
        return pairs
    also = [other[s] for s in source_bands if s in other]
    raise ValueError(
        f"source_bands: none of the encoder's bands {list(bands)} is one of the weights' input "
        f"channels {list(source_bands)}{f' (also found as {also})' if also else ''}, so every "
        f"band would start from the mean filter and the pretrained colour filters would be "
        f"lost; set source_bands "
        f"(SoftCon: objective.params.weights_rgb_bands) to the names of your red, green and "
        f"blue bands in that order (e.g. ['B4', 'B3', 'B2'] for Landsat 8/9), or to None "
        f"(null) to start every band from init on purpose")


def adapt_input_weight(weight: Tensor, bands: Sequence[str],
                       source_bands: Sequence[str] | None = RGB_BANDS, init: str = "mean",
                       generator: torch.Generator | None = None,
                       match: Mapping[str, str] | None = None) -> tuple[Tensor, list[str]]:
    """(D, S, ...) input filter over ``source_bands`` -> (D, len(bands), ...) over ``bands``.

    Bands found in ``source_bands`` (by name or RGB alias, :func:`match_by_name`, which refuses
    a match that copies nothing; or through ``match``: band -> source band) copy their filter;
    the others get the mean source filter (``init="mean"``) or N(0, std of the source filters)
    (``init="random"``). ``source_bands=None``: no channel has a name, every band gets
    ``init``. Returns the weight and the names of the bands that got a copied filter.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init: expected one of {INIT_MODES}, got {init!r}")
    if weight.ndim < 2 or (source_bands is not None and weight.shape[1] != len(source_bands)):
        want = "(D, S, ...)" if source_bands is None else \
            f"{len(source_bands)} input channels {list(source_bands)}"
        raise ValueError(f"weight: expected {want}, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    mean = w.mean(dim=1)
    out = []
    copied = []
    pairs = dict(match) if match is not None else match_by_name(bands, source_bands)
    for b in bands:
        if b in pairs:
            out.append(w[:, list(source_bands or ()).index(pairs[b])])
            copied.append(b)
        elif init == "mean":
            out.append(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
            out.append(noise.to(w.device) * w.std())
    return torch.stack(out, dim=1).to(weight.dtype), copied


def _adapt_named(weight: Tensor, bands: Sequence[str], source_bands: Sequence[str] | None,
                 init: str, generator: torch.Generator | None,
                 source: str) -> tuple[Tensor, list[str]]:
    """:func:`adapt_input_weight` by name for the weights file ``source``; its ValueError names
    the file."""
    try:
        return adapt_input_weight(weight, bands, source_bands, init, generator)
    except ValueError as e:
        raise ValueError(f"weights: {source}: {e}") from None


def _grids_of(count: int, encoder_grid: tuple[int, int]) -> list[tuple[int, int]]:
    """The grids ``count`` position codes can be: the encoder's own grid (when its
    Gh*Gw is ``count``), then a square one; each grid once."""
    own = (int(encoder_grid[0]), int(encoder_grid[1]))
    grids = [own] if own[0] * own[1] == count else []
    side = round(max(count, 0) ** 0.5)
    if count > 0 and side * side == count and (side, side) not in grids:
        grids.append((side, side))
    return grids


def _pos_table(pos: Tensor, encoder_grid: tuple[int, int], has_cls: bool,
               pos_grid: tuple[int, int] | None = None
               ) -> tuple[Tensor | None, Tensor, tuple[int, int]]:
    """timm ``pos_embed`` (1, [1 +] Gh*Gw, D) -> (class-token code or None, (L, D), grid).

    A timm row count alone does not give the layout (a class entry over a k x (k+2) grid has
    (k+1)^2 rows), so it is read from what is known: ``pos_grid`` (the file's grid, given by
    the caller) decides alone. Otherwise ``has_cls`` (the state has a ``cls_token``) says
    whether to try a class entry first: timm stores one unless ``no_embed_class`` (then the
    grid only, as with register tokens); without a class token a class entry is tried last.
    For each reading the grid is the encoder's ``encoder_grid`` when the count is its Gh*Gw,
    else a square one. A count that fits both the encoder's grid and another square one is
    ambiguous and refused, as is one that fits no grid; the ValueError names ``pos_grid``."""
    table = pos.reshape(-1, pos.shape[-1])
    n = table.shape[0]
    if pos_grid is not None:
        gh, gw = (int(v) for v in pos_grid)
        extra = n - gh * gw
        if gh <= 0 or gw <= 0 or extra not in (0, 1):
            raise ValueError(f"pos_grid: expected the grid (Gh, Gw) of pos_embed's {n} "
                             f"positions (Gh*Gw = {n} or {n - 1} with a class entry), got "
                             f"{tuple(pos_grid)}")
        return (table[:1] if extra else None), table[extra:], (gh, gw)
    for extra in ((1, 0) if has_cls else (0, 1)):
        grids = _grids_of(n - extra, encoder_grid)
        if len(grids) > 1:
            raise ValueError(
                f"pos_embed: {n} positions{' after a class entry' if extra else ''} fit both "
                f"the encoder's grid {grids[0]} and the square grid {grids[1]}; pass "
                f"pos_grid=(Gh, Gw), the grid the weights were trained at, to say which")
        if grids:
            return (table[:1] if extra else None), table[extra:], grids[0]
    raise ValueError(f"pos_embed: {n} positions is neither the encoder's grid "
                     f"{tuple(encoder_grid)} nor a square grid, with or without a class "
                     f"entry; pass pos_grid=(Gh, Gw), the grid the weights were trained at")


def load_timm_vit(encoder: ViTEncoder, state: Mapping[str, Tensor], *,
                  source_bands: Sequence[str] | None = RGB_BANDS, init: str = "mean",
                  generator: torch.Generator | None = None,
                  source: str = "state dict",
                  pos_grid: tuple[int, int] | None = None) -> LoadReport:
    """Load a timm/DINOv2 ViT state dict into ``encoder`` (plain tokenizer), adapting the input
    layer, the patch size and the position table; see the module docstring. ``source_bands``
    names the file's input channels (red, green, blue; :func:`adapt_input_weight`).
    ``pos_grid`` is the (Gh, Gw) grid of the file's ``pos_embed``; None reads it from the row
    count, the ``cls_token`` and the encoder's grid (:func:`_pos_table`), refusing a count
    that fits two grids. Shape
    mismatches in the blocks, trunk tensors the encoder has no place for (``norm_pre.*``,
    ``reg_token``), encoder tensors the file lacks (:func:`_refuse_missing_trunk`: layer scale,
    ``norm.*``, blocks ...), and an input layer that would copy no RGB filter raise a
    ValueError naming them. Tensors :func:`read_state_dict` set aside (``state.set_aside``)
    are reported as unexpected."""
    from timm.layers import resample_patch_embed

    from .pos_embed import resample_grid_table

    if not hasattr(encoder.tokenizer, "proj") or encoder.tokenizer.groups is not None:
        raise ValueError("encoder: loading timm ViT weights needs the plain tokenizer (one "
                         "Conv2d patch embedding)")
    if "patch_embed.proj.weight" not in state:
        raise ValueError(f"weights: {source} has no patch_embed.proj.weight, so it is not a "
                         f"timm ViT state dict; its keys start with {key_prefixes(state)}")
    bands = list(encoder.tokenizer.bands or [])
    own = encoder.state_dict()
    new: dict[str, Tensor] = {}
    report = LoadReport(source)
    used: set[str] = set()
    for k, v in state.items():
        if k.startswith("blocks.") or k.startswith("norm."):
            new[k] = v
            used.add(k)
    w, copied = _adapt_named(state["patch_embed.proj.weight"], bands, source_bands, init,
                             generator, source)
    p = encoder.patch_size
    if tuple(w.shape[-2:]) != (p, p):
        w = resample_patch_embed(w.float(), [p, p]).to(w.dtype)
        report.adapted.append(f"patch_embed.proj.weight: resampled "
                              f"{tuple(state['patch_embed.proj.weight'].shape[-2:])} -> "
                              f"{(p, p)}")
    new["tokenizer.proj.weight"] = w
    report.adapted.append(f"patch_embed.proj.weight -> tokenizer.proj.weight: "
                          f"{state['patch_embed.proj.weight'].shape[1]} -> {len(bands)} "
                          f"bands (copied {copied}, others init={init!r})")
    used.add("patch_embed.proj.weight")
    if "patch_embed.proj.bias" in state:
        new["tokenizer.proj.bias"] = state["patch_embed.proj.bias"]
        used.add("patch_embed.proj.bias")
    for k in _ZERO_IF_MISSING:
        if k in own and k not in new:
            new[k] = torch.zeros_like(own[k])
            report.adapted.append(f"{k}: 0 (the file has none; the same function)")
    cls_pos = None
    if "pos_embed" in state:
        try:
            cls_pos, table, grid = _pos_table(state["pos_embed"], encoder.grid_size,
                                              "cls_token" in state, pos_grid)
        except ValueError as e:
            raise ValueError(f"weights: {source}: {e}") from None
        if encoder.pos_table is not None:
            new["pos_table"] = resample_grid_table(table, grid, encoder.grid_size)
            report.adapted.append(f"pos_embed -> pos_table: grid {grid} -> "
                                  f"{encoder.grid_size}")
            used.add("pos_embed")
    if "cls_token" in state and encoder.cls_token is not None:
        cls = state["cls_token"].reshape(1, 1, -1)
        if cls_pos is not None:
            cls = cls + cls_pos.reshape(1, 1, -1).to(cls.dtype)
            report.adapted.append("cls_token: + its pos_embed entry (the encoder gives the "
                                  "class token no position code)")
        new["cls_token"] = cls
        used.add("cls_token")
    report.unexpected = sorted(k for k in state if k not in used)
    _refuse_unused_trunk(report.unexpected, encoder, source)
    report.missing = sorted(k for k in own if k not in new)
    _refuse_missing_trunk(report.missing, state, source)
    report.unexpected = sorted([*report.unexpected, *getattr(state, "set_aside", ())])
    shapes = [f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
              for k, v in new.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    wrong = sorted(k for k in new if k not in own)
    if shapes or wrong:
        raise ValueError(f"weights: {source} does not fit encoder {getattr(encoder, 'model_name', '')}"
                         f": shape mismatch {shapes}; tensors the encoder lacks {wrong} (e.g. "
                         "ls1.gamma needs model.overrides.layer_scale_init)")
    encoder.load_state_dict(new, strict=False)
    return report.log()


# ViT tensors that may go unused: the classifier and its pooling/norm (forward_features
# does not run them: timm's head, DeiT's head_dist, fc_norm, SigLIP's attn_pool), an MAE
# pretraining checkpoint's decoder, and the MAE/DINOv2 mask token (used only in their own
# pretraining); every other unused tensor is part of the trunk, and dropping it makes the
# loaded encoder another function
_HEAD_PREFIXES = ("head.", "head_dist.", "fc_norm.", "attn_pool.", "decoder_", "decoder.")
_HARMLESS = ("mask_token",)
_TRUNK_WHY = {
    "norm_pre": "a LayerNorm before the blocks (CLIP-style pre_norm) that eofm's ViT lacks",
    "reg_token": "register tokens (DINOv2 with registers) that eofm's ViT lacks",
    "register_tokens": "register tokens (DINOv2 with registers) that eofm's ViT lacks",
    "dist_token": "a distillation token (DeiT) that eofm's ViT lacks",
    "cls_token": "the class token, and this encoder has none (class_token=False)",
}


def _refuse_unused_trunk(unexpected: Sequence[str], encoder: ViTEncoder, source: str) -> None:
    """ValueError naming each unused tensor of the trunk (not a head tensor, not DINOv2's mask
    token, not ``pos_embed`` left for an encoder built with fixed sin-cos positions, as the
    module docstring says) and why eofm's encoder has no place for it."""
    trunk = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES) and k not in _HARMLESS
             and not (k == "pos_embed" and encoder.pos_table is None)]
    if not trunk:
        return
    why = sorted({_TRUNK_WHY.get(k.split(".", 1)[0], "no counterpart in eofm's ViT") for k in trunk})
    raise ValueError(f"weights: {source}: trunk tensors {trunk} have no place in this encoder "
                     f"({'; '.join(why)}); loading without them would give another network "
                     f"than the file's, so it is refused (only head tensors {list(_HEAD_PREFIXES)} "
                     f"and mask_token may go unused)")


# The allow-list of encoder tensors a timm file may lack: a bias the file's layer does not
# have, set to 0 (the file's function exactly). Any other missing tensor is refused.
_ZERO_IF_MISSING = ("tokenizer.proj.bias",)
# an encoder tensor the file lacks -> the model override that builds the encoder without it
# (None: no override drops it), and why the file lacks it
_DROP_FOR = ((re.compile(r"blocks\.\d+\.ls[12]\.gamma$"), "layer_scale_init: null",
              "the file's blocks have no layer scale: a plain ViT"),
             (re.compile(r"pos_table$"), "learned_pos: false", "the file has no pos_embed"),
             (re.compile(r"cls_token$"), "class_token: false, global_pool: avg",
              "the file has no class token"),
             (re.compile(r"blocks\.\d+\.attn\.qkv\.bias$"), "qkv_bias: false",
              "the file's attention has no qkv bias"),
             (re.compile(r"norm\."), None, "the file's ViT has no final norm: a timm fc_norm "
              "model, whose norm works on the pooled feature; eofm's ViT always has one"))


def _refuse_missing_trunk(missing: Sequence[str], state: Mapping[str, Tensor],
                          source: str) -> None:
    """ValueError naming each encoder tensor the timm file lacks (left as initialised, the
    encoder would be another network than the file's: a plain ViT in an encoder built with
    ``layer_scale_init`` keeps every ``ls*.gamma`` at its initial 1e-5), why, and the model
    override that builds the encoder as the file's network (``layer_scale_init: null``,
    ``learned_pos: false``, ``class_token: false``, ``qkv_bias: false``, ``depth``: blocks
    past the file's last are a depth, not their tensors)."""
    if not missing:
        return
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    fixes: dict[str, str] = {}  # override -> why
    why: dict[str, None] = {}
    for k in missing:
        if k.startswith("blocks.") and int(k.split(".")[1]) >= depth:
            fixes.setdefault(f"depth: {depth}", f"the file's depth is {depth}")
            continue
        for pattern, option, reason in _DROP_FOR:
            if pattern.match(k):
                if option is None:
                    why[reason] = None
                else:
                    fixes.setdefault(option, reason)
                break
        else:
            why["no counterpart in the file"] = None
    fix = ("; set model.overrides {" + ", ".join(fixes) + "} to build the encoder as the "
           "file's network is (" + "; ".join(fixes.values()) + ")" if fixes else "")
    other = f" ({'; '.join(why)})" if why else ""
    raise ValueError(f"weights: {source} lacks the encoder's tensors {name_list(missing)}"
                     f"{other}; left as initialised they would make another network than the "
                     f"file's, so the load is refused{fix}")


Spectrum = tuple[float, float]  # (centre wavelength, bandwidth) in nm


def match_bands(bands: Mapping[str, Spectrum], source: Mapping[str, Spectrum]) -> dict[str, str]:
    """Each band -> a source band it overlaps (one band's centre lies within the other's
    width: |dl| <= max(w, w') / 2): the one of the same name if it overlaps (SAR's VV and VH
    share one stand-in code), else the nearest centre. Bands that overlap none are left out.
    Sensors share few band names (Landsat-8's B10 is thermal, Sentinel-2's is cirrus), so a
    filter goes where the light is, not where the name is."""
    out = {}
    for b, (centre, width) in bands.items():
        near = [s for s, (c, w) in source.items() if abs(c - centre) <= max(width, w) / 2]
        if near:
            out[b] = b if b in near else min(near, key=lambda s: abs(source[s][0] - centre))
    return out


def load_eofm_encoder(encoder: ViTEncoder | ResNetEncoder, donor: ViTEncoder | ResNetEncoder,
                      *, init: str = "mean", spectra: Mapping[str, Spectrum] | None = None,
                      generator: torch.Generator | None = None,
                      source: str = "eofm encoder") -> LoadReport:
    """Start ``encoder`` from ``donor``'s weights (continual pretraining from an export).

    Tensors match by name. The input filter (:func:`_input_filter`: a plain tokenizer's
    ``tokenizer.proj.weight``, a ResNet's ``conv1.weight``) is re-cut for ``encoder``'s bands:
    with ``spectra`` (band -> (centre, width) nm) and the donor's contract wavelengths, each band
    takes the filter of the donor band it overlaps (:func:`match_bands`, e.g. Landsat-8 B4 <-
    Sentinel-2 B04), else by name; bands with no counterpart get ``init``. A ViT's filter is
    resampled when the patch sizes differ, a learned position table to ``encoder``'s grid. The
    blocks must have the same shapes: a ValueError names every tensor that does not fit, and
    every donor tensor of the trunk that ``encoder`` has no place for (layer scale, a learned
    position table, a spectral adapter ...: :func:`_refuse_unplaced_donor`), since starting
    without it would continue another network than the donor's.
    """
    from timm.layers import resample_patch_embed

    from .pos_embed import resample_grid_table

    key = _input_filter(encoder)
    if _input_filter(donor) != key:
        raise ValueError(f"{source}: it is a {type(donor).__name__}, this encoder a "
                         f"{type(encoder).__name__}; set model.name to the donor's architecture")
    mine, theirs = encoder.tokenizer, donor.tokenizer
    if type(mine) is not type(theirs):
        raise ValueError(f"{source}: its tokenizer is {type(theirs).__name__}, this encoder's "
                         f"is {type(mine).__name__}; set model.tokenizer to match the donor's")
    _check_same_groups(getattr(mine, "groups", None), getattr(theirs, "groups", None), source)
    own, state = encoder.state_dict(), donor.state_dict()
    report = LoadReport(source)
    new: dict[str, Tensor] = {}
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        if k == key and getattr(theirs, "groups", None) is None \
                and theirs.bands is not None and mine.bands is not None:
            match = _donor_match(list(mine.bands), list(theirs.bands), spectra, donor)
            # the filter's channels are positions: copy it as it is only when the two band
            # lists are the same list and every band takes its own filter (a dict comparison
            # would miss another order, or a subset)
            same = list(mine.bands) == list(theirs.bands) and all(
                match.get(b) == b for b in mine.bands)
            if not same:
                v, copied = adapt_input_weight(v, list(mine.bands), list(theirs.bands), init,
                                               generator, match=match)
                pairs = [b if match[b] == b else f"{b}<-{match[b]}" for b in copied]
                report.adapted.append(f"{k}: bands {list(theirs.bands)} -> {list(mine.bands)} "
                                      f"(copied {pairs}, others init={init!r})")
            p = encoder.patch_size
            if k == _VIT_FILTER and tuple(v.shape[-2:]) != (p, p):  # a ResNet's stays 7x7
                report.adapted.append(f"{k}: patch {tuple(v.shape[-2:])} -> {(p, p)}")
                v = resample_patch_embed(v.float(), [p, p]).to(v.dtype)
        elif k == "pos_table" and tuple(donor.grid_size) != tuple(encoder.grid_size):
            # by grid, not by shape: grids 2x8 and 4x4 have tables of one shape
            v = resample_grid_table(v, donor.grid_size, encoder.grid_size)
            report.adapted.append(f"pos_table: grid {donor.grid_size} -> {encoder.grid_size}")
        new[k] = v
    _refuse_unplaced_donor(report.unexpected, encoder, donor, source)
    report.missing = sorted(k for k in own if k not in new)
    shapes = [f"{k}: donor {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
              for k, v in new.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"{source}: its weights do not fit this encoder "
                         f"({getattr(encoder, 'model_name', '')}): {shapes}; start from an "
                         f"export of the same architecture")
    encoder.load_state_dict(new, strict=False)
    return report.log()


def _input_filter(encoder: object) -> str:
    """The name of the encoder's input filter, (D, bands, k, k) with one channel per band in
    its band order: the encoder's ``input_filter`` (ResNet: ``conv1.weight``), else the ViT
    plain tokenizer's :data:`_VIT_FILTER`."""
    return str(getattr(encoder, "input_filter", _VIT_FILTER))


# the encoder option (a model override) that gives a donor tensor its place, by tensor name,
# and its value when the donor's overrides do not say (None: the donor's own, e.g. its depth)
_PLACE_FOR = ((re.compile(r"pos_table$"), "learned_pos", "true"),
              (re.compile(r"blocks\.\d+\.ls[12]\.gamma$"), "layer_scale_init",
               "a number (the donor's gammas replace it)"),
              (re.compile(r"cls_token$"), "class_token", "true"),
              (re.compile(r"tokenizer\.adapter\."), "tokenizer_kwargs",
               "{adapter: the donor's}"),
              (re.compile(r"blocks\.\d+\.attn\.qkv\.bias$"), "qkv_bias", "true"),
              (re.compile(r"blocks\.\d+\."), "depth", None))


def _refuse_unplaced_donor(unexpected: Sequence[str], encoder: ViTEncoder, donor: ViTEncoder,
                           source: str) -> None:
    """ValueError naming each donor tensor of the trunk that ``encoder`` has no place for (any
    but head tensors and mask_token, as :func:`_refuse_unused_trunk` allows) and the model
    override that makes one, with the donor's value where it has one (``learned_pos: true``,
    ``layer_scale_init: 0.1``, ``tokenizer_kwargs: {"adapter": ...}``, ``depth``)."""
    trunk = [k for k in unexpected if not k.startswith(_HEAD_PREFIXES) and k not in _HARMLESS]
    if not trunk:
        return
    theirs = dict(getattr(donor, "model_overrides", None) or {})
    theirs.setdefault("depth", len(donor.blocks))
    hints: dict[str, str] = {}  # option -> value to set
    for k in trunk:
        for pattern, option, value in _PLACE_FOR:
            if pattern.match(k):
                hints.setdefault(option, json.dumps(theirs[option], default=str)
                                 if option in theirs else str(value))
                break
    fix = ("build this encoder as the donor was: set model.overrides {"
           + ", ".join(f"{o}: {v}" for o, v in hints.items()) + "}"
           if hints else "start from an export of the same architecture")
    raise ValueError(f"{source}: its tensors {trunk} have no place in this encoder "
                     f"({getattr(encoder, 'model_name', '')}); starting without them would "
                     f"continue another network than the export's, so it is refused; {fix}")


def _check_same_groups(mine: Mapping[str, Sequence[str]] | None,
                       theirs: Mapping[str, Sequence[str]] | None, source: str) -> None:
    """Refuse a donor whose band groups differ from the encoder's, IN ORDER: ``proj.{i}`` and
    the fixed group code (sin-cos of the group index) follow group order, so the same groups
    listed in another order would hand one group's filters and code to another. Not remapped:
    the group code is not a parameter, so no permutation of the weights keeps the function."""
    if mine is None and theirs is None:
        return
    a = [(g, list(b)) for g, b in (mine or {}).items()]
    b = [(g, list(m)) for g, m in (theirs or {}).items()]
    if a == b:
        return
    if mine is not None and theirs is not None and sorted(a) == sorted(b):
        raise ValueError(f"{source}: its band groups are this encoder's in another order "
                         f"(donor {list(theirs)}, encoder {list(mine)}); a group's filters "
                         f"and group code follow its position, so list the groups in the "
                         f"donor's order: {dict(theirs)}")
    raise ValueError(f"{source}: its band groups {theirs} differ from this encoder's {mine}; "
                     f"grouped embeddings are copied only between identical groups (same "
                     f"names, bands and order)")


def _donor_match(bands: list[str], theirs: list[str], spectra: Mapping[str, Spectrum] | None,
                 donor: ViTEncoder) -> dict[str, str]:
    """Band -> donor band: by spectrum when both sides know theirs, else by name."""
    contract = getattr(donor, "contract", None)
    known = contract is not None and contract.wavelengths and contract.bandwidths
    if spectra is None or not known or any(b not in spectra for b in bands):
        return {b: b for b in bands if b in theirs}
    source = {b: (float(w), float(bw)) for b, w, bw in
              zip(contract.bands, contract.wavelengths, contract.bandwidths, strict=True)
              if b in theirs}
    return match_bands({b: spectra[b] for b in bands}, source)


def adapt_resnet_state(state: Mapping[str, Tensor], bands: Sequence[str], *,
                       source_bands: Sequence[str] | None = RGB_BANDS, init: str = "mean",
                       generator: torch.Generator | None = None,
                       source: str = "state dict") -> tuple[dict[str, Tensor], LoadReport]:
    """A torchvision ResNet state dict with ``conv1.weight`` adapted to ``bands`` (by
    :func:`adapt_input_weight`, which refuses a ``conv1`` that would copy no RGB filter);
    ``fc.*`` (the ImageNet classifier) is dropped and reported as unexpected, as are the
    tensors :func:`read_state_dict` set aside (``state.set_aside``)."""
    if "conv1.weight" not in state:
        raise ValueError(f"weights: {source} has no conv1.weight, so it is not a torchvision "
                         f"ResNet state dict; its keys start with {key_prefixes(state)}")
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    out["conv1.weight"], copied = _adapt_named(state["conv1.weight"], bands, source_bands, init,
                                               generator, source)
    unused = [k for k in state if k.startswith("fc.")] + list(getattr(state, "set_aside", ()))
    report = LoadReport(source, unexpected=sorted(unused),
                        adapted=[f"conv1.weight: {state['conv1.weight'].shape[1]} -> "
                                 f"{len(bands)} bands (copied {copied}, others init={init!r})"])
    return out, report
