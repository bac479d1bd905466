"""Decoders that masked-image objectives compose: MAE, CrossMAE, per-group pixel heads, SatMAE++.

Token order everywhere is the encoder's: N = G*L tokens in (g, l) order (token ``g * L + l`` is
group g at spatial cell l, l = r*Gw + c). Pixel patches use the tokenizer's ``patchify`` layout
(B, L, p*p*C), channel fastest. No loss is computed here; objectives own targets and losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from timm.layers import LayerNorm2d, Mlp
from torch import Tensor, nn

from .attention import Attention, CrossAttention
from .masking import gather_tokens
from .pos_embed import sincos_1d, sincos_2d
from .tokenizers import patchify, unpatchify
from .vit import Block, mae_init

if TYPE_CHECKING:
    from .vit import ViTEncoder

__all__ = [
    "CrossAttentionBlock", "CrossAttentionDecoder", "GroupPixelHeads", "MAEDecoder", "MultiScaleUpsampler",
    "decoder_encoding", "patchify", "unpatchify",
]


def _default_group_dim(dim: int) -> int:
    """SatMAE's group-code width: about dim/4, a multiple of 4 (the tokenizer's rule)."""
    return (dim // 4) // 4 * 4


def decoder_encoding(dim: int, grid: tuple[int, int], num_groups: int = 1, group_dim: int = 0,
                     gsd_scale: Tensor | None = None) -> Tensor:
    """Fixed decoder code for G*L tokens in (g, l) order -> (G*L, dim) or (B, G*L, dim).

    ``group_dim`` 0: the 2-D sin-cos position only (MAE). ``group_dim`` > 0: as the grouped
    tokenizer, [2-D position (dim - group_dim) | 1-D code of the group index (group_dim)]
    concatenated. ``gsd_scale`` (B,) scales positions (Scale-MAE).
    """
    if group_dim == 0:
        pos = sincos_2d(dim, grid, scale=gsd_scale)
        return pos if num_groups == 1 else torch.cat([pos] * num_groups, dim=-2)
    pos = sincos_2d(dim - group_dim, grid, scale=gsd_scale)
    grp = sincos_1d(group_dim, torch.arange(num_groups, device=pos.device))
    lead, n = pos.shape[:-2], pos.shape[-2]
    pos = pos.unsqueeze(-3).expand(*lead, num_groups, n, pos.shape[-1])
    grp = grp[:, None, :].expand(*lead, num_groups, n, group_dim)
    return torch.cat([pos, grp], dim=-1).flatten(-3, -2)


class _TokenDecoder(nn.Module):
    """Shared parts: token layout, mask token, fixed decoder encoding, norm, prediction head."""

    def __init__(self, layout: Sequence[int], decoder_dim: int, out_dim: int | Mapping[str, int]
                 | None, num_prefix_tokens: int, group_dim: int | None) -> None:
        super().__init__()
        if len(layout) not in (2, 3) or min(layout) <= 0:
            raise ValueError(f"layout: expected (Gh, Gw) or (G, Gh, Gw) positive ints, got "
                             f"{tuple(layout)}")
        g, gh, gw = (1, *layout) if len(layout) == 2 else tuple(layout)
        self.num_groups, self.grid = int(g), (int(gh), int(gw))
        self.num_tokens = self.num_groups * gh * gw
        self.decoder_dim, self.num_prefix_tokens = decoder_dim, num_prefix_tokens
        gd = (_default_group_dim(decoder_dim) if g > 1 else 0) if group_dim is None else group_dim
        if gd < 0 or gd % 2 or gd >= decoder_dim or (decoder_dim - gd) % 4:
            raise ValueError(f"group_dim: expected 0 or an even int < {decoder_dim} leaving a "
                             f"multiple of 4, got {gd}")
        self.group_dim = gd
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("pos_embed", decoder_encoding(decoder_dim, self.grid, g, gd),
                             persistent=False)
        prefix = torch.zeros(decoder_dim)  # MAE: zero code; SatMAE: extra group index G
        if gd:
            prefix[decoder_dim - gd:] = sincos_1d(gd, torch.tensor([float(g)]))[0]
        self.register_buffer("prefix_embed", prefix, persistent=False)
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.group_names: list[str] | None = None
        if out_dim is None:
            self.pred: nn.Module = nn.Identity()
        elif isinstance(out_dim, Mapping):
            if len(out_dim) != g:
                raise ValueError(f"out_dim: expected one width per group ({g}), got "
                                 f"{dict(out_dim)}")
            self.group_names = list(out_dim)
            self.pred = nn.ModuleList(nn.Linear(decoder_dim, int(w)) for w in out_dim.values())
        else:
            self.pred = nn.Linear(decoder_dim, int(out_dim))

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (timm's convention, collected by
        :func:`eofm.pretrain.optim.param_groups`): the mask token. The position and group codes
        are fixed buffers, not parameters."""
        return {"mask_token"}

    def _encoding(self, n: int, grid: tuple[int, int] | None, gsd_scale: Tensor | None,
                  ref: Tensor) -> Tensor:
        """(N, Dd) or (B, N, Dd) code for the N tokens of ``grid`` (default: the built grid)."""
        grid = self.grid if grid is None else (int(grid[0]), int(grid[1]))
        if self.num_groups * grid[0] * grid[1] != n:
            raise ValueError(f"grid: {n} tokens do not match G={self.num_groups} x grid {grid}; "
                             "pass grid=(Gh, Gw) for other image sizes")
        if gsd_scale is None and grid == self.grid:
            enc = self.pos_embed
        else:
            enc = decoder_encoding(self.decoder_dim, grid, self.num_groups, self.group_dim,
                                   None if gsd_scale is None else gsd_scale.to(ref.device))
        return enc.to(device=ref.device, dtype=ref.dtype)

    def _predict(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        """Head on normed tokens (B, T, Dd); per-group heads split all N tokens by group."""
        if not isinstance(self.pred, nn.ModuleList):
            return self.pred(x)
        parts = x.reshape(x.shape[0], self.num_groups, -1, x.shape[-1]).unbind(1)
        names = self.group_names or []
        return {n: head(p) for n, head, p in zip(names, self.pred, parts, strict=True)}


class MAEDecoder(_TokenDecoder):
    """MAE self-attention decoder: visible latents + mask tokens, unshuffled, all N decoded.

    ``layout``: (Gh, Gw) or (G, Gh, Gw). ``out_dim``: int -> one Linear, (B, N, out_dim);
    a mapping group -> width -> one Linear per group, {group: (B, L, width)}; None -> the normed
    decoder tokens (B, N, Dd) for :class:`GroupPixelHeads`. ``group_dim`` (decoder group-code
    width; default Dd/4 when G > 1, else 0).
    """

    def __init__(self, layout: Sequence[int], encoder_dim: int, decoder_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
                 out_dim: int | Mapping[str, int] | None = None, num_prefix_tokens: int = 1,
                 attn_backend: str | None = None, group_dim: int | None = None) -> None:
        super().__init__(layout, decoder_dim, out_dim, num_prefix_tokens, group_dim)
        self.embed = nn.Linear(encoder_dim, decoder_dim)
        self.blocks = nn.ModuleList(Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True,
                                          attn_backend=attn_backend) for _ in range(depth))
        mae_init(self)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def from_encoder(cls, encoder: ViTEncoder, **kwargs: object) -> MAEDecoder:
        """Layout, widths and prefix taken from a :class:`ViTEncoder`; kwargs as ``__init__``."""
        kwargs.setdefault("num_prefix_tokens", encoder.num_prefix_tokens)
        if encoder.tokenizer.groups is not None:
            kwargs.setdefault("group_dim", _default_group_dim(int(kwargs.get("decoder_dim", 512))))
        return cls((encoder.num_groups, *encoder.grid_size), encoder.embed_dim, **kwargs)

    def decode(self, latent: Tensor, ids_restore: Tensor, *, grid: tuple[int, int] | None = None,
               gsd_scale: Tensor | None = None) -> Tensor:
        """latent: (B, P+K, De), ids_restore: (B, N) -> normed decoder tokens (B, N, Dd)."""
        B, P = latent.shape[0], self.num_prefix_tokens
        if ids_restore.ndim != 2 or ids_restore.shape[0] != B:
            raise ValueError(f"ids_restore: expected (B={B}, N), got {tuple(ids_restore.shape)}")
        N, K = ids_restore.shape[1], latent.shape[1] - P
        if not 0 <= K <= N:
            raise ValueError(f"latent: expected {P} prefix + K <= N={N} tokens, got "
                             f"{latent.shape[1]}")
        x = self.embed(latent)
        enc = self._encoding(N, grid, gsd_scale, x)
        mask = self.mask_token.to(x.dtype).expand(B, N - K, -1)
        tokens = gather_tokens(torch.cat([x[:, P:], mask], dim=1), ids_restore) + enc
        x = torch.cat([x[:, :P] + self.prefix_embed.to(x.dtype), tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, P:]

    def forward(self, latent: Tensor, ids_restore: Tensor, *, grid: tuple[int, int] | None = None,
                gsd_scale: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """latent: (B, P+K, De), ids_restore: (B, N) -> (B, N, out_dim) (prefix dropped)."""
        return self._predict(self.decode(latent, ids_restore, grid=grid, gsd_scale=gsd_scale))


class CrossAttentionBlock(nn.Module):
    """CrossMAE block: [q + self-attn(norm q)], q + cross-attn(norm q, kv), q + mlp(norm q)."""

    def __init__(self, dim: int, kv_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 self_attn: bool = False, attn_backend: str | None = None) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, backend=attn_backend) if self_attn else None
        self.norm0 = nn.LayerNorm(dim, eps=1e-6) if self_attn else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads, backend=attn_backend, kv_dim=kv_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        """q: (B, T, Dd), kv: (B, M, Dkv) -> (B, T, Dd)."""
        if self.self_attn is not None and self.norm0 is not None:
            q = q + self.self_attn(self.norm0(q))
        q = q + self.cross_attn(self.norm1(q), kv)
        return q + self.mlp(self.norm2(q))


class CrossAttentionDecoder(_TokenDecoder):
    """CrossMAE / SelectiveMAE decoder: only the chosen target tokens are decoded.

    Queries = mask token + decoder code of the tokens in ``ids_target``; keys/values = the
    encoder output (prefix + visible), projected per block by the cross-attention's kv Linear
    (CrossMAE). Self-attention among queries is off by default, so each target's prediction
    depends only on its own position and the encoder output, never on the other targets.
    """

    def __init__(self, layout: Sequence[int], encoder_dim: int, decoder_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
                 out_dim: int | None = None, num_prefix_tokens: int = 1,
                 attn_backend: str | None = None, group_dim: int | None = None,
                 self_attn: bool = False) -> None:
        if isinstance(out_dim, Mapping):
            raise ValueError("out_dim: per-group widths need every token; pass an int or None "
                             "and use GroupPixelHeads.predict_tokens")
        super().__init__(layout, decoder_dim, out_dim, num_prefix_tokens, group_dim)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(decoder_dim, encoder_dim, num_heads, mlp_ratio, self_attn,
                                attn_backend) for _ in range(depth))
        mae_init(self)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def from_encoder(cls, encoder: ViTEncoder, **kwargs: object) -> CrossAttentionDecoder:
        """Layout, widths and prefix taken from a :class:`ViTEncoder`; kwargs as ``__init__``."""
        kwargs.setdefault("num_prefix_tokens", encoder.num_prefix_tokens)
        if encoder.tokenizer.groups is not None:
            kwargs.setdefault("group_dim", _default_group_dim(int(kwargs.get("decoder_dim", 512))))
        return cls((encoder.num_groups, *encoder.grid_size), encoder.embed_dim, **kwargs)

    def decode(self, latent: Tensor, ids_target: Tensor, *, grid: tuple[int, int] | None = None,
               gsd_scale: Tensor | None = None) -> Tensor:
        """latent: (B, P+K, De), ids_target: (B, T) -> normed decoder tokens (B, T, Dd)."""
        B = latent.shape[0]
        if ids_target.ndim != 2 or ids_target.shape[0] != B:
            raise ValueError(f"ids_target: expected (B={B}, T), got {tuple(ids_target.shape)}")
        n = self.num_tokens if grid is None else self.num_groups * grid[0] * grid[1]
        enc = self._encoding(n, grid, gsd_scale, latent)
        enc = enc.expand(B, -1, -1) if enc.ndim == 2 else enc
        q = self.mask_token.to(latent.dtype) + gather_tokens(enc, ids_target)
        for blk in self.blocks:
            q = blk(q, latent)
        return self.norm(q)

    def forward(self, latent: Tensor, ids_target: Tensor, *, grid: tuple[int, int] | None = None,
                gsd_scale: Tensor | None = None) -> Tensor:
        """latent: (B, P+K, De), ids_target: (B, T) indices into N -> (B, T, out_dim)."""
        out = self._predict(self.decode(latent, ids_target, grid=grid, gsd_scale=gsd_scale))
        assert isinstance(out, Tensor)
        return out


class GroupPixelHeads(nn.Module):
    """One Linear per band group; predictions placed in TARGET band order by band name.

    Head g predicts (p, p, C_g) per token (its bands in group order, channel fastest, as
    ``patchify`` of the group's bands). Outputs are scattered by name into ``target_bands`` so a
    prediction is never paired with another band's target (the SatMAE/SatMAE++ defect).
    Target bands in no group are zero and False in ``covered`` (C_t,).
    """

    def __init__(self, groups: Mapping[str, Sequence[str]], decoder_dim: int, patch_size: int,
                 target_bands: Sequence[str]) -> None:
        super().__init__()
        self.groups = {str(g): list(b) for g, b in groups.items()}
        self.target_bands, self.patch_size = list(target_bands), int(patch_size)
        missing = [b for m in self.groups.values() for b in m if b not in self.target_bands]
        if not self.groups or missing:
            raise ValueError(f"groups: every grouped band must be in target_bands "
                             f"{self.target_bands}; missing {missing}")
        self.num_groups = len(self.groups)
        self.heads = nn.ModuleList(nn.Linear(decoder_dim, len(m) * self.patch_size ** 2)
                                   for m in self.groups.values())
        band_group = torch.full((len(self.target_bands),), -1, dtype=torch.long)
        for g, members in enumerate(self.groups.values()):
            for b in members:
                band_group[self.target_bands.index(b)] = g
        self.register_buffer("band_group", band_group, persistent=False)  # (C_t,), -1 = none
        for g, members in enumerate(self.groups.values()):
            idx = torch.tensor([self.target_bands.index(b) for b in members])
            self.register_buffer(f"_index{g}", idx, persistent=False)
        mae_init(self)

    @property
    def covered(self) -> Tensor:
        """(C_t,) bool: True for target bands some group predicts."""
        return self.band_group >= 0

    @property
    def uncovered_bands(self) -> list[str]:
        """Target band names no group predicts."""
        return [b for b, c in zip(self.target_bands, self.covered.tolist(), strict=True) if not c]

    def _place(self, g: int, pred: Tensor, out: Tensor) -> Tensor:
        """Put head g's (..., p*p*C_g) into out (..., p*p, C_t) at its bands' positions."""
        pp = self.patch_size ** 2
        part = pred.reshape(*pred.shape[:-1], pp, -1)
        return out.index_copy(-1, getattr(self, f"_index{g}"), part)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, G*L, Dd) in (g, l) order (or (B, G, L, Dd)) -> (B, L, p*p*C_t) target order."""
        if x.ndim == 3:
            if x.shape[1] % self.num_groups:
                raise ValueError(f"x: expected (B, G*L, D) with G={self.num_groups}, got "
                                 f"{tuple(x.shape)}")
            x = x.reshape(x.shape[0], self.num_groups, -1, x.shape[-1])
        if x.ndim != 4 or x.shape[1] != self.num_groups:
            raise ValueError(f"x: expected (B, {self.num_groups}, L, D), got {tuple(x.shape)}")
        B, _, L, _ = x.shape
        out = x.new_zeros(B, L, self.patch_size ** 2, len(self.target_bands))
        for g, head in enumerate(self.heads):
            out = self._place(g, head(x[:, g]), out)
        return out.flatten(2)

    def predict_tokens(self, x: Tensor, ids: Tensor, num_patches: int) -> tuple[Tensor, Tensor]:
        """Token subset (CrossMAE): x (B, T, Dd), ids (B, T) into G*L -> (pred, band_mask).

        pred: (B, T, p*p*C_t) in target band order, nonzero only for the token's group bands;
        band_mask: (B, T, C_t) bool, True where the token predicts that band.
        """
        group = torch.div(ids, num_patches, rounding_mode="floor")  # (B, T)
        B, T, _ = x.shape
        out = x.new_zeros(B, T, self.patch_size ** 2, len(self.target_bands))
        for g, head in enumerate(self.heads):
            placed = self._place(g, head(x), torch.zeros_like(out))
            out = out + placed * (group == g)[..., None, None].to(x.dtype)
        return out.flatten(2), self.band_group[None, None, :] == group[..., None]

    def per_band(self, token_values: Tensor) -> Tensor:
        """token_values (B, G*L) (e.g. the MAE mask) -> (B, L, C_t): each band's group's value.

        Bands in no group get 0.
        """
        B, N = token_values.shape
        if N % self.num_groups:
            raise ValueError(f"token_values: expected (B, G*L) with G={self.num_groups}, got "
                             f"{tuple(token_values.shape)}")
        v = token_values.reshape(B, self.num_groups, N // self.num_groups)
        idx = self.band_group.clamp(min=0)
        out = v.index_select(1, idx).transpose(1, 2)  # (B, L, C_t)
        return out * self.covered.to(out.dtype)

    def target(self, x: Tensor) -> Tensor:
        """x: (B, C_t, H, W) in target band order -> pixel targets (B, L, p*p*C_t)."""
        if x.ndim != 4 or x.shape[1] != len(self.target_bands):
            raise ValueError(f"x: expected (B, {len(self.target_bands)}, H, W) in band order "
                             f"{self.target_bands}, got {tuple(x.shape)}")
        return patchify(x, self.patch_size)


class _ResidualBlock(nn.Module):
    """SatMAE++ residual block: x + 0.5 * conv3x3(relu(conv3x3(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return torch.add(x, self.conv2(self.act(self.conv1(x))), alpha=0.5)  # one pass


class _UpBlock(nn.Module):
    """SatMAE++ up-block: ConvT(k4, s2, p1), LN, LeakyReLU, residual block, LN; 3x3 conv out."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        self.up_norm = LayerNorm2d(channels, eps=1e-6)
        self.act = nn.LeakyReLU()
        self.res = _ResidualBlock(channels)
        self.res_norm = LayerNorm2d(channels, eps=1e-6)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, 4C, H, W) -> (features (B, 4C, 2H, 2W), prediction (B, C, 2H, 2W))."""
        x = self.res_norm(self.res(self.act(self.up_norm(self.up(x)))))
        return x, self.out(x)


class MultiScaleUpsampler(nn.Module):
    """SatMAE++ multi-scale branch: image (B, C, H, W) -> predictions at 2x, 4x, ... its size.

    1x1 conv C -> ratio*C, GELU, channels-first LayerNorm; then ``num_scales - 1`` up-blocks,
    each fed the previous block's features (not its prediction).
    """

    def __init__(self, channels: int, num_scales: int = 3, ratio: int = 4) -> None:
        super().__init__()
        if num_scales < 2 or channels <= 0 or ratio <= 0:
            raise ValueError(f"num_scales, channels, ratio: expected >= 2, > 0, > 0; got "
                             f"{num_scales}, {channels}, {ratio}")
        width = channels * ratio
        self.channels, self.num_scales = channels, num_scales
        self.proj = nn.Conv2d(channels, width, 1)
        self.act = nn.GELU()
        self.norm = LayerNorm2d(width, eps=1e-6)
        self.blocks = nn.ModuleList(_UpBlock(width, channels) for _ in range(num_scales - 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, img: Tensor) -> list[Tensor]:
        """img: (B, C, H, W) -> [(B, C, H*2^s, W*2^s) for s = 1 .. num_scales-1]."""
        if img.ndim != 4 or img.shape[1] != self.channels:
            raise ValueError(f"img: expected (B, {self.channels}, H, W), got {tuple(img.shape)}")
        x = self.norm(self.act(self.proj(img)))
        outs = []
        for blk in self.blocks:
            x, pred = blk(x)
            outs.append(pred)
        return outs
