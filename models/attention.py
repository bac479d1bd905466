"""Multi-head attention with a selectable backend: PyTorch SDPA, xFormers, or a plain reference.

One switch picks the backend: each module's ``backend`` attribute (set for a whole model with
:func:`set_attention_backend`), overridden inside a ``with attention_backend(name):`` block.
``None`` means the default, ``"sdpa"``.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("sdpa", "xformers", "reference")
DEFAULT_BACKEND = "sdpa"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "eofm_attention_backend", default=None
)


def xformers_available() -> bool:
    """True when xFormers is importable and a CUDA device is present."""
    return importlib.util.find_spec("xformers") is not None and torch.cuda.is_available()


def _check_backend(name: str | None, arg: str = "backend") -> str | None:
    """Validate a backend name (``None`` allowed) and return it."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{arg}: expected one of {BACKENDS} or None, got {name!r}")
    return name


def resolve_backend(backend: str | None) -> str:
    """The backend that runs now: the context override, else ``backend``, else the default."""
    return _override.get() or backend or DEFAULT_BACKEND


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run every attention module inside the block with backend ``name``, whatever its own."""
    token = _override.set(_check_backend(name, "name"))
    try:
        yield
    finally:
        _override.reset(token)


def set_attention_backend(model: nn.Module, name: str | None) -> nn.Module:
    """Set ``backend`` on every :class:`Attention`/:class:`CrossAttention` in ``model``."""
    _check_backend(name, "name")
    for m in model.modules():
        if isinstance(m, (Attention, CrossAttention)):
            m.backend = name
    return model


def _reference(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, scale: float) -> Tensor:
    """softmax(q k^T * scale) v with the softmax in float32."""
    attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn.float().softmax(dim=-1).to(q.dtype)
    if dropout_p > 0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def _xformers(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, scale: float) -> Tensor:
    """xFormers memory-efficient attention; it wants (B, N, heads, d)."""
    if importlib.util.find_spec("xformers") is None:
        raise ValueError("backend: 'xformers' needs the xformers package (pip install "
                         "eofm[xformers]); it is not installed. Use 'sdpa' instead.")
    if not q.is_cuda:
        raise ValueError(f"backend: 'xformers' runs on CUDA tensors only; got device {q.device}. "
                         "Use 'sdpa' instead.")
    import xformers.ops as xops

    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p, scale=scale
    )
    return out.transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, backend: str | None = None, *,
           dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """Scaled dot-product attention. q: (B, h, Nq, d), k/v: (B, h, Nk, d) -> (B, h, Nq, d).

    ``backend`` is resolved with :func:`resolve_backend` (a context override wins).
    """
    name = _check_backend(resolve_backend(backend))
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q, k, v: expected (B, h, Nq, d), (B, h, Nk, d), (B, h, Nk, d); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    if name == "xformers":
        return _xformers(q, k, v, dropout_p, scale)
    return _reference(q, k, v, dropout_p, scale)


class Attention(nn.Module):
    """Multi-head self-attention. x: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: must divide dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = _check_backend(backend)
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attend(q, k, v, self.backend, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x_q (B, Nq, D), keys/values from x_kv (B, Nk, Dkv)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, backend: str | None = None,
                 kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: must divide dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = _check_backend(backend)
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_dim or dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        """x_q: (B, Nq, D), x_kv: (B, Nk, Dkv) -> (B, Nq, D)."""
        B, Nq, D = x_q.shape
        Nk = x_kv.shape[1]
        q = self.q(x_q).reshape(B, Nq, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(x_kv).reshape(B, Nk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        out = attend(q, k, v, self.backend, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, Nq, D)))
