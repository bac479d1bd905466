"""SelectiveMAE (ICCV 2025): encode and reconstruct only the semantically rich tokens.

Per sample, of N tokens: V = floor(N (1 - mask_ratio)) visible tokens are chosen by Progressive
Semantic Token Selection (half sampled from softmax(z / temperature), z the HOG-style score
standardised over the sample's usable tokens; half grown by similarity of the patch + position
embeddings, the growth moving over the run from similar to complementary to random tokens),
and T = floor(N kept_mask_ratio) of the masked tokens are sampled without replacement from
softmax(z / target_temperature) (Gumbel top-k) as reconstruction targets; the other
N - V - T tokens are neither encoded nor decoded. The encoder sees only the V visible tokens;
a CrossMAE decoder decodes only the T targets (queries = mask token + the targets' positions,
keys/values = the encoder output); the loss is MSE (norm_pix optional) over the targets,
invalid pixels excluded, tokens that are mostly nodata never targets (see
:mod:`.token_selection` for the score and the schedule). With the loader's per-band validity
(``band_valid``, passed by ``batch_inputs``: a band that is nodata at otherwise valid pixels,
e.g. an EnMAP band empty in a tile) those band-pixels are left out too: of the loss and its
``norm_pix`` statistics, of a token's valid share (which then counts band-pixels, the same
share for "mostly nodata" and for the loss's ``min_valid_fraction``) and of the semantic
score; the encoder still sees them as the loader's 0. The loss is computed in float32
whatever the prediction's dtype (bf16 under autocast).

Deviation from METHODS.md (deliberate): its step 4 samples the reconstruction set "in
proportion to the score"; here it is drawn from softmax(z / target_temperature) of the
standardised score z (and the visible seeds likewise from softmax(z / temperature), where
METHODS.md says softmax(score)). Standardising makes the draw free of the score's scale and
offset, which differ between the score kinds, band counts and normalisations (proportional
sampling would change with an offset and never draw a score of 0), and leaves the
temperatures as the only knobs of how strongly high scores are preferred (see
:mod:`.token_selection`).

Learning rate: ``lr_multiplier`` = kept_mask_ratio / mask_ratio (0.25 / 0.85 = 0.294 for the
paper's recipe; the "kept/mask" CrossMAE convention the issue names), which the trainer
multiplies into the configured peak lr: ``base_lr * batch / 256`` with ``optim.scale_lr:
true``, ``base_lr`` itself with ``optim.scale_lr: false``. ``optim.scale_lr`` is only the
batch-size rule: with it false the kept/mask factor STILL applies (``base_lr: 1.5e-3`` runs at
a peak of 4.4e-4); only ``objective.params.scale_lr_by_kept: false`` turns it off.

Only plain and spectral tokenizers (one token per cell): grouped tokenizers would need a
per-group score and per-group pixel heads on a token subset, which is not implemented.

Loss-aware sample pruning (InfoBatch; OFF by default, ``prune_low_loss_ratio: 0.0``): the
released code silently drops half of the low-loss samples each epoch; here it is an explicit
opt-in, and every speed claim is measured without it. With ``prune_low_loss_ratio: r`` in
(0, 1) the objective records each sample's loss (the mean error of its scored tokens) under
its key (the loader's ``__key__``, passed to ``forward`` as ``keys`` by ``batch_inputs``);
a sample whose recorded loss is below the record's mean is dropped from the batch with
probability r BEFORE it is embedded and encoded, the kept low-loss samples' losses are scaled
by 1 / (1 - r), and the batch loss is the sum of the weighted per-sample losses over the
number of samples of the batch before pruning that can be scored: InfoBatch's estimator over
B, except that a sample without a single token of at least ``min_valid_fraction`` valid
pixels scores nothing and is no unit (as in the off path's token mean), so the count is B
unless the batch holds such samples (a kept sample counts when it scored a token, a pruned
one when it holds such a token; a batch where none can gives loss 0 over count 0). Unseen
samples and those at or above the mean are always kept, and the last
``prune_anneal_fraction`` (0.125) of the run is not pruned. At least one sample always runs:
when the draw would drop every sample of a (micro-)batch, the one with the largest draw runs
with weight 1 (not 1 / (1 - r): the draw did not keep it). The estimator's expectation is
exactly the unpruned mean of the scored samples' losses whenever the batch holds a sample
that is not low-loss; when all B are low-loss it is (1 + r^B / B) times
that mean (+12.5% at B = 2 and r = 0.5, +1.6% at B = 4, under 0.1% from B = 8 on: it matters
only for small per-process micro-batches; :func:`~.loss_pruning.prune_low_loss`).
The draw uses a CPU generator seeded from the step generator's seed, so it is reproducible and
leaves the token selection's draws unchanged. Only in training mode. ``forward`` then also
returns ``pruned`` (count), ``kept`` (batch indices that ran) and ``sample_loss``. The record
(:class:`~.loss_pruning.LossRecord`) is one float per distinct key (~100-200 bytes with the
key: ~0.2 GB per million samples), per process, and checkpointed per rank through the
``client_state``/``load_client_state`` hooks, so a resumed run prunes as an uninterrupted one
(a checkpoint without it, e.g. from before pruning was turned on, starts an empty record that
refills within an epoch; with pruning off nothing is carried). With pruning on, the batch
loss is the mean of per-sample means, which equals the off path's token-weighted mean whenever
every sample scores as many tokens (no nodata) and nothing is pruned; with it off the loss is
exactly the token-weighted mean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eofm.models.decoders import CrossAttentionDecoder
from eofm.models.tokenizers import gather_patches, patchify, unpatchify
from eofm.models.vit import ViTEncoder

from ..data import band_valid_input
from ..encoders import run_encoder
from .base import PARAM_PREFIX, configured_params, register_objective, typed_fields
from .loss_pruning import LossRecord, prune_low_loss, validate_pruning
from .mae import (
    band_validity,
    finite_input,
    masked_patch_loss,
    min_valid_fraction_problem,
    patch_mean_var,
)
from .token_selection import (
    SCORE_INPUTS,
    SCORE_KINDS,
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

__all__ = ["DEFAULTS", "SelectiveMAE", "build_selectivemae", "selectivemae_param_problems"]

DEFAULTS: dict[str, Any] = {
    "kept_mask_ratio": 0.25,  # share of ALL tokens reconstructed (CrossMAE), <= mask_ratio
    "temperature": 1.0,  # softmax temperature of the visible seeds over standardised scores
    "target_temperature": 1.0,  # the same for the reconstruction targets (not proportional)
    "stage_fractions": [0.25, 0.5, 0.75],  # similar | blend | complementary | random
    "growth_steps": 3,  # steps that grow the visible set from its seeds
    "score": "energy",  # "energy" (gradient magnitude) | "orientation" (HOG departure)
    "score_input": "bands",  # "bands" (all bands) | "luminance" (the band mean)
    "cell_size": None,  # HOG cell in pixels (divides the patch); null = patch_size // 2
    "bins": 9,  # HOG orientation bins
    "min_valid_fraction": 0.5,  # in (0, 1]: tokens with a smaller valid share are never targets
    "decoder_self_attn": False,  # CrossMAE self-attention among the queries
    "scale_lr_by_kept": True,  # lr_multiplier = kept/mask, also with optim.scale_lr false
    "prune_low_loss_ratio": 0.0,  # InfoBatch-style sample pruning, [0, 1); 0 = off (default)
    "prune_anneal_fraction": 0.125,  # final share of the run without pruning (when it is on)
}

log = logging.getLogger(__name__)

PRUNE_SEED_SALT = 0x1F0BA7C4  # mixes the step seed into the pruning draw's own CPU generator


def _number(value: Any) -> bool:
    """Whether ``value`` is a number (an int or a float; ``True`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _raised(check: Callable[[], object], prefix: str) -> list[str]:
    """The ValueError ``check()`` raises (its message starts with the setting's name) as a
    problem named ``prefix`` + that name; none when it returns."""
    try:
        check()
    except ValueError as e:
        return [f"{prefix}{e}"]
    return []


def selectivemae_param_problems(params: Mapping[str, Any], *, mask_ratio: float | None = None,
                                patch_size: int | None = None, prefix: str = "") -> list[str]:
    """The problems of SelectiveMAE's settings in ``params`` (those given), each named
    ``prefix`` + the parameter: ``score``/``score_input`` among their choices, positive
    temperatures, ``growth_steps`` >= 1, ``kept_mask_ratio`` in (0, ``mask_ratio``] (given
    a ``mask_ratio`` in (0, 1)), ``stage_fractions`` three fractions in order, ``bins`` >= 2,
    ``cell_size`` null or a positive divisor of ``patch_size`` (when given), a
    ``min_valid_fraction`` in (0, 1], the pruning ratio in [0, 1) and anneal share in [0, 1].
    What :class:`SelectiveMAE` refuses, and the configuration when it loads (``prefix``
    ``objective.params.``); the token budgets at a grid size are :func:`selection_budgets`'s."""
    p: list[str] = []
    for key, options in (("score", SCORE_KINDS), ("score_input", SCORE_INPUTS)):
        if key in params and params[key] not in options:
            p.append(f"{prefix}{key}: expected one of {options}, got {params[key]!r}")
    for key in ("temperature", "target_temperature"):
        if key in params and not (_number(params[key]) and params[key] > 0):
            p.append(f"{prefix}{key}: expected a positive value, got {params[key]!r}")
    if "growth_steps" in params and not (_number(params["growth_steps"])
                                         and int(params["growth_steps"]) >= 1):
        p.append(f"{prefix}growth_steps: expected a positive int, got {params['growth_steps']!r}")
    kept = params.get("kept_mask_ratio")
    if "kept_mask_ratio" in params and mask_ratio is not None and 0.0 < mask_ratio < 1.0 \
            and not (_number(kept) and 0.0 < kept <= mask_ratio):
        p.append(f"{prefix}kept_mask_ratio: expected a value in (0, mask_ratio={mask_ratio}], "
                 f"got {kept!r}")
    if "stage_fractions" in params:
        b = params["stage_fractions"]
        if isinstance(b, (list, tuple)) and all(_number(v) for v in b):
            p += _raised(lambda: SelectionSchedule(tuple(b)), prefix)  # type: ignore[arg-type]
        else:
            p.append(f"{prefix}stage_fractions: expected three fractions 0 <= b1 <= b2 <= b3 <= 1 "
                     f"(similar | blend | complementary | random), got {b!r}")
    if "bins" in params and not (_number(params["bins"]) and int(params["bins"]) >= 2):
        p.append(f"{prefix}bins: expected at least 2 orientation bins, got {params['bins']!r}")
    cell = params.get("cell_size")
    if cell is not None:
        whole = _number(cell) and cell == int(cell) and cell >= 1
        if not whole or (patch_size is not None and patch_size % int(cell)):
            divisor = f"patch_size={patch_size}" if patch_size is not None else "the patch size"
            p.append(f"{prefix}cell_size: expected null or a positive divisor of {divisor}, "
                     f"got {cell!r}")
    if "min_valid_fraction" in params and (why := min_valid_fraction_problem(
            params["min_valid_fraction"], f"{prefix}min_valid_fraction")) is not None:
        p.append(why)
    ratio, anneal = (params.get("prune_low_loss_ratio", 0.0),
                     params.get("prune_anneal_fraction", 0.125))
    if _number(ratio) and _number(anneal):
        p += _raised(lambda: validate_pruning(ratio, anneal), prefix)
    else:
        p.append(f"{prefix}prune_low_loss_ratio, {prefix}prune_anneal_fraction: expected "
                 f"numbers, got {ratio!r}, {anneal!r}")
    return p


class SelectiveMAE(nn.Module):
    """SelectiveMAE around a :class:`ViTEncoder`; ``forward`` returns ``{"loss": ...}``."""

    def __init__(self, encoder: ViTEncoder, bands: Sequence[str], *, mask_ratio: float = 0.85,
                 kept_mask_ratio: float = 0.25, decoder_dim: int = 512, decoder_depth: int = 12,
                 decoder_heads: int = 16, norm_pix_loss: bool = True, temperature: float = 1.0,
                 target_temperature: float = 1.0,
                 stage_fractions: Sequence[float] = (0.25, 0.5, 0.75), growth_steps: int = 3,
                 score: str = "energy", score_input: str = "bands", cell_size: int | None = None,
                 bins: int = 9, min_valid_fraction: float = 0.5, decoder_self_attn: bool = False,
                 scale_lr_by_kept: bool = True, prune_low_loss_ratio: float = 0.0,
                 prune_anneal_fraction: float = 0.125) -> None:
        super().__init__()
        if encoder.num_groups != 1:
            raise ValueError("model.tokenizer: selectivemae supports 'plain' and 'spectral' "
                             f"tokenizers (one token per cell), got {encoder.num_groups} groups")
        tok = encoder.tokenizer
        if tok.bands is not None and list(tok.bands) != list(bands):
            raise ValueError(f"bands: the encoder's tokenizer expects {list(tok.bands)}, "
                             f"the objective was given {list(bands)}")
        problems = selectivemae_param_problems(
            {"kept_mask_ratio": kept_mask_ratio, "temperature": temperature,
             "target_temperature": target_temperature, "stage_fractions": stage_fractions,
             "growth_steps": growth_steps, "score": score, "score_input": score_input,
             "cell_size": cell_size, "bins": bins, "min_valid_fraction": min_valid_fraction,
             "prune_low_loss_ratio": prune_low_loss_ratio,
             "prune_anneal_fraction": prune_anneal_fraction},
            mask_ratio=mask_ratio, patch_size=encoder.patch_size)
        if problems:
            raise ValueError("; ".join(problems))
        self.encoder, self.bands = encoder, list(bands)
        self.mask_ratio, self.kept_mask_ratio = float(mask_ratio), float(kept_mask_ratio)
        self.num_visible, self.num_targets = selection_budgets(encoder.num_tokens, mask_ratio,
                                                               kept_mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.min_valid_fraction = float(min_valid_fraction)
        self.temperature, self.target_temperature = float(temperature), float(target_temperature)
        self.schedule = SelectionSchedule(tuple(stage_fractions))  # type: ignore[arg-type]
        self.growth_steps = int(growth_steps)
        self.score_kind, self.luminance = score, score_input == "luminance"
        self.cell_size, self.bins = cell_size, int(bins)
        self.lr_multiplier = kept_mask_ratio / mask_ratio if scale_lr_by_kept else 1.0
        self.progress = 0.0  # step / total, set by on_step_start
        self._score_fn: Callable[..., Tensor] = semantic_score  # compiled by compile_extras
        self.prune_ratio, self.prune_anneal_fraction = validate_pruning(prune_low_loss_ratio,
                                                                        prune_anneal_fraction)
        self.loss_record = LossRecord()  # filled only when pruning is on; see client_state
        p = encoder.patch_size
        self.decoder = CrossAttentionDecoder.from_encoder(
            encoder, decoder_dim=decoder_dim, depth=decoder_depth, num_heads=decoder_heads,
            out_dim=len(self.bands) * p * p, self_attn=decoder_self_attn)

    def on_step_start(self, step: int, total: int) -> None:
        """Trainer hook: the schedule's position in the run."""
        self.progress = SelectionSchedule.progress(step, total)

    @property
    def pruning_enabled(self) -> bool:
        """Whether loss-aware sample pruning is configured (``prune_low_loss_ratio > 0``)."""
        return self.prune_ratio > 0.0

    @property
    def pruning_active(self) -> bool:
        """Whether this step may prune: enabled, training, and before the anneal phase."""
        return (self.pruning_enabled and self.training
                and self.progress < 1.0 - self.prune_anneal_fraction)

    def client_state(self) -> dict[str, Any]:
        """Trainer hook: this process's loss record when pruning is on (plain data); else {}."""
        return {"loss_record": self.loss_record.state_dict()} if self.pruning_enabled else {}

    def load_client_state(self, state: dict[str, Any]) -> None:
        """Trainer hook: restore what :meth:`client_state` returned. A record saved while
        pruning was on is ignored when it is now off; none saved leaves the record empty."""
        unknown = sorted(set(state) - {"loss_record"})
        if unknown:
            raise ValueError(f"objective state: selectivemae expected at most 'loss_record', "
                             f"got unknown key(s) {unknown}")
        record = state.get("loss_record")
        if not self.pruning_enabled:
            return
        if record is None:
            log.warning("selectivemae: the checkpoint holds no loss record (pruning was off "
                        "when it was written); the record starts empty")
            self.loss_record.clear()
            return
        self.loss_record.load_state_dict(record)

    def batch_inputs(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Trainer hook: the sample keys (``keys``) when pruning is on, and ``band_valid``,
        the loader's per-band validity, when the batch has one
        (:func:`~eofm.pretrain.data.band_valid_input`); nothing otherwise."""
        out = band_valid_input(batch)
        if self.pruning_enabled:
            out["keys"] = list(batch["__key__"])
        return out

    def _can_score(self, x: Tensor, valid: Tensor | None,
                   band_valid: Tensor | None = None) -> Tensor:
        """(B,) bool: the samples of x (B, C, H, W) holding a token of at least
        ``min_valid_fraction`` valid pixels (``valid`` (B, H, W); band-pixels with
        ``band_valid``); every sample when both are None. Such a token is drawn as a target
        before any mostly-nodata one, so a sample scores when it runs exactly when it holds one
        (given a drawn selection)."""
        B, _, H, W = x.shape
        grid = self.encoder.tokenizer.grid_size((H, W))
        return token_validity(valid, self.encoder.patch_size, B, grid, self.min_valid_fraction,
                              x.device, band_valid).any(1)

    @staticmethod
    def _not_in(kept: Tensor, size: int) -> Tensor:
        """(size,) bool: True at the indices not in ``kept`` (the pruned samples)."""
        return torch.ones(size, dtype=torch.bool, device=kept.device).index_fill_(0, kept, False)

    def _prune(self, keys: Sequence[str], generator: torch.Generator | None, device: torch.device
               ) -> tuple[Tensor, Tensor, Tensor]:
        """(kept indices (K,), weights (K,), pruned count) on ``device`` for this batch."""
        B = len(keys)
        if self.pruning_active:
            cpu_gen = None
            if generator is not None:
                cpu_gen = torch.Generator().manual_seed(
                    (generator.initial_seed() ^ PRUNE_SEED_SALT) % 2**63)
            decision = prune_low_loss(self.loss_record.lookup(keys), self.loss_record.mean,
                                      self.prune_ratio, cpu_gen)
            pruned, weight = decision.pruned, decision.weight
        else:
            pruned = torch.zeros(B, dtype=torch.bool)
            weight = torch.ones(B, dtype=torch.float64)
        kept = (~pruned).nonzero().flatten()
        weights = weight[kept].float()  # float32, as the per-sample losses are
        return (kept.to(device), weights.to(device),
                torch.tensor(int(pruned.sum()), device=device))

    @property
    def stage(self) -> str:
        """The current PSTS stage."""
        return self.schedule.stage(self.progress)

    def compile_extras(self, backend: str = "inductor") -> None:
        """Trainer hook (``runtime.compile``): compile the semantic score, a chain of
        full-resolution elementwise passes that fuses into a few kernels (~4x faster on CPU),
        with ``runtime.compile_backend``."""
        self._score_fn = torch.compile(semantic_score, dynamic=False, backend=backend)

    def score(self, x: Tensor, valid: Tensor | None = None,
              band_valid: Tensor | None = None) -> Tensor:
        """HOG-style semantic score per token (B, N) of the normalised batch x (B, C, H, W)
        (``band_valid``: per band-pixel validity, see :func:`~.token_selection.semantic_score`)."""
        with torch.no_grad():
            return self._score_fn(x, self.encoder.patch_size, kind=self.score_kind,
                                  cell_size=self.cell_size, bins=self.bins, valid=valid,
                                  luminance=self.luminance, band_valid=band_valid)

    @torch.no_grad()
    def select(self, x: Tensor, valid: Tensor | None = None,
               generator: torch.Generator | None = None, *, embeddings: Tensor | None = None,
               band_valid: Tensor | None = None,
               **tokenizer_kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(ids_keep (B, V), ids_target (B, T), usable (B, N) bool) for one batch.

        ``embeddings``: the encoder's patch + position embeddings of ``x`` (B, N, D) when the
        caller has them (``forward`` embeds once); otherwise they are computed here (a
        non-finite value at an invalid pixel embedded as 0: :func:`~.mae.finite_input`). Values
        at invalid pixels never enter the score. ``band_valid`` (B, C, H, W) bool: usable
        tokens and the score by band-pixel (:func:`~.mae.band_validity`).
        """
        band_valid = band_validity(valid, band_valid, x)
        B, _, H, W = x.shape
        enc = self.encoder
        grid = enc.tokenizer.grid_size((H, W))
        n = grid[0] * grid[1]
        visible, targets = ((self.num_visible, self.num_targets) if n == enc.num_tokens else
                            selection_budgets(n, self.mask_ratio, self.kept_mask_ratio))
        usable = token_validity(valid, enc.patch_size, B, grid, self.min_valid_fraction, x.device,
                                band_valid)
        score = self.score(x, valid, band_valid)
        if embeddings is None and self.stage != "random":
            embeddings = enc.embed(finite_input(x, valid, band_valid), **tokenizer_kwargs)
        ids_keep = select_visible(sampling_logits(score, usable, self.temperature), embeddings,
                                  visible, progress=self.progress, schedule=self.schedule,
                                  growth_steps=self.growth_steps, usable=usable,
                                  generator=generator)
        ids_target = select_targets(sampling_logits(score, usable, self.target_temperature),
                                    ids_keep, targets, generator)
        return ids_keep, ids_target, usable

    @property
    def loader_size(self) -> tuple[int, int]:
        """The (H, W) every sample must have when the loader ships it: the encoder's
        ``img_size`` (the scores and selections are made over its grid)."""
        h, w = self.encoder.img_size
        return h, w

    def forward(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None,
                selection: tuple[Tensor, Tensor] | None = None,
                keys: Sequence[str] | None = None, band_valid: Tensor | None = None,
                **tokenizer_kwargs: Any) -> dict[str, Tensor]:
        """x: (B, C, H, W) normalised, bands in ``self.bands`` order; valid: (B, H, W) bool;
        band_valid: None or (B, C, H, W) bool, False where a band is nodata at a valid pixel
        (the loader's, through :meth:`batch_inputs`): those band-pixels count as invalid in the
        loss, the token shares and the score (bit for bit the per-pixel run when it is True
        wherever ``valid`` is).

        Token sets are drawn with ``generator`` or given as ``selection`` = (ids_keep,
        ids_target). ``tokenizer_kwargs`` (e.g. ``wavelengths``) go to the encoder. The input is
        embedded once: the selection reads the embeddings without gradient, and only the
        visible tokens run the encoder blocks. ``keys`` (one per sample) are needed only with
        loss-aware pruning on (see the module docstring); ``selection`` then covers the whole
        batch before pruning.
        Values at invalid pixels never count, NaN included (a non-finite one is read as 0:
        :func:`~.mae.finite_input`).

        Returns ``loss`` with ``loss_sum`` (with gradient) and ``loss_count`` (detached) that
        ``optim.loss_norm=step`` normalises over the whole optimiser step: the summed error of
        the scored tokens and their number; with pruning on, the summed weighted per-sample
        losses and the number of samples of the batch before pruning that can be scored
        (``loss`` = ``loss_sum / max(loss_count, 1)``; 0 with count 0 when none can).
        """
        C = x.shape[1]
        if len(self.bands) != C:
            raise ValueError(f"x: expected {len(self.bands)} bands {self.bands}, got {C}")
        band_valid = band_validity(valid, band_valid, x)
        if self.pruning_enabled:
            return self._forward_pruned(x, valid, generator, selection, keys,
                                        band_valid=band_valid, **tokenizer_kwargs)
        pred, target, pixel_valid, ids_keep, ids_target = self._reconstruct(
            x, valid, generator, selection, band_valid=band_valid, **tokenizer_kwargs)
        total, count = masked_patch_loss(pred, target, torch.ones_like(ids_target), pixel_valid,
                                         self.norm_pix_loss, self.min_valid_fraction)
        loss = total / count.clamp(min=1)
        return {"loss": loss, "loss_sum": total, "loss_count": count.detach(),
                "scored_tokens": count.detach(), "ids_keep": ids_keep, "ids_target": ids_target}

    def reconstruct(self, x: Tensor, valid: Tensor | None = None, *,
                    generator: torch.Generator | None = None,
                    band_valid: Tensor | None = None, **tokenizer_kwargs: Any
                    ) -> dict[str, Tensor]:
        """For pictures (see ``objectives/base.py``): the prediction on the reconstruction set,
        the input on the visible tokens, and 0 (the normalised mean) on masked tokens outside
        the reconstruction set, which SelectiveMAE never predicts."""
        _, C, H, W = x.shape
        pred, target, pixel_valid, ids_keep, ids_target = self._reconstruct(
            x, valid, generator, None, band_valid=band_validity(valid, band_valid, x),
            **tokenizer_kwargs)
        if self.norm_pix_loss:
            mean, var = patch_mean_var(target, pixel_valid)
            pred = pred * (var + 1e-6).sqrt() + mean
        p = self.encoder.patch_size
        grid = (H // p, W // p)
        patches = patchify(x, p)
        seen = torch.zeros(patches.shape[:2], dtype=torch.bool, device=x.device)
        seen.scatter_(1, ids_keep, True)
        out = torch.where(seen[..., None], patches, torch.zeros_like(patches))
        out = out.scatter(1, ids_target[..., None].expand_as(pred), pred.to(out.dtype))
        hidden = unpatchify((~seen)[..., None].expand_as(patches).float(), p, grid, C).bool()
        chosen = torch.zeros_like(seen).scatter(1, ids_target, True)
        predicted = unpatchify(chosen[..., None].expand_as(patches).float(), p, grid, C).bool()
        v = (torch.ones(x.shape[0], H, W, dtype=torch.bool, device=x.device) if valid is None
             else valid.bool())
        return {"input": x, "valid": v, "masked": hidden, "predicted": predicted,
                "reconstruction": unpatchify(out, p, grid, C)}

    def _reconstruct(self, x: Tensor, valid: Tensor | None, generator: torch.Generator | None,
                     selection: tuple[Tensor, Tensor] | None, *,
                     band_valid: Tensor | None = None, **tokenizer_kwargs: Any
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(pred, target, pixel_valid, ids_keep, ids_target): embed, select, encode, decode.
        A non-finite value at an invalid pixel is read as 0 (:func:`~.mae.finite_input`).
        ``band_valid``: :func:`~.mae.band_validity`'s (already and-ed with ``valid``);
        ``pixel_valid`` is then per band-pixel of the targets."""
        B, C, H, W = x.shape
        x = finite_input(x, valid, band_valid)
        tokens = self.encoder.embed(x, **tokenizer_kwargs)  # (B, N, D), patch + position
        if selection is None:
            ids_keep, ids_target, _ = self.select(x, valid, generator,
                                                  embeddings=tokens.detach(),
                                                  band_valid=band_valid)
        else:
            ids_keep, ids_target = selection
        latent = self.encoder.forward_tokens(tokens, ids_keep)
        grid = self.encoder.tokenizer.grid_size((H, W))
        pred = self.decoder(latent, ids_target,
                            grid=None if grid == self.decoder.grid else grid)
        p = self.encoder.patch_size
        target = gather_patches(x, p, ids_target)  # only the reconstruction set is copied
        if band_valid is not None:  # per band-pixel, in the targets' layout (channel fastest)
            pixel_valid = gather_patches(band_valid, p, ids_target).to(x.dtype)
        elif valid is None:
            pixel_valid = torch.ones_like(target)
        else:  # one channel gathered, then repeated over the bands (channel fastest)
            k = ids_target.shape[1]
            pixel_valid = gather_patches(valid[:, None].to(x.dtype), p, ids_target)
            pixel_valid = pixel_valid[..., None].expand(B, k, p * p, C).reshape(B, k, p * p * C)
        return pred, target, pixel_valid, ids_keep, ids_target

    def _forward_pruned(self, x: Tensor, valid: Tensor | None,
                        generator: torch.Generator | None,
                        selection: tuple[Tensor, Tensor] | None, keys: Sequence[str] | None,
                        *, band_valid: Tensor | None = None,
                        **tokenizer_kwargs: Any) -> dict[str, Tensor]:
        """``forward`` with loss-aware pruning configured: drop samples, then the same steps on
        the kept ones, per-sample losses, InfoBatch weighting, and the record's update."""
        B = x.shape[0]
        if keys is None or len(keys) != B:
            raise ValueError(f"keys: prune_low_loss_ratio={self.prune_ratio} needs one sample "
                             f"key per sample (the loader's __key__, passed by batch_inputs); "
                             f"got {None if keys is None else len(keys)} for a batch of {B}")
        kept, weights, pruned = self._prune(keys, generator, x.device)
        pruned_units = (self._can_score(x, valid, band_valid) & self._not_in(kept, B)).sum()
        if len(kept) < B:
            x = x[kept]
            valid = None if valid is None else valid[kept]
            band_valid = None if band_valid is None else band_valid[kept]
            if selection is not None:
                selection = (selection[0][kept], selection[1][kept])
            gsd = tokenizer_kwargs.get("gsd")
            if isinstance(gsd, Tensor) and gsd.ndim > 0:  # per-sample (B,) ground sample distance
                tokenizer_kwargs = {**tokenizer_kwargs, "gsd": gsd[kept]}
        pred, target, pixel_valid, ids_keep, ids_target = self._reconstruct(
            x, valid, generator, selection, band_valid=band_valid, **tokenizer_kwargs)
        per_sample = torch.func.vmap(partial(masked_patch_loss, norm_pix=self.norm_pix_loss,
                                             min_valid_fraction=self.min_valid_fraction))
        total, count = per_sample(pred, target, torch.ones_like(ids_target), pixel_valid)
        sample_loss = total / count.clamp(min=1)
        weighted = (weights.to(sample_loss.dtype) * sample_loss).sum()
        # the units: the samples of the batch before pruning (InfoBatch's estimator) that can
        # be scored; a sample without a scored token adds 0 and is no unit (as in the off
        # path's token mean), so it must not dilute the others' loss and gradient
        units = ((count > 0).sum() + pruned_units).to(weighted.dtype)
        loss = weighted / units.clamp(min=1)
        if self.training:
            scored = (count > 0).tolist()  # samples with no scored token say nothing
            kept_keys = [keys[i] for i in kept.tolist()]
            self.loss_record.update([k for k, s in zip(kept_keys, scored, strict=True) if s],
                                    [v for v, s in zip(sample_loss.detach().tolist(), scored,
                                                       strict=True) if s])
        return {"loss": loss, "loss_sum": weighted, "loss_count": units.detach(),
                "scored_tokens": count.sum().detach(), "ids_keep": ids_keep,
                "ids_target": ids_target, "pruned": pruned, "kept": kept,
                "sample_loss": sample_loss.detach()}

    def train_flops_per_sample(self) -> float:
        """6 x parameters x tokens they see: encoder on prefix + V, decoder on T queries (its
        per-block key/value projections on prefix + V, a small term, folded in)."""
        enc, dec = self.encoder, self.decoder
        n_enc = sum(q.numel() for q in enc.parameters())
        n_dec = sum(q.numel() for q in dec.parameters())
        return 6.0 * (n_enc * (self.num_visible + enc.num_prefix_tokens)
                      + n_dec * self.num_targets)


def check_selectivemae_params(params: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The problems of selectivemae's ``objective.params`` values
    (:func:`selectivemae_param_problems` against ``objective.mask_ratio`` and the registered
    model's patch size) and, where the model's token grid is known without building it (a
    registered patch size, an ``img_size`` that fits it, one token per cell), too few tokens
    for one visible and one reconstructed (:func:`selection_budgets`)."""
    from eofm.models.registry import img_size_problem, model_patch_size

    m = cfg.model
    patch = model_patch_size(m.name)
    problems = selectivemae_param_problems(params, mask_ratio=cfg.objective.mask_ratio,
                                           patch_size=patch, prefix=PARAM_PREFIX)
    img, ratio = m.overrides.get("img_size", m.img_size), cfg.objective.mask_ratio
    if (problems or patch is None or m.tokenizer == "grouped" or not 0.0 < ratio < 1.0
            or img_size_problem(m.name, img) is not None):
        return problems  # the grid is not known here (or the model's checks report it)
    h, w = (img, img) if isinstance(img, int) else img
    tokens = (h // patch) * (w // patch)
    why = _raised(lambda: selection_budgets(tokens, ratio, params["kept_mask_ratio"]), "")
    return [f"objective.mask_ratio, {PARAM_PREFIX}kept_mask_ratio: model.img_size {img} at "
            f"patch size {patch} gives {e.split(': ', 1)[-1]}" for e in why]


@register_objective("selectivemae", DEFAULTS, check=check_selectivemae_params,
                    fields=typed_fields())
def build_selectivemae(cfg: TrainConfig, info: BandInfo) -> SelectiveMAE:
    """SelectiveMAE around the configured encoder; ``objective.params`` as :data:`DEFAULTS`."""
    m, o = cfg.model, cfg.objective
    params = configured_params(cfg)
    encoder = run_encoder(m, info)
    return SelectiveMAE(encoder, info.bands, mask_ratio=o.mask_ratio,
                        decoder_dim=o.decoder_dim, decoder_depth=o.decoder_depth,
                        decoder_heads=o.decoder_heads, norm_pix_loss=o.norm_pix_loss, **params)
