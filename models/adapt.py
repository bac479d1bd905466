"""Continual pretraining: load RGB weights (timm/DINOv2 ViT, torchvision ResNet-50) from a local
file into a multispectral or SAR encoder.

- :func:`read_state_dict` reads ``.safetensors`` or ``.pt``/``.pth``/``.bin`` with
  ``torch.load(weights_only=True)`` (never unpickles), unwrapping ``state_dict``/``model``
  entries and ``module.``/``backbone.`` prefixes.
- :func:`adapt_input_weight` turns a 3-channel input filter into one over named bands: the
  source's RGB filters go to their bands BY NAME (default R, G, B = B04, B03, B02), every other
  band gets the mean RGB filter (``init="mean"``) or a random filter of the same spread
  (``init="random"``). An image whose non-RGB bands are zero therefore gives exactly the
  original RGB response.
- :func:`load_timm_vit` maps a timm ViT state dict (incl. DINOv2: layer scale ``ls*.gamma``,
  patch 14, a 37x37 ``pos_embed``) onto a :class:`~eofm.models.vit.ViTEncoder`: the patch
  embedding is adapted to the encoder's bands (and resampled to its patch size), the class
  token's position code is folded into the class token (the encoder gives the class token no
  position code; exact for timm ViTs), the position table is interpolated to the encoder's grid
  and stored in ``pos_table`` (build the encoder with ``learned_pos=True``; otherwise the
  encoder keeps its fixed sin-cos code and ``pos_embed`` is reported as unused).
  Trunk tensors with no place in the encoder (``norm_pre.*`` of CLIP-style pre-norm ViTs,
  ``reg_token`` of DINOv2 with registers) are refused: only head tensors and ``mask_token``
  may go unused.
- :func:`adapt_resnet_state` does the same for a torchvision ResNet-50 ``conv1``.
- :func:`load_eofm_encoder` starts an encoder from another eofm encoder (an export, loaded
  with ``from_pretrained``): every tensor by name; the plain tokenizer's input filter goes to
  the new band list by SPECTRUM when both sides know it (:func:`match_bands`: the donor band
  a band overlaps, across sensors), else by name (new bands: mean or random as above),
  resampled to the patch size; a learned position table is resampled to the grid.

Every loader returns a :class:`LoadReport` naming each missing, unexpected and adapted tensor,
and logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .vit import ViTEncoder

__all__ = ["INIT_MODES", "RGB_BANDS", "LoadReport", "adapt_input_weight", "adapt_resnet_state",
           "load_eofm_encoder", "load_timm_vit", "match_bands", "read_state_dict"]

log = logging.getLogger(__name__)

RGB_BANDS = ("B04", "B03", "B02")  # Sentinel-2 names of an RGB model's input channels, in order
INIT_MODES = ("mean", "random")
_WRAPPERS = ("state_dict", "model", "module", "teacher")
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


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


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` or torch (``.pt``/``.pth``/``.bin``) weights file.

    Torch files are read with ``weights_only=True``; a nested ``state_dict``/``model``/
    ``module``/``teacher`` entry is taken, and a ``module.``/``backbone.``/``encoder.``/
    ``model.`` prefix shared by every key is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights: no such file {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any failure means the same to the user
            raise ValueError(f"weights: cannot read {path} with torch.load(weights_only=True) "
                             f"({type(e).__name__}: {e}); convert it to .safetensors") from None
    while isinstance(state, Mapping) and not any(isinstance(v, Tensor) for v in state.values()):
        key = next((k for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if key is None:
            raise ValueError(f"weights: {path} holds no tensors at the top level nor under "
                             f"{list(_WRAPPERS)}; keys: {sorted(state)[:10]}")
        state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"weights: expected a mapping of tensors in {path}, got "
                         f"{type(state).__name__}")
    out = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in _PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def adapt_input_weight(weight: Tensor, bands: Sequence[str],
                       source_bands: Sequence[str] = RGB_BANDS, init: str = "mean",
                       generator: torch.Generator | None = None,
                       match: Mapping[str, str] | None = None) -> tuple[Tensor, list[str]]:
    """(D, S, ...) input filter over ``source_bands`` -> (D, len(bands), ...) over ``bands``.

    Bands found in ``source_bands`` (by name, or through ``match``: band -> source band) copy
    their filter; the others get the mean source filter (``init="mean"``) or N(0, std of the
    source filters) (``init="random"``). Returns the weight and the names of the bands that got
    a copied filter.
    """
    if init not in INIT_MODES:
        raise ValueError(f"init: expected one of {INIT_MODES}, got {init!r}")
    if weight.ndim < 2 or weight.shape[1] != len(source_bands):
        raise ValueError(f"weight: expected {len(source_bands)} input channels "
                         f"{list(source_bands)}, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    mean = w.mean(dim=1)
    out = []
    copied = []
    pairs = dict(match) if match is not None else {b: b for b in bands if b in source_bands}
    for b in bands:
        if b in pairs:
            out.append(w[:, list(source_bands).index(pairs[b])])
            copied.append(b)
        elif init == "mean":
            out.append(mean)
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
            out.append(noise.to(w.device) * w.std())
    return torch.stack(out, dim=1).to(weight.dtype), copied


def _pos_table(pos: Tensor) -> tuple[Tensor | None, Tensor, tuple[int, int]]:
    """timm ``pos_embed`` (1, [1 +] Gh*Gw, D) -> (class-token code or None, (L, D), grid).

    timm models with register tokens (``no_embed_class``) store the grid only."""
    table = pos.reshape(-1, pos.shape[-1])
    n = table.shape[0]
    side = round(n ** 0.5)
    if side * side == n:
        return None, table, (side, side)
    side = round((n - 1) ** 0.5)
    if side * side != n - 1:
        raise ValueError(f"pos_embed: {n} positions is neither a square grid nor a class "
                         "token + a square grid")
    return table[:1], table[1:], (side, side)


def load_timm_vit(encoder: ViTEncoder, state: Mapping[str, Tensor], *,
                  source_bands: Sequence[str] = RGB_BANDS, init: str = "mean",
                  generator: torch.Generator | None = None,
                  source: str = "state dict") -> LoadReport:
    """Load a timm/DINOv2 ViT state dict into ``encoder`` (plain tokenizer), adapting the input
    layer, the patch size and the position table; see the module docstring. Shape mismatches in
    the blocks, and trunk tensors the encoder has no place for (``norm_pre.*``, ``reg_token``),
    raise a ValueError naming the tensors."""
    from timm.layers import resample_patch_embed

    from .pos_embed import resample_grid_table

    if not hasattr(encoder.tokenizer, "proj") or encoder.tokenizer.groups is not None:
        raise ValueError("encoder: loading timm ViT weights needs the plain tokenizer (one "
                         "Conv2d patch embedding)")
    bands = list(encoder.tokenizer.bands or [])
    own = encoder.state_dict()
    new: dict[str, Tensor] = {}
    report = LoadReport(source)
    used: set[str] = set()
    for k, v in state.items():
        if k.startswith("blocks.") or k.startswith("norm."):
            new[k] = v
            used.add(k)
    if "patch_embed.proj.weight" in state:
        w = state["patch_embed.proj.weight"]
        w, copied = adapt_input_weight(w, bands, source_bands, init, generator)
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
    cls_pos = None
    if "pos_embed" in state:
        cls_pos, table, grid = _pos_table(state["pos_embed"])
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


def load_eofm_encoder(encoder: ViTEncoder, donor: ViTEncoder, *, init: str = "mean",
                      spectra: Mapping[str, Spectrum] | None = None,
                      generator: torch.Generator | None = None,
                      source: str = "eofm encoder") -> LoadReport:
    """Start ``encoder`` from ``donor``'s weights (continual pretraining from an export).

    Tensors match by name. A plain tokenizer's filter is re-cut for ``encoder``'s bands: with
    ``spectra`` (band -> (centre, width) nm) and the donor's contract wavelengths, each band
    takes the filter of the donor band it overlaps (:func:`match_bands`, e.g. Landsat-8 B4 <-
    Sentinel-2 B04), else by name; bands with no counterpart get ``init``. The filter is
    resampled when the patch sizes differ, a learned position table to ``encoder``'s grid. The
    blocks must have the same shapes: a ValueError names every tensor that does not fit.
    """
    from timm.layers import resample_patch_embed

    from .pos_embed import resample_grid_table

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
        if k == "tokenizer.proj.weight" and getattr(theirs, "groups", None) is None \
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
            if tuple(v.shape[-2:]) != (p, p):
                report.adapted.append(f"{k}: patch {tuple(v.shape[-2:])} -> {(p, p)}")
                v = resample_patch_embed(v.float(), [p, p]).to(v.dtype)
        elif k == "pos_table" and tuple(donor.grid_size) != tuple(encoder.grid_size):
            # by grid, not by shape: grids 2x8 and 4x4 have tables of one shape
            v = resample_grid_table(v, donor.grid_size, encoder.grid_size)
            report.adapted.append(f"pos_table: grid {donor.grid_size} -> {encoder.grid_size}")
        new[k] = v
    report.missing = sorted(k for k in own if k not in new)
    shapes = [f"{k}: donor {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
              for k, v in new.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"{source}: its weights do not fit this encoder "
                         f"({getattr(encoder, 'model_name', '')}): {shapes}; start from an "
                         f"export of the same architecture")
    encoder.load_state_dict(new, strict=False)
    return report.log()


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
                       source_bands: Sequence[str] = RGB_BANDS, init: str = "mean",
                       generator: torch.Generator | None = None,
                       source: str = "state dict") -> tuple[dict[str, Tensor], LoadReport]:
    """A torchvision ResNet state dict with ``conv1.weight`` adapted to ``bands``; ``fc.*``
    (the ImageNet classifier) is dropped and reported as unexpected."""
    if "conv1.weight" not in state:
        raise ValueError(f"weights: {source} has no conv1.weight; not a torchvision ResNet "
                         f"(keys: {sorted(state)[:8]})")
    out = {k: v for k, v in state.items() if not k.startswith("fc.")}
    out["conv1.weight"], copied = adapt_input_weight(state["conv1.weight"], bands, source_bands,
                                                     init, generator)
    report = LoadReport(source, unexpected=sorted(k for k in state if k.startswith("fc.")),
                        adapted=[f"conv1.weight: {state['conv1.weight'].shape[1]} -> "
                                 f"{len(bands)} bands (copied {copied}, others init={init!r})"])
    return out, report
