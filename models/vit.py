"""Vision Transformer encoder over any eofm tokenizer, with token dropping and a timm-style feature API.

Tokens come from a :class:`~eofm.models.tokenizers.Tokenizer` as (B, G, L, D) and are flattened
to a sequence of N = G*L tokens in (g, l) order; the tokenizer's fixed sin-cos encoding (position,
plus group index for grouped tokenizers, optionally GSD-scaled) is added before any token is
dropped, so the kept tokens carry their positions. The class token gets no position code (MAE).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .contract import InputContract, encoder_contract, pair_size
from .masking import check_ids_keep, gather_tokens, ids_from_mask
from .pos_embed import resample_grid_table
from .tokenizers import PlainTokenizer

if TYPE_CHECKING:
    from .tokenizers import Tokenizer

POOLS = ("token", "avg")
OUTPUT_FMTS = ("NCHW", "NLC")
# what forward_intermediates returns: the maps (each with its prefix tokens on request), or,
# with intermediates_only=False, (final features, maps) as timm does
Intermediates = (list[Tensor] | list[tuple[Tensor, Tensor]]
                 | tuple[Tensor, list[Tensor] | list[tuple[Tensor, Tensor]]])


def mae_init(module: nn.Module) -> None:
    """MAE init of every Linear/LayerNorm in ``module``: xavier-uniform weights, zero biases,
    unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)). x: (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 init_values: float | None = None, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] | partial = partial(nn.LayerNorm, eps=1e-6),  # noqa: B008
                 attn_backend: str | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                              proj_drop=proj_drop, backend=attn_backend)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _free_to_read(t: Tensor) -> bool:
    """Whether reading ``t``'s values on the host costs no device sync (a CPU tensor)."""
    return t.device.type == "cpu"


def gsd_values(gsd: float | Sequence[float] | Tensor, batch: int) -> Tensor:
    """``gsd`` (m: a float, or one per sample) as a (``batch``,) float32 tensor where it lives,
    checked: positive and finite.

    Where reading the values is free (a float, a CPU tensor) a bad one is a ValueError. A tensor
    on an accelerator is not read back: that would be a host sync on every training step, whose
    per-sample GSD is a new tensor each step (the loader's crop zoom, an objective's views), so
    a checked-once cache would not spare it. Its bad entries become NaN instead, so those
    samples' features are NaN, never a plausible code for a wrong GSD (0 gives every token the
    same position, a negative one mirrors them)."""
    g = torch.as_tensor(gsd, dtype=torch.float32)
    scalar = g.ndim == 0
    g = g.expand(batch) if scalar else g
    if g.shape != (batch,):
        raise ValueError(f"gsd: expected a float or a (B,)={batch} tensor, got shape "
                         f"{tuple(g.shape)}")
    ok = torch.isfinite(g) & (g > 0)
    if not _free_to_read(g):
        return torch.where(ok, g, torch.nan)
    if not bool(ok.all()):
        bad = (~ok).nonzero().flatten().tolist()
        shown = [float(f"{v:.7g}") for v in g.tolist()]  # float32 precision: 0.3, not 0.30000001
        got = (f"{shown[0]}" if scalar else
               ", ".join(f"{shown[i]} at sample {i}" for i in bad[:5])
               + (f" and {len(bad) - 5} more of {batch}" if len(bad) > 5 else ""))
        raise ValueError(f"gsd: expected a positive finite ground sample distance in m, got {got}")
    return g


def take_indices(indices: int | Sequence[int] | None, depth: int, unit: str) -> list[int]:
    """Indices into ``depth`` layers (``unit``: their name in errors): None = all, int n = the
    last n, sequence = those (negative from the end)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices: last-n must be in 1..{depth}, got {indices}")
        return list(range(depth - indices, depth))
    out = [i + depth if i < 0 else i for i in indices]
    if not out:
        raise ValueError(f"indices: expected at least one {unit} index, got none")
    bad = [i for i, j in zip(indices, out, strict=True) if not 0 <= j < depth]
    if bad:
        raise ValueError(f"indices: {unit} indices must be in -{depth}..{depth - 1}, got {bad}")
    return out


class ViTEncoder(nn.Module):
    """ViT encoder: tokenizer -> + fixed encoding -> [drop tokens] -> [cls] + blocks -> norm.

    Sizes: ``num_patches`` = Gh*Gw spatial cells at ``img_size``, ``num_groups`` = G,
    ``num_tokens`` = G * num_patches (the full sequence, prefix excluded).
    """

    def __init__(self, tokenizer: Tokenizer, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 layer_scale_init: float | None = None, class_token: bool = True,
                 global_pool: str = "token", attn_backend: str | None = "sdpa",
                 img_size: int | Sequence[int] = 224, gsd_pos: bool = False,
                 reference_gsd: float = 10.0, contract: InputContract | None = None,
                 learned_pos: bool = False) -> None:
        super().__init__()
        if embed_dim != tokenizer.embed_dim:
            raise ValueError(f"embed_dim: must equal tokenizer.embed_dim={tokenizer.embed_dim}, "
                             f"got {embed_dim}")
        if global_pool not in POOLS:
            raise ValueError(f"global_pool: expected one of {POOLS}, got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool: 'token' needs class_token=True; use 'avg' without one")
        if (isinstance(reference_gsd, bool) or not isinstance(reference_gsd, numbers.Real)
                or not (math.isfinite(reference_gsd) and reference_gsd > 0)):
            raise ValueError("reference_gsd: expected a positive finite ground sample distance "
                             f"in m, got {reference_gsd!r}")
        if int(depth) < 1:
            raise ValueError(f"depth: expected at least 1 transformer block, got {depth}")
        self.tokenizer = tokenizer
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = tokenizer.patch_size
        self.img_size = pair_size(img_size)
        self.grid_size = tokenizer.grid_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_groups = tokenizer.num_groups
        self.num_tokens = self.num_groups * self.num_patches
        self.num_prefix_tokens = 1 if class_token else 0
        self.global_pool = global_pool
        self.gsd_pos = gsd_pos
        self.reference_gsd = float(reference_gsd)
        self.grad_checkpointing = False

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.register_buffer("pos_embed", tokenizer.encoding(self.grid_size).float(),
                             persistent=False)  # (G*L, D) at img_size, reference GSD
        # learned_pos: a trainable (L, D) table started from the sin-cos code (e.g. to hold a
        # loaded timm/DINOv2 table, see models/adapt.py); other grids get it interpolated
        if learned_pos and (gsd_pos or self.num_groups > 1):
            raise ValueError("learned_pos: needs one token group and gsd_pos=False")
        self.pos_table = nn.Parameter(self.pos_embed.clone()) if learned_pos else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i],
                  init_values=layer_scale_init, attn_backend=attn_backend)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # timm's description of the block maps forward_intermediates returns (features_only)
        stride = self.patch_size if isinstance(self.patch_size, int) else max(self.patch_size)
        self.feature_info = [{"num_chs": embed_dim, "reduction": stride, "module": f"blocks.{i}"}
                             for i in range(depth)]
        self.contract = self._make_contract(contract)
        self._init_weights()

    def _make_contract(self, contract: InputContract | None) -> InputContract:
        """The given contract checked against the tokenizer, or a minimal one built from it."""
        return encoder_contract(contract, tuple(self.tokenizer.bands or ()), self.img_size, self.patch_size,
                                "tokenizer")

    def _init_weights(self) -> None:
        """MAE init: xavier-uniform Linear, zero bias, unit LayerNorm, cls ~ N(0, 0.02).

        The tokenizer initialises its own parameters.
        """
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        mae_init(self.blocks)
        mae_init(self.norm)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay."""
        names = {"cls_token"} if self.cls_token is not None else set()
        if self.pos_table is not None:
            names.add("pos_table")
        if hasattr(self.tokenizer, "no_weight_decay"):
            names |= {f"tokenizer.{n}" for n in self.tokenizer.no_weight_decay()}
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.grad_checkpointing = enable

    def default_gsd(self) -> float | None:
        """The GSD (m) a ``gsd_pos`` encoder assumes when a call gives none: the input
        contract's (an export's is the GSD of the pixels it was trained on, as pretraining fed
        them), else None, which means ``reference_gsd`` (positions unscaled). So a plain
        ``encoder(x)`` on the data the contract describes gives the features of training."""
        g = getattr(getattr(self, "contract", None), "gsd", None)
        return float(g) if g is not None else None

    def _encoding(self, grid: tuple[int, int], gsd: float | Tensor | None, B: int,
                  ref: Tensor) -> Tensor:
        """(N, D) or (B, N, D) fixed encoding for ``grid``, GSD-scaled when enabled
        (:meth:`default_gsd` when ``gsd`` is None; checked by :func:`gsd_values`)."""
        if self.gsd_pos and gsd is None:
            gsd = self.default_gsd()
        if self.gsd_pos and gsd is not None:
            g = gsd_values(gsd, B).to(ref.device)
            enc = self.tokenizer.encoding(grid, g / self.reference_gsd)
        elif self.pos_table is not None:
            enc = self.pos_table if grid == self.grid_size else resample_grid_table(
                self.pos_table, self.grid_size, grid)
        elif grid == self.grid_size:
            enc = self.pos_embed
        else:
            enc = self.tokenizer.encoding(grid)
        return enc.to(device=ref.device, dtype=ref.dtype)

    def embed(self, x: Tensor, *, bands: Sequence[str] | None = None,
              wavelengths: Tensor | None = None, bandwidths: Tensor | None = None,
              gsd: float | Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) -> tokens (B, N, D), N = G*L in (g, l) order, encoding added.

        ``gsd`` (m; float or (B,)) scales positions when ``gsd_pos`` (None: the contract's GSD,
        else ``reference_gsd``; see :meth:`default_gsd`); otherwise it is ignored. It must be
        finite and positive (:func:`gsd_values`: a ValueError, or NaN features for the bad
        samples of a tensor on an accelerator).
        """
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        grid = self.tokenizer.grid_size((x.shape[-2], x.shape[-1]))
        tokens = self.tokenizer(x, bands=bands, wavelengths=wavelengths, bandwidths=bandwidths)
        B, G, L, D = tokens.shape
        tokens = tokens.reshape(B, G * L, D)
        return tokens + self._encoding(grid, gsd, B, tokens)

    def _prepend(self, tokens: Tensor) -> Tensor:
        """Prepend the class token: (B, K, D) -> (B, prefix + K, D)."""
        if self.cls_token is None:
            return tokens
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _block(self, blk: nn.Module, x: Tensor) -> Tensor:
        """One block, checkpointed when enabled and training."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: Tensor, *, ids_keep: Tensor | None = None,
                         mask: Tensor | None = None, bands: Sequence[str] | None = None,
                         wavelengths: Tensor | None = None, bandwidths: Tensor | None = None,
                         gsd: float | Tensor | None = None, norm: bool = True) -> Tensor:
        """x: (B, C, H, W) -> normed tokens (B, prefix + K, D); only kept tokens run the blocks.

        ``ids_keep`` (B, K) long indexes the N = G*L tokens to keep; or ``mask`` (B, N), bool
        True / float 1 = drop, with the same count kept per sample (kept in index order).
        Neither: all N tokens are kept. ``norm`` False returns the last block's output without
        the final norm (MAE's global-pool fine-tuning pools these and applies an fc-norm).
        With ``ids_keep`` and a plain tokenizer only the kept patches are embedded
        (:meth:`PlainTokenizer.forward_kept`: the same tokens, to float32 rounding, as
        embedding all and dropping the others).
        """
        if mask is None and ids_keep is not None and isinstance(self.tokenizer, PlainTokenizer):
            tokens = self._embed_kept(x, ids_keep, bands=bands, gsd=gsd)
            return self._run_blocks(tokens, norm)
        tokens = self.embed(x, bands=bands, wavelengths=wavelengths, bandwidths=bandwidths,
                            gsd=gsd)
        if mask is not None:
            if ids_keep is not None:
                raise ValueError("ids_keep, mask: give at most one of them")
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"mask: expected (B, N)={tuple(tokens.shape[:2])}, got "
                                 f"{tuple(mask.shape)}")
            ids_keep = ids_from_mask(mask)[0]
        if ids_keep is not None:
            if ids_keep.ndim != 2 or ids_keep.shape[0] != tokens.shape[0]:
                raise ValueError(f"ids_keep: expected (B={tokens.shape[0]}, K), got "
                                 f"{tuple(ids_keep.shape)}")
            check_ids_keep(ids_keep, tokens.shape[1])
            tokens = gather_tokens(tokens, ids_keep)
        return self._run_blocks(tokens, norm)

    def _embed_kept(self, x: Tensor, ids_keep: Tensor, *, bands: Sequence[str] | None = None,
                    gsd: float | Tensor | None = None) -> Tensor:
        """:meth:`embed` gathered at ``ids_keep`` (B, K), for a plain tokenizer: only the kept
        patches are embedded (:meth:`PlainTokenizer.forward_kept`) and get their encoding."""
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        grid = self.tokenizer.grid_size((x.shape[-2], x.shape[-1]))
        tokens = self.tokenizer.forward_kept(x, ids_keep, bands=bands)
        enc = self._encoding(grid, gsd, x.shape[0], tokens)
        enc = enc[ids_keep.long()] if enc.ndim == 2 else gather_tokens(enc, ids_keep)
        return tokens + enc

    def _run_blocks(self, tokens: Tensor, norm: bool = True) -> Tensor:
        """Kept tokens (B, K, D) -> [cls] + blocks -> final norm (unless ``norm`` is False)."""
        x = self._prepend(tokens)
        for blk in self.blocks:
            x = self._block(blk, x)
        return self.norm(x) if norm else x

    def forward_tokens(self, tokens: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Tokens from :meth:`embed` (B, N, D) -> normed (B, prefix + K, D), only the ``ids_keep``
        (B, K) tokens running the blocks: for callers that embed once and choose the kept tokens
        from those embeddings (SelectiveMAE), instead of :meth:`forward_features` embedding again.
        """
        if ids_keep is not None:
            if ids_keep.ndim != 2 or ids_keep.shape[0] != tokens.shape[0]:
                raise ValueError(f"ids_keep: expected (B={tokens.shape[0]}, K), got "
                                 f"{tuple(ids_keep.shape)}")
            check_ids_keep(ids_keep, tokens.shape[1])
            tokens = gather_tokens(tokens, ids_keep)
        x = self._prepend(tokens)
        for blk in self.blocks:
            x = self._block(blk, x)
        return self.norm(x)

    def pool(self, tokens: Tensor, global_pool: str | None = None) -> Tensor:
        """tokens: (B, prefix + K, D) -> (B, D): class token ("token") or patch mean ("avg")."""
        kind = global_pool or self.global_pool
        if kind not in POOLS:
            raise ValueError(f"global_pool: expected one of {POOLS}, got {kind!r}")
        if kind == "token":
            if self.cls_token is None:
                raise ValueError("global_pool: 'token' needs a class token; this model has none")
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """x: (B, C, H, W) -> pooled features (B, D); kwargs as :meth:`forward_features`."""
        return self.pool(self.forward_features(x, **kwargs))

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """Block indices: None = all, int n = last n, sequence = those (negative from the end)."""
        return take_indices(indices, len(self.blocks), "block")

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None,
                              output_fmt: str = "NCHW", norm: bool = False, *,
                              return_prefix_tokens: bool = False, stop_early: bool = False,
                              intermediates_only: bool = True,
                              bands: Sequence[str] | None = None,
                              wavelengths: Tensor | None = None,
                              bandwidths: Tensor | None = None,
                              gsd: float | Tensor | None = None) -> Intermediates:
        """Outputs of chosen blocks, prefix tokens removed, all tokens kept (timm's API).

        ``indices``: None = every block, int n = the last n, a sequence = those blocks (negative
        from the end); one entry per requested index, in the requested order (timm gives block
        order). ``NLC``: (B, N, D) with N = G*L; ``NCHW``: (B, D, Gh, Gw), the mean over the G
        group tokens of each cell for grouped tokenizers. ``norm`` applies the final norm to
        each. ``return_prefix_tokens``: each entry is (spatial, prefix (B, num_prefix_tokens,
        D)). ``intermediates_only`` (default True, unlike timm's False, so a plain call returns
        the list): False returns ``(final, intermediates)`` with ``final`` what
        :meth:`forward_features` returns (normed, prefix included) -- after the last requested
        block when ``stop_early``. Blocks after the last requested one run only for that final
        output without ``stop_early``.
        """
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt: expected one of {OUTPUT_FMTS}, got {output_fmt!r}")
        take = self._take_indices(indices)
        grid = self.tokenizer.grid_size((x.shape[-2], x.shape[-1]))
        h = self._prepend(self.embed(x, bands=bands, wavelengths=wavelengths,
                                     bandwidths=bandwidths, gsd=gsd))
        last = max(take) + 1 if intermediates_only or stop_early else len(self.blocks)
        outs = []
        for i, blk in enumerate(self.blocks[:last]):
            h = self._block(blk, h)
            if i in take:
                outs.append(self.norm(h) if norm else h)
        p = self.num_prefix_tokens
        prefix = [o[:, :p] for o in outs]
        outs = [o[:, p:] for o in outs]
        # one entry per requested index, in the requested order
        pick = [sorted(set(take)).index(i) for i in take]
        outs, prefix = [outs[j] for j in pick], [prefix[j] for j in pick]
        if output_fmt == "NCHW":
            B, N, D = outs[0].shape
            G = N // (grid[0] * grid[1])
            outs = [o.reshape(B, G, grid[0], grid[1], D).mean(1).permute(0, 3, 1, 2).contiguous()
                    for o in outs]
        result: list[Tensor] | list[tuple[Tensor, Tensor]] = (
            list(zip(outs, prefix, strict=True)) if return_prefix_tokens else outs)
        return result if intermediates_only else (self.norm(h), result)
