"""ResNet-50 encoder over named bands, with the eofm encoder API (tokens, pooling, contract).

A torchvision ``resnet50`` without its classifier; ``conv1`` takes ``len(bands)`` channels. Its
state-dict names are torchvision's (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so an ImageNet
checkpoint loads after :func:`eofm.models.adapt.adapt_resnet_state` (see
:func:`load_torchvision_resnet`).

The final feature map (B, 2048, H/32, W/32) is returned as tokens like a ViT's:
``forward_features`` gives (B, 1 + h*w, 2048) = [global-average token, then the cells in
row-major order], so ``pool("token")`` (the average token), ``pool("avg")`` (mean of the cells,
the same vector) and the probe's ``cls``/``mean`` pools all give the global-average feature.
``patch_size`` is the output stride 32. A CNN sees every pixel: token dropping (``ids_keep`` /
``mask``) is refused, and ``supports_token_dropping`` is False for objectives to check.

torchvision (not an eofm dependency) is imported when a ResNet is built, not with this module,
so ``import eofm.models`` works without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .adapt import RGB_BANDS, LoadReport, adapt_resnet_state
from .contract import InputContract, encoder_contract, name_tuple, pair_size
from .vit import Intermediates, take_indices
from .weight_files import name_list

__all__ = ["OUTPUT_STRIDE", "ResNetBands", "ResNetEncoder", "load_torchvision_resnet", "resnet50"]

OUTPUT_STRIDE = 32
POOLS = ("token", "avg")
OUTPUT_FMTS = ("NCHW", "NLC")
STAGES = ("layer1", "layer2", "layer3", "layer4")
STAGE_CHANNELS = (256, 512, 1024, 2048)
STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class ResNetBands:
    """What eofm reads from an encoder's ``tokenizer``: the fixed input band order (a CNN has no
    tokenizer; this stands in for one). ``groups`` is None: one group of every band."""

    bands: tuple[str, ...]
    patch_size: int = OUTPUT_STRIDE
    embed_dim: int = 2048
    groups: None = None
    num_groups: int = 1

    def grid_size(self, img_size: Sequence[int]) -> tuple[int, int]:
        """(H // 32, W // 32); ValueError unless H and W are multiples of the output stride."""
        h, w = int(img_size[0]), int(img_size[1])
        p = self.patch_size
        if h <= 0 or w <= 0 or h % p or w % p:
            raise ValueError(f"img_size: a ResNet needs multiples of its output stride {p}, "
                             f"got {(h, w)}")
        return h // p, w // p


def _torchvision_resnet50() -> nn.Module:
    """A fresh torchvision ResNet-50 (imported here: torchvision is optional for eofm)."""
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except ImportError as e:
        raise ImportError(f"resnet50: the eofm ResNet-50 is torchvision's; install torchvision "
                          f"(pip install torchvision) to build it ({e})") from e
    return tv_resnet50(weights=None)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-50 trunk (no ``fc``) over ``bands``; see the module docstring.

    Sizes at ``img_size``: ``grid_size`` = (H/32, W/32), ``num_patches`` = ``num_tokens`` =
    cells of the final map, ``num_prefix_tokens`` = 1 (the global-average token).
    """

    supports_token_dropping = False
    input_filter = "conv1.weight"  # (64, bands, 7, 7): re-cut by band name on a band change

    def __init__(self, bands: Sequence[str], img_size: int | Sequence[int] = 224,
                 global_pool: str = "token", contract: InputContract | None = None) -> None:
        super().__init__()
        bands = name_tuple(bands, "bands")
        if not bands or not all(isinstance(b, str) for b in bands) or len(set(bands)) != len(bands):
            raise ValueError(f"bands: expected a non-empty list of unique band names, got "
                             f"{list(bands)}")
        if global_pool not in POOLS:
            raise ValueError(f"global_pool: expected one of {POOLS}, got {global_pool!r}")
        net = _torchvision_resnet50()
        self.conv1 = nn.Conv2d(len(bands), 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.tokenizer = ResNetBands(bands)
        self.embed_dim = self.num_features = 2048
        self.patch_size = OUTPUT_STRIDE
        self.img_size = pair_size(img_size)
        self.grid_size = self.tokenizer.grid_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_groups = 1
        self.num_tokens = self.num_patches
        self.num_prefix_tokens = 1
        self.global_pool = global_pool
        self.grad_checkpointing = False
        # timm's description of the stage maps forward_intermediates returns
        self.feature_info = [{"num_chs": c, "reduction": r, "module": n}
                             for n, c, r in zip(STAGES, STAGE_CHANNELS, STAGE_STRIDES, strict=True)]
        self._flops: dict[tuple[int, int], float] = {}
        self.contract = self._make_contract(contract)

    def _make_contract(self, contract: InputContract | None) -> InputContract:
        """The given contract checked against the bands and stride, or a minimal one."""
        return encoder_contract(contract, self.tokenizer.bands, self.img_size, self.patch_size,
                                "ResNet (output stride)")

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond the 1-D parameters (BatchNorm) that the optimiser exempts anyway."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not supported for the ResNet trunk; kept for API compatibility (no effect)."""
        self.grad_checkpointing = False

    def _check(self, x: Tensor, bands: Sequence[str] | None) -> None:
        """Validate x (B, C, H, W) against the band list."""
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, C, H, W), got shape {tuple(x.shape)}")
        want = list(self.tokenizer.bands)
        if bands is not None and list(bands) != want:
            raise ValueError(f"bands: the ResNet expects {want} in this order, got {list(bands)}")
        if x.shape[1] != len(want):
            raise ValueError(f"x: expected {len(want)} channels {want}, got {x.shape[1]}")

    def _stages(self, x: Tensor, upto: int = 4) -> list[Tensor]:
        """Outputs of layer1 .. layer<upto> (NCHW)."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in STAGES[:upto]:
            h = getattr(self, name)(h)
            outs.append(h)
        return outs

    def forward_features(self, x: Tensor, *, ids_keep: Tensor | None = None,
                         mask: Tensor | None = None, bands: Sequence[str] | None = None,
                         wavelengths: Tensor | None = None, bandwidths: Tensor | None = None,
                         gsd: float | Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) -> tokens (B, 1 + h*w, 2048): [global average, cells row-major].

        ``ids_keep``/``mask`` are refused (a CNN has no tokens to drop); ``wavelengths``,
        ``bandwidths`` and ``gsd`` are accepted for API compatibility and ignored.
        """
        if ids_keep is not None or mask is not None:
            raise ValueError("ids_keep/mask: a ResNet encoder cannot drop tokens (a CNN sees "
                             "every pixel); set the objective's drop/mask ratio to 0")
        self._check(x, bands)
        return self._tokens(self._stages(x)[-1])

    @staticmethod
    def _tokens(fmap: Tensor) -> Tensor:
        """(B, C, h, w) map -> (B, 1 + h*w, C): [global average, cells row-major]."""
        cells = fmap.flatten(2).transpose(1, 2)
        return torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1)

    def pool(self, tokens: Tensor, global_pool: str | None = None) -> Tensor:
        """tokens (B, 1 + K, D) -> (B, D): the average token ("token") or the cell mean ("avg")."""
        kind = global_pool or self.global_pool
        if kind not in POOLS:
            raise ValueError(f"global_pool: expected one of {POOLS}, got {kind!r}")
        return tokens[:, 0] if kind == "token" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        """x: (B, C, H, W) -> pooled features (B, 2048); kwargs as :meth:`forward_features`."""
        return self.pool(self.forward_features(x, **kwargs))

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """Stage indices 0..3: None = all, int n = last n, sequence = those (negative from end)."""
        return take_indices(indices, len(STAGES), "stage")

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None,
                              output_fmt: str = "NCHW", norm: bool = False, *,
                              return_prefix_tokens: bool = False, stop_early: bool = False,
                              intermediates_only: bool = True,
                              bands: Sequence[str] | None = None,
                              wavelengths: Tensor | None = None,
                              bandwidths: Tensor | None = None,
                              gsd: float | Tensor | None = None) -> Intermediates:
        """Outputs of the chosen stages (layer1..layer4 = 0..3): NCHW (B, C_i, H/s_i, W/s_i)
        with C = 256, 512, 1024, 2048 and s = 4, 8, 16, 32; or NLC (B, h*w, C_i). ``norm`` has
        no effect (a ResNet has no final norm). timm's keywords as
        :meth:`eofm.models.vit.ViTEncoder.forward_intermediates`: ``intermediates_only=False``
        returns ``(final, maps)`` with ``final`` the :meth:`forward_features` tokens of the last
        stage run (layer4 unless ``stop_early``); ``return_prefix_tokens`` is refused (stage
        maps have no prefix tokens). ``wavelengths``, ``bandwidths`` and ``gsd`` are accepted
        for the shared encoder API and ignored (as in :meth:`forward_features`); any other
        keyword (a typo such as ``stop_erly``) is a TypeError, as in timm."""
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt: expected one of {OUTPUT_FMTS}, got {output_fmt!r}")
        if return_prefix_tokens:
            raise ValueError("return_prefix_tokens: a ResNet's stage maps have no prefix "
                             "tokens; call with return_prefix_tokens=False")
        take = self._take_indices(indices)
        self._check(x, bands)
        last = max(take) + 1 if intermediates_only or stop_early else len(STAGES)
        outs = self._stages(x, last)
        picked = [outs[i] for i in take]
        if output_fmt == "NLC":
            picked = [o.flatten(2).transpose(1, 2) for o in picked]
        if intermediates_only:
            return picked
        return self._tokens(outs[-1]), picked

    def forward_flops(self) -> float:
        """Forward FLOPs per sample at ``img_size`` (counted once with torch's FlopCounterMode)."""
        if self.img_size not in self._flops:
            from torch.utils.flop_counter import FlopCounterMode

            p = next(self.parameters())
            x = torch.zeros(1, len(self.tokenizer.bands), *self.img_size, device=p.device,
                            dtype=p.dtype)
            was = self.training
            self.eval()
            try:
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    self._stages(x)
            finally:
                self.train(was)
            self._flops[self.img_size] = float(counter.get_total_flops())
        return self._flops[self.img_size]


def load_torchvision_resnet(encoder: ResNetEncoder, state: Mapping[str, Tensor], *,
                            source_bands: Sequence[str] | None = RGB_BANDS, init: str = "mean",
                            generator: torch.Generator | None = None,
                            source: str = "state dict") -> LoadReport:
    """Load a torchvision ResNet-50 state dict into ``encoder``: ``conv1`` adapted to its bands
    (RGB filters by name: ``source_bands``, default B04/B03/B02, also found as eofm's R/G/B;
    others ``init``), ``fc.*`` dropped. Every missing and unexpected tensor is reported. Refused
    with a ValueError naming them: a shape mismatch, a ``conv1`` that would copy no RGB filter
    (see :func:`eofm.models.adapt.match_by_name`), and any tensor but ``fc.*`` that has no place
    in the encoder or any but ``*.num_batches_tracked`` that the file lacks
    (:func:`_refuse_other_network`)."""
    adapted, report = adapt_resnet_state(state, list(encoder.tokenizer.bands),
                                         source_bands=source_bands, init=init,
                                         generator=generator, source=source)
    own = encoder.state_dict()
    extra = sorted(k for k in adapted if k not in own)
    report.unexpected = sorted({*report.unexpected, *extra})
    report.missing = sorted(k for k in own if k not in adapted)
    _refuse_other_network(extra, [k for k in report.missing
                                  if not k.endswith(".num_batches_tracked")], source)
    shapes = [f"{k}: file {tuple(v.shape)} vs encoder {tuple(own[k].shape)}"
              for k, v in adapted.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise ValueError(f"weights: {source} does not fit a ResNet-50 over "
                         f"{len(encoder.tokenizer.bands)} bands: shape mismatch {shapes}")
    encoder.load_state_dict({k: v for k, v in adapted.items() if k in own}, strict=False)
    return report.log()


def _refuse_other_network(extra: list[str], missing: list[str], source: str) -> None:
    """ValueError when the file is not the encoder's ResNet-50: tensors of its trunk with no
    place in the encoder (a ResNet-101's ``layer3.6`` ..., loaded into a ResNet-50 as a cut-off
    network), or encoder tensors the file lacks (BatchNorm running statistics of a file saved
    from parameters only: they would stay 0 and 1). Only ``fc.*`` may go unused and only
    ``num_batches_tracked`` be missing (the caller leaves them out)."""
    if not extra and not missing:
        return
    parts = []
    if extra:
        parts.append(f"its tensors {name_list(extra)} have no place in a ResNet-50 (a deeper "
                     f"ResNet such as ResNet-101 or -152?)")
    if missing:
        stats = any(k.endswith(("running_mean", "running_var")) for k in missing)
        parts.append(f"it lacks the encoder's tensors {name_list(missing)}"
                     + (" (BatchNorm running statistics: save model.state_dict(), not the "
                        "parameters only)" if stats else ""))
    raise ValueError(f"weights: {source} is not the torchvision ResNet-50 this encoder is: "
                     f"{'; '.join(parts)}; loading it would give another network than the "
                     f"file's, so it is refused")


def resnet50(*, bands: Sequence[str] | None = None, tokenizer: str = "plain",
             img_size: int | Sequence[int] = 224, global_pool: str = "token",
             contract: InputContract | Mapping[str, object] | None = None) -> ResNetEncoder:
    """ResNet-50 (torchvision layout, no classifier) over ``bands`` (default R, G, B), 2048-d
    features, output stride 32. ``tokenizer`` must be "plain" (the bands are fixed by name)."""
    if tokenizer != "plain":
        raise ValueError(f"model.tokenizer: resnet50 takes a fixed band list ('plain'), got "
                         f"{tokenizer!r}")
    if isinstance(contract, Mapping):
        contract = InputContract.from_dict(contract)
    return ResNetEncoder(name_tuple(bands, "bands") if bands is not None else ("R", "G", "B"),
                         img_size=img_size, global_pool=global_pool, contract=contract)
