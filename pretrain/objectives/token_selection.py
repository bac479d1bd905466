"""SelectiveMAE's token selection: budgets, a HOG-style semantic score and the PSTS schedule.

Everything here is batched tensor work on the input's device, with no Python loop over samples
or tokens (the visible set grows in a handful of steps, a loop of ``growth_steps`` iterations).

- :func:`selection_budgets`: visible and reconstructed token counts from ``mask_ratio`` and
  ``kept_mask_ratio`` (both floored, as MAE's ``int(N * (1 - mask_ratio))``).
- :func:`semantic_score`: per-patch HOG-style score (Sobel gradients over every band or a
  luminance proxy, 9 unsigned orientation bins, cells inside each patch), for any patch size,
  grid and band count. Unlike the released code (which standardises each patch descriptor and
  then averages it, so every score is ~0), the score is the patch's gradient energy or its
  histograms' departure from uniform, which differ between flat and textured patches.
- :class:`SelectionSchedule`: the Progressive Semantic Token Selection stages
  (similar -> blend -> complementary -> random) with boundaries as fractions of the run.
- :func:`sampling_logits`: the score standardised per sample over its usable tokens
  (z = (score - mean) / std), divided by a temperature.
- :func:`select_visible` / :func:`select_targets`: the visible set (half sampled from
  softmax(z / temperature), the rest grown by embedding similarity) and the reconstruction set
  (masked tokens sampled without replacement from softmax(z / target_temperature), Gumbel
  top-k); every sample draws its own order from the step's generator; tokens that are mostly
  nodata are chosen only when nothing else is left.

Per-band nodata (``band_valid`` (B, C, H, W) bool, the loader's validity of each band-pixel,
False where one band is nodata at an otherwise valid pixel, e.g. an EnMAP band empty in a
tile): a token's valid share (:func:`token_validity`) counts its valid band-pixels, as the loss
does (:func:`~.mae.masked_patch_loss`), and the score reads each band only where it holds data
(:func:`semantic_score`). With every band valid wherever the pixel is, both are bit for bit the
per-pixel ones.

Sampling is from a softmax of the standardised score, not in proportion to the raw score (as
the design's METHODS.md, SelectiveMAE step 4, words it: a deliberate deviation, recorded in
:mod:`.selectivemae`): the draw probabilities then do not depend on the score's scale or offset
(its units differ between ``energy`` and ``orientation``, band counts and normalisations; a
score times 10 or plus 100 draws the same), a score of 0 (a flat token) keeps a nonzero chance,
and the temperature alone sets how strongly the draw prefers high scores. At temperature 1, a
sample of four usable tokens scoring 1, 2, 3, 4 draws its first token with probabilities 0.04,
0.10, 0.25, 0.61 (in proportion to the score: 0.1, 0.2, 0.3, 0.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .mae import check_min_valid_fraction, zero_invalid

__all__ = ["NODATA_PENALTY", "SCORE_INPUTS", "SCORE_KINDS", "STAGES", "SelectionSchedule",
           "band_contributing", "band_pixel_counts", "contributing_pixels", "gumbel_topk",
           "hog_histograms", "sampling_logits", "select_targets", "select_visible",
           "selection_budgets", "semantic_score", "token_validity"]

SCORE_KINDS = ("energy", "orientation")
SCORE_INPUTS = ("bands", "luminance")
STAGES = ("similar", "blend", "complementary", "random")
NODATA_PENALTY = 1.0e4  # subtracted from a mostly-nodata token's sampling key (finite, so a
#                         sample with too few valid tokens still fills its fixed budget)


def selection_budgets(num_tokens: int, mask_ratio: float, kept_mask_ratio: float
                      ) -> tuple[int, int]:
    """(visible, reconstructed) token counts for a sequence of ``num_tokens``.

    Rounding rule: visible = floor(N * (1 - mask_ratio)), reconstructed = floor(N *
    kept_mask_ratio) (CrossMAE: ``kept_mask_ratio`` is a share of ALL tokens, at most
    ``mask_ratio``), each with a 1e-6 guard against float error. 196 tokens at 0.85 / 0.25
    give 29 and 49; the other 118 are neither encoded nor decoded.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio: expected a value in (0, 1), got {mask_ratio}")
    if not 0.0 < kept_mask_ratio <= mask_ratio:
        raise ValueError(f"kept_mask_ratio: expected a value in (0, mask_ratio={mask_ratio}], "
                         f"got {kept_mask_ratio}")
    visible = int(num_tokens * (1.0 - mask_ratio) + 1e-6)
    targets = min(int(num_tokens * kept_mask_ratio + 1e-6), num_tokens - visible)
    if visible < 1 or targets < 1:
        raise ValueError(f"mask_ratio/kept_mask_ratio: {num_tokens} tokens at mask_ratio="
                         f"{mask_ratio}, kept_mask_ratio={kept_mask_ratio} leave {visible} "
                         f"visible and {targets} reconstructed; both must be at least 1")
    return visible, targets


def token_validity(valid: Tensor | None, patch_size: int, batch: int, grid: tuple[int, int],
                   min_valid_fraction: float, device: torch.device,
                   band_valid: Tensor | None = None) -> Tensor:
    """(B, L) bool: the patch has at least ``min_valid_fraction`` (in (0, 1]) valid pixels;
    with ``band_valid`` (B, C, H, W) bool (already and-ed with ``valid``:
    :func:`~.mae.band_validity`), at least that share of valid band-pixels (pixel x band), the
    share :func:`~.mae.masked_patch_loss` scores a token by."""
    check_min_valid_fraction(min_valid_fraction)
    if band_valid is not None:
        C = band_valid.shape[1]
        counts = band_pixel_counts(band_valid, patch_size)
        share = counts.to(torch.float32) / float(C * patch_size * patch_size)
        return share >= min_valid_fraction - 1e-6
    if valid is None:
        return torch.ones(batch, grid[0] * grid[1], dtype=torch.bool, device=device)
    share = F.avg_pool2d(valid[:, None].float(), patch_size).flatten(1)
    return share >= min_valid_fraction - 1e-6


BAND_CHUNK = 16  # bands summed at a time by band_pixel_counts (bounds its int32 temporary)


def band_pixel_counts(mask: Tensor, patch_size: int) -> Tensor:
    """(B, L) int32: the True band-pixels of ``mask`` (B, C, H, W) bool in each patch (row
    order). Summed :data:`BAND_CHUNK` bands at a time, so no full-size int or float copy of
    the mask is made (a reduction of a bool tensor would make one, 4-8x the mask)."""
    B, C, H, W = mask.shape
    p = int(patch_size)
    u8 = mask.view(torch.uint8) if mask.dtype == torch.bool else mask.to(torch.uint8)
    per_pixel = torch.zeros(B, H, W, dtype=torch.int32, device=mask.device)
    for c in range(0, C, BAND_CHUNK):
        per_pixel += u8[:, c:c + BAND_CHUNK].sum(1, dtype=torch.int32)
    return per_pixel.reshape(B, H // p, p, W // p, p).sum((2, 4), dtype=torch.int32).flatten(1)


def _erode3(mask: Tensor) -> Tensor:
    """``mask`` (..., H, W) bool eroded by a 3x3 square, the window clipped at the image border
    (as :func:`contributing_pixels`), in bool (no float copy)."""
    rows = mask.clone()
    rows[..., 1:, :] &= mask[..., :-1, :]
    rows[..., :-1, :] &= mask[..., 1:, :]
    out = rows.clone()
    out[..., :, 1:] &= rows[..., :, :-1]
    out[..., :, :-1] &= rows[..., :, 1:]
    return out


def _dilate3(mask: Tensor) -> Tensor:
    """``mask`` (..., H, W) bool dilated by a 3x3 square, clipped at the border (bool)."""
    rows = mask.clone()
    rows[..., 1:, :] |= mask[..., :-1, :]
    rows[..., :-1, :] |= mask[..., 1:, :]
    out = rows.clone()
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out


def band_contributing(valid: Tensor | None, band_valid: Tensor, luminance: bool) -> Tensor:
    """Bool (B, C, H, W) (``luminance``: (B, 1, H, W)): where a Sobel gradient counts with
    per-band validity ``band_valid`` (B, C, H, W) (and-ed with ``valid`` (B, H, W) already).

    Per band (the ``bands`` score input): the band-pixels whose 3x3 neighbourhood holds data
    in that band (``band_valid`` eroded), as :func:`contributing_pixels` per pixel. Luminance
    (the band mean, which reads every band): the pixels whose neighbourhood is valid
    (``valid`` eroded) and where no band changes between data and nodata inside it, so a band
    empty over the whole neighbourhood (an empty band of the tile) does not silence it, but the
    rim of a band's nodata hole (a step made of nodata) does. Equal to
    :func:`contributing_pixels` wherever every band is valid exactly where the pixel is."""
    if not luminance:
        return _erode3(band_valid)
    pixel = band_valid.any(1) if valid is None else valid.bool()
    steady = (_erode3(band_valid) | ~_dilate3(band_valid)).all(1)
    return (_erode3(pixel) & steady)[:, None]


def _check_geometry(x: Tensor, patch_size: int, cell_size: int | None, bins: int) -> int:
    """Validate the HOG geometry; the cell size in pixels."""
    if x.ndim != 4:
        raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
    H, W, p = x.shape[-2], x.shape[-1], int(patch_size)
    if p < 1 or H % p or W % p:
        raise ValueError(f"patch_size: expected a positive divisor of the image size {(H, W)}, "
                         f"got {patch_size}")
    c = (p // 2 if p % 2 == 0 else p) if cell_size is None else int(cell_size)
    if c < 1 or p % c:
        raise ValueError(f"cell_size: expected a positive divisor of patch_size={p}, got {c}")
    if bins < 2:
        raise ValueError(f"bins: expected at least 2 orientation bins, got {bins}")
    return c


def _gradients(x: Tensor, valid: Tensor | None, luminance: bool,
               band_valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Sobel (gx, gy, magnitude), each (B, C', H, W) float32, C' = C or 1 (``luminance``);
    the magnitude is 0 at invalid pixels and at pixels touching one (whatever the invalid
    pixels hold, NaN included: :func:`_zero_invalid`). ``band_valid`` (B, C, H, W) bool: the
    same per band-pixel (:func:`band_contributing`)."""
    if band_valid is not None:
        x = torch.where(band_valid, x.float(), 0.0)
        gx, gy, mag = _gradients(x, None, luminance)
        return gx, gy, torch.where(band_contributing(valid, band_valid, luminance), mag, 0.0)
    x = _zero_invalid(x.float(), valid)
    if luminance:
        x = x.mean(1, keepdim=True)
    # Sobel as shifted differences (separable), in as few full-size passes as eager mode
    # allows: the step is memory-bound on GPU, so each avoided temporary counts
    q = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = q[..., :, 2:] - q[..., :, :-2]  # (B, C, H+2, W): [-1, 0, 1] along x
    gx = (dx[..., :-2, :] + dx[..., 2:, :]).add_(dx[..., 1:-1, :], alpha=2.0)  # [1, 2, 1] in y
    del dx
    dy = q[..., 2:, :] - q[..., :-2, :]  # (B, C, H, W+2)
    del q
    gy = (dy[..., :, :-2] + dy[..., :, 2:]).add_(dy[..., :, 1:-1], alpha=2.0)
    del dy
    mag = torch.hypot(gx, gy)
    if valid is not None:
        mag = mag * contributing_pixels(valid)
    return gx, gy, mag


def _zero_invalid(x: Tensor, valid: Tensor | None) -> Tensor:
    """x (B, C, H, W) with 0 at the pixels ``valid`` (B, H, W) flags invalid (none when it is
    None; :func:`~.mae.zero_invalid`), so a NaN there never reaches a gradient. A contributing
    pixel's gradient reads only valid pixels, so a finite input scores bit for bit as before."""
    return x if valid is None else zero_invalid(x, valid[:, None])


def contributing_pixels(valid: Tensor) -> Tensor:
    """(B, 1, H, W) float32 in {0, 1}: the pixels whose gradient counts, i.e. ``valid`` (B, H, W)
    eroded by a 3x3 square (a valid pixel that touches an invalid one has a Sobel gradient made
    partly of nodata, so it counts as much as an invalid one). The image border is not eroded
    (the gradients pad by replication there)."""
    return -F.max_pool2d(-valid[:, None].float(), 3, stride=1, padding=1)


def hog_histograms(x: Tensor, patch_size: int, *, cell_size: int | None = None, bins: int = 9,
                   valid: Tensor | None = None, luminance: bool = False,
                   band_valid: Tensor | None = None) -> Tensor:
    """Gradient-orientation histograms per cell: x (B, C, H, W) -> (B, L, cells, bins).

    Sobel gradients per band (replicate padding), unsigned orientation in [0, pi) split into
    ``bins`` bins, each pixel voting its gradient magnitude summed over bands (``luminance``:
    the band mean's gradient instead). Cells are ``cell_size`` squares (default patch_size // 2,
    or the whole patch when that is odd) tiling each patch; L = (H/p) * (W/p) in row order.
    Pixels that are invalid, or touch an invalid pixel, do not vote (``valid`` (B, H, W)),
    whatever the invalid pixels hold (NaN included); with ``band_valid`` (B, C, H, W) bool
    (and-ed with ``valid``), the same per band-pixel (:func:`band_contributing`).
    """
    c = _check_geometry(x, patch_size, cell_size, bins)
    B, _, H, W = x.shape
    p = int(patch_size)
    gx, gy, mag = _gradients(x, valid, luminance, band_valid)
    angle = torch.atan2(gy, gx).remainder(math.pi)  # unsigned, [0, pi)
    idx = (angle * (bins / math.pi)).long().clamp_(0, bins - 1)
    votes = mag.new_zeros(B, bins, H, W).scatter_add_(1, idx, mag)  # summed over bands
    cells = F.avg_pool2d(votes, c) * (c * c)  # (B, bins, H/c, W/c): magnitude per cell and bin
    gh, gw, pc = H // p, W // p, p // c
    cells = cells.reshape(B, bins, gh, pc, gw, pc).permute(0, 2, 4, 3, 5, 1)
    return cells.reshape(B, gh * gw, pc * pc, bins)


def semantic_score(x: Tensor, patch_size: int, *, kind: str = "energy",
                   cell_size: int | None = None, bins: int = 9, valid: Tensor | None = None,
                   luminance: bool = False, eps: float = 1e-6,
                   band_valid: Tensor | None = None) -> Tensor:
    """Per-patch semantic score (B, L) >= 0 from :func:`hog_histograms` (same arguments).

    ``energy``: the patch's total gradient magnitude per contributing pixel (flat ~ 0,
    texture and edges high). The contributing pixels are the valid ones that touch no invalid
    pixel (:func:`contributing_pixels`, the only ones whose gradient counts), so scattered
    nodata does not lower a patch's energy: a patch whose pixels all contribute scores the
    mean magnitude over its pixels (bit for bit the score without ``valid``), one with no
    contributing pixel scores 0. Values at invalid pixels never enter either score (NaN
    included). ``orientation``: the mean over cells of the L1 distance
    between the cell's normalised histogram and the uniform one, in [0, 2 (bins-1)/bins]
    (isotropic texture and exactly flat cells ~ 0, oriented structure high); each cell's
    histogram is normalised by its own votes, so no valid share enters it. It measures how
    oriented the gradients are, not how strong: a flat patch with one faint edge scores as
    high as a strong edge (``energy`` ranks by strength). ``eps`` per bin keeps empty cells
    uniform.

    ``band_valid`` (B, C, H, W) bool (the per-band validity, and-ed with ``valid``:
    :func:`~.mae.band_validity`): each band's gradient counts only where that band holds data
    around the pixel (:func:`band_contributing`; luminance: where no band changes between data
    and nodata around it), and ``energy`` is per contributing band-pixel (times C, so it is
    the per-pixel score when every band contributes wherever the pixel does: bit for bit the
    score with ``valid`` alone when every band is valid wherever the pixel is).
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind: expected one of {SCORE_KINDS}, got {kind!r}")
    if kind == "energy" and band_valid is not None:
        return _band_energy(x, patch_size, cell_size, bins, valid, band_valid, luminance)
    if kind == "energy":  # the histograms' total, without binning (same value, cheaper)
        _check_geometry(x, patch_size, cell_size, bins)
        B, _, H, W = x.shape
        p = int(patch_size)
        mag = _gradients(_zero_invalid(x.float(), valid), None, luminance)[2]
        if valid is not None:  # as _gradients(x, valid) without a second erosion pass
            contributing = contributing_pixels(valid)
            mag = mag * contributing
        # one reduction over bands and patch pixels:
        mean = mag.reshape(B, -1, H // p, p, W // p, p).sum((1, 3, 5)).flatten(1) / (p * p)
        if valid is None:
            return mean
        # per contributing pixel, not per valid one: a few scattered invalid pixels silence
        # up to 9x as many gradients, which a division by the valid share under-counted
        share = F.avg_pool2d(contributing, p).flatten(1)
        return mean / share.clamp(min=1.0 / p ** 2)
    hist = hog_histograms(x, patch_size, cell_size=cell_size, bins=bins, valid=valid,
                          luminance=luminance, band_valid=band_valid)
    h = hist + eps
    h = h / h.sum(-1, keepdim=True)
    return (h - 1.0 / bins).abs().sum(-1).mean(-1)


def _band_energy(x: Tensor, patch_size: int, cell_size: int | None, bins: int,
                 valid: Tensor | None, band_valid: Tensor, luminance: bool) -> Tensor:
    """:func:`semantic_score`'s ``energy`` with per-band validity: the contributing gradient
    magnitude summed over bands and the patch's pixels, over p*p times the share of the
    patch's contributing (band-)pixels (counted exactly, as integers)."""
    _check_geometry(x, patch_size, cell_size, bins)
    B, _, H, W = x.shape
    p = int(patch_size)
    contributing = band_contributing(valid, band_valid, luminance)  # once, for both uses
    mag = _gradients(torch.where(band_valid, x.float(), 0.0), None, luminance)[2]
    mag = torch.where(contributing, mag, 0.0)
    mean = mag.reshape(B, -1, H // p, p, W // p, p).sum((1, 3, 5)).flatten(1) / (p * p)
    if luminance:  # (B, 1, H, W): per contributing pixel, as the per-pixel score
        share = F.avg_pool2d(contributing.float(), p).flatten(1)
    else:  # per contributing band-pixel; an exact count over C * p * p is the per-pixel
        #     share whenever every band contributes where the pixel does
        share = band_pixel_counts(contributing, p).to(torch.float32) / float(
            contributing.shape[1] * p * p)
    return mean / share.clamp(min=1.0 / p ** 2)


def sampling_logits(score: Tensor, usable: Tensor, temperature: float) -> Tensor:
    """Logits of softmax sampling: the score standardised per sample over its usable tokens
    (so ``temperature`` is scale-free), divided by ``temperature``; unusable tokens get
    ``-NODATA_PENALTY``. score, usable: (B, N) -> (B, N) float32."""
    if temperature <= 0:
        raise ValueError(f"temperature: expected a positive value, got {temperature}")
    s, u = score.float(), usable.float()
    n = u.sum(1, keepdim=True).clamp(min=1.0)
    mean = (s * u).sum(1, keepdim=True) / n
    std = (((s - mean) ** 2) * u).sum(1, keepdim=True).div(n).sqrt()
    z = (s - mean) / (std + 1e-6)
    return torch.where(usable, z / temperature, torch.full_like(z, -NODATA_PENALTY))


def _uniform(shape: Sequence[int], generator: torch.Generator | None,
             device: torch.device) -> Tensor:
    """U(0, 1) on ``device`` drawn from ``generator`` (on its own device), strictly inside."""
    gdev = generator.device if generator is not None else device
    u = torch.rand(*shape, generator=generator, device=gdev).to(device)
    return u.clamp_(1e-12, 1.0 - 1e-7)


def gumbel_topk(logits: Tensor, k: int, generator: torch.Generator | None = None,
                exclude: Tensor | None = None) -> Tensor:
    """k indices per row sampled without replacement from softmax(logits) (Gumbel top-k).

    logits (B, N); ``exclude`` (B, N) bool are never drawn (needs k <= N - excluded).
    """
    g = -torch.log(-torch.log(_uniform(logits.shape, generator, logits.device)))
    keys = logits.float() + g
    if exclude is not None:
        keys = keys.masked_fill(exclude, float("-inf"))
    return keys.topk(k, dim=1).indices


def _growth_sizes(total: int, steps: int) -> list[int]:
    """``total`` split into ``steps`` near-equal positive parts (fewer when total < steps)."""
    steps = max(1, min(steps, total))
    return [total // steps + (i < total % steps) for i in range(steps)] if total else []


@dataclass(frozen=True)
class SelectionSchedule:
    """PSTS stages over the run: progress = step / total_steps in [0, 1).

    ``boundaries`` (b1, b2, b3), 0 <= b1 <= b2 <= b3 <= 1: "similar" before b1, "blend" in
    [b1, b2) (the share of complementary picks rises linearly from 0 to 1), "complementary"
    in [b2, b3), "random" from b3 on. Step s is in stage i when s / total >= b_i, so stage i
    starts at step ceil(b_i * total) for any run length.
    """

    boundaries: tuple[float, float, float] = (0.25, 0.5, 0.75)

    def __post_init__(self) -> None:
        b = tuple(float(v) for v in self.boundaries)
        if len(b) != 3 or not 0.0 <= b[0] <= b[1] <= b[2] <= 1.0:
            raise ValueError(f"stage_fractions: expected three fractions 0 <= b1 <= b2 <= b3 "
                             f"<= 1 (similar | blend | complementary | random), got "
                             f"{list(self.boundaries)}")
        object.__setattr__(self, "boundaries", b)

    @staticmethod
    def progress(step: int, total: int) -> float:
        """step / total (total >= 1)."""
        if total < 1 or step < 0:
            raise ValueError(f"step/total: expected 0 <= step and total >= 1, got {step}/{total}")
        return step / total

    def stage(self, progress: float) -> str:
        """The stage name at ``progress``."""
        return STAGES[sum(progress >= b for b in self.boundaries)]

    def complementary_share(self, progress: float) -> float:
        """Share of growth picks taken as least similar (0 similar, 1 complementary); only
        meaningful before the random stage."""
        b1, b2, _ = self.boundaries
        if progress < b1:
            return 0.0
        if progress >= b2:
            return 1.0
        return (progress - b1) / (b2 - b1)


def _similarity_to(emb: Tensor, ids: Tensor) -> Tensor:
    """Cosine similarity of every token to the tokens ``ids``: emb (B, N, D) unit rows,
    ids (B, k) -> (B, k, N)."""
    return torch.bmm(torch.gather(emb, 1, ids[..., None].expand(-1, -1, emb.shape[-1])),
                     emb.transpose(1, 2))


def select_visible(logits: Tensor, embeddings: Tensor | None, budget: int, *,
                   progress: float = 0.0, schedule: SelectionSchedule | None = None,
                   growth_steps: int = 3, usable: Tensor | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """Progressive Semantic Token Selection -> ids_keep (B, budget), seeds first.

    ceil(budget / 2) seeds are sampled without replacement from softmax(``logits``); the other
    floor(budget / 2) are added in ``growth_steps`` steps. Each step ranks the candidates by
    their maximum cosine similarity to the tokens already chosen (``embeddings`` (B, N, D),
    patch + position, no gradient) and, by the schedule's stage at ``progress``, adds the most
    similar, a blend (the complementary share of the step's picks taken as least similar),
    the least similar, or (random stage) uniformly random candidates. Mostly-nodata tokens
    (``usable`` False) are added only when no usable candidate is left.
    """
    B, N = logits.shape
    if not 1 <= budget <= N:
        raise ValueError(f"budget: expected 1 <= budget <= N={N}, got {budget}")
    schedule = schedule or SelectionSchedule()
    stage = schedule.stage(progress)
    n_seed = budget - budget // 2
    seeds = gumbel_topk(logits, n_seed, generator)
    sizes = _growth_sizes(budget - n_seed, growth_steps)
    if not sizes:
        return seeds
    dev = logits.device
    chosen = torch.zeros(B, N, dtype=torch.bool, device=dev).scatter_(1, seeds, True)
    penalty = (torch.zeros(B, N, device=dev) if usable is None
               else (~usable).float() * NODATA_PENALTY)
    parts = [seeds]
    if stage == "random":
        keys = _uniform((B, N), generator, dev) - penalty
        parts.append(keys.masked_fill(chosen, float("-inf")).topk(sum(sizes), dim=1).indices)
        return torch.cat(parts, dim=1)
    if embeddings is None or embeddings.shape[:2] != (B, N):
        raise ValueError(f"embeddings: expected (B={B}, N={N}, D) for stage {stage!r}, got "
                         f"{None if embeddings is None else tuple(embeddings.shape)}")
    emb = F.normalize(embeddings.detach().float(), dim=-1)
    max_sim = _similarity_to(emb, seeds).amax(1)  # (B, N)
    share = schedule.complementary_share(progress)
    for n in sizes:
        n_comp = round(share * n)
        picks = []
        for sign, count in ((1.0, n - n_comp), (-1.0, n_comp)):
            if count == 0:
                continue
            keys = (sign * max_sim - penalty).masked_fill(chosen, float("-inf"))
            new = keys.topk(count, dim=1).indices
            chosen.scatter_(1, new, True)
            picks.append(new)
        new = torch.cat(picks, dim=1)
        max_sim = torch.maximum(max_sim, _similarity_to(emb, new).amax(1))
        parts.append(new)
    return torch.cat(parts, dim=1)


def select_targets(logits: Tensor, ids_keep: Tensor, budget: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """Reconstruction set (B, budget): masked (not visible) tokens sampled without replacement
    from softmax(``logits``) (see :func:`sampling_logits`: mostly-nodata tokens carry
    ``-NODATA_PENALTY`` and are drawn only when too few usable masked tokens are left)."""
    B, N = logits.shape
    if not 1 <= budget <= N - ids_keep.shape[1]:
        raise ValueError(f"budget: expected 1 <= budget <= {N - ids_keep.shape[1]} masked "
                         f"tokens, got {budget}")
    visible = torch.zeros(B, N, dtype=torch.bool, device=logits.device).scatter_(1, ids_keep,
                                                                                  True)
    return gumbel_topk(logits, budget, generator, exclude=visible)
