"""Heads over encoder features: contrastive projection/prediction MLPs, classifiers, segmentation.

Contrastive MLPs follow BYOL (Linear-BN-ReLU-Linear, 4096 -> 256) and SimSiam (3 layers, BN on
the output); ``LinearHead`` covers MAE's fine-tuning (fc-norm LayerNorm) and linear-probe
(BatchNorm without affine) conventions; ``SegmentationDecoder`` is a UPerNet-lite over
``ViTEncoder.forward_intermediates(..., output_fmt="NCHW")`` maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NORMS", "LinearHead", "MLPHead", "PredictionMLP", "ProjectionMLP",
           "SegmentationDecoder"]

NORMS = ("bn", "ln", None)


def _norm1d(kind: str | None, dim: int, affine: bool = True) -> nn.Module:
    """A feature norm for (..., dim): "bn" (BatchNorm1d), "ln" (LayerNorm) or None."""
    if kind not in NORMS:
        raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")
    if kind == "bn":
        return _TokenBatchNorm(dim, affine=affine)
    if kind == "ln":
        return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=affine)
    return nn.Identity()


class _TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dim of (..., D): leading dims are flattened into the batch."""

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., D) -> (..., D)."""
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class ProjectionMLP(nn.Module):
    """BYOL/SimSiam projector: ``num_layers`` Linear layers, norm + ReLU between them.

    x: (..., in_dim) -> (..., out_dim). ``last_norm`` adds a non-affine norm on the output
    (SimSiam's projector ends in BN). ``num_layers`` 1 is a single Linear.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256,
                 num_layers: int = 2, norm: str | None = "bn", last_norm: bool = False) -> None:
        super().__init__()
        if num_layers < 1 or min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"num_layers, dims: expected >= 1 and positive, got {num_layers}, "
                             f"{(in_dim, hidden_dim, out_dim)}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(dims)):
            last = i == num_layers - 1
            layers.append(nn.Linear(a, b, bias=last or norm is None))
            if not last:
                layers += [_norm1d(norm, b), nn.ReLU(inplace=True)]
        if last_norm:
            layers.append(_norm1d(norm, out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_dim) -> (..., out_dim)."""
        return self.net(x)


class PredictionMLP(ProjectionMLP):
    """BYOL/SimSiam predictor: a 2-layer bottleneck MLP, (..., dim) -> (..., dim) by default."""

    def __init__(self, in_dim: int = 256, hidden_dim: int = 4096, out_dim: int | None = None,
                 num_layers: int = 2, norm: str | None = "bn") -> None:
        super().__init__(in_dim, hidden_dim, in_dim if out_dim is None else out_dim,
                         num_layers, norm, last_norm=False)


class LinearHead(nn.Module):
    """Classifier: [norm] -> dropout -> Linear. x: (B, D) -> (B, num_classes).

    ``norm`` "ln" is MAE fine-tuning's fc-norm, "bn" MAE linear probing's affine-free
    BatchNorm; weights ~ N(0, ``init_std``), zero bias.
    """

    def __init__(self, in_dim: int, num_classes: int, norm: str | None = None,
                 dropout: float = 0.0, init_std: float = 0.01) -> None:
        super().__init__()
        self.norm = _norm1d(norm, in_dim, affine=norm != "bn")
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> logits (B, num_classes)."""
        return self.fc(self.drop(self.norm(x)))


class MLPHead(nn.Module):
    """Classifier MLP: (Linear, norm, GELU, dropout) x (num_layers - 1), then Linear."""

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 512, num_layers: int = 2,
                 norm: str | None = "ln", dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(d, hidden_dim), _norm1d(norm, hidden_dim), nn.GELU(),
                       nn.Dropout(dropout)]
            d = hidden_dim
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_dim) -> logits (B, num_classes)."""
        return self.net(x)


def _conv_bn_act(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv(k, same padding, no bias) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _rescale(dim: int, scale: float) -> nn.Module:
    """ViT map -> pyramid level: 2x steps of ConvT(k2, s2) (+BN, GELU between), max-pool for 1/2^k."""
    if scale == 1:
        return nn.Identity()
    if scale < 1:
        k = round(1 / scale)
        if k < 2 or k & (k - 1):
            raise ValueError(f"scales: expected powers of 2, got {scale}")
        return nn.MaxPool2d(k, k)
    steps = round(scale).bit_length() - 1
    if 2 ** steps != scale:
        raise ValueError(f"scales: expected powers of 2, got {scale}")
    layers: list[nn.Module] = []
    for i in range(steps):
        layers.append(nn.ConvTranspose2d(dim, dim, 2, stride=2))
        if i < steps - 1:
            layers += [nn.BatchNorm2d(dim), nn.GELU()]
    return nn.Sequential(*layers)


class SegmentationDecoder(nn.Module):
    """UPerNet-lite over ViT maps: rescale to a pyramid, FPN top-down, fuse, classify, upsample.

    features: one (B, in_dim, Gh, Gw) map per entry of ``scales`` (e.g. blocks 3, 5, 7, 11 of a
    ViT-S via ``forward_intermediates``); map i is resampled by ``scales[i]`` (default 4, 2, 1,
    1/2: strides p/4 .. 2p), laterals (1x1) and a top-down pathway (add, 3x3) build the FPN, all
    levels are upsampled to the finest and fused (3x3), then a 1x1 classifier; logits are
    bilinearly upsampled to the input size. -> (B, num_classes, H, W). ``in_dim`` may list one
    channel count per map: a CNN's stages, already a pyramid, at scale 1 each.
    """

    def __init__(self, in_dim: int | Sequence[int], num_classes: int, patch_size: int,
                 channels: int = 128, scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 dropout: float = 0.1) -> None:
        super().__init__()
        if not scales:
            raise ValueError("scales: expected at least one feature map scale")
        self.patch_size, self.scales = int(patch_size), [float(s) for s in scales]
        dims = [in_dim] * len(self.scales) if isinstance(in_dim, int) else [int(d) for d in in_dim]
        if len(dims) != len(self.scales):  # one channel count per map (e.g. a CNN's stages)
            raise ValueError(f"in_dim: expected one channel count or {len(self.scales)} (one per "
                             f"scale), got {list(dims)}")
        self.rescale = nn.ModuleList(_rescale(d, s) for d, s in zip(dims, self.scales, strict=True))
        self.lateral = nn.ModuleList(_conv_bn_act(d, channels, 1) for d in dims)
        self.fpn = nn.ModuleList(_conv_bn_act(channels, channels, 3) for _ in self.scales)
        self.fuse = _conv_bn_act(channels * len(self.scales), channels, 3)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Sequence[Tensor],
                size: tuple[int, int] | None = None) -> Tensor:
        """features: [(B, in_dim, Gh, Gw)] * len(scales) -> logits (B, num_classes, H, W).

        ``size`` (H, W) defaults to the grid times the patch size.
        """
        if len(features) != len(self.scales):
            raise ValueError(f"features: expected {len(self.scales)} maps (one per scale "
                             f"{self.scales}), got {len(features)}")
        gh, gw = features[0].shape[-2:]
        size = (gh * self.patch_size, gw * self.patch_size) if size is None else tuple(size)
        lat = [lateral(rescale(f)) for f, rescale, lateral in
               zip(features, self.rescale, self.lateral, strict=True)]
        order = sorted(range(len(lat)), key=lambda i: -lat[i].shape[-1])  # fine -> coarse
        for b, a in pairwise(order[::-1]):  # coarse b -> next finer a
            lat[a] = lat[a] + F.interpolate(lat[b], size=lat[a].shape[-2:], mode="bilinear",
                                            align_corners=False)
        outs = [fpn(x) for fpn, x in zip(self.fpn, lat, strict=True)]
        top = outs[order[0]].shape[-2:]
        outs = [o if o.shape[-2:] == top else
                F.interpolate(o, size=top, mode="bilinear", align_corners=False) for o in outs]
        logits = self.cls(self.drop(self.fuse(torch.cat(outs, dim=1))))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

