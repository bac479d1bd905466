"""Fine-tuning tasks: dense labelled data, encoder + head models, freezing, layer-wise lr decay,
losses and metrics for classification, multi-label, segmentation and pixel regression.

Models take inputs already preprocessed from the encoder's input contract
(:func:`eofm.finetune.features.apply_contract`). Dense tasks predict at the target's own
resolution (the decoder upsamples to it), so targets are never resampled.

Encoders: a ViT, whose "layers" (lr decay, last-n freezing) are its transformer blocks, or the
ResNet-50, whose layers are its four stages ``layer1`` .. ``layer4`` after the stem
(``conv1``/``bn1``, layer 0 like a ViT's tokenizer); its dense head reads the four stage maps
(strides 4 .. 32, already a pyramid). See :func:`encoder_depth` and :func:`layer_id`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eofm.data_shards.manifest import MANIFEST_NAME, Manifest
from eofm.models import LinearHead, ResNetEncoder, SegmentationDecoder, ViTEncoder
from eofm.models.normalise import empty_bands, invalid_pixels
from eofm.models.resnet import STAGES

from .datasets import LabelledData, applied_s2_offset, key_order, mark_invalid, pick_modality
from .probe import class_metrics, multilabel_metrics

__all__ = ["DENSE", "FREEZE", "IGNORE_INDEX", "POOLS", "TASKS", "DenseData", "Evaluator",
           "FinetuneModel", "apply_freeze", "augment", "encoder_depth", "input_valid", "layer_id",
           "lrd_param_groups", "open_dense", "refuse_mixed_sizes", "split_indices",
           "task_loss"]

TASKS = ("classification", "multilabel", "segmentation", "regression")
DENSE = ("segmentation", "regression")
FREEZE = ("frozen", "last_n", "full")
POOLS = ("avg", "token")
IGNORE_INDEX = -100  # segmentation target of pixels that carry no label


class DenseData:
    """Per-pixel targets: ``data[i] -> (x (C, H, W) in the dataset's band order, target (H, W))``.

    The attributes :func:`~eofm.finetune.features.apply_contract` reads match
    :class:`~eofm.finetune.datasets.LabelledData` (``bands``, ``sensor``, ``stats``, ``nodata``,
    ``gsd``, ``size``, ``units``, ``processing_level``, ``wavelengths``); ``classes`` lists the
    segmentation class names when the dataset names them; ``modality`` is the dataset's
    modality read (None for in-memory data). Every sample has the size ``size``
    (:func:`open_dense` refuses data whose tiles differ: :func:`refuse_mixed_sizes`).
    """

    units = LabelledData.units
    processing_level = LabelledData.processing_level
    wavelengths = LabelledData.wavelengths

    def __init__(self, *, source: str, sensor: str, bands: Sequence[str],
                 stats: Mapping[str, Mapping[str, float]], nodata: Sequence[float | None],
                 gsd: float, keys: Sequence[str], pixels: Callable[[int], np.ndarray],
                 targets: Callable[[int], np.ndarray], classes: Sequence[str] = (),
                 sensors: Sequence[str] = (), modality: str | None = None,
                 s2_offset: dict | None = None) -> None:
        """Wrap per-index pixel and target readers with the modality's metadata (``sensors``:
        every sensor pooled into it, ``sensor`` first; empty means ``sensor`` alone;
        ``modality``: its name in the dataset; ``s2_offset``: the Sentinel-2 offset its pixels
        got at ingest, :func:`~eofm.finetune.datasets.applied_s2_offset`)."""
        self.source, self.sensor, self.bands = source, sensor, list(bands)
        self.modality, self.s2_offset = modality, s2_offset
        self.sensors = list(sensors) or [sensor]
        self.stats = {b: dict(stats.get(b, {})) for b in self.bands}
        self.nodata, self.gsd, self.keys = list(nodata), float(gsd), list(keys)
        self.classes, self.kind = list(classes), "dense"
        self._pixels, self._targets = pixels, targets
        if not self.keys:
            raise ValueError(f"{source}: no samples")
        x, y = self._pixels(0), self._targets(0)
        self.size: tuple[int, int] | None = (int(x.shape[-2]), int(x.shape[-1]))
        if y.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"{source}: target shape {tuple(y.shape)} does not match the "
                             f"pixels' {tuple(x.shape)}; expected (H, W) = {self.size}")

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(x (C, H, W), target (H, W)) of sample ``i``."""
        return self.pixels(i), self.target(i)

    def describe(self) -> dict:
        """A JSON-ready summary for reports (the fields of
        :meth:`~eofm.finetune.datasets.LabelledData.describe` that per-pixel targets have)."""
        return {"source": self.source, "modality": self.modality, "sensor": self.sensor,
                "sensors": self.sensors, "bands": self.bands, "samples": len(self),
                "kind": self.kind, "classes": self.classes,
                "size": list(self.size) if self.size else None, "gsd_m": self.gsd,
                "s2_offset": self.s2_offset}

    def pixels(self, i: int) -> np.ndarray:
        """(C, H, W) raw pixels of sample ``i``."""
        return self._pixels(int(i))

    def target(self, i: int) -> np.ndarray:
        """(H, W) target of sample ``i`` (a (1, H, W) raster is squeezed)."""
        y = np.asarray(self._targets(int(i)))
        return y[0] if y.ndim == 3 and y.shape[0] == 1 else y

    @classmethod
    def from_arrays(cls, x: np.ndarray, targets: np.ndarray, *, bands: Sequence[str],
                    sensor: str, gsd: float = 10.0, nodata: float | None = None,
                    source: str = "memory") -> DenseData:
        """In-memory data: x (N, C, H, W), targets (N, H, W); statistics computed from x."""
        stats = {b: {"mean": float(x[:, c].mean()), "std": float(x[:, c].std())}
                 for c, b in enumerate(bands)}
        return cls(source=source, sensor=sensor, bands=bands, stats=stats,
                   nodata=[nodata] * len(bands), gsd=gsd, keys=[str(i) for i in range(len(x))],
                   pixels=x.__getitem__, targets=targets.__getitem__)


def open_dense(path: str | Path, *, modality: str | None = None,
               prefer_bands: Sequence[str] | None = None) -> DenseData:
    """Segmentation/regression data from ``eofm-shard build --seg-dir`` (tar shards or zarr),
    samples in key order whatever order the build wrote them in (:func:`.datasets.key_order`:
    the held-out split is drawn over positions). ``modality`` picks one of several modalities;
    by default the only one, or the one holding most of ``prefer_bands`` (the encoder's
    contract bands), as :func:`.datasets.open_labelled` picks."""
    p = Path(path)
    if (p / MANIFEST_NAME).is_file():
        from eofm.data_shards.reader import ShardDataset

        reader = ShardDataset(str(p), shuffle_shards=False, rank=0, world_size=1, even=False,
                              errors="strict")
        manifest = reader.manifest
        mod = _modality(p, manifest, modality, prefer_bands)
        nodata = manifest.modalities[mod].nodata
        # the build's invalid pixels read as nodata in every band, as labelled data reads them
        samples = [(s["__key__"], mark_invalid(np.array(s[mod]), s[f"{mod}_valid"], nodata),
                    s.get("seg")) for s in reader]
        missing = [k for k, _, y in samples if y is None]
        if missing:
            raise ValueError(f"{p}: samples {missing[:3]} have no seg.npy; build the dataset "
                             "with `eofm-shard build --seg-dir TARGETS`")
        samples = [samples[i] for i in key_order([k for k, _, _ in samples])]
        keys, xs, ys = zip(*samples, strict=True)
        refuse_mixed_sizes(str(p), keys, [x.shape[-2:] for x in xs])
        pixels, targets = xs.__getitem__, [np.array(y) for y in ys].__getitem__
    elif (p / "zarr.json").is_file():
        from eofm.data_shards.zarr_store import ZarrDataset

        ds = ZarrDataset(p)
        manifest = ds.manifest
        mod = _modality(p, manifest, modality, prefer_bands)
        if "seg" not in ds.group:
            raise ValueError(f"{p}: the zarr store has no seg array; build it with --seg-dir")
        order = key_order(ds.keys)
        keys, arr, seg = [ds.keys[i] for i in order], ds.group[mod], ds.group["seg"]
        valid = ds.group.get(f"{mod}_valid", None)  # None: no mask array
        nodata = manifest.modalities[mod].nodata

        def pixels(i: int) -> np.ndarray:
            v = None if valid is None else np.asarray(valid[order[i]]).astype(bool)
            return mark_invalid(np.asarray(arr[order[i]]), v, nodata)

        targets = lambda i: np.asarray(seg[order[i]])  # noqa: E731
    else:
        raise ValueError(f"{p}: expected an eofm dataset with per-pixel targets (tar shards "
                         "with manifest.json or a .zarr store from `eofm-shard build --seg-dir`)")
    info = manifest.modalities[mod]
    classes = manifest.labels.classes if manifest.labels is not None else []
    return DenseData(source=str(p), sensor=info.sensor, bands=info.bands, stats=info.stats,
                     nodata=info.nodata, gsd=info.gsd_m, keys=keys, pixels=pixels,
                     targets=targets, classes=classes, sensors=info.sensor_ids,
                     modality=mod, s2_offset=applied_s2_offset(manifest, mod))


def refuse_mixed_sizes(source: str, keys: Sequence[str],
                       sizes: Sequence[tuple[int, ...]]) -> None:
    """ValueError when the samples ``keys`` of dense data at ``source`` have different sizes
    (H, W) (``sizes``, one per key): a batch stacks whole targets, so every tile must have one
    size. It names two keys of different sizes and the build option that cuts equal tiles."""
    first = tuple(int(v) for v in sizes[0])
    for key, size in zip(keys, sizes, strict=True):
        if (got := tuple(int(v) for v in size)) != first:
            side = min(int(v) for hw in sizes for v in hw)  # a tile every sample holds
            raise ValueError(
                f"{source}: dense samples have different sizes: {keys[0]} is "
                f"{first[0]}x{first[1]} px, {key} is {got[0]}x{got[1]} px; expected one size "
                f"for every sample (batches stack whole targets): build the dataset with "
                f"`eofm-shard build --tile N` (e.g. --tile {side}) so every tile is N x N px")


def _modality(path: Path, manifest: Manifest, modality: str | None,
              prefer_bands: Sequence[str] | None) -> str:
    """The modality asked for, the only one, or the one holding most of ``prefer_bands`` (the
    rule labelled data follows); refuses a dataset without per-pixel targets."""
    if manifest.labels is None or manifest.labels.kind != "segmentation":
        got = manifest.labels.kind if manifest.labels else "none"
        raise ValueError(f"{path}: expected per-pixel targets (labels kind 'segmentation'), "
                         f"got {got}")
    return pick_modality(str(path), manifest, modality, prefer_bands)


def split_indices(n: int, test_fraction: float, seed: int,
                  labels: np.ndarray | None = None,
                  groups: Sequence[str] | np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``round(test_fraction * units)`` units of each stratum held out,
    drawn with ``seed``.

    Units are the samples, or with ``groups`` (one id per sample, e.g. the image a tile was cut
    from: :func:`~eofm.finetune.datasets.tile_source` of its key) whole groups, so no group
    has samples on both sides. Strata are the classes when ``labels`` (N,) are given (a
    group's: that of its first sample), else one. With every group distinct the split is the
    per-sample one. Should the rounding hold out nothing, one unit of the largest stratum is
    held out (given two units or more). A single group cannot be split: a ValueError that
    names ``data.group_tiles=false`` and ``data.test_path``.
    """
    units, first = _split_units(n, groups)
    if groups is not None and len(first) == 1 and n > 1 and test_fraction > 0:
        raise ValueError(
            f"data.group_tiles: all {n} samples are tiles of one image ({groups[0]!r}); the "
            "held-out split keeps each image's tiles on one side, so one image leaves nothing "
            "to hold out. Give a separate test set (data.test_path, e.g. another image built "
            "with eofm-shard build --tile), or split the tiles one by one with "
            "data.group_tiles=false (held-out tiles then neighbour training tiles, and overlap "
            "them when --stride < --tile: expect optimistic metrics)")
    rng = np.random.default_rng(seed)
    unit_labels = labels[first] if labels is not None and labels.ndim == 1 else None
    strata = ([np.flatnonzero(unit_labels == c) for c in np.unique(unit_labels)]
              if unit_labels is not None else [np.arange(len(first))])
    drawn = [s[rng.permutation(len(s))] for s in strata]
    take = [round(test_fraction * len(s)) for s in strata]
    if test_fraction > 0 and not sum(take) and len(first) >= 2:
        take[int(np.argmax([len(s) for s in strata]))] = 1
    held = (np.concatenate([d[:k] for d, k in zip(drawn, take, strict=True)]) if drawn
            else np.zeros(0, np.int64))
    test_idx = np.flatnonzero(np.isin(units, held)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    if not len(train_idx) or (test_fraction > 0 and not len(test_idx)):
        raise ValueError(f"data.test_fraction={test_fraction} leaves {len(train_idx)} training "
                         f"and {len(test_idx)} test samples of {n}")
    return train_idx, test_idx


def _split_units(n: int, groups: Sequence[str] | np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(unit of each sample, first sample of each unit) for :func:`split_indices`: units
    numbered by first appearance, so distinct groups number as the samples do."""
    if groups is None:
        return np.arange(n), np.arange(n)
    if len(groups) != n:
        raise ValueError(f"groups: expected one per sample ({n}), got {len(groups)}")
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse.ravel()], first[order]


def augment(x: Tensor, target: Tensor, valid: Tensor | None, gen: torch.Generator
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-sample random h/v flips (and transposes of square tiles: all 8 dihedral views), the
    same on dense targets; x (B, C, h, w), dense target/valid (B, H, W)."""
    dense = target.ndim == 3
    flips = torch.rand(3, x.shape[0], generator=gen) < 0.5
    square = x.shape[-1] == x.shape[-2] and (not dense or target.shape[-1] == target.shape[-2])

    def apply(t: Tensor) -> Tensor:
        for k, fn in enumerate((lambda a: a.flip(-1), lambda a: a.flip(-2),
                                lambda a: a.transpose(-1, -2))):
            if k == 2 and not square:
                continue
            m = flips[k].to(t.device).view(-1, *[1] * (t.ndim - 1))
            t = torch.where(m, fn(t), t)
        return t

    x = apply(x)
    if dense:
        target = apply(target)
        valid = apply(valid) if valid is not None else None
    return x, target, valid


def input_valid(x: np.ndarray | Tensor, index: Sequence[int], nodata: Sequence[float | None],
                device: torch.device | str = "cpu") -> Tensor:
    """(B, H, W) bool: the pixels of raw x (B, C, H, W) that normalisation feeds as data.

    The fed bands (``index``, with their ``nodata`` values) are judged by normalisation's own
    rule (:func:`~eofm.models.normalise.invalid_pixels`): a pixel is invalid where it is not
    finite or nodata in a band that has data in its sample; a band with no data at all in the
    sample (EnMAP's water-vapour bands) is zeroed alone and leaves the other bands' pixels
    valid. A sample in which no fed band has data is fed as zeros only: none of its pixels is
    valid."""
    idx = list(index)
    if isinstance(x, Tensor):  # cast first off the CPU, as Preprocess does (uint16: few kernels)
        t = (x if x.device.type == "cpu" else x.to(torch.float32))[:, idx].to(torch.float32)
    else:
        t = torch.from_numpy(np.asarray(np.asarray(x)[:, idx], dtype=np.float32))
    t = t.to(device)
    nd = list(nodata)
    no_data = empty_bands(t, nd).all(dim=1)  # (B,): every fed band empty in the sample
    return ~(invalid_pixels(t, nd)[:, 0] | no_data[:, None, None])


EMBEDDING_PARTS = ("tokenizer", "cls_token", "pos_table", "pos_embed", "conv1", "bn1")  # layer 0


def encoder_depth(encoder: nn.Module) -> int:
    """Layers that lr decay and last-n freezing count: a ViT's blocks, a ResNet's 4 stages."""
    return len(STAGES) if isinstance(encoder, ResNetEncoder) else len(encoder.blocks)


class FinetuneModel(nn.Module):
    """Encoder + task head. x: (B, C, H, W) preprocessed -> logits (B, K), dense (B, K, H', W')
    or regression (B, H', W'), with (H', W') = ``size`` (default the input size).

    Classification and multi-label pool the final tokens into a LinearHead with fc-norm
    (LayerNorm): ``pool`` "avg" is MAE's global-pool recipe, the mean of the patch tokens
    *before* the encoder's final norm (which then goes unused and is frozen, as MAE drops it)
    followed by the fc-norm; "token" is the normed CLS token. Dense tasks run a
    SegmentationDecoder over ``forward_intermediates`` of up to four evenly spaced blocks (the
    last included). For a ResNet both pools give the global-average feature (it has no final
    norm), and the decoder reads the four stage maps as they are (strides 4, 8, 16, 32; 256 ..
    2048 channels).
    """

    def __init__(self, encoder: ViTEncoder | ResNetEncoder, task: str, num_outputs: int, *,
                 pool: str = "avg",
                 dropout: float = 0.0, decoder_channels: int = 128,
                 encoder_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
        if num_outputs < 1:
            raise ValueError(f"num_outputs: expected >= 1, got {num_outputs}")
        self.encoder, self.task, self.pool = encoder, task, pool
        # MAE's global pool + fc-norm: mean of the pre-norm tokens (see the class docstring)
        self.pool_prenorm = (task not in DENSE and pool == "avg"
                             and isinstance(encoder, ViTEncoder))
        kw = dict(encoder_kwargs or {})
        self.bands, self.gsd = kw.get("bands"), kw.get("gsd")
        for name in ("wavelengths", "bandwidths"):
            value = kw.get(name)
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32)
                                 if value is not None else None, persistent=False)
        depth = encoder_depth(encoder)
        n = min(4, depth)
        self.indices = [depth * (i + 1) // n - 1 for i in range(n)]
        if isinstance(encoder, ResNetEncoder):  # the stage maps are already a pyramid
            info = [encoder.feature_info[i] for i in self.indices]
            dims: int | list[int] = [f["num_chs"] for f in info]
            scales, stride = [1.0] * n, info[0]["reduction"]
        else:
            dims, scales, stride = encoder.embed_dim, [4.0, 2.0, 1.0, 0.5][:n], encoder.patch_size
        if task in DENSE:
            self.head: nn.Module = SegmentationDecoder(
                dims, num_outputs if task == "segmentation" else 1, stride,
                channels=decoder_channels, scales=scales, dropout=dropout)
        else:
            self.head = LinearHead(encoder.embed_dim, num_outputs, norm="ln", dropout=dropout)
        self._frozen: list[nn.Module] = []
        if self.pool_prenorm:
            encoder.norm.requires_grad_(False)  # unused: the head's fc-norm replaces it

    def encoder_kwargs(self) -> dict[str, Any]:
        """Band names, spectra and GSD for the encoder's forward."""
        return {"bands": self.bands, "wavelengths": self.wavelengths,
                "bandwidths": self.bandwidths, "gsd": self.gsd}

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """x: (B, C, H, W) -> logits (see the class docstring)."""
        kw = self.encoder_kwargs()
        if self.task in DENSE:
            maps = self.encoder.forward_intermediates(x, self.indices, "NCHW", norm=True, **kw)
            out = self.head(maps, size=tuple(size) if size is not None else tuple(x.shape[-2:]))
            return out[:, 0] if self.task == "regression" else out
        if self.pool_prenorm:
            kw["norm"] = False
        return self.head(self.encoder.pool(self.encoder.forward_features(x, **kw),
                                           "avg" if self.pool == "avg" else "token"))

    def train(self, mode: bool = True) -> FinetuneModel:
        """Train/eval mode; frozen parts stay in eval mode (no drop path or dropout noise)."""
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self


def check_freeze(encoder: nn.Module, mode: str, last_n: int = 0) -> None:
    """ValueError unless ``mode`` is one of :data:`FREEZE` and, for ``last_n``, ``last_n`` is
    1 .. the encoder's depth (its blocks; a ResNet's stages): checked as soon as the encoder is
    loaded, before any data is read, and again by :func:`apply_freeze`."""
    if mode not in FREEZE:
        raise ValueError(f"encoder.freeze: expected one of {FREEZE}, got {mode!r}")
    depth = encoder_depth(encoder)
    if mode == "last_n" and not 1 <= last_n <= depth:
        what = "the ResNet's stages" if isinstance(encoder, ResNetEncoder) else "the encoder's depth"
        raise ValueError(f"encoder.last_n: expected 1..{depth} ({what}), got {last_n}")


def apply_freeze(model: FinetuneModel, mode: str, last_n: int = 0) -> int:
    """Freeze the encoder: ``frozen`` (all), ``last_n`` (all but the last n blocks and the
    final norm; for a ResNet all but the last n stages) or ``full`` (nothing); the head always
    trains. The final norm stays frozen whatever the mode when the model pools before it
    (``model.pool_prenorm``: it takes no part in the forward). ``last_n`` freezes every parameter whose :func:`layer_id` is below the last n
    layers' (tokenizer, class token, a learned position table ``pos_table``, earlier blocks).
    Frozen parts stay in eval mode (a ResNet's frozen BatchNorm statistics are kept). Returns
    trainable params."""
    check_freeze(model.encoder, mode, last_n)
    enc = model.encoder
    depth = encoder_depth(enc)
    resnet = isinstance(enc, ResNetEncoder)
    for p in model.parameters():
        p.requires_grad_(True)
    model._frozen = []
    if mode == "frozen":
        model._frozen = [enc]
    elif mode == "last_n" and resnet:
        model._frozen = [enc.conv1, enc.bn1, *(getattr(enc, s) for s in STAGES[: depth - last_n])]
    elif mode == "last_n":
        model._frozen = [enc.tokenizer, *enc.blocks[: depth - last_n]]
    for m in model._frozen:
        m.requires_grad_(False)
    if model.pool_prenorm:
        enc.norm.requires_grad_(False)
    if mode == "last_n":  # by layer_id, as lr decay counts: class token and positions too
        for name, p in model.named_parameters():
            if layer_id(name, depth) <= depth - last_n:
                p.requires_grad_(False)
    model.train(model.training)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_id(name: str, depth: int) -> int:
    """Layer of a FinetuneModel parameter: 0 tokenizer, class token and positions (the
    learned table ``pos_table``; ``pos_embed`` is a fixed buffer); i + 1 for
    ``encoder.blocks.i``; ``depth + 1`` for the final norm and the head (MAE's rule). A
    ResNet's stem (``conv1``, ``bn1``) is 0 and ``encoder.layer<k>`` is k (depth 4)."""
    if name.startswith("encoder."):
        rest = name[len("encoder."):]
        if rest.split(".")[0] in EMBEDDING_PARTS:
            return 0
        if rest.startswith("blocks."):
            return int(rest.split(".")[1]) + 1
        stage = rest.split(".")[0]
        if stage in STAGES:
            return STAGES.index(stage) + 1
    return depth + 1


def lrd_param_groups(model: FinetuneModel, weight_decay: float, layer_decay: float,
                     no_decay_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """AdamW groups per (layer, decay) with ``lr_scale = layer_decay ** (depth + 1 - layer)``.

    Weight-decay exemptions follow :func:`eofm.pretrain.optim.param_groups` (norms, biases,
    tokens); frozen parameters are left out. ``pretrain.optim.set_lr`` applies ``lr_scale``.
    """
    from eofm.pretrain.optim import param_groups

    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay: expected a value in (0, 1], got {layer_decay}")
    plain = {id(p) for g in param_groups(model, weight_decay, no_decay_names)
             if g["weight_decay"] == 0.0 for p in g["params"]}
    depth = encoder_depth(model.encoder)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, depth), id(p) not in plain
        g = groups.setdefault((lid, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "layer_id": lid,
            "lr_scale": layer_decay ** (depth + 1 - lid)})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def task_loss(task: str, out: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """CE (classification), BCE-with-logits (multilabel), CE over labelled pixels
    (segmentation: ``target`` IGNORE_INDEX elsewhere) or MSE over ``valid`` pixels
    (regression); an all-ignored batch gives 0 with a gradient, never NaN."""
    if task == "classification":
        return F.cross_entropy(out, target)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(out, target.to(out.dtype))
    if task == "segmentation":
        total = F.cross_entropy(out.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (target != IGNORE_INDEX).sum().clamp(min=1)
    if task == "regression":
        w = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        err = torch.where(w, out.float() - target.float(), 0.0)
        return err.pow(2).sum() / w.sum().clamp(min=1)
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


class Evaluator:
    """Accumulates predictions for a task's metrics; plain ``state()`` merges across ranks."""

    def __init__(self, task: str, num_outputs: int) -> None:
        self.task, self.k = task, num_outputs
        self.labels: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.confusion = np.zeros((num_outputs, num_outputs), np.int64)
        self.sums = np.zeros(6, np.float64)  # count, sum e, sum |e|, sum e^2, sum y, sum y^2

    def update(self, out: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch: model output, target as in :func:`task_loss`, regression ``valid``."""
        out, target = out.detach().float().cpu(), target.detach().cpu()
        if self.task in ("classification", "multilabel"):
            self.labels.append(target.numpy())
            self.scores.append(out.numpy())
        elif self.task == "segmentation":
            keep = target != IGNORE_INDEX
            pred, true = out.argmax(1)[keep].numpy(), target[keep].numpy()
            self.confusion += np.bincount(true * self.k + pred, minlength=self.k ** 2
                                          ).reshape(self.k, self.k)
        else:
            keep = valid.cpu() if valid is not None else torch.ones_like(target, dtype=torch.bool)
            y, e = target[keep].double().numpy(), (out[keep].double() - target[keep]).numpy()
            self.sums += [len(y), e.sum(), np.abs(e).sum(), (e ** 2).sum(), y.sum(), (y ** 2).sum()]

    def state(self) -> dict[str, Any]:
        """Plain accumulated state (for ``all_gather_object``)."""
        return {"labels": self.labels, "scores": self.scores, "confusion": self.confusion,
                "sums": self.sums}

    def merge(self, states: Sequence[Mapping[str, Any]]) -> Evaluator:
        """Add other evaluators' states into this one; returns self."""
        for s in states:
            self.labels += s["labels"]
            self.scores += s["scores"]
            self.confusion += s["confusion"]
            self.sums += s["sums"]
        return self

    def result(self, target_scale: float = 1.0) -> dict[str, Any]:
        """Accuracy (classification), micro/macro mAP (multilabel), mIoU (segmentation) or
        RMSE (regression; errors times ``target_scale`` to report target units)."""
        if self.task in ("classification", "multilabel"):
            y, s = np.concatenate(self.labels), np.concatenate(self.scores)
            if self.task == "classification":
                return {**class_metrics(y, s.argmax(1), self.k), "samples": len(y)}
            return {**multilabel_metrics(y, s), "samples": len(y)}
        if self.task == "segmentation":
            c = self.confusion
            tp, union = np.diag(c), c.sum(0) + c.sum(1) - np.diag(c)
            iou = [float(t / u) if u else None for t, u in zip(tp, union, strict=True)]
            present = [v for v in iou if v is not None]
            return {"miou": float(np.mean(present)) if present else 0.0, "per_class_iou": iou,
                    "pixel_accuracy": float(tp.sum() / max(c.sum(), 1)),
                    "pixels": int(c.sum()), "confusion": c.tolist()}
        n, se, sae, se2, sy, sy2 = self.sums
        m = max(n, 1.0)
        var = sy2 / m - (sy / m) ** 2
        return {"rmse": float(np.sqrt(se2 / m)) * target_scale,
                "mae": float(sae / m) * target_scale, "bias": float(se / m) * target_scale,
                "r2": float(1 - (se2 / m) / var) if var > 0 else None, "pixels": int(n)}
