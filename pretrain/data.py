"""Glue between a shard dataset and a model: the loader, the device-side normalisation, and
the band metadata (names, wavelengths, GSD) read from the dataset's manifest and sensors."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eofm.data_shards.loader import ShardLoader
from eofm.data_shards.manifest import Manifest, load_manifest
from eofm.data_shards.reader import ShardDataset
from eofm.data_shards.remote import redact
from eofm.data_shards.sensors import get_sensor, joint_processing_level
from eofm.data_shards.shared_memory import check_shared_memory
from eofm.data_shards.transforms import (
    ZOOM_KEY,
    Compose,
    RandomFlipRot,
    RandomResizedCrop,
    band_statistics,
    normalize_with_band_valid,
)
from eofm.models import InputContract, ViTEncoder

from .config import ConfigError, TrainConfig, micro_batch
from .distributed import all_gather_object, detect_env

log = logging.getLogger(__name__)

# area share of the tile the random resized crop takes, for an objective that declares no range
# of its own (``crop_scale`` of ``eofm.pretrain.objectives.base.register_objective``)
CROP_SCALE = (0.35, 1.0)


@dataclass
class BandInfo:
    """What the model needs to know about the input bands, in the order they are fed."""

    modality: str
    sensor: str
    bands: list[str]
    wavelengths: Tensor  # (C,) nm (SAR: the registry's stand-in code)
    bandwidths: Tensor  # (C,) nm
    gsd_m: float
    shift: Tensor  # (C,) normalisation: (x - shift) / scale
    scale: Tensor
    stats: dict[str, dict]  # the manifest's per-band statistics for these bands
    tile: tuple[int, int] | None = None  # (H, W) of the stored tiles; None when they differ
    sensors: tuple[str, ...] = ()  # every sensor pooled into the modality, ``sensor`` first
    # (C,) the raw no-data value of each band (None: none), the manifest's; () for none at
    # all. Band-pixels at it are normalised to 0 even where their pixel is valid (see
    # ``eofm.data_shards.transforms.normalize``) and are never reconstruction targets
    # (:func:`prepare_batch`)
    nodata: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        """An empty ``sensors`` means ``sensor`` alone."""
        self.sensors = tuple(self.sensors) or (self.sensor,)

    def to_device(self, device: torch.device) -> BandInfo:
        """Copy with tensors on ``device``."""
        return BandInfo(self.modality, self.sensor, self.bands, self.wavelengths.to(device),
                        self.bandwidths.to(device), self.gsd_m, self.shift.to(device),
                        self.scale.to(device), self.stats, self.tile, self.sensors,
                        self.nodata)


def band_info(manifest: Manifest, modality: str, bands: list[str] | None) -> BandInfo:
    """Band metadata for ``modality`` (``bands`` by name, default all) from the manifest."""
    info = manifest.modalities[modality]
    sensor = get_sensor(info.sensor)
    names = [sensor.canonical(b) for b in bands] if bands else list(info.bands)
    shift, scale = band_statistics(manifest, modality, names)
    table = [sensor.band(b) for b in names]
    tile = (int(info.shape[-2]), int(info.shape[-1])) if len(info.shape) >= 2 else None
    stored = dict(zip(info.bands, info.nodata, strict=True)) if info.nodata else {}
    return BandInfo(
        modality, info.sensor, names,
        torch.tensor([b.center_wavelength_nm for b in table], dtype=torch.float32),
        torch.tensor([b.bandwidth_nm for b in table], dtype=torch.float32),
        info.gsd_m, shift, scale, {b: info.stats[b] for b in names}, tile,
        tuple(info.sensor_ids), tuple(stored.get(b) for b in names),
    )


def sample_gsd(info: BandInfo, crop_size: int | None) -> float:
    """GSD (m) of the samples the loader ships: the native GSD, scaled by tile / ``crop_size``
    when the random resized crop resamples a tile to ``crop_size`` px.

    The value is that of a full-tile crop; the crop's zoom (area share in the objective's range
    ``(lo, hi)``, :func:`loader_crop_scale`: :data:`CROP_SCALE` unless the objective declares
    its own, SatMAE++ (0.6, 1.0)) also shows the encoder finer pixels, down to ``sqrt(lo)``
    times it. Without a crop, or with tiles of different sizes (``info.tile`` None), it is the
    native GSD.
    """
    if not crop_size or info.tile is None:
        return float(info.gsd_m)
    return float(info.gsd_m) * math.sqrt(info.tile[0] * info.tile[1]) / crop_size


def input_gsd_note(info: BandInfo, crop_size: int | None, img_size: Sequence[int],
                   gsd_factor: float = 1.0) -> str | None:
    """How the input GSD follows from the native one, for the model card; None when equal."""
    gsd = sample_gsd(info, crop_size) * gsd_factor
    if math.isclose(gsd, info.gsd_m, rel_tol=1e-6):
        return None
    out = f"{gsd:g} m = native {info.gsd_m:g} m"
    if crop_size and info.tile is not None and sample_gsd(info, crop_size) != info.gsd_m:
        tile = " x ".join(str(t) for t in info.tile)
        out += (f" x {sample_gsd(info, crop_size) / info.gsd_m:g} (random resized crops of the "
                f"{tile} px tiles resampled to {crop_size} px, for a full-tile crop)")
    if gsd_factor != 1.0:
        size = " x ".join(str(int(v)) for v in img_size)
        loaded = (f"{crop_size} px crop" if crop_size else
                  f"{' x '.join(str(t) for t in info.tile)} px tile" if info.tile is not None
                  else "loaded sample")
        how = (f"downsampled {gsd_factor:g}x" if gsd_factor > 1.0
               else f"upsampled {1.0 / gsd_factor:g}x")
        out += f" x {gsd_factor:g} (the {loaded} {how} on the device to the {size} px model input)"
    return out


class DatasetBuildError(RuntimeError):
    """``data.build_from`` could not be built into ``data.path`` (the CLI prints it, no trace)."""


BUILD_VISIBLE_WAIT_S = 60.0  # how long the other ranks wait to see rank 0's build (NFS caches)
BUILD_WAIT = timedelta(hours=24)  # how long the other ranks wait for rank 0 to build at all


def ensure_dataset(cfg: TrainConfig, rank: int) -> None:
    """Build ``data.path`` from ``data.build_from`` on rank 0 when it holds no manifest yet,
    while the other ranks wait for rank 0's outcome. :class:`DatasetBuildError` on every rank
    when the build fails (each names the failure, not a broken connection to rank 0), and on a
    rank that does not see the dataset rank 0 built (``data.path`` on a node's own disk: on
    several nodes it must be on a filesystem all of them share)."""
    import time
    from pathlib import Path

    from eofm.data_shards.cli import main as shard_main
    from eofm.data_shards.manifest import MANIFEST_NAME

    from . import distributed as dist

    d = cfg.data
    if not d.build_from:
        return
    manifest = Path(d.path) / MANIFEST_NAME
    outcome: str | None = None  # rank 0's: None (nothing built), "built", or why it failed
    error: Exception | None = None
    # the others wait for rank 0's build outside the default group's timeout (nccl: 10 min)
    with dist.patient_group(BUILD_WAIT) as group:
        # only rank 0 looks before the build: another node's cached "missing" would outlive it
        if rank == 0 and not manifest.exists():
            what = f"building {d.path} from {', '.join([d.build_from, *d.build_more])} failed"
            try:
                status = shard_main(["build", d.build_from, *d.build_more, "--out", d.path,
                                     "--quiet", *d.build_args])
                outcome = "built" if status == 0 else (
                    f"data.build_from: {what} (eofm-shard exit status {status}; its error is "
                    f"above, in rank 0's output)")
            except (Exception, SystemExit) as e:  # SystemExit: argparse refused build_args
                error, outcome = e, f"data.build_from: {what} on rank 0: {type(e).__name__}: {e}"
        outcome = dist.broadcast_object(outcome, group=group)
    if error is not None:
        raise error
    if outcome not in (None, "built"):
        raise DatasetBuildError(outcome)
    deadline = time.monotonic() + BUILD_VISIBLE_WAIT_S
    while outcome == "built" and not manifest.exists():
        if time.monotonic() > deadline:
            raise DatasetBuildError(
                f"data.path: rank 0 built {d.path} from data.build_from, but rank {rank} does "
                f"not see it ({manifest} is missing here after {BUILD_VISIBLE_WAIT_S:g} s): "
                f"with several nodes, data.path must be on a filesystem every node shares (not "
                f"a node's local disk), or be built on every node beforehand with eofm-shard "
                f"build")
        time.sleep(0.5)


AUTO_WORKERS_MAX = 8


def resolve_workers(requested: int, local_world_size: int = 1,
                    full_batches: int | None = None) -> int:
    """``data.num_workers``, with -1 (auto) made the CPUs this rank may use, minus one for the
    training process, between 1 and :data:`AUTO_WORKERS_MAX`. A process whose CPU affinity is
    narrower than the machine (a SLURM task with ``--cpus-per-task``) counts its own CPUs;
    otherwise the machine's are shared among the node's ``local_world_size`` ranks. Ranks that
    torchrun started share the affinity they inherited from it even when it is narrower (a
    container's cpuset, a SLURM task running torchrun as launch/slurm/pretrain.sbatch does).

    ``full_batches``: this rank's samples // micro-batch. Each worker reads its own part of the
    rank's samples and drops its partial last batch, so auto never starts more workers than
    there are full batches (more would leave workers, or whole epochs, empty on a many-core
    node); an explicit count is kept and checked by :func:`build_loader`."""
    if requested >= 0:
        return requested
    return max(1, min(_auto_workers(local_world_size),
                      full_batches if full_batches is not None else AUTO_WORKERS_MAX))


def agree_workers(workers: int) -> int:
    """The fewest of every rank's auto worker count (``data.num_workers=-1``), on every rank.

    Collective. Each worker drops its own partial last batch, so ranks with different counts
    would have epochs of different lengths: with ``schedule.epochs`` a different total of steps
    and lr curve per rank (DDP replicas drifting apart, then a hang when the shorter rank
    stops), and an elastic resume would be refused. Nodes with different CPU counts in one job,
    or an uneven SLURM task layout, make the counts differ."""
    counts = all_gather_object(int(workers))
    agreed = min(counts)
    if agreed != workers:
        log.info("data.num_workers=-1: %d workers on this rank (the fewest of every rank's %s), "
                 "so every rank's epoch has the same number of batches", agreed, counts)
    return agreed


def _auto_workers(local_world_size: int) -> int:
    """The CPUs this rank may use minus one, between 1 and :data:`AUTO_WORKERS_MAX`."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        mine = os.cpu_count() or 1
    # torchrun forks all the node's ranks from one agent: they share its affinity, however
    # narrow (with --numa-binding they share a NUMA node's: this undercounts, safely)
    own = mine < (os.cpu_count() or mine) and detect_env().launcher != "torchrun"
    per_rank = mine if own else mine // max(1, local_world_size)
    return max(1, min(AUTO_WORKERS_MAX, per_rank - 1))


def loader_crop_scale(cfg: TrainConfig) -> tuple[float, float]:
    """Area range of the loader's random resized crop for ``cfg.objective.name``: the range the
    objective registered (``crop_scale``), else :data:`CROP_SCALE`.

    Read from the registry by name, as the loader is built before the objective. The crop
    resamples by nearest neighbour (exact integer pixels and nodata; a box smaller than
    ``data.crop_size`` is upsampled by repeating rows and columns)."""
    from .objectives.base import declared_crop_scale  # lazy: the objectives import this module

    return declared_crop_scale(cfg.objective.name) or CROP_SCALE


def build_loader(cfg: TrainConfig, rank: int, world_size: int, local_world_size: int = 1
                 ) -> tuple[ShardLoader, BandInfo]:
    """The training loader of this rank (micro-batch = global / (world * accum)) and its bands
    (``local_world_size``: ranks on this node, for ``data.num_workers=-1``).

    Every micro-batch is full: each DataLoader worker leaves out its partial last batch of an
    epoch (fewer than a micro-batch of samples, so up to ``workers x (micro - 1)`` per rank;
    the ``N % world`` samples past the last full rank share are left out as well), so a step
    always holds ``data.batch_size`` samples at its lr, every rank takes the same number of
    batches, and a compiled model sees one batch shape. Which samples are left out changes
    with each epoch's shuffle. A rank whose workers' parts are all smaller than a micro-batch
    is refused (``ConfigError``): its epochs would be empty. With ``data.crop_size``, each
    sample is a random resized crop of area share :func:`loader_crop_scale` (the objective's)."""
    d = cfg.data
    manifest = load_manifest(d.path)
    modality = d.modality(list(manifest.modalities))
    if modality is None:  # validate_against reports this before any work
        raise ValueError(f"data.modalities: name one of {sorted(manifest.modalities)}")
    try:
        info = band_info(manifest, modality, d.bands.get(modality))
    except ValueError as e:  # bands without statistics: name the dataset and the way out
        raise ValueError(f"data.path {redact(d.path)}: {e}; leave them out of data.bands, "
                         f"or if the statistics are wrong, recompute them "
                         f"with `eofm-shard stats {redact(d.path)} --write`") from e
    transforms = [RandomFlipRot()]
    if d.crop_size:
        transforms.insert(0, RandomResizedCrop(d.crop_size, scale=loader_crop_scale(cfg)))
    ds = ShardDataset(d.path, modalities=[modality], bands={modality: info.bands},
                      transform=Compose(transforms), shuffle_buffer=d.shuffle_buffer,
                      seed=d.seed, rank=rank, world_size=world_size)
    micro = micro_batch(cfg, world_size)
    workers = resolve_workers(d.num_workers, local_world_size, len(ds) // max(1, micro))
    if d.num_workers < 0:  # auto: one count on every rank (see agree_workers)
        workers = agree_workers(workers)
    loader = ShardLoader(ds, batch_size=micro, num_workers=workers,
                         pin_memory=torch.cuda.is_available(), drop_last=True)
    shm = check_shared_memory(micro * sample_bytes(manifest, modality, info.bands, d.crop_size),
                              loader.num_workers, local_world_size, loader.prefetch_factor)
    if shm is not None and shm.level == "error":
        raise ConfigError([f"data.num_workers: {shm.message}"])
    if shm is not None and rank == 0:
        log.warning("%s", shm.message)
    if len(loader) == 0:
        raise ConfigError([
            f"data.batch_size: the micro-batch of {micro} samples (global {d.batch_size} / "
            f"({world_size} ranks x {cfg.optim.accum_steps} accum_steps)) is larger than every "
            f"data-loader worker's part of this rank's {len(ds)} samples of {d.path} "
            f"({max(1, loader.num_workers)} workers), so an epoch holds no full batch; lower "
            f"data.batch_size or data.num_workers"])
    return loader, info


def sample_bytes(manifest: Manifest, modality: str, bands: Sequence[str],
                 crop_size: int | None) -> int:
    """Bytes of one loaded sample: the chosen bands in the stored dtype and the valid mask, at
    the crop size (the loader crops by nearest neighbour: the dtype stays) or the tile's."""
    m = manifest.modalities[modality]
    h, w = (crop_size, crop_size) if crop_size else tuple(m.shape[-2:])
    return h * w * (len(bands) * np.dtype(m.dtype).itemsize + 1)


#: the batch entry :func:`prepare_batch` puts the per-band validity under ((B, C, H, W) bool on
#: the device); the masked-image objectives' ``batch_inputs`` pass it to ``forward`` as
#: ``band_valid`` (:func:`band_valid_input`)
BAND_VALID_KEY = "__band_valid__"


def prepare_batch(batch: dict, info: BandInfo, device: torch.device) -> tuple[Tensor, Tensor]:
    """Integer pixels -> normalised float (B, C, H, W) on ``device``, and valid (B, H, W).

    Invalid pixels are 0 in every band, and so is each band-pixel at its band's no-data value
    (``info.nodata``) or (float pixels) not finite: a band the sensor may leave empty (EnMAP's
    water-vapour bands) is all nodata in some tiles whose pixels stay valid, and its fill value
    must not reach the model as data. Those band-pixels are not reconstruction targets either:
    their (B, C, H, W) bool validity (True where the pixel is valid and that band holds data
    there; ``eofm.data_shards.transforms.normalize_with_band_valid``) is stored in ``batch``
    under :data:`BAND_VALID_KEY`, which the masked-image objectives read through their
    ``batch_inputs`` (their losses leave those band-pixels out, also of the ``norm_pix``
    statistics). It is stored only when this batch has such a band-pixel at a valid pixel
    (a build marks a pixel invalid where any of its bands is nodata, so mostly only a band
    empty in a tile, EnMAP's, gives one); otherwise every band is valid wherever the pixel
    is, nothing is stored (any earlier entry is removed) and the objectives score by
    ``valid`` alone, as they always did, at no extra cost. The model input keeps the per-pixel
    convention: the encoder sees such band-pixels as 0, the band mean."""
    x = batch[info.modality].to(device, non_blocking=True)
    valid = batch[f"{info.modality}_valid"].to(device, non_blocking=True)
    y, band_valid = normalize_with_band_valid(x, info.shift, info.scale, valid,
                                              info.nodata or None)
    batch.pop(BAND_VALID_KEY, None)
    if band_valid is not None:  # some band holds no data at a valid pixel
        batch[BAND_VALID_KEY] = band_valid
    return y, valid


def band_valid_input(batch: dict) -> dict[str, Tensor]:
    """``{"band_valid": ...}`` when :func:`prepare_batch` stored a per-band validity in
    ``batch``; ``{}`` otherwise: what a masked-image objective's ``batch_inputs`` adds."""
    band_valid = batch.get(BAND_VALID_KEY)
    return {} if band_valid is None else {"band_valid": band_valid}


def radiometric_jitter(x: Tensor, valid: Tensor, gain: float, shift: float,
                       generator: torch.Generator | None = None) -> Tensor:
    """Per sample and band, ``x * (1 + U(-gain, gain)) + U(-shift, shift)`` on normalised
    ``x: (B, C, H, W)``; invalid pixels stay 0. Exposes the encoder to the brightness and
    spectral-level shifts between places and seasons (one scene is a narrow distribution)."""
    if gain <= 0 and shift <= 0:
        return x
    B, C = x.shape[:2]
    u = torch.rand(2, B, C, 1, 1, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    out = x * (1 + gain * u[0]) + shift * u[1]
    return out * valid[:, None].to(x.dtype)


def _common(values: Sequence[Any]) -> Any:
    """The one value shared by all of ``values`` (NaN equals NaN); None when they differ."""
    vals = [v for v in values if v is not None]
    if not vals or len(vals) != len(values):
        return None
    first = vals[0]
    same = all(v == first or (isinstance(v, float) and isinstance(first, float)
                              and math.isnan(v) and math.isnan(first)) for v in vals)
    return first if same else None


def _contract_nodata(info: BandInfo, manifest: Manifest
                     ) -> float | list[float | None] | None:
    """The input contract's nodata for ``info``'s bands of ``manifest``: the one value all
    bands share in the manifest, else in the sensor registry (as contracts always had it);
    when neither has one, the per-band values (the manifest's, which pretraining zeroed, or
    the registry's when the manifest records none), e.g. a stacked Sentinel-2 + Sentinel-1
    modality's 0 for each optical band and None for VV and VH; None when no band has one."""
    table = [get_sensor(info.sensor).band(b) for b in info.bands]
    mod = manifest.modalities[info.modality]
    stored = {b: i for i, b in enumerate(mod.bands)}
    recorded = [mod.nodata[stored[b]] if b in stored and mod.nodata else None
                for b in info.bands]
    common = _common(recorded)
    if common is None:
        common = _common([b.nodata for b in table])
    if common is not None:
        return float(common)
    per_band = recorded if any(v is not None for v in recorded) else [b.nodata for b in table]
    if all(v is None for v in per_band):
        return None
    return [None if v is None else float(v) for v in per_band]


def input_contract(objective: str, info: BandInfo, manifest: Manifest,
                   encoder: ViTEncoder, data: str, *, crop_size: int | None = None,
                   gsd_factor: float = 1.0) -> InputContract:
    """The input contract of an encoder pretrained on ``info``'s bands of ``manifest``.

    Its sensors are every sensor pooled into the modality and its processing level their
    levels joined (``eofm.data_shards.sensors.joint_processing_level``); band physics come from
    the first sensor (pooled sensors are band-compatible, see
    ``eofm.data_shards.pooling.pooling_problem``).

    Its GSD is that of the pixels the encoder saw: :func:`sample_gsd` (the loader's random
    resized crop to ``crop_size``, ``data.crop_size``) times ``gsd_factor``, the objective's
    ``input_gsd_factor`` (e.g. SatMAE++ downsamples the crop 2**(num_scales - 1) times).

    Its nodata is one number when the bands share it, else one value per band
    (:func:`_contract_nodata`); so are its units (the registry's ``units_label``: a stacked
    Sentinel-2 + Sentinel-1 input's DN and dB differ).
    """
    if not gsd_factor > 0:
        raise ValueError(f"gsd_factor: expected a positive factor, got {gsd_factor}")
    sensor = get_sensor(info.sensor)
    table = [sensor.band(b) for b in info.bands]
    labels = [b.units_label for b in table]
    units = _common(labels)
    if units is None and labels:  # the bands' units differ (S2 + S1 stacked): one per band
        units = labels
    return InputContract(
        sensors=tuple(info.sensors), bands=tuple(info.bands),
        wavelengths=[b.center_wavelength_nm for b in table],  # the registry's, not float32
        bandwidths=[b.bandwidth_nm for b in table],
        gsd=sample_gsd(info, crop_size) * float(gsd_factor), units=units,
        processing_level=joint_processing_level(info.sensors),
        nodata=_contract_nodata(info, manifest), normalisation="meanstd",
        stats={b: {"mean": float(info.stats[b]["mean"]), "std": float(info.stats[b]["std"])}
               for b in info.bands},
        input_size=encoder.img_size, patch_size=encoder.patch_size,
        objective=objective, data=data)


def check_loader_size(cfg: TrainConfig, objective: torch.nn.Module, info: BandInfo) -> None:
    """ConfigError before the first step when the samples the loader ships (``data.crop_size``,
    else the dataset's tiles) are not the size the objective's masks and grid are built for
    (its ``loader_size``; an objective without one, SoftCon, resizes its views itself)."""
    want = getattr(objective, "loader_size", None)
    crop = cfg.data.crop_size
    got = (crop, crop) if crop else info.tile
    if want is None or got is None or tuple(got) == tuple(want):
        return
    size = " x ".join(map(str, want))
    ships = (f"data.crop_size={crop}" if crop else
             f"the {' x '.join(map(str, got))} px tiles of {cfg.data.path}")
    raise ConfigError([f"model.img_size: {cfg.objective.name} with model.img_size="
                       f"{cfg.model.img_size} takes samples of {size} px, but the loader ships "
                       f"{ships}; set model.img_size to match, or data.crop_size={want[0]} "
                       "(a random resized crop of each tile)"])


def encoder_inputs(info: BandInfo, batch: dict, device: torch.device, *, spectral: bool,
                   gsd_aware: bool) -> dict[str, Any]:
    """The encoder's keyword inputs besides the pixels: the band codes (``wavelengths``,
    ``bandwidths``) of a ``spectral`` tokenizer, and ``gsd`` for a GSD-aware encoder
    (``gsd_pos``): the tile's GSD, times each sample's ``__zoom__`` when the loader's crop
    resampled it ((B,) tensor on ``device``)."""
    out: dict[str, Any] = {}
    if spectral:
        out.update(wavelengths=info.wavelengths, bandwidths=info.bandwidths)
    if gsd_aware:
        zoom = batch.get(ZOOM_KEY)
        out["gsd"] = (float(info.gsd_m) if zoom is None else
                      torch.as_tensor(zoom, dtype=torch.float32, device=device) * float(info.gsd_m))
    return out
