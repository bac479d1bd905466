"""SoftCon (arXiv 2405.20462): multi-label guided soft contrastive (continual) pretraining.

Per step, from the one crop the loader ships, two views are made ON THE DEVICE at the encoder's
``img_size`` (h, w) (random resized crop, flips, 90-degree rotations (half turns only for a
non-square ``img_size``), per-band brightness/offset jitter; every draw from the step's
``generator``). The online encoder sees view 1 with a random ``drop_ratio`` share of its tokens
dropped (Siamese token dropping); the target encoder, an EMA of the online one (momentum
cosine-scheduled from ``momentum`` to ``momentum_final``, updated in ``on_step_end``, never given
a gradient nor seen by the optimiser), sees view 2 whole. Projection heads on both, a prediction
head on the online side; z = normalised online prediction, z' = normalised target projection.

Soft targets: T_ij = cosine(y_i, y_j) of the samples' label vectors (multi-hot or fractional)
across the GLOBAL batch: target projections and labels are all-gathered over ranks (the
gathered copy of the local rows is replaced by the local tensor, so gradients would flow
through the local part only; the target side carries none anyway). A sample without a label
(all-zero vector, or no labels in the batch) gets the identity row (T_ii = 1, else 0); a
labelled sample has T_ii = 1 by construction.

Losses (``loss``; the paper's exact form could not be read, so both are named options):
- ``soft_ce`` (default): cross-entropy between softmax_j(z_i . z'_j / tau) and the
  row-normalised T_i. With one-hot, all-different labels T = I and this is InfoNCE.
- ``bce``: per-entry sigmoid/binary cross-entropy of z_i . z'_j / tau against T_ij.

Labels come from ``batch["label"]`` (the shard's multi-hot ``labels.npy``) or, with
``seg_classes`` set, from the sample's ``seg`` land-cover raster as class fractions
(``presence_threshold``; see :mod:`eofm.data_shards.landcover`).

GSD: the views have the encoder's ``img_size``, not the loader's crop's (``data.crop_size``,
or the whole tile when it is null), so the encoder sees the crop's GSD times
``input_gsd_factor`` = sqrt(crop h * crop w) / sqrt(h * w) for a full-crop view (a 48 px crop
at ``img_size`` 24: twice the crop's GSD); the trainer writes that into the input contract (and
so the checkpoint, the export and its model card), and a GSD-aware encoder gets each view's own
GSD (the crop's times the view's zoom).

Normalisation: the trainer's per-band mean/std (the contract's ``meanstd``), not the paper's
"mean +- 2 std -> [0, 1]" (METHODS deviation; see the softcon YAML comments).

Nodata: the trainer's normalisation already sets invalid pixels to 0 (the band mean); the
views resample the validity mask with the pixels (nearest) and zero every pixel that is invalid
in the view again after the jitter, so nodata never carries a jittered value.

Continual pretraining: ``weights`` names a local timm/DINOv2 ViT state dict (``.safetensors``,
or ``.pt``/``.pth`` read with ``weights_only=True``); it is loaded into the online encoder with
:func:`eofm.models.adapt.load_timm_vit` (RGB filters to B04/B03/B02 by name, other bands from
the mean RGB filter or random by ``weights_init``, position table interpolated when the encoder
has ``learned_pos``) before the target is copied from it: a trunk tensor missing on either
side is refused (naming the override that makes them agree); the report (adapted tensors,
tensors set aside: heads, a wrapper's other parts) is logged and kept in ``load_report``.

ResNet-50 (``model.name: resnet50``, :class:`eofm.models.resnet.ResNetEncoder`): the tokens are
the final feature map's cells after a global-average token, so ``pool`` "token"/"avg" both give
the global-average feature. A CNN cannot drop tokens: ``drop_ratio`` must be 0. ``weights`` then
names a torchvision ResNet-50 state dict, loaded with
:func:`eofm.models.resnet.load_torchvision_resnet` (``conv1`` adapted as above, ``fc.*``
dropped; another network's tensors or missing BatchNorm statistics refused). The target encoder's BatchNorm layers normalise with the batch's statistics in
training, as BYOL's and MoCo v3's momentum encoders do (running statistics would lag the data;
at the start of continual pretraining they are the source model's); its buffers (the running
statistics, used when the objective is in eval mode) are copied from the online encoder after
each step, as the projector's are.

EMA precision: a module held in bf16 or fp16 (a cast, or DeepSpeed's own bf16/fp16 mode, which
eofm's trainer does not use: it runs DeepSpeed under autocast with fp32 weights) has EVERY parameter
in the low precision, the target's included (it is not in the optimiser, so it has no fp32 master
copy), and a bf16 ``t * m + o * (1 - m)`` at m = 0.99 rounds most of the update away. When the
target parameters are not fp32 at the first ``on_step_end``, the objective therefore keeps an fp32
shadow of them (:class:`FP32Shadow`, child ``ema_fp32``): the EMA runs on the shadow in fp32 from
the online parameters as they are (bf16 under DeepSpeed's bf16 mode: its fp32 master weights are
partitioned over ranks) and the result is written into the low-precision target for its forward. The
shadow is a set of persistent buffers, so it is in the module's state dict and every checkpoint
(also DeepSpeed's), and a resume restores it exactly (a state dict that carries ``ema_fp32.*``
creates it on load). With fp32 targets (single process, DDP, FSDP, autocast) there is no shadow: the
update and the state dict are as before. Memory: 4 bytes per target parameter.

Sharded parameters: ``runtime.strategy=fsdp2`` and DeepSpeed ZeRO-3 are refused (the EMA update
reads full online parameters in place); DDP and ZeRO 1/2 work.

BatchNorm under DDP: each rank normalises with its own batch's statistics by default. With
``sync_batchnorm: true`` (opt-in) and more than one process, every BatchNorm layer of the
objective (the ResNet's, and the heads' with ``head_norm: bn``; online and target) becomes a
:class:`torch.nn.SyncBatchNorm` (statistics over the global batch). torch synchronises only
CUDA (and XPU/HPU) tensors, so a multi-process CPU (gloo) run refuses the setting; with one
process it changes nothing. The state-dict names are BatchNorm's, so checkpoints, resumes and
``eofm-export`` are unchanged: the export loads into a plain :class:`ResNetEncoder`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.data_shards.landcover import class_fractions
from eofm.models.adapt import INIT_MODES, RGB_BANDS, load_timm_vit, read_state_dict
from eofm.models.heads import NORMS, PredictionMLP, ProjectionMLP
from eofm.models.masking import num_keep, random_masking
from eofm.models.resnet import ResNetEncoder, load_torchvision_resnet
from eofm.models.vit import ViTEncoder

from .. import distributed as dist
from ..encoders import run_encoder
from .base import PARAM_PREFIX, objective_params, register_objective
from .ema import FP32Shadow, ema_momentum
from .mae import finite_input
from .soft_targets import LOSSES, gather_global, soft_targets, softcon_loss
from .views import make_views, view_gsd_factor, view_size

if TYPE_CHECKING:  # pragma: no cover
    from ..config import TrainConfig
    from ..data import BandInfo

# the EMA, soft targets and views live in .ema, .soft_targets and .views; re-exported here
__all__ = ["LOSSES", "SYNC_BN_DEVICES", "FP32Shadow", "SoftCon", "card_fields",
           "convert_sync_batchnorm", "ema_momentum", "gather_global", "make_views",
           "soft_targets", "softcon_loss", "softcon_param_problems", "view_gsd_factor",
           "view_size"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "drop_ratio": 0.5,  # share of view-1 tokens the online encoder does not see
    "tau": 0.2,  # temperature
    "loss": "soft_ce",  # "soft_ce" | "bce"
    "momentum": 0.99,  # EMA momentum at step 0 (cosine to momentum_final)
    "momentum_final": 1.0,
    "proj_hidden_dim": 2048,
    "proj_dim": 256,
    "pred_hidden_dim": 2048,
    "head_norm": "bn",  # "bn" | "ln" | null (BN statistics are per rank)
    "pool": "token",  # "token" (class token) | "avg"
    "crop_scale": [0.4, 1.0],  # view area share of the loader's crop
    "flip": True,
    "rot90": True,
    "brightness": 0.1,  # per-band jitter x * (1 + a) + a', a, a' ~ U(-b, b); 0 = none
    "weights": None,  # local timm/DINOv2 ViT weights file for continual pretraining
    "weights_init": "mean",  # non-RGB input filters: "mean" RGB filter | "random"
    "weights_rgb_bands": list(RGB_BANDS),  # band names of the file's 3 input channels; null:
    #                                        no RGB match, every band from weights_init
    "seg_classes": None,  # labels from the seg raster: number of classes
    "presence_threshold": 0.0,  # fraction at or below which a class is absent
    "sync_batchnorm": False,  # SyncBatchNorm over ranks when world size > 1 (GPU only)
}
NULLABLE = ("head_norm", "weights_rgb_bands")  # null is a documented value (no norm; no RGB match)
SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")  # where torch's SyncBatchNorm synchronises


def convert_sync_batchnorm(module: nn.Module, world_size: int,
                           device: torch.device | str) -> int:
    """Turn every BatchNorm layer under ``module`` (in place) into SyncBatchNorm when
    ``world_size`` > 1; the number converted (0 with one process or no BatchNorm).

    A ValueError names ``objective.params.sync_batchnorm`` when ``device`` cannot synchronise
    (torch's SyncBatchNorm refuses CPU tensors in a process group).
    """
    if world_size <= 1:
        return 0
    kind = torch.device(device).type
    if kind not in SYNC_BN_DEVICES:
        raise ValueError(f"objective.params.sync_batchnorm: torch's SyncBatchNorm synchronises "
                         f"only {list(SYNC_BN_DEVICES)} tensors, this run is on {kind} with "
                         f"{world_size} processes; set it to false (BatchNorm statistics then "
                         "stay per rank) or train on GPUs")
    n = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
            for m in module.modules())
    nn.SyncBatchNorm.convert_sync_batchnorm(module)  # replaces every BatchNorm below ``module``
    return n


def softcon_param_problems(p: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The problems of SoftCon's settings ``p`` (merged over :data:`DEFAULTS`, each of its
    default's kind), each named ``prefix`` + the parameter: ``drop_ratio`` in [0, 1), ``loss``
    one of :data:`LOSSES`, ``tau`` > 0, 0 <= ``momentum`` <= ``momentum_final`` <= 1,
    ``crop_scale`` [lo, hi] with 0 < lo <= hi <= 1, ``pool`` 'token' or 'avg', ``head_norm``
    one of the heads' norms, the heads' widths >= 1, ``seg_classes``
    null or an int >= 1, 0 <= ``presence_threshold`` < 1, ``brightness`` >= 0,
    ``weights_init`` one of :data:`~eofm.models.adapt.INIT_MODES`, ``weights_rgb_bands`` null
    or 3 band names. What
    :class:`SoftCon` refuses (the first of them), and the configuration when it loads
    (``prefix`` ``objective.params.``)."""
    problems = []
    if not 0.0 <= p["drop_ratio"] < 1.0:
        problems.append(f"{prefix}drop_ratio: expected a value in [0, 1), got {p['drop_ratio']}")
    if p["loss"] not in LOSSES:
        problems.append(f"{prefix}loss: expected one of {LOSSES}, got {p['loss']!r}")
    if p["tau"] <= 0:
        problems.append(f"{prefix}tau: expected > 0, got {p['tau']}")
    if not 0.0 <= p["momentum"] <= p["momentum_final"] <= 1.0:
        problems.append(f"{prefix}momentum, {prefix}momentum_final: expected 0 <= momentum <= "
                        f"momentum_final <= 1, got {p['momentum']}, {p['momentum_final']}")
    cs = p["crop_scale"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cs)
    if len(cs) != 2 or not numbers or not 0 < cs[0] <= cs[1] <= 1:
        problems.append(f"{prefix}crop_scale: expected [lo, hi] with 0 < lo <= hi <= 1, got {cs}")
    if p["pool"] not in ("token", "avg"):
        problems.append(f"{prefix}pool: expected 'token' or 'avg', got {p['pool']!r}")
    return (problems + _head_problems(p, prefix) + _label_problems(p, prefix)
            + _weights_problems(p, prefix))


def _head_problems(p: Mapping[str, Any], prefix: str) -> list[str]:
    """``head_norm`` one of the heads' norms (or null) and the heads' widths ``proj_dim``,
    ``proj_hidden_dim``, ``pred_hidden_dim`` integers >= 1 (else refused only when the heads
    are built, naming no setting)."""
    problems = []
    if p["head_norm"] not in NORMS:
        problems.append(f"{prefix}head_norm: expected one of {list(NORMS)}, got "
                        f"{p['head_norm']!r}")
    for key in ("proj_dim", "proj_hidden_dim", "pred_hidden_dim"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{prefix}{key}: expected an integer >= 1, got {v!r}")
    return problems


def _label_problems(p: Mapping[str, Any], prefix: str) -> list[str]:
    """``seg_classes`` null or an int >= 1, 0 <= ``presence_threshold`` < 1 (what
    :func:`~eofm.data_shards.landcover.class_fractions` takes), ``brightness`` >= 0 (a negative
    jitter amplitude would silently disable the jitter)."""
    problems = []
    k = p["seg_classes"]
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        problems.append(f"{prefix}seg_classes: expected null (labels from 'label') or an integer "
                        f">= 1 (the seg raster's number of classes), got {k!r}")
    if not 0.0 <= p["presence_threshold"] < 1.0:
        problems.append(f"{prefix}presence_threshold: expected a class fraction in [0, 1), got "
                        f"{p['presence_threshold']}")
    if p["brightness"] < 0:
        problems.append(f"{prefix}brightness: expected >= 0 (0: no jitter), got "
                        f"{p['brightness']}")
    return problems


def _weights_problems(p: Mapping[str, Any], prefix: str) -> list[str]:
    """``weights_init`` one of :data:`~eofm.models.adapt.INIT_MODES` and ``weights_rgb_bands``
    null or the names of the weights file's 3 input channels, whether ``weights`` is set or
    not (a setting that would only fail once a file is given is refused at once)."""
    problems = []
    if p["weights_init"] not in INIT_MODES:
        problems.append(f"{prefix}weights_init: expected one of {list(INIT_MODES)}, got "
                        f"{p['weights_init']!r}")
    rgb = p["weights_rgb_bands"]
    if rgb is not None and (not isinstance(rgb, (list, tuple)) or len(rgb) != 3
                            or not all(isinstance(b, str) and b for b in rgb)):
        problems.append(f"{prefix}weights_rgb_bands: expected null or the 3 band names of the "
                        f"weights' input channels (e.g. {list(RGB_BANDS)}), got {rgb!r}")
    return problems


class SoftCon(nn.Module):
    """SoftCon around any :class:`ViTEncoder`; ``forward`` returns ``{"loss": ..., ...}``."""

    def __init__(self, encoder: ViTEncoder, bands: Sequence[str], **params: Any) -> None:
        super().__init__()
        p = objective_params(params, DEFAULTS, "softcon", nullable=NULLABLE)
        for why in softcon_param_problems(p):
            raise ValueError(why)  # the first, as before
        if p["drop_ratio"] > 0 and not getattr(encoder, "supports_token_dropping", True):
            raise ValueError(f"objective.params.drop_ratio: {type(encoder).__name__} "
                             f"({getattr(encoder, 'model_name', '')}) cannot drop tokens (a CNN "
                             f"sees every pixel); set it to 0, got {p['drop_ratio']}")
        self.p = p
        self.encoder, self.bands = encoder, list(bands)
        self.drop_ratio, self.tau, self.loss_kind = float(p["drop_ratio"]), float(p["tau"]), p["loss"]
        tok = encoder.tokenizer
        if tok.bands is not None and list(tok.bands) != self.bands:
            raise ValueError(f"bands: the encoder's tokenizer expects {list(tok.bands)}, "
                             f"the objective was given {self.bands}")
        self.load_report: dict[str, Any] | None = None
        # the encoder's input GSD over the loaded sample's (the trainer's contract): the views
        # resample the loader's crop to img_size; :func:`build_softcon` sets it from the crop
        self.input_gsd_factor = 1.0
        self._warned_no_labels = False
        if p["weights"] and isinstance(encoder, ResNetEncoder):
            report = load_torchvision_resnet(
                encoder, read_state_dict(p["weights"]), source_bands=p["weights_rgb_bands"],
                init=p["weights_init"], source=str(p["weights"]))
            self.load_report = report.to_dict()
        elif p["weights"]:
            report = load_timm_vit(encoder, read_state_dict(p["weights"]),
                                   source_bands=p["weights_rgb_bands"], init=p["weights_init"],
                                   source=str(p["weights"]))
            self.load_report = report.to_dict()
        d = encoder.num_features
        self.projector = ProjectionMLP(d, p["proj_hidden_dim"], p["proj_dim"], norm=p["head_norm"])
        self.predictor = PredictionMLP(p["proj_dim"], p["pred_hidden_dim"], norm=p["head_norm"])
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for t in self._target_params():
            t.requires_grad_(False)
        self.sync_bn_layers = 0  # BatchNorm layers converted to SyncBatchNorm
        if p["sync_batchnorm"]:
            world = dist.get_world_size()
            self.sync_bn_layers = convert_sync_batchnorm(
                self, world, dist.device_for(dist.detect_env()))
            log.info("sync_batchnorm: %d BatchNorm layers %s", self.sync_bn_layers,
                     f"synchronised over {world} ranks" if world > 1 else
                     "left as they are (one process)")

    def _target_params(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def _pairs(self) -> list[tuple[Tensor, Tensor]]:
        """(target, online) parameter pairs for the EMA."""
        return [*zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True),
                *zip(self.target_projector.parameters(), self.projector.parameters(),
                     strict=True)]

    def _named_targets(self) -> list[tuple[str, Tensor]]:
        """The target parameters by state-dict name, in :meth:`_pairs` order."""
        return [*((f"target_encoder.{n}", t) for n, t in self.target_encoder.named_parameters()),
                *((f"target_projector.{n}", t)
                  for n, t in self.target_projector.named_parameters())]

    def ema_shadow(self) -> FP32Shadow | None:
        """The fp32 shadow of the target parameters: created (from the target as it is) when
        the target is held in lower precision (DeepSpeed bf16/fp16); None while it is fp32."""
        shadow = self._modules.get("ema_fp32")
        if shadow is None and any(t.dtype != torch.float32 for t in self._target_params()):
            shadow = self._make_shadow()
            log.info("softcon: the EMA target is held in %s (every parameter is cast, e.g. by "
                     "DeepSpeed); the EMA runs on an fp32 shadow (%d tensors, in checkpoints "
                     "as ema_fp32.*)", self._target_params()[0].dtype, len(shadow.names))
        return shadow  # type: ignore[return-value]

    def _make_shadow(self) -> FP32Shadow:
        shadow = FP32Shadow(self._named_targets())
        self.ema_fp32 = shadow
        return shadow

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A state dict that carries the fp32 shadow (``ema_fp32.*``) creates it before it is
        loaded, so a resume keeps the EMA exact; one without it loads as before."""
        if "ema_fp32" not in self._modules and any(k.startswith(prefix + "ema_fp32.")
                                                   for k in state_dict):
            self._make_shadow()
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """EMA update of the target after optimiser step ``step`` (0-based) of ``total``.

        fp32 targets are updated in place; low-precision ones through the fp32 shadow."""
        m = ema_momentum(step, total, self.p["momentum"], self.p["momentum_final"])
        self.last_momentum = m
        shadow = self.ema_shadow()
        if shadow is None:  # one fused pass per list, not two kernels per parameter
            targets, online = zip(*self._pairs(), strict=True)
            with torch.no_grad():
                torch._foreach_mul_(list(targets), m)
                torch._foreach_add_(list(targets), [o.detach() for o in online], alpha=1.0 - m)
        else:
            for (t, o), s in zip(self._pairs(), shadow.tensors(), strict=True):
                s.mul_(m).add_(o.detach().float(), alpha=1.0 - m)
                t.copy_(s)
        for tb, ob in zip(self.target_projector.buffers(), self.projector.buffers(), strict=True):
            tb.copy_(ob)
        for tb, ob in zip(self.target_encoder.buffers(), self.encoder.buffers(), strict=True):
            tb.copy_(ob)  # BatchNorm statistics of a ResNet; a ViT's fixed codes are equal

    def batch_inputs(self, batch: dict, device: torch.device) -> dict[str, Tensor]:
        """``labels``: (B, K) float label vectors from ``label`` or the ``seg`` raster; none
        (identity targets) when the batch has neither, which is logged once as a warning."""
        if "label" in batch and self.p["seg_classes"] is None:
            y = torch.as_tensor(batch["label"])
            if y.ndim != 2:
                raise ValueError(f"label: SoftCon needs (B, K) multi-hot or fractional label "
                                 f"vectors (a multilabel dataset), got shape {tuple(y.shape)}")
            return {"labels": y.to(device, non_blocking=True).float()}
        if self.p["seg_classes"] is not None:
            if "seg" not in batch:
                raise ValueError("objective.params.seg_classes: set, but the batch has no 'seg' "
                                 "raster (build the shards with --seg-dir)")
            seg = torch.as_tensor(batch["seg"]).to(device, non_blocking=True)
            return {"labels": class_fractions(seg, int(self.p["seg_classes"]),
                                              threshold=float(self.p["presence_threshold"]))}
        if not self._warned_no_labels:  # once per run, not per step
            self._warned_no_labels = True
            log.warning("softcon: the batch has no 'label' entry (and objective.params."
                        "seg_classes is not set), so every sample gets the identity target and "
                        "the loss is plain InfoNCE; build the shards with labels (multi-hot "
                        "labels.npy) or set seg_classes with a seg raster (warned once)")
        return {}

    def _target_mode(self) -> None:
        """The target encoder's modes for its forward: no drop path or dropout, but its
        BatchNorm layers (a ResNet's) normalise with the batch's statistics while the objective
        trains, as BYOL's, MoCo v3's and DINO's momentum encoders do. Running statistics would
        lag the data (at the start of continual pretraining they are the source model's, made
        for other input bands); the online encoder's are copied in after each step anyway."""
        self.target_encoder.train(False)
        if self.training:
            for m in self.target_encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(True)

    def _embed(self, encoder: ViTEncoder, x: Tensor, ids_keep: Tensor | None,
               kw: dict[str, Any]) -> Tensor:
        return encoder.pool(encoder.forward_features(x, ids_keep=ids_keep, **kw), self.p["pool"])

    def forward(self, x: Tensor, valid: Tensor | None = None, *,
                generator: torch.Generator | None = None, labels: Tensor | None = None,
                views: tuple[Tensor, Tensor] | None = None,
                ids_keep: Tensor | None = None, **tokenizer_kwargs) -> dict[str, Tensor]:
        """x: (B, C, H, W) normalised; valid: (B, H, W); labels: (B, K) or None (identity).

        ``views`` (view 1, view 2) and ``ids_keep`` replace the random draws (tests). A
        non-finite value at an invalid pixel is read as 0 (:func:`~.mae.finite_input`), as
        the masked-image objectives read it: the views' bilinear resampling would otherwise
        spread it into valid pixels and make the whole batch's loss NaN.
        """
        B, C = x.shape[:2]
        if len(self.bands) != C:
            raise ValueError(f"x: expected {len(self.bands)} bands {self.bands}, got {C}")
        x = finite_input(x, valid)
        if labels is not None and labels.shape[0] != B:
            raise ValueError(f"labels: expected {B} rows, got shape {tuple(labels.shape)}")
        size = view_size(self.encoder.img_size)  # (h, w): the views have the encoder's size
        kw1 = kw2 = tokenizer_kwargs
        if views is None:
            aug = {"crop_scale": self.p["crop_scale"], "flip": self.p["flip"],
                   "rot90": self.p["rot90"], "brightness": float(self.p["brightness"])}
            (v1, _, zoom1), (v2, _, zoom2) = (make_views(x, valid, size, generator, **aug)
                                              for _ in range(2))
            views = (v1, v2)
            gsd = tokenizer_kwargs.get("gsd")
            if gsd is not None:  # the loader's GSD -> each view's (a GSD-aware encoder)
                gsd = torch.as_tensor(gsd, device=x.device)
                kw1, kw2 = ({**tokenizer_kwargs, "gsd": gsd * z} for z in (zoom1, zoom2))
        v1, v2 = views
        if ids_keep is None and self.drop_ratio > 0:
            n = self.encoder.num_tokens
            ids_keep = random_masking(B, n, num_keep(n, 1.0 - self.drop_ratio), generator,
                                      x.device)[0]
        z = F.normalize(self.predictor(self.projector(
            self._embed(self.encoder, v1, ids_keep, kw1))), dim=-1)
        with torch.no_grad():
            self._target_mode()
            zt = F.normalize(self.target_projector(
                self._embed(self.target_encoder, v2, None, kw2)), dim=-1)
        z_all, offset = gather_global(zt)
        y_all = gather_global(labels)[0] if labels is not None else None
        targets = soft_targets(labels, y_all, offset, z_all.shape[0], B, x.device)
        loss = softcon_loss(z, z_all, targets, self.tau, self.loss_kind)
        return {"loss": loss, "targets": targets.detach()}

    def views(self, x: Tensor, valid: Tensor | None = None, *,
              generator: torch.Generator | None = None, **tokenizer_kwargs: Any
              ) -> dict[str, Tensor]:
        """For pictures (``logging.preview_every``): the two augmented views as ``forward``
        draws them (normalised (B, C, h, w) at the encoder's ``img_size``), their validity, and
        the view-1 pixels whose tokens the online encoder drops (Siamese token dropping;
        (B, C, h, w) bool: with a
        ``grouped`` tokenizer each band shows its own group's dropped cells, and a band in no
        group is never marked). A non-finite value at an invalid pixel is read as 0, as in
        :meth:`forward`."""
        B = x.shape[0]
        x = finite_input(x, valid)
        size = view_size(self.encoder.img_size)
        aug = {"crop_scale": self.p["crop_scale"], "flip": self.p["flip"],
               "rot90": self.p["rot90"], "brightness": float(self.p["brightness"])}
        (v1, vv1, _), (v2, vv2, _) = (make_views(x, valid, size, generator, **aug)
                                      for _ in range(2))
        dropped = torch.zeros_like(v1, dtype=torch.bool)
        if self.drop_ratio > 0:
            n, p = self.encoder.num_tokens, self.encoder.patch_size
            keep = random_masking(B, n, num_keep(n, 1.0 - self.drop_ratio), generator,
                                  x.device)[0]
            kept = torch.zeros(B, n, dtype=torch.bool, device=x.device).scatter(1, keep, True)
            dropped = self._dropped_pixels(~kept, size, p)
        return {"view1": v1, "valid1": vv1, "dropped1": dropped, "view2": v2, "valid2": vv2}

    def _dropped_pixels(self, dropped_tokens: Tensor, size: tuple[int, int],
                        patch_size: int) -> Tensor:
        """(B, N) dropped tokens (N = G*L, group-major) -> (B, C, h, w) bool per band for
        ``size`` (h, w): each band gets its group's cells (one group for a plain tokenizer);
        bands in no group have no token, so nothing of them is dropped."""
        B, C = dropped_tokens.shape[0], len(self.bands)
        tok = self.encoder.tokenizer
        grid = tok.grid_size(size)
        G = dropped_tokens.shape[1] // (grid[0] * grid[1])
        cells = dropped_tokens.view(B, G, *grid).float()
        pixels = F.interpolate(cells, scale_factor=patch_size, mode="nearest").bool()
        if getattr(tok, "groups", None) is None:
            return pixels.expand(B, C, *size)
        group_of = [G] * C  # index G: the all-False plane appended below (no group)
        for g, idx in enumerate(tok.group_index(self.bands)):
            for c in idx:
                group_of[c] = g
        pixels = torch.cat([pixels, pixels.new_zeros(B, 1, *size)], dim=1)
        return pixels.index_select(1, torch.tensor(group_of, device=pixels.device))

    def train_flops_per_sample(self) -> float:
        """6 x online params x kept tokens + 2 x target params x all tokens (+ heads); for an
        encoder that counts its own forward FLOPs (ResNet): 3 x online + 1 x target forward."""
        enc = self.encoder
        if callable(getattr(enc, "forward_flops", None)):
            heads = sum(p.numel() for p in [*self.projector.parameters(),
                                            *self.predictor.parameters()])
            n_head_t = sum(p.numel() for p in self.target_projector.parameters())
            return 4.0 * enc.forward_flops() + 6.0 * heads + 2.0 * n_head_t
        pre = enc.num_prefix_tokens
        keep = num_keep(enc.num_tokens, 1.0 - self.drop_ratio) + pre
        n_enc = sum(p.numel() for p in enc.parameters())
        heads = sum(p.numel() for p in [*self.projector.parameters(),
                                        *self.predictor.parameters()])
        n_head_t = sum(p.numel() for p in self.target_projector.parameters())
        return 6.0 * (n_enc * keep + heads) + 2.0 * (n_enc * (enc.num_tokens + pre) + n_head_t)


def card_fields(params: dict[str, Any]) -> dict[str, Any]:
    """Model-card pretraining rows for a SoftCon run's ``objective.params``."""
    p = {**DEFAULTS, **params}
    return {"token_drop_ratio": p["drop_ratio"], "loss": f"{p['loss']} (tau {p['tau']})",
            "ema_momentum": f"{p['momentum']} -> {p['momentum_final']} (cosine)",
            "continued_from": Path(str(p["weights"])).name if p["weights"] else None}


def check_strategy(cfg: TrainConfig) -> None:
    """Refuse strategies that shard parameters: the EMA update needs full online tensors."""
    r = cfg.runtime
    if r.strategy == "fsdp2" or (r.strategy == "deepspeed" and r.zero_stage == 3):
        what = "fsdp2" if r.strategy == "fsdp2" else "deepspeed with zero_stage=3"
        raise ValueError(f"runtime.strategy: softcon cannot run with {what}: its EMA target "
                         "update reads the full online parameters, which these strategies shard;"
                         " use ddp or deepspeed with zero_stage 1 or 2")


def check_softcon_params(params: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The problems of softcon's ``objective.params`` values (:func:`softcon_param_problems`),
    for the configuration when it loads (its builder: the same through :class:`SoftCon`)."""
    return softcon_param_problems(params, PARAM_PREFIX)


# no mask, no pixel decoder: it reads none of the typed objective fields (mask_ratio,
# norm_pix_loss, decoder_*), so one set for it is refused when the configuration loads
@register_objective("softcon", DEFAULTS, NULLABLE, check=check_softcon_params, fields=())
def build_softcon(cfg: TrainConfig, info: BandInfo) -> SoftCon:
    """SoftCon around the configured encoder; everything else in ``objective.params`` (the
    typed MAE fields are refused with the configuration, and by
    :func:`~.base.build_objective`).

    Its ``input_gsd_factor`` is that of the views: the loader's crop (``data.crop_size``, or
    the whole tile when it is null) resampled to ``model.img_size``
    (:func:`~.views.view_gsd_factor`), so the input contract states the GSD the encoder saw."""
    check_strategy(cfg)
    m = cfg.model
    encoder = run_encoder(m, info)
    objective = SoftCon(encoder, info.bands, **dict(cfg.objective.params))
    crop = cfg.data.crop_size
    objective.input_gsd_factor = view_gsd_factor((crop, crop) if crop else info.tile,
                                                 encoder.img_size)
    _check_batchnorm_batch(objective, cfg)
    return objective


def _check_batchnorm_batch(objective: SoftCon, cfg: TrainConfig) -> None:
    """Refuse a micro-batch of one sample per rank when a (per-rank) BatchNorm1d trains on it:
    torch raises at step 1 ('Expected more than 1 value per channel when training'). The
    heads' ``head_norm: bn`` normalises one pooled feature per sample; e.g. batch 16 under
    16 CPU ranks (torchrun --nproc_per_node=auto on a 16-core machine without GPUs)."""
    from ..config import ConfigError, micro_batch

    world, accum = dist.get_world_size(), cfg.optim.accum_steps
    micro = micro_batch(cfg, world)
    bn = [n for n, mod in objective.named_modules()
          if isinstance(mod, nn.BatchNorm1d) and not isinstance(mod, nn.SyncBatchNorm)]
    if micro < 2 and bn:
        raise ConfigError([
            f"data.batch_size: the micro-batch of {micro} sample (global {cfg.data.batch_size} "
            f"/ ({world} ranks x {accum} accum_steps)) is too small for softcon's BatchNorm "
            f"layers ({bn[0]}, objective.params.head_norm={objective.p['head_norm']!r}), which "
            f"need 2 or more samples per rank; raise data.batch_size, lower optim.accum_steps "
            f"or the number of ranks, or set objective.params.head_norm=ln"])
