"""Masked autoencoder (He et al.): the yardstick every other objective is measured against.

Mask ``mask_ratio`` of the N = G*L tokens per sample (independent or spatially consistent for
grouped tokenizers), encode only the visible ones, decode all, and score the masked patches
with MSE (optionally against per-patch normalised targets, ``norm_pix_loss``). Nodata never
counts: pixels flagged invalid are left out of each patch's error and of its normalisation
whatever they hold (NaN included: selected away, never multiplied by 0; a non-finite value
there reaches the encoder as 0, :func:`finite_input`), and so are the band-pixels of valid
pixels that one band leaves empty (``band_valid``, the loader's per-band validity:
``eofm.pretrain.data.prepare_batch``, e.g. an EnMAP band that is nodata in a tile), while the
encoder input keeps the per-pixel convention (such a band-pixel reaches it as the loader's 0).
Tokens whose valid share is under ``min_valid_fraction`` (a share in (0, 1]) are not
reconstruction targets; the share counts band-pixels (pixel x band of the token's bands), which
without per-band nodata is the share of valid pixels. The loss is
computed in float32 whatever the prediction's dtype (bf16 under autocast), so valid-pixel
counts, the ``norm_pix_loss`` statistics and the scored-token count are exact.
For grouped tokenizers each group's head predicts exactly that group's bands, and targets are
taken from the input by band name (never by position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eofm.models.decoders import MAEDecoder
from eofm.models.masking import grouped_masking, num_keep, random_masking
from eofm.models.tokenizers import patchify, unpatchify
from eofm.models.vit import ViTEncoder

from ..data import band_valid_input
from ..encoders import run_encoder
from .base import PARAM_PREFIX, configured_params, register_objective, typed_fields

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import BandInfo


def min_valid_fraction_problem(value: object, key: str = "min_valid_fraction") -> str | None:
    """Why ``value`` cannot be a ``min_valid_fraction`` (named ``key`` in the message), or None.

    It is the share of a token's pixels that must be valid for the token to be scored, in
    (0, 1]: above 1 no token is ever scored (the loss is 0 at every step, silently), and 0
    would score fully-nodata patches as zero error. The share counts band-pixels (pixel x
    band, :func:`masked_patch_loss`): with per-band nodata (``band_valid``) a band empty at a
    pixel lowers it; otherwise it is the share of valid pixels.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}: expected a number in (0, 1], got {value!r}"
    if 0.0 < value <= 1.0:
        return None
    hint = (f" (a share, not a percent: {value / 100:g} for {value:g}%)"
            if 1.0 < value <= 100.0 else "")
    return (f"{key}: expected the share of a token's pixels that must be valid for it to be "
            f"scored, in (0, 1]{hint}, got {value}")


MASKINGS = ("independent", "consistent")  # objective.params.masking


def masking_problem(value: object, key: str = "masking") -> str | None:
    """Why ``value`` cannot be a ``masking`` mode (named ``key`` in the message), or None:
    ``independent`` (each group its own mask) or ``consistent`` (the same cells in every
    group of a grouped tokenizer)."""
    if value in MASKINGS:
        return None
    return f"{key}: expected 'independent' or 'consistent', got {value!r}"


def mae_param_problems(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The problems of MAE's ``masking`` and ``min_valid_fraction`` in ``params`` (those
    given), each named ``prefix`` + the parameter: what :class:`MAE` refuses, and the
    configuration when it loads (``prefix`` ``objective.params.``)."""
    problems = []
    if "masking" in params:
        problems.append(masking_problem(params["masking"], f"{prefix}masking"))
    if "min_valid_fraction" in params:
        problems.append(min_valid_fraction_problem(params["min_valid_fraction"],
                                                   f"{prefix}min_valid_fraction"))
    return [p for p in problems if p is not None]


def check_min_valid_fraction(value: float) -> float:
    """``value`` as a float; ValueError (see :func:`min_valid_fraction_problem`) otherwise."""
    if (why := min_valid_fraction_problem(value)) is not None:
        raise ValueError(why)
    return float(value)


def zero_invalid(x: Tensor, w: Tensor) -> Tensor:
    """``x`` with 0 where ``w`` (broadcastable to it, float in {0, 1} or bool) is 0: selected,
    not multiplied, so a NaN or inf at an invalid pixel never reaches a sum (NaN * 0 is NaN).
    Finite values at valid pixels are returned bit for bit."""
    return torch.where(w if w.dtype == torch.bool else w > 0, x, 0.0)


def finite_input(x: Tensor, valid: Tensor | None, band_valid: Tensor | None = None) -> Tensor:
    """The model input ``x`` (B, C, H, W) with each non-finite value (NaN, inf) at a pixel that
    ``valid`` (B, H, W) flags invalid read as 0, the loader's nodata value; every other value
    as given (finite values at invalid pixels too: the encoder sees them, as before). One such
    NaN in a visible token would otherwise reach every token through attention and make the
    whole loss NaN; a non-finite value at a VALID pixel is left alone (an error to see).
    ``band_valid`` (B, C, H, W) bool (:func:`band_validity`): the same per band-pixel (a
    non-finite value of a band that is nodata at a valid pixel is read as 0 too)."""
    keep = band_valid if band_valid is not None else (
        None if valid is None else valid[:, None].bool())
    if keep is None:
        return x
    return torch.where(keep, x, x.nan_to_num(0.0, 0.0, 0.0))


def band_validity(valid: Tensor | None, band_valid: Tensor | None, x: Tensor) -> Tensor | None:
    """The (B, C, H, W) bool validity of each band-pixel of ``x`` (B, C, H, W): ``band_valid``
    (the loader's, :data:`~eofm.pretrain.data.BAND_VALID_KEY`: False where a band is nodata at
    an otherwise valid pixel) and-ed with ``valid`` (B, H, W), so a band-pixel is valid only
    where its pixel is; None when ``band_valid`` is None (every band is valid wherever its
    pixel is: the objectives then score by ``valid`` alone, bit for bit as without it). A
    ValueError names a ``band_valid`` of another shape."""
    if band_valid is None:
        return None
    if tuple(band_valid.shape) != tuple(x.shape):
        raise ValueError(f"band_valid: expected the (B, C, H, W) validity of each band-pixel of "
                         f"x, shape {tuple(x.shape)}, got {tuple(band_valid.shape)}")
    band_valid = band_valid.to(x.device).bool()
    return band_valid if valid is None else band_valid & valid.to(x.device).bool()[:, None]


def patch_mean_var(target: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and (unbiased) variance of ``target`` (B, L, P) over the pixels where
    ``w`` (B, L, P, in {0, 1}) is 1: what ``norm_pix_loss`` normalises each patch by. Values
    where ``w`` is 0 are never read (NaN included: :func:`zero_invalid`). ``w`` is per value
    (band-pixel), so a band that is nodata at some pixels (``band_valid``) leaves those values
    out of the statistics of the other bands' patch too."""
    n_valid = w.sum(-1, keepdim=True)
    target = zero_invalid(target, w)
    mean = (target * w).sum(-1, keepdim=True) / n_valid.clamp(min=1)
    var = (((target - mean) ** 2) * w).sum(-1, keepdim=True) / (n_valid - 1).clamp(min=1)
    return mean, var


def masked_patch_loss(pred: Tensor, target: Tensor, token_mask: Tensor, pixel_valid: Tensor,
                      norm_pix: bool = False, min_valid_fraction: float = 0.5,
                      eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Sum of per-patch MSE over scored tokens, and the number of scored tokens.

    pred, target: (B, L, p*p*C); token_mask: (B, L), 1 = masked (to be reconstructed);
    pixel_valid: (B, L, p*p*C) float in {0, 1} or bool, per band-pixel (the per-pixel mask
    repeated over the bands, or the per-band validity ``band_valid``). A token is scored when
    masked and at least ``min_valid_fraction`` of its band-pixels are valid (with a per-pixel
    mask: of its pixels); its error averages its valid band-pixels only.
    Values of ``target`` and ``pred`` at invalid pixels are never read, NaN included (they are
    selected away, not multiplied by 0: :func:`zero_invalid`), so nodata filled with NaN
    scores as nodata filled with 0. Everything is computed in float32 (both results are
    float32), whatever the dtype of ``pred``: in bf16 a valid count such as 2639 rounds to
    2640, biasing the ``norm_pix`` statistics and the token count.
    """
    pred, w = pred.float(), pixel_valid.float()
    target = zero_invalid(target.float(), w)
    n_valid = w.sum(-1)
    if norm_pix:
        mean, var = patch_mean_var(target, w)
        target = (target - mean) / (var + eps).sqrt()
    per_patch = zero_invalid((pred - target) ** 2, w).sum(-1) / n_valid.clamp(min=1)
    scored = token_mask.float() * (n_valid >= min_valid_fraction * w.shape[-1]).float()
    return (per_patch * scored).sum(), scored.sum()


class MAE(nn.Module):
    """MAE around any :class:`ViTEncoder`; ``forward`` returns ``{"loss": ..., ...}``."""

    def __init__(self, encoder: ViTEncoder, bands: Sequence[str], *, mask_ratio: float = 0.75,
                 decoder_dim: int = 512, decoder_depth: int = 8, decoder_heads: int = 16,
                 norm_pix_loss: bool = False, masking: str = "independent",
                 min_valid_fraction: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio: expected a value in (0, 1), got {mask_ratio}")
        problems = mae_param_problems({"masking": masking,
                                       "min_valid_fraction": min_valid_fraction})
        if problems:
            raise ValueError("; ".join(problems))
        self.encoder, self.bands = encoder, list(bands)
        self.mask_ratio, self.norm_pix_loss, self.masking = mask_ratio, norm_pix_loss, masking
        self.min_valid_fraction = float(min_valid_fraction)
        tok, p = encoder.tokenizer, encoder.patch_size
        if tok.bands is not None and list(tok.bands) != self.bands:
            raise ValueError(f"bands: the encoder's tokenizer expects {list(tok.bands)}, "
                             f"the objective was given {self.bands}")
        self.group_index: list[list[int]] | None = None
        if tok.groups is not None:
            self.group_index = tok.group_index(self.bands)
            out_dim: int | dict[str, int] = {g: len(b) * p * p for g, b in tok.groups.items()}
        else:
            out_dim = len(self.bands) * p * p
        self.decoder = MAEDecoder.from_encoder(encoder, decoder_dim=decoder_dim,
                                               depth=decoder_depth, num_heads=decoder_heads,
                                               out_dim=out_dim)

    def mask(self, batch_size: int, device: torch.device,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(ids_keep (B, K), ids_restore (B, N), mask (B, N) 1 = masked) for one batch."""
        enc = self.encoder
        if enc.num_groups > 1:
            return grouped_masking(batch_size, enc.num_groups, enc.num_patches,
                                   1.0 - self.mask_ratio, mode=self.masking,
                                   generator=generator, device=device)
        keep = num_keep(enc.num_tokens, 1.0 - self.mask_ratio)
        return random_masking(batch_size, enc.num_tokens, keep, generator=generator, device=device)

    def reconstruct(self, x: Tensor, valid: Tensor | None = None, *,
                    generator: torch.Generator | None = None,
                    band_valid: Tensor | None = None, **tokenizer_kwargs
                    ) -> dict[str, Tensor]:
        """The prediction in input units, for pictures (see ``objectives/base.py``). With
        ``norm_pix_loss`` each masked patch is mapped back with its own target's mean and std
        over valid pixels (over valid band-pixels with ``band_valid``: what the loss
        normalised it by). Non-finite values at invalid pixels are read as 0
        (:func:`finite_input`)."""
        B, C, H, W = x.shape
        bv = band_validity(valid, band_valid, x)
        x = finite_input(x, valid, bv)
        ids_keep, ids_restore, mask = self.mask(B, x.device, generator)
        pred = self.decoder(self.encoder.forward_features(x, ids_keep=ids_keep,
                                                          **tokenizer_kwargs), ids_restore)
        p, L = self.encoder.patch_size, self.encoder.num_patches
        grid = (H // p, W // p)
        v = torch.ones(B, 1, H, W, device=x.device) if valid is None else valid[:, None].float()
        preds = [pred] if isinstance(pred, Tensor) else list(pred.values())
        index = self.group_index or [list(range(C))]
        out, hidden = x.clone(), torch.zeros_like(x, dtype=torch.bool)
        for i, (pr, idx) in enumerate(zip(preds, index, strict=True)):
            target = patchify(x[:, idx], p)
            if self.norm_pix_loss:
                vs = v.expand(B, len(idx), H, W) if bv is None else bv[:, idx].float()
                mean, var = patch_mean_var(target, patchify(vs, p))
                pr = pr * (var + 1e-6).sqrt() + mean
            m = mask[:, i * L:(i + 1) * L].bool()[..., None]
            patches = torch.where(m, pr.to(x.dtype), target)
            out[:, idx] = unpatchify(patches, p, grid, len(idx))
            hidden[:, idx] = unpatchify(m.expand_as(target), p, grid, len(idx))
        v_out = torch.ones(B, H, W, dtype=torch.bool, device=x.device) if valid is None else valid
        return {"input": x, "valid": v_out.bool(), "masked": hidden, "reconstruction": out}

    @property
    def loader_size(self) -> tuple[int, int]:
        """The (H, W) every sample must have when the loader ships it (the trainer checks the
        tiles or ``data.crop_size`` against it before the first step): the encoder's
        ``img_size``, since the masks are drawn over its grid."""
        h, w = self.encoder.img_size
        return h, w

    def batch_inputs(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Trainer hook: ``band_valid``, the loader's per-band validity, when the batch has one
        (:func:`~eofm.pretrain.data.band_valid_input`); nothing otherwise."""
        return band_valid_input(batch)

    def forward(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                masks: tuple[Tensor, Tensor, Tensor] | None = None,
                band_valid: Tensor | None = None,
                **tokenizer_kwargs) -> dict[str, Tensor]:
        """x: (B, C, H, W) normalised, bands in ``self.bands`` order; valid: (B, H, W) bool;
        band_valid: None or (B, C, H, W) bool, False where a band is nodata at a valid pixel
        (the loader's, through :meth:`batch_inputs`; :func:`band_validity`).

        Masks are drawn with ``generator``, or given as ``masks`` = (ids_keep, ids_restore,
        mask) from :meth:`mask`. ``tokenizer_kwargs`` (e.g. ``wavelengths``) go to the encoder.
        Values at invalid pixels never count in the loss, NaN included; a non-finite one
        reaches the encoder as 0 (:func:`finite_input`), finite ones as given (the loader
        already sets every invalid pixel to 0). The same holds per band-pixel for
        ``band_valid``: a band nodata at a pixel is no target there and stays out of its
        patch's ``norm_pix_loss`` statistics; the token's valid share for
        ``min_valid_fraction`` counts band-pixels. Without ``band_valid`` (or with one that
        is True wherever ``valid`` is) the loss is bit for bit the per-pixel one.

        Returns ``loss`` (the mean error of this batch's scored tokens, 0 when none is scored),
        ``loss_sum`` (their summed error, with gradient) and ``loss_count`` (how many were
        scored, detached; ``loss`` = ``loss_sum / max(loss_count, 1)``): with
        ``optim.loss_norm=step`` the strategy normalises the sums by the count of the whole
        optimiser step instead (:class:`~eofm.pretrain.strategy.Strategy`).
        """
        B, C, H, W = x.shape
        if len(self.bands) != C:
            raise ValueError(f"x: expected {len(self.bands)} bands {self.bands}, got {C}")
        bv = band_validity(valid, band_valid, x)
        x = finite_input(x, valid, bv)
        ids_keep, ids_restore, mask = masks if masks is not None else self.mask(
            B, x.device, generator)
        latent = self.encoder.forward_features(x, ids_keep=ids_keep, **tokenizer_kwargs)
        pred = self.decoder(latent, ids_restore)
        p = self.encoder.patch_size
        v = torch.ones(B, 1, H, W, device=x.device) if valid is None else valid[:, None].float()
        L = self.encoder.num_patches
        total = x.new_zeros(())
        count = x.new_zeros(())
        # per band-pixel validity: the pixel mask repeated over the bands, or (per-band
        # nodata) the bool band validity, patchified as bool (no float copy of it here)
        if self.group_index is None:
            assert isinstance(pred, Tensor)
            parts = [(pred, x, mask, v.expand(B, C, H, W) if bv is None else bv)]
        else:
            assert isinstance(pred, dict)
            parts = [(pred[g], x[:, idx], mask[:, i * L:(i + 1) * L],
                      v.expand(B, len(idx), H, W) if bv is None else bv[:, idx])
                     for i, (g, idx) in enumerate(zip(pred, self.group_index, strict=True))]
        for pr, xs, m, vs in parts:
            s, n = masked_patch_loss(pr, patchify(xs, p), m, patchify(vs, p),
                                     self.norm_pix_loss, self.min_valid_fraction)
            total, count = total + s, count + n
        loss = total / count.clamp(min=1)
        return {"loss": loss, "loss_sum": total, "loss_count": count.detach(),
                "scored_tokens": count.detach(), "mask": mask}


PARAMS: dict[str, object] = {  # objective.params of mae, with MAE's defaults
    "masking": "independent",  # "independent" | "consistent" (grouped tokens: one mask)
    "min_valid_fraction": 0.5,  # in (0, 1]: a patch with a smaller valid (not nodata)
    #                             share is not scored
}


def check_mae_params(params: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The problems of mae's ``objective.params`` values (:func:`mae_param_problems`)."""
    return mae_param_problems(params, PARAM_PREFIX)


@register_objective("mae", PARAMS, check=check_mae_params, fields=typed_fields())
def build_mae(cfg: TrainConfig, info: BandInfo) -> MAE:
    """MAE around the configured encoder; ``objective.params`` may set ``masking`` and
    ``min_valid_fraction``."""
    m, o = cfg.model, cfg.objective
    params = configured_params(cfg)  # before the encoder is built
    encoder = run_encoder(m, info)
    return MAE(encoder, info.bands, mask_ratio=o.mask_ratio, decoder_dim=o.decoder_dim,
               decoder_depth=o.decoder_depth, decoder_heads=o.decoder_heads,
               norm_pix_loss=o.norm_pix_loss, **params)

