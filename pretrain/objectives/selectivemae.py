"""SelectiveMAE (ICCV 2025): encode and reconstruct only the semantically rich tokens.

Per sample, of N tokens: V = floor(N (1 - mask_ratio)) visible tokens are chosen by Progressive
Semantic Token Selection (half sampled from softmax of a HOG-style score, half grown by
similarity of the patch + position embeddings, the growth moving over the run from similar to
complementary to random tokens), and T = floor(N kept_mask_ratio) of the masked tokens are
sampled by the same score as reconstruction targets; the other N - V - T tokens are neither
encoded nor decoded. The encoder sees only the V visible tokens; a CrossMAE decoder decodes only
the T targets (queries = mask token + the targets' positions, keys/values = the encoder output);
the loss is MSE (norm_pix optional) over the targets, invalid pixels excluded, tokens that are
mostly nodata never targets (see :mod:`.token_selection` for the score and the schedule).

Learning rate: ``lr_multiplier`` = kept_mask_ratio / mask_ratio (0.25 / 0.85 = 0.294 for the
paper's recipe; the "kept/mask" CrossMAE convention the issue names), applied by the trainer on
top of ``base_lr * batch / 256``; ``scale_lr_by_kept: false`` turns it off.

Only plain and spectral tokenizers (one token per cell): grouped tokenizers would need a
per-group score and per-group pixel heads on a token subset, which is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eofm.models.decoders import CrossAttentionDecoder
from eofm.models.masking import gather_tokens
from eofm.models.tokenizers import patchify
from eofm.models.vit import ViTEncoder

from ..encoders import build_encoder
from .base import objective_params, register_objective
from .mae import masked_patch_loss
from .token_selection import (
    SCORE_INPUTS,
    SelectionSchedule,
    sampling_logits,
    select_targets,
    select_visible,
    selection_budgets,
    semantic_score,
    token_validity,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import BandInfo

__all__ = ["DEFAULTS", "SelectiveMAE", "build_selectivemae"]

DEFAULTS: dict[str, Any] = {
    "kept_mask_ratio": 0.25,  # share of ALL tokens reconstructed (CrossMAE), <= mask_ratio
    "temperature": 1.0,  # softmax temperature of the visible seeds over standardised scores
    "target_temperature": 1.0,  # the same for the reconstruction targets
    "stage_fractions": [0.25, 0.5, 0.75],  # similar | blend | complementary | random
    "growth_steps": 3,  # steps that grow the visible set from its seeds
    "score": "energy",  # "energy" (gradient magnitude) | "orientation" (HOG departure)
    "score_input": "bands",  # "bands" (all bands) | "luminance" (the band mean)
    "cell_size": None,  # HOG cell in pixels (divides the patch); null = patch_size // 2
    "bins": 9,  # HOG orientation bins
    "min_valid_fraction": 0.5,  # tokens with fewer valid pixels are never targets
    "decoder_self_attn": False,  # CrossMAE self-attention among the queries
    "scale_lr_by_kept": True,  # lr_multiplier = kept_mask_ratio / mask_ratio
}


class SelectiveMAE(nn.Module):
    """SelectiveMAE around a :class:`ViTEncoder`; ``forward`` returns ``{"loss": ...}``."""

    def __init__(self, encoder: ViTEncoder, bands: Sequence[str], *, mask_ratio: float = 0.85,
                 kept_mask_ratio: float = 0.25, decoder_dim: int = 512, decoder_depth: int = 12,
                 decoder_heads: int = 16, norm_pix_loss: bool = True, temperature: float = 1.0,
                 target_temperature: float = 1.0,
                 stage_fractions: Sequence[float] = (0.25, 0.5, 0.75), growth_steps: int = 3,
                 score: str = "energy", score_input: str = "bands", cell_size: int | None = None,
                 bins: int = 9, min_valid_fraction: float = 0.5, decoder_self_attn: bool = False,
                 scale_lr_by_kept: bool = True) -> None:
        super().__init__()
        if encoder.num_groups != 1:
            raise ValueError("model.tokenizer: selectivemae supports 'plain' and 'spectral' "
                             f"tokenizers (one token per cell), got {encoder.num_groups} groups")
        tok = encoder.tokenizer
        if tok.bands is not None and list(tok.bands) != list(bands):
            raise ValueError(f"bands: the encoder's tokenizer expects {list(tok.bands)}, "
                             f"the objective was given {list(bands)}")
        if score_input not in SCORE_INPUTS:
            raise ValueError(f"score_input: expected one of {SCORE_INPUTS}, got {score_input!r}")
        if temperature <= 0 or target_temperature <= 0:
            raise ValueError(f"temperature/target_temperature: expected positive values, got "
                             f"{temperature}/{target_temperature}")
        if int(growth_steps) < 1:
            raise ValueError(f"growth_steps: expected a positive int, got {growth_steps}")
        self.encoder, self.bands = encoder, list(bands)
        self.mask_ratio, self.kept_mask_ratio = float(mask_ratio), float(kept_mask_ratio)
        self.num_visible, self.num_targets = selection_budgets(encoder.num_tokens, mask_ratio,
                                                               kept_mask_ratio)
        self.norm_pix_loss, self.min_valid_fraction = norm_pix_loss, float(min_valid_fraction)
        self.temperature, self.target_temperature = float(temperature), float(target_temperature)
        self.schedule = SelectionSchedule(tuple(stage_fractions))  # type: ignore[arg-type]
        self.growth_steps = int(growth_steps)
        self.score_kind, self.luminance = score, score_input == "luminance"
        self.cell_size, self.bins = cell_size, int(bins)
        self.lr_multiplier = kept_mask_ratio / mask_ratio if scale_lr_by_kept else 1.0
        self.progress = 0.0  # step / total, set by on_step_start
        p = encoder.patch_size
        self.decoder = CrossAttentionDecoder.from_encoder(
            encoder, decoder_dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads,
            out_dim=len(self.bands) * p * p, self_attn=decoder_self_attn)

    def on_step_start(self, step: int, total: int) -> None:
        """Trainer hook: the schedule's position in the run."""
        self.progress = SelectionSchedule.progress(step, total)

    @property
    def stage(self) -> str:
        """The current PSTS stage."""
        return self.schedule.stage(self.progress)

    def score(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """HOG-style semantic score per token (B, N) of the normalised batch x (B, C, H, W)."""
        with torch.no_grad():
            return semantic_score(x, self.encoder.patch_size, kind=self.score_kind,
                                  cell_size=self.cell_size, bins=self.bins, valid=valid,
                                  luminance=self.luminance)

    @torch.no_grad()
    def select(self, x: Tensor, valid: Tensor | None = None,
               generator: torch.Generator | None = None, *, embeddings: Tensor | None = None,
               **tokenizer_kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(ids_keep (B, V), ids_target (B, T), usable (B, N) bool) for one batch.

        ``embeddings``: the encoder's patch + position embeddings of ``x`` (B, N, D) when the
        caller has them (``forward`` embeds once); otherwise they are computed here.
        """
        B, _, H, W = x.shape
        enc = self.encoder
        grid = enc.tokenizer.grid_size((H, W))
        n = grid[0] * grid[1]
        visible, targets = ((self.num_visible, self.num_targets) if n == enc.num_tokens else
                            selection_budgets(n, self.mask_ratio, self.kept_mask_ratio))
        usable = token_validity(valid, enc.patch_size, B, grid, self.min_valid_fraction, x.device)
        score = self.score(x, valid)
        if embeddings is None and self.stage != "random":
            embeddings = enc.embed(x, **tokenizer_kwargs)
        ids_keep = select_visible(sampling_logits(score, usable, self.temperature), embeddings,
                                  visible, progress=self.progress, schedule=self.schedule,
                                  growth_steps=self.growth_steps, usable=usable,
                                  generator=generator)
        ids_target = select_targets(sampling_logits(score, usable, self.target_temperature),
                                    ids_keep, targets, generator)
        return ids_keep, ids_target, usable

    def forward(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                selection: tuple[Tensor, Tensor] | None = None,
                **tokenizer_kwargs: Any) -> dict[str, Tensor]:
        """x: (B, C, H, W) normalised, bands in ``self.bands`` order; valid: (B, H, W) bool.

        Token sets are drawn with ``generator`` or given as ``selection`` = (ids_keep,
        ids_target). ``tokenizer_kwargs`` (e.g. ``wavelengths``) go to the encoder. The input is
        embedded once: the selection reads the embeddings without gradient, and only the
        visible tokens run the encoder blocks.
        """
        B, C, H, W = x.shape
        if len(self.bands) != C:
            raise ValueError(f"x: expected {len(self.bands)} bands {self.bands}, got {C}")
        tokens = self.encoder.embed(x, **tokenizer_kwargs)  # (B, N, D), patch + position
        if selection is None:
            ids_keep, ids_target, _ = self.select(x, valid, generator,
                                                  embeddings=tokens.detach())
        else:
            ids_keep, ids_target = selection
        latent = self.encoder.forward_tokens(tokens, ids_keep)
        grid = self.encoder.tokenizer.grid_size((H, W))
        pred = self.decoder(latent, ids_target,
                            grid=None if grid == self.decoder.grid else grid)
        p = self.encoder.patch_size
        target = gather_tokens(patchify(x, p), ids_target)
        v = (torch.ones(B, 1, H, W, device=x.device, dtype=x.dtype) if valid is None
             else valid[:, None].to(x.dtype))
        pixel_valid = gather_tokens(patchify(v.expand(B, C, H, W), p), ids_target)
        total, count = masked_patch_loss(pred, target, torch.ones_like(ids_target), pixel_valid,
                                         self.norm_pix_loss, self.min_valid_fraction)
        loss = total / count.clamp(min=1)
        return {"loss": loss, "scored_tokens": count.detach(), "ids_keep": ids_keep,
                "ids_target": ids_target}

    def train_flops_per_sample(self) -> float:
        """6 x parameters x tokens they see: encoder on prefix + V, decoder on T queries (its
        per-block key/value projections on prefix + V, a small term, folded in)."""
        enc, dec = self.encoder, self.decoder
        n_enc = sum(q.numel() for q in enc.parameters())
        n_dec = sum(q.numel() for q in dec.parameters())
        return 6.0 * (n_enc * (self.num_visible + enc.num_prefix_tokens)
                      + n_dec * self.num_targets)


@register_objective("selectivemae")
def build_selectivemae(cfg: TrainConfig, info: BandInfo) -> SelectiveMAE:
    """SelectiveMAE around the configured encoder; ``objective.params`` as :data:`DEFAULTS`."""
    m, o = cfg.model, cfg.objective
    params = objective_params(o.params, DEFAULTS, "selectivemae")
    encoder = build_encoder(m.name, m.tokenizer, m.img_size, m.overrides, info.bands)
    return SelectiveMAE(encoder, info.bands, mask_ratio=o.mask_ratio,
                        decoder_dim=o.decoder_dim, decoder_depth=o.decoder_depth,
                        decoder_heads=o.decoder_heads, norm_pix_loss=o.norm_pix_loss, **params)
