"""SatMAE++ (Noman et al., CVPR 2024): MAE with a multi-scale reconstruction branch.

The loader ships ONE high-resolution crop per sample (``data.crop_size`` =
``model.img_size * 2**(num_scales - 1)``); everything else happens on the device:

0. The loader's random resized crop resamples by NEAREST neighbour (integer pixels and nodata
   stay exact), so a box smaller than ``data.crop_size`` is upsampled by repeating rows and
   columns, and those repeated pixels are the top-scale L1 target (and the source of every lower
   level). SatMAE++ therefore declares the published area range :data:`LOADER_CROP_SCALE`
   (0.6, 1.0) (``RandomResizedCrop(input_size * 4, scale=(0.6, 1.0))`` in techmn/satmae_pp
   util/datasets.py, which resamples bicubically) instead of the loader's default
   :data:`~eofm.pretrain.data.CROP_SCALE` (0.35, 1.0). With tiles as large as the crop
   (satmaepp_s2_cpu.yaml: 128 px tiles, crop 128) that is at most 1/sqrt(0.6) = 1.29x
   upsampling (geometric mean of the axes) instead of 1.69x, and on average 25% (at most 40%)
   of the top-scale target pixels repeat another instead of 38% (65%); only tiles of at least
   ``data.crop_size / sqrt(0.6 * 3/4)`` (1.49x the crop's side: the aspect jitter stretches one
   axis) are never upsampled.
1. :func:`pyramid` makes the model input and every intermediate target by bilinear
   (antialiased) downsampling of the crop, each level directly from the crop.
2. MAE on the model input (``grouped`` tokenizer for multispectral, ``plain`` for RGB; mask 0.75,
   independent or consistent masking); one decoder head per group predicting its own bands.
3. The decoder's pixel predictions for ALL tokens are unpatchified into a C x H x W image (bands
   placed by name, in input band order) and fed to :class:`~eofm.models.decoders.
   MultiScaleUpsampler`, which predicts the image at 2x, 4x, ... the input size.
4. loss = ``mse_weight`` * masked MSE at input scale + ``ms_weight`` * mean over the extra
   scales of the whole-image (unmasked) L1; defaults 0.6 / 0.4 as in the paper.

Scales: ``num_scales`` (default: 3 for a multispectral input, i.e. a ``grouped`` tokenizer or
more than 3 bands with any tokenizer; 2 for RGB, 3 bands or fewer; see :func:`num_scales_for`).

GSD: the model input's GSD is the crop's times ``input_gsd_factor`` (= 2**(num_scales - 1));
the trainer writes that into the encoder's input contract, and a GSD-aware encoder
(``gsd_pos``) gets it, never the crop's: ``forward``'s ``gsd`` is the crop's (default
``crop_gsd``), scaled before it reaches the encoder.

Nodata: every level below the crop (the model input and the intermediate targets alike) is a
normalised (masked) average: the antialiasing filter is applied to the crop with its invalid
pixels set to 0 and to the validity mask, and the first is divided by the second, so each
downsampled value is the filter-weighted mean of its VALID contributors only. A downsampled
pixel is valid when at least :data:`VALID_SHARE` (half) of its filter weight comes from valid
crop pixels, and is 0 (the normalised mean, the loader's nodata value) otherwise; the crop level
keeps the crop's own mask. So a nodata value never leaks into an input, a target or a loss term
at any scale, and scattered nodata (speckle of a quality mask, defective pixels) costs about its
own area, not the filter's footprint around each bad pixel (which at x4 blanked ~64x its area).
Both loss terms average valid pixels only (the L1 at each extra scale by that level's mask), and
a token whose valid share at input scale is under ``min_valid_fraction`` is never an MSE target.
With the loader's per-band validity (``band_valid``: a band that is nodata at otherwise valid
pixels, e.g. an EnMAP band empty in a tile) the pyramid is made per band: each band's
downsampled value averages that band's valid contributors, a downsampled band-pixel is valid by
the same :data:`VALID_SHARE` rule on that band's own filter weight (0 otherwise, as the loader
feeds a nodata band-pixel), and both loss terms and the token's valid share (of band-pixels, as
:func:`~.mae.masked_patch_loss` counts it) use that per-band validity; with every band valid
wherever the pixel is, this is bit for bit the per-pixel pyramid. The per-band mask is filtered
:data:`DOWNSAMPLE_BAND_CHUNK` bands at a time, so its float copy is a chunk's, not the crop's.
Both losses are computed in float32 whatever the prediction's dtype (bf16 under autocast).

``norm_pix_loss`` is refused: per-patch normalised MSE targets would disagree with the
up-sampling branch's targets, which are in the input's normalised pixel space.

``legacy_channel_order`` reproduces the published pairing (SatMAE and SatMAE++ alike): the group
heads' outputs are concatenated in group order and scored against targets in the ORIGINAL band
order, position by position, each group's positions under that group's mask (with the default
groups B08 is scored against the red-edge prediction). The pairing is positional, so it is the
published one only for the published layout, which it therefore requires (ValueError otherwise,
see :func:`check_legacy_layout`): the ``grouped`` tokenizer with SatMAE's S2 groups
(:data:`~eofm.models.tokenizers.SATMAE_S2_GROUPS`, the default of ``model.overrides.groups``:
{B02,B03,B04,B08} {B05,B06,B07,B8A} {B11,B12}, in that order) and the input bands (``data.bands``)
exactly in SatMAE's order :data:`SATMAE_INPUT_ORDER` (B02,B03,B04,B05,B06,B07,B08,B8A,B11,B12).
With the bands in group order, or with a tokenizer without groups, the positional pairing would
silently be the by-name one. It exists only to compare with the released weights; by default
predictions and targets are paired by band name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eofm.models.decoders import MultiScaleUpsampler
from eofm.models.tokenizers import SATMAE_S2_GROUPS, patchify, unpatchify
from eofm.models.vit import ViTEncoder

from ..encoders import run_encoder
from .base import PARAM_PREFIX, configured_params, register_objective, typed_fields
from .mae import MAE, band_validity, mae_param_problems, masked_patch_loss

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import BandInfo

__all__ = ["DEFAULTS", "LOADER_CROP_SCALE", "SATMAE_INPUT_ORDER", "SatMAEPP",
           "check_legacy_layout", "downsample", "multiscale_l1", "num_scales_for", "pyramid",
           "satmaepp_param_problems"]

#: area range of the loader's random resized crop (share of the tile), the published one
#: (techmn/satmae_pp util/datasets.py); the loader's default (0.35, 1.0) upsamples more
LOADER_CROP_SCALE = (0.6, 1.0)

DEFAULTS: dict[str, Any] = {
    "num_scales": None,  # None: 3 for multispectral (grouped, or > 3 bands), 2 for RGB (<= 3)
    "mse_weight": 0.6,  # weight of the masked MSE at input scale
    "ms_weight": 0.4,  # weight of the mean whole-image L1 over the extra scales
    "masking": "independent",  # or "consistent" (same spatial cells in every group)
    "min_valid_fraction": 0.5,  # in (0, 1]: a token with a smaller valid share is never an
    #                             MSE target
    "upsampler_ratio": 4,  # width of the up-sampling branch: ratio * C channels
    "legacy_channel_order": False,  # reproduce the published prediction/target pairing (needs
    #                                 SatMAE's groups and SATMAE_INPUT_ORDER bands)
}
# The published (SatMAE / SatMAE++ fMoW-Sentinel) input band order, which the positional legacy
# pairing needs to reproduce the published defect.
SATMAE_INPUT_ORDER: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                       "B11", "B12")
VALID_SHARE = 0.5  # a downsampled pixel is valid when at least this share of its filter weight
#                   comes from valid crop pixels (its value: their weighted mean)
DOWNSAMPLE_BAND_CHUNK = 16  # bands of a per-band validity filtered at a time (downsample)


def _whole(value: Any, least: int) -> bool:
    """Whether ``value`` is a whole number (an int, or a float such as 3.0) >= ``least``."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and value == int(value) and value >= least)


def satmaepp_param_problems(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The problems of SatMAE++'s own settings in ``params`` (those given): ``num_scales``
    (null for the default, else a whole number >= 2), ``mse_weight``/``ms_weight``
    (non-negative, with a positive sum) and ``upsampler_ratio`` (a whole number >= 1), each
    named ``prefix`` + the parameter; what :class:`SatMAEPP` refuses (``masking`` and
    ``min_valid_fraction``: :func:`~.mae.mae_param_problems`), and the configuration when it
    loads (``prefix`` ``objective.params.``)."""
    problems = []
    n = params.get("num_scales")
    if n is not None and not _whole(n, 2):
        problems.append(f"{prefix}num_scales: expected null or a whole number >= 2 (the input "
                        f"scale plus at least one extra), got {n!r}")
    if "mse_weight" in params or "ms_weight" in params:
        mse, ms = params.get("mse_weight", DEFAULTS["mse_weight"]), params.get(
            "ms_weight", DEFAULTS["ms_weight"])
        numbers = all(not isinstance(w, bool) and isinstance(w, (int, float)) for w in (mse, ms))
        if not numbers or mse < 0 or ms < 0 or mse + ms <= 0:
            problems.append(f"{prefix}mse_weight, {prefix}ms_weight: expected non-negative "
                            f"weights with a positive sum, got {mse!r}, {ms!r}")
    ratio = params.get("upsampler_ratio", DEFAULTS["upsampler_ratio"])
    if not _whole(ratio, 1):
        problems.append(f"{prefix}upsampler_ratio: expected a whole number >= 1 (the up-sampling "
                        f"branch is ratio x the predicted bands wide), got {ratio!r}")
    return problems


def num_scales_for(num_scales: int | None, encoder: ViTEncoder, num_bands: int) -> int:
    """``num_scales``, or its default (METHODS.md: x4 down for multispectral, x2 for RGB): 3
    for a multispectral input (a ``grouped`` tokenizer, or more than 3 input bands with any
    tokenizer: ``plain`` or ``spectral`` on 10-13 S2 bands), 2 for RGB (3 bands or fewer)."""
    if num_scales is not None:
        return int(num_scales)
    return 3 if encoder.num_groups > 1 or num_bands > 3 else 2


def check_legacy_layout(encoder: ViTEncoder, bands: Sequence[str]) -> None:
    """Refuse ``legacy_channel_order`` unless the layout is the published one (ValueError).

    The published pairing concatenates the group heads in group order and scores them against
    the input bands position by position, so it is the published pairing only with the
    ``grouped`` tokenizer, SatMAE's S2 groups in their order (member lists compared, names
    ignored) and the input bands (``data.bands``) exactly :data:`SATMAE_INPUT_ORDER`; in any
    other layout it is some other pairing (with the bands in group order, the by-name one).
    """
    where = "objective.params.legacy_channel_order"
    groups = getattr(encoder.tokenizer, "groups", None)
    if groups is None:
        raise ValueError(f"{where}: the published pairing needs the grouped tokenizer "
                         f"(model.tokenizer: grouped, SatMAE's per-group heads); this encoder's "
                         f"{type(encoder.tokenizer).__name__} has no groups, so predictions are "
                         "already paired with their bands; set it to false")
    layout = [list(m) for m in groups.values()]
    published = [list(m) for m in SATMAE_S2_GROUPS.values()]
    if layout != published:
        raise ValueError(f"{where}: the published pairing needs SatMAE's S2 groups in their "
                         f"order {published} (model.overrides.groups unset or 'satmae_s2'), "
                         f"got {layout}")
    if tuple(bands) != SATMAE_INPUT_ORDER:
        raise ValueError(f"{where}: the published pairing is positional and needs data.bands "
                         f"exactly in SatMAE's input order {list(SATMAE_INPUT_ORDER)}, got "
                         f"{list(bands)} (in another order, e.g. group order, it is not the "
                         "published pairing; with extra bands some band is in no group)")


def downsample(x: Tensor, valid: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """Bilinear antialiased ``factor``x downsampling of x (B, C, H, W) and valid (B, H, W) bool,
    as a normalised (masked) average: returns (xs, vs), float32 unless x is float64. ``valid``
    may also be (B, C, H, W) (per band-pixel: each band its own mask, filter weight and
    decision); ``vs`` has the shape of ``valid``.

    With ``num`` the filter applied to x with invalid pixels set to 0 and ``den`` the filter
    applied to the validity mask (each low-resolution pixel's valid share of filter weight), a
    low-resolution pixel is valid when ``den >= VALID_SHARE`` and its value is then ``num /
    den``, the weighted mean of its valid contributors; it is 0 otherwise (the loader's
    convention for nodata after normalising). Values at invalid crop pixels never matter (NaN
    included). ``factor`` 1 returns the input with its invalid pixels set to 0, and its mask.
    """
    per_band = valid.ndim == 4
    if x.ndim != 4 or valid.shape not in ((x.shape[0], *x.shape[-2:]), x.shape):
        raise ValueError(f"x, valid: expected (B, C, H, W) and (B, H, W) or (B, C, H, W), got "
                         f"{tuple(x.shape)} and {tuple(valid.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    valid = valid.bool()
    v4 = valid if per_band else valid[:, None]
    x = torch.where(v4, x.to(dtype), 0.0)
    if factor == 1:
        return x, valid
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"x: {h}x{w} is not divisible by the downsampling factor {factor}")
    size = (h // factor, w // factor)
    num = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    # the filter weight of valid contributors; per band, DOWNSAMPLE_BAND_CHUNK bands at a time,
    # so the float copy of the mask it filters stays a chunk's, not the crop's
    den = torch.cat([F.interpolate(v4[:, c:c + DOWNSAMPLE_BAND_CHUNK].to(dtype), size=size,
                                   mode="bilinear", antialias=True, align_corners=False)
                     for c in range(0, v4.shape[1], DOWNSAMPLE_BAND_CHUNK)], 1)
    vs = den >= VALID_SHARE - 1e-6  # float error at exactly half must not flip the decision
    xs = torch.where(vs, num / den.clamp(min=VALID_SHARE / 2), 0.0)
    return xs, vs if per_band else vs[:, 0]


def pyramid(x: Tensor, valid: Tensor, num_scales: int) -> list[tuple[Tensor, Tensor]]:
    """[(x_s, valid_s)] from the model input (crop / 2**(S-1)) up to the crop itself (s = 0..S-1)."""
    return [downsample(x, valid, 2 ** (num_scales - 1 - s)) for s in range(num_scales)]


def multiscale_l1(preds: Sequence[Tensor], targets: Sequence[Tensor],
                  valids: Sequence[Tensor]) -> Tensor:
    """Mean over scales of the whole-image L1, each averaged over its valid pixels (all bands).

    preds/targets: per scale (B, C, H_s, W_s); valids: per scale (B, H_s, W_s) bool, or
    (B, C, H_s, W_s) per band-pixel (then each scale averages its valid band-pixels). A scale
    without any valid pixel contributes 0. Computed in float32 whatever the predictions' dtype
    (bf16 under autocast), so the valid-pixel counts are exact.
    """
    if not len(preds) == len(targets) == len(valids) or not preds:
        raise ValueError(f"preds, targets, valids: expected the same number (>= 1) of scales, "
                         f"got {len(preds)}, {len(targets)}, {len(valids)}")
    terms = []
    for p, t, v in zip(preds, targets, valids, strict=True):
        if p.shape != t.shape:
            raise ValueError(f"preds: a scale's prediction {tuple(p.shape)} does not match its "
                             f"target {tuple(t.shape)}")
        if v.ndim == 4:  # per band-pixel; counted as an integer (exact at any size)
            w = v.float()
            n = v.sum().to(torch.float32)
        else:
            w = v[:, None].float()
            n = w.sum() * p.shape[1]
        terms.append(((p.float() - t.float()).abs() * w).sum() / n.clamp(min=1))
    return torch.stack(terms).mean()


class SatMAEPP(MAE):
    """SatMAE++ around any :class:`ViTEncoder`; ``forward`` takes the high-resolution crop.

    Bands: ``bands`` is the input (loader) order. ``target_bands`` are those some group predicts
    (all of them for plain/spectral tokenizers), in input order; the up-sampling branch works on
    them. Grouped tokenizers: per-group heads, targets taken by name.

    ``legacy_channel_order``: the published positional pairing (see the module docstring); it
    requires the published layout, SatMAE's S2 groups with ``bands`` exactly
    :data:`SATMAE_INPUT_ORDER`, and raises a ValueError naming ``data.bands`` or the groups
    otherwise (:func:`check_legacy_layout`).
    """

    def __init__(self, encoder: ViTEncoder, bands: Sequence[str], *, mask_ratio: float = 0.75,
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 num_scales: int | None = None, mse_weight: float = 0.6, ms_weight: float = 0.4,
                 masking: str = "independent", min_valid_fraction: float = 0.5,
                 upsampler_ratio: int = 4, legacy_channel_order: bool = False,
                 crop_gsd: float | None = None) -> None:
        super().__init__(encoder, bands, mask_ratio=mask_ratio, decoder_dim=decoder_dim,
                         decoder_depth=decoder_depth, decoder_heads=decoder_heads,
                         norm_pix_loss=False, masking=masking,
                         min_valid_fraction=min_valid_fraction)
        problems = satmaepp_param_problems({"num_scales": num_scales, "mse_weight": mse_weight,
                                            "ms_weight": ms_weight,
                                            "upsampler_ratio": upsampler_ratio})
        if problems:
            raise ValueError("; ".join(problems))
        num_scales = num_scales_for(num_scales, encoder, len(bands))
        self.num_scales, self.factor = int(num_scales), 2 ** (int(num_scales) - 1)
        self.input_gsd_factor = float(self.factor)  # the trainer's contract: input GSD / crop GSD
        self.crop_gsd = None if crop_gsd is None else float(crop_gsd)
        self.mse_weight, self.ms_weight = float(mse_weight), float(ms_weight)
        self.legacy_channel_order = bool(legacy_channel_order)
        if self.legacy_channel_order:
            check_legacy_layout(encoder, self.bands)
        tok = encoder.tokenizer
        covered = (tok.band_coverage().tolist() if tok.groups is not None
                   else [True] * len(self.bands))
        self.target_bands = [b for b, c in zip(self.bands, covered, strict=True) if c]
        self.register_buffer("_target_index", torch.tensor(
            [self.bands.index(b) for b in self.target_bands]), persistent=False)
        for i, idx in enumerate(self._groups()):
            self.register_buffer(f"_group{i}", torch.tensor(idx), persistent=False)
        self.upsampler = MultiScaleUpsampler(len(self.target_bands), self.num_scales,
                                             upsampler_ratio)

    @property
    def crop_size(self) -> tuple[int, int]:
        """The high-resolution crop (H, W) the objective expects."""
        h, w = self.encoder.img_size
        return h * self.factor, w * self.factor

    @property
    def loader_size(self) -> tuple[int, int]:
        """The loader ships the high-resolution crop (:attr:`crop_size`); the model inputs are
        made from it on the device."""
        return self.crop_size

    def _groups(self) -> list[list[int]]:
        """Per group, the input positions of its bands (group order); plain: one group, all."""
        return self.group_index if self.group_index is not None else [list(range(len(self.bands)))]

    def _group_select(self) -> list[Tensor]:
        """The per-group input positions as (C_g,) long buffers on the module's device."""
        return [getattr(self, f"_group{i}") for i in range(len(self._groups()))]

    def prediction_image(self, pred: Tensor | dict[str, Tensor]) -> Tensor:
        """Decoder output for all tokens -> (B, C, H, W) image in INPUT band order.

        By name (default): each group's bands land at their input positions, bands in no group
        are 0. ``legacy_channel_order``: the groups' channels concatenated in group order (the
        published layout), which is NOT the input order for SatMAE's groups.
        """
        p, grid = self.encoder.patch_size, self.encoder.grid_size
        if isinstance(pred, Tensor):
            return unpatchify(pred, p, grid, len(self.bands))
        parts = [unpatchify(pred[g], p, grid, len(idx))
                 for g, idx in zip(pred, self._groups(), strict=True)]
        if self.legacy_channel_order:
            return torch.cat(parts, dim=1)
        b, _, h, w = parts[0].shape
        out = parts[0].new_zeros(b, len(self.bands), h, w)
        for sel, part in zip(self._group_select(), parts, strict=True):
            out = out.index_copy(1, sel, part.to(out.dtype))
        return out

    def masked_mse(self, image: Tensor, x: Tensor, valid: Tensor, mask: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """(mean per-token MSE over scored tokens, scored count) at input scale.

        image: (B, C, H, W) from :meth:`prediction_image`; x: (B, C, H, W) input; valid: (B, H, W),
        or (B, C, H, W) bool per band-pixel; mask: (B, G*L), 1 = masked. Group g's tokens score
        the channels at ITS bands' input positions under its own mask (in legacy order those
        channels hold other predictions). In float32 (:func:`~.mae.masked_patch_loss`), whatever
        the dtype of ``image``; a token's valid share counts band-pixels of its group's bands.
        """
        p, L = self.encoder.patch_size, self.encoder.num_patches
        per_band = valid.ndim == 4
        v = valid.bool() if per_band else valid[:, None].float()
        total, count = x.new_zeros((), dtype=torch.float32), x.new_zeros((), dtype=torch.float32)
        for i, sel in enumerate(self._group_select()):
            n = sel.numel()
            vs = v.index_select(1, sel) if per_band else v.expand(-1, n, -1, -1)
            s, c = masked_patch_loss(patchify(image.index_select(1, sel), p),
                                     patchify(x.index_select(1, sel), p),
                                     mask[:, i * L:(i + 1) * L], patchify(vs, p),
                                     False, self.min_valid_fraction)
            total, count = total + s, count + c
        return total / count.clamp(min=1), count

    def predict(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                masks: tuple[Tensor, Tensor, Tensor] | None = None,
                band_valid: Tensor | None = None,
                **tokenizer_kwargs) -> dict[str, Any]:
        """Everything the loss needs: the pyramid, the mask, the input-scale prediction image
        (B, C, h, w) and the up-sampling branch's predictions, one per extra scale.

        A ``gsd`` in ``tokenizer_kwargs`` (m, float or (B,)) is the CROP's; a GSD-aware encoder
        gets the model input's, ``gsd * factor`` (``crop_gsd * factor`` when none is given).
        ``band_valid`` (B, C, crop, crop) bool (:func:`~.mae.band_validity`): the pyramid is
        made per band-pixel, and each level's validity is (B, C, h_s, w_s) instead of
        (B, h_s, w_s).
        """
        B, C, H, W = x.shape
        if len(self.bands) != C:
            raise ValueError(f"x: expected {len(self.bands)} bands {self.bands}, got {C}")
        if self.crop_size != (H, W):
            raise ValueError(f"x: expected the high-resolution crop {self.crop_size} (model input "
                             f"{tuple(self.encoder.img_size)} x {self.factor}), got {(H, W)}")
        bv = band_validity(valid, band_valid, x)
        valid = torch.ones(B, H, W, dtype=torch.bool, device=x.device) if valid is None else valid
        gsd = tokenizer_kwargs.pop("gsd", None)
        if gsd is None and getattr(self.encoder, "gsd_pos", False):
            gsd = self.crop_gsd
        if gsd is not None:
            tokenizer_kwargs["gsd"] = gsd * self.factor
        levels = pyramid(x, valid.bool() if bv is None else bv, self.num_scales)
        x0 = levels[0][0]
        ids_keep, ids_restore, mask = masks if masks is not None else self.mask(
            B, x.device, generator)
        latent = self.encoder.forward_features(x0, ids_keep=ids_keep, **tokenizer_kwargs)
        image = self.prediction_image(self.decoder(latent, ids_restore))
        branch_in = image if self.legacy_channel_order else image.index_select(
            1, self._target_index)
        return {"levels": levels, "mask": mask, "image": image,
                "scales": self.upsampler(branch_in)}

    def loss(self, out: dict[str, Any]) -> dict[str, Tensor]:
        """The combined loss from :meth:`predict`'s output (and its two terms)."""
        levels, idx = out["levels"], self._target_index
        mse, count = self.masked_mse(out["image"], levels[0][0], levels[0][1], out["mask"])
        ms = multiscale_l1(out["scales"], [xs.index_select(1, idx) for xs, _ in levels[1:]],
                           [vs.index_select(1, idx) if vs.ndim == 4 else vs
                            for _, vs in levels[1:]])
        return {"loss": self.mse_weight * mse + self.ms_weight * ms, "loss_mse": mse.detach(),
                "loss_ms": ms.detach(), "scored_tokens": count.detach(), "mask": out["mask"]}

    def forward(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                masks: tuple[Tensor, Tensor, Tensor] | None = None,
                band_valid: Tensor | None = None,
                **tokenizer_kwargs) -> dict[str, Tensor]:
        """x: (B, C, crop, crop) normalised high-resolution crop; valid: (B, crop, crop) bool;
        band_valid: None or (B, C, crop, crop) bool per band-pixel (the loader's, through
        :meth:`~.mae.MAE.batch_inputs`; see the module docstring)."""
        return self.loss(self.predict(x, valid, generator=generator, masks=masks,
                                      band_valid=band_valid, **tokenizer_kwargs))

    def reconstruct(self, x: Tensor, valid: Tensor | None = None, *,
                    generator: torch.Generator | None = None, **tokenizer_kwargs
                    ) -> dict[str, Tensor]:
        """The input-scale prediction, for pictures (see ``objectives/base.py``): the model
        input is the downsampled crop; each band is hidden where its group's tokens were. With
        a ``band_valid`` (in ``tokenizer_kwargs``), a pixel of the picture is valid where any
        of its bands is."""
        out = self.predict(x, valid, generator=generator, **tokenizer_kwargs)
        x0 = out["levels"][0][0]
        p, L = self.encoder.patch_size, self.encoder.num_patches
        grid = (x0.shape[-2] // p, x0.shape[-1] // p)
        hidden = torch.zeros_like(x0, dtype=torch.bool)
        for i, sel in enumerate(self._group_select()):
            m = out["mask"][:, i * L:(i + 1) * L].bool()[..., None].expand(-1, -1, p * p)
            hidden[:, sel] = unpatchify(m.float(), p, grid, 1).bool().expand(-1, sel.numel(), -1, -1)
        recon = torch.where(hidden, out["image"].to(x0.dtype), x0)
        v0 = out["levels"][0][1].bool()
        return {"input": x0, "valid": v0.any(1) if v0.ndim == 4 else v0, "masked": hidden,
                "reconstruction": recon}

    def train_flops_per_sample(self) -> float:
        """MAE's 6 x params x tokens estimate plus 3 x the up-sampling branch's conv FLOPs."""
        enc, dec = self.encoder, self.decoder
        keep = enc.num_tokens * (1.0 - self.mask_ratio) + enc.num_prefix_tokens
        n_enc = sum(p.numel() for p in enc.parameters())
        n_dec = sum(p.numel() for p in dec.parameters())
        c = self.upsampler.channels
        wd = self.upsampler.proj.out_channels
        hw = enc.img_size[0] * enc.img_size[1]
        macs = c * wd * hw  # 1x1 projection
        for s in range(1, self.num_scales):
            hw_in, hw_out = hw * 4 ** (s - 1), hw * 4 ** s
            macs += wd * wd * 16 * hw_in + 2 * wd * wd * 9 * hw_out + wd * c * 9 * hw_out
        return 6.0 * (n_enc * keep + n_dec * (enc.num_tokens + enc.num_prefix_tokens)) + \
            3.0 * 2.0 * macs


def norm_pix_problems(cfg: TrainConfig) -> list[str]:
    """``objective.norm_pix_loss`` must be false for SatMAE++: per-patch normalised MSE targets
    would disagree with the up-sampling branch's targets."""
    if not cfg.objective.norm_pix_loss:
        return []
    return ["objective.norm_pix_loss: satmaepp needs false (per-patch normalised MSE targets "
            "would disagree with the up-sampling branch's targets), got true"]


def check_satmaepp_params(params: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The problems of satmaepp's ``objective.params`` values (MAE's
    :func:`~.mae.mae_param_problems` and :func:`satmaepp_param_problems`) and of
    ``objective.norm_pix_loss`` (:func:`norm_pix_problems`), found when the config loads."""
    return (mae_param_problems(params, PARAM_PREFIX)
            + satmaepp_param_problems(params, PARAM_PREFIX) + norm_pix_problems(cfg))


@register_objective("satmaepp", DEFAULTS, check=check_satmaepp_params, fields=typed_fields(),
                    crop_scale=LOADER_CROP_SCALE)
def build_satmaepp(cfg: TrainConfig, info: BandInfo) -> SatMAEPP:
    """SatMAE++ around the configured encoder; ``objective.params`` as :data:`DEFAULTS`.

    ``data.crop_size`` must be ``model.img_size * 2**(num_scales - 1)`` (the loader ships the
    high-resolution crop, of area share :data:`LOADER_CROP_SCALE`) and
    ``objective.norm_pix_loss`` must be false. ``crop_gsd`` is the loaded crop's GSD
    (:func:`~eofm.pretrain.data.sample_gsd`).
    """
    from ..config import ConfigError
    from ..data import sample_gsd

    m, o, d = cfg.model, cfg.objective, cfg.data
    params = configured_params(cfg)
    problems = norm_pix_problems(cfg)  # also refused when the config loads
    encoder = run_encoder(m, info)
    scales = num_scales_for(params["num_scales"], encoder, len(info.bands))
    crop = m.img_size * 2 ** (int(scales) - 1)
    if d.crop_size != crop:
        problems.append(f"data.crop_size: satmaepp with {scales} scales and model.img_size="
                        f"{m.img_size} needs the high-resolution crop {crop}, got {d.crop_size}")
    if problems:
        raise ConfigError(problems, "satmaepp objective")
    return SatMAEPP(encoder, info.bands, mask_ratio=o.mask_ratio, decoder_dim=o.decoder_dim,
                    decoder_depth=o.decoder_depth, decoder_heads=o.decoder_heads,
                    crop_gsd=sample_gsd(info, d.crop_size), **{**params, "num_scales": scales})
