"""Typed pretraining configuration: defaults <- YAML file(s) <- ``key=value`` overrides.

``load_config(path, overrides)`` builds a :class:`TrainConfig` from the dataclass defaults, the
YAML file (which may name parents under ``_base_``, paths relative to itself) and dotted
overrides such as ``optim.base_lr=3e-4 runtime.strategy=deepspeed``; values are parsed as YAML
(``null``, ``[s2,s1]``, ``3e-4``), except that string fields in overrides and the items of a
list of strings (``data.build_args: [--tile, 064]``) anywhere keep the text as typed
(:mod:`.config_layers`). Later layers merge into earlier ones key by key; a mapping
that holds ``_replace_: true`` replaces the earlier mapping instead (a free dict such as
``objective.params`` or ``data.bands`` becomes exactly the given keys; a section such as
``optim`` goes back to its defaults before the given keys apply), so a child config can drop
what its parent set. Every problem found (unknown key, wrong type, value out of
range, inconsistent settings) is reported at once in one :class:`ConfigError`; that includes
``objective.params`` (unknown keys, kinds, and the values the objective's registered check
refuses, :func:`~eofm.pretrain.objectives.base.register_objective`), the typed ``objective``
fields the objective does not read (SoftCon's ``mask_ratio``, ``decoder_*``), and
``model.overrides`` / ``model.img_size`` against a registered model's arguments and patch size,
found without building the objective or the model, and a ``schedule.epochs`` that a YAML or
override sets while ``schedule.steps`` decides the length (it would be ignored; named with the
layers that set each, :func:`~.config_checks.ignored_epochs_problems`).
:func:`validate_launch` adds the checks that need the launch but no data (world size, the
model registry, DeepSpeed and its JSON), run before any dataset is built; :func:`validate_against`
those that need the dataset too (modalities, bands, a grouped tokenizer's groups), run before
any model is built. ``load_config(..., check_paths=True)`` (what ``eofm-pretrain`` runs) also
reports a ``data.path`` that does not exist and nothing would build, or that is, lies inside or
holds a raw input it would be built from (:func:`data_path_problems`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eofm.data_shards.outputs import atomic_open

from .config_checks import check_config, check_environment, ignored_epochs_problems, suggest
from .config_layers import (
    Setting,
    assign,
    last_set,
    parse_override,
    read_yaml_sources,
    string_override,
)
from .deepspeed_json import deepspeed_json_problems  # re-exported: its home before the split

__all__ = [
    "OBJECTIVES", "PRECISIONS", "STRATEGIES", "TOKENIZERS", "ConfigError", "DataConfig",
    "LoggingConfig", "ModelConfig", "ObjectiveConfig", "OptimConfig", "RuntimeConfig",
    "ScheduleConfig", "TrainConfig", "data_path_problems", "deepspeed_json_problems",
    "load_config", "micro_batch", "save_resolved", "to_dict", "validate", "validate_against",
    "validate_launch",
]

OBJECTIVES = ("mae", "satmaepp", "selectivemae", "softcon")  # each has a module under
#                                                           pretrain/objectives/
TOKENIZERS = ("plain", "grouped", "spectral")
STRATEGIES = ("ddp", "deepspeed", "fsdp2", "single")
PRECISIONS = ("auto", "bf16", "fp32")
CONFIG_NAME = "config.yaml"


class ConfigError(ValueError):
    """Every problem found in a configuration; ``problems`` lists them one per entry."""

    def __init__(self, problems: Sequence[str], source: str = "configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the {source}:\n{lines}")


@dataclass
class DataConfig:
    """Where samples come from and how they are batched."""

    path: str = ""  # dataset folder/URL holding manifest.json (required)
    modalities: list[str] = field(default_factory=list)  # the one modality to read; [] = the
    #                                   one data.bands names, or the dataset's only one
    bands: dict[str, list[str]] = field(default_factory=dict)  # modality -> bands; absent = all
    crop_size: int | None = None  # random square crop in pixels; null = the whole tile
    jitter_gain: float = 0.0  # per sample and band, normalised x *= 1 + U(-g, g) (0 = off)
    jitter_shift: float = 0.0  # per sample and band, normalised x += U(-s, s) (0 = off)
    shuffle_buffer: int = 1000  # samples in the in-memory shuffle buffer (0 = shard order only)
    num_workers: int = 2  # DataLoader worker processes per rank; -1 = auto (this rank's CPUs
    #                       minus one for the trainer, 1 to 8, at most its full batches)
    batch_size: int = 64  # GLOBAL batch per optimiser step (all ranks and micro-steps together)
    seed: int = 0  # seeds shard order, shuffling, model init and masking
    build_from: str | None = None  # raw input that `eofm-shard build` turns into `path` when
    #                                `path` holds no dataset yet (rank 0 builds, others wait)
    build_args: list[str] = field(default_factory=list)  # extra `eofm-shard build` arguments
    build_more: list[str] = field(default_factory=list)  # further raw inputs pooled with
    #                                                      build_from into the same dataset

    def modality(self, available: Sequence[str]) -> str | None:
        """The modality a run reads from a dataset with ``available`` ones: the first of
        ``modalities``, else the one ``bands`` names, else the dataset's only one; None when
        that leaves a choice (the config checks report it)."""
        if self.modalities:
            return self.modalities[0]
        if len(self.bands) == 1:
            return next(iter(self.bands))
        return available[0] if len(available) == 1 else None


@dataclass
class ModelConfig:
    """The encoder, built by ``eofm.models.create_model(name, **overrides)``."""

    name: str = "vit_tiny_patch8"  # a registered name (``eofm.models.list_models()``)
    tokenizer: str = "plain"  # "plain" | "grouped" | "spectral"
    img_size: int = 64  # input size in pixels (the crop size when cropping)
    overrides: dict[str, Any] = field(default_factory=dict)  # extra create_model keyword arguments
    init_from: str | None = None  # an eofm export (folder or Hub repo id) whose encoder weights
    #                               start this run (continual pretraining; bands by spectrum)
    init_new_bands: str = "mean"  # with init_from, bands the export lacks: "mean" | "random"


@dataclass
class ObjectiveConfig:
    """The pretraining objective; MAE fields are typed, others go in ``params``. An objective
    that does not read a typed field (SoftCon reads none) refuses it set to anything but its
    default (``fields`` of :func:`~eofm.pretrain.objectives.base.register_objective`)."""

    name: str = "mae"  # one of OBJECTIVES
    mask_ratio: float = 0.75  # fraction of tokens hidden from the encoder
    norm_pix_loss: bool = True  # per-patch normalised reconstruction targets
    decoder_dim: int = 512  # decoder width
    decoder_depth: int = 8  # decoder blocks
    decoder_heads: int = 16  # decoder attention heads (must divide decoder_dim)
    params: dict[str, Any] = field(default_factory=dict)  # objective-specific extras


@dataclass
class OptimConfig:
    """AdamW and its learning rate."""

    base_lr: float = 1.5e-4  # peak lr per 256 samples when scale_lr, else the peak lr itself
    scale_lr: bool = True  # peak lr = base_lr * global_batch / 256
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW's (beta1, beta2):
    #                            decay rates of its gradient and squared-gradient averages
    eps: float = 1e-8  # AdamW's epsilon, added to the root of the squared-gradient average
    weight_decay: float = 0.05  # not applied to norms, biases, position/mask/cls tokens
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    accum_steps: int = 1  # micro-steps per optimiser step (no all-reduce on the others)
    loss_norm: str = "micro_batch"  # "micro_batch": each micro-batch's loss is the mean over
    # its own scored tokens, averaged over micro-steps and ranks (a micro-batch of mostly
    # nodata or cloud weighs as much as a clear one); "step": the sum over every scored token
    # of every micro-batch and rank over their global count, the same gradient whatever
    # accum_steps and the number of ranks (mae and selectivemae; not with deepspeed)

    def peak_lr(self, global_batch: int) -> float:
        """The peak learning rate for ``global_batch`` samples per optimiser step."""
        return self.base_lr * global_batch / 256 if self.scale_lr else self.base_lr


@dataclass
class ScheduleConfig:
    """Training length and the warmup + half-cosine learning-rate schedule (per step).

    A resumed run may change it (e.g. more steps, or ``epochs`` resolving to another count on
    another world size): the new schedule applies from the resumed step, and a warning gives
    each change old -> new and the lr there under both (``schedules.Schedule``)."""

    steps: int | None = None  # total optimiser steps; when set it decides the length (an
    #                           epochs set after it, in a child YAML or override, is refused)
    epochs: float | None = 1.0  # training length in passes over the data (used when steps is null)
    warmup_steps: int | None = None  # linear warmup steps; when set it wins over warmup_fraction
    warmup_fraction: float = 0.05  # warmup as a fraction of the total steps
    final_lr_ratio: float = 0.0  # lr at the end as a fraction of the peak lr

    def resolve(self, steps_per_epoch: float | None = None) -> tuple[int, int]:
        """``(total_steps, warmup_steps)``; ``steps_per_epoch`` is needed when steps is null:
        micro-batches per epoch over ``optim.accum_steps``, a fraction when they do not divide
        (the leftover micro-batches carry over into the next epoch), total rounded up: every
        micro-batch of the epochs asked for is read (2.5 steps per epoch: 3 steps per epoch).

        A :class:`ConfigError` when the warmup would take the whole run (``warmup_steps`` at
        or above the total, e.g. a short ``epochs`` on a small dataset): the learning rate
        would never reach its peak nor decay."""
        if self.steps is not None:
            total = self.steps
        elif self.epochs is not None and steps_per_epoch:
            # up, less float noise (0.1 x 30 is 3.0000000000000004: 3 steps, not 4)
            total = max(1, math.ceil(self.epochs * steps_per_epoch - 1e-9))
        else:
            raise ValueError("schedule: set schedule.steps, or give steps_per_epoch for epochs")
        if self.warmup_steps is None:
            return total, min(int(self.warmup_fraction * total), total)  # the fraction is < 1
        if self.warmup_steps >= total:
            length = (f"schedule.steps={total}" if self.steps is not None else
                      f"schedule.epochs={self.epochs} x {steps_per_epoch:.4g} steps per epoch = "
                      f"{total} steps")
            raise ConfigError([f"schedule.warmup_steps: {self.warmup_steps} warmup steps take the "
                               f"whole run ({length}): the learning rate would never reach its "
                               f"peak nor decay; expected fewer than {total} (or set "
                               f"schedule.warmup_fraction instead, with warmup_steps null), or "
                               f"a longer run"])
        return total, self.warmup_steps


@dataclass
class RuntimeConfig:
    """Distributed strategy, precision, checkpoints and fault tolerance."""

    strategy: str = "ddp"  # "ddp" | "deepspeed" | "fsdp2" | "single"
    zero_stage: int | None = None  # DeepSpeed ZeRO stage 1..3 (required with deepspeed)
    deepspeed_config: str | None = None  # DeepSpeed JSON (launch/deepspeed/); null = built in
    precision: str = "auto"  # "auto" (bf16 on GPUs with native bf16, else fp32) | "bf16" | "fp32"
    deterministic: bool = False  # deterministic kernels (slower); bit-exact resume on CPU
    compile: bool = False  # torch.compile every transformer block in place (fewer kernels)
    compile_backend: str = "inductor"  # torch.compile's backend with compile: inductor
    #                                    (generated kernels) or another of
    #                                    torch.compiler.list_backends(exclude_tags=()), e.g.
    #                                    aot_eager (traced, no code generated: tells a tracing
    #                                    problem from a kernel one, without compile time)
    out_dir: str = "runs/default"  # checkpoints, config.yaml and metrics go here
    resume: bool = True  # continue from the newest complete checkpoint in out_dir; false:
    #                      start at step 0 (refused when out_dir holds checkpoints already)
    resume_elastic: bool = False  # resume on another world size or worker count: weights,
    #                               optimiser and step exact, the epoch goes on with the
    #                               samples the old ranks had not read (DeepSpeed: through
    #                               its universal checkpoint, converted once)
    async_checkpoint: bool = False  # write checkpoints in a background thread: a step waits
    #                                 only for a copy of the state in host memory (not deepspeed)
    keep_last_k: int = 3  # checkpoints kept
    ckpt_every: int = 500  # steps between checkpoints (0 = only at the end and on preemption)
    max_nonfinite_in_a_row: int = 20  # skipped non-finite steps in a row before stopping
    max_minutes: float | None = None  # training wall-clock budget of the run, over every
    #                                   launch (elapsed_s): checkpoint and stop (status 0)
    #                                   when spent; a rerun then trains nothing; null = none
    #                                   (for a SLURM time limit: sbatch --signal, a requeue)

    def budget_spent(self, trained_s: float) -> bool:
        """Whether ``trained_s`` seconds of training (over every launch) spent
        ``max_minutes``; never without a budget."""
        return self.max_minutes is not None and trained_s >= 60.0 * self.max_minutes


@dataclass
class LoggingConfig:
    """What is reported, how often, and where."""

    log_every: int = 10  # steps between metric records (their host syncs: loss, diagnostics;
    #                      every step also syncs once for the finite-gradient check and once
    #                      for the all-ranks stop flag)
    jsonl: str | None = "metrics.jsonl"  # JSON-lines file, relative to out_dir; null = none
    tensorboard: bool = False  # also write TensorBoard events (when tensorboard is installed)
    progress: bool = True  # a progress bar on rank 0
    sample_keys: bool = False  # also write every step's sample keys to samples.rank{N}.jsonl
    preview_every: int = 0  # steps between pictures in OUT/previews (0 = none): reconstructions
    #                         (mae, satmaepp, selectivemae) or augmented views (softcon)
    preview_samples: int = 8  # fixed samples (this process's first batch) in each picture


@dataclass
class TrainConfig:
    """The whole pretraining run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def _build_source_problems(data: DataConfig) -> list[str]:
    """A raw input (``data.build_from``, ``data.build_more``) on the local filesystem that is
    ``data.path`` or holds it: the build would write the dataset into that input (as
    ``eofm-shard build`` refuses: :func:`eofm.data_shards.build_out.check_out_apart`)."""
    path = Path(data.path).resolve()
    sources = [("data.build_from", data.build_from),
               *((f"data.build_more[{i}]", s) for i, s in enumerate(data.build_more))]
    problems = []
    for key, source in sources:
        if not source or "://" in source:
            continue
        raw = Path(source).resolve()
        if not path.is_relative_to(raw):
            continue
        relative = not (Path(data.path).is_absolute() and Path(source).is_absolute())
        where = f" (relative to the working directory {Path.cwd()})" if relative else ""
        how = "is" if raw == path else "is inside"
        why = "into that raw input: choose a data.path outside it"
        problems.append(f"data.path: {data.path} {how} {key} {source}{where}; the build "
                        f"would write the dataset {why}")
    return problems


def data_path_problems(cfg: TrainConfig) -> list[str]:
    """``data.path`` on the local filesystem that is a file, that holds ``runtime.out_dir``,
    that is, holds or lies inside a raw input it would be built from
    (:func:`_build_source_problems`), or that does not exist while ``data.build_from`` is not
    set (nothing would create it). Paths are relative to the working directory; URLs
    (``scheme://``) are not checked."""
    path = cfg.data.path
    if not path or "://" in path:
        return []
    where = "" if Path(path).is_absolute() else f" (relative to the working directory {Path.cwd()})"
    if Path(path).exists() and not Path(path).is_dir():
        return [f"data.path: {path} is a file{where}; expected a dataset folder written by "
                "`eofm-shard build` (it holds manifest.json and the shards)"]
    out = cfg.runtime.out_dir
    if out and "://" not in out and Path(out).resolve().is_relative_to(Path(path).resolve()):
        return [f"runtime.out_dir: {out} is inside data.path {path}; checkpoints and metrics "
                "would be written into the dataset (and shared with every run reading it): "
                "choose a folder outside it"]
    overlap = _build_source_problems(cfg.data)
    if overlap:
        return overlap
    if cfg.data.build_from or Path(path).exists():
        return []
    return [f"data.path: {path} does not exist{where} and data.build_from is not set; expected "
            f"a dataset folder written by `eofm-shard build`, or data.build_from=RAW_INPUT to "
            f"build it there on first use"]


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *,
                check_paths: bool = False, check: bool = True) -> TrainConfig:
    """Defaults <- YAML ``path`` (and its ``_base_`` files) <- ``key=value`` overrides; checked.
    ``check_paths`` also checks the filesystem (:func:`data_path_problems`), reporting it with
    the other problems (the CLI does; tests and tools build configs of absent datasets).
    ``check=False`` skips the checks of values (they import the model registry, seconds):
    only unknown keys, wrong types and unreadable YAML are refused (the launch scripts' look-up
    of ``runtime.out_dir``)."""
    problems: list[str] = []
    source = f"configuration{f' {path}' if path else ''}"
    cfg = OmegaConf.structured(TrainConfig)
    layers = read_yaml_sources(Path(path), problems) if path is not None else []
    if problems:  # an unreadable file: the defaults' own gaps would only be noise beside it
        raise ConfigError(problems, source)
    settings: list[Setting] = []  # what each layer set, in merge order (who set epochs, steps)
    for where, layer in layers:
        for k, v in layer.items():
            assign(cfg, [str(k)], v, problems)
            settings.append(Setting(str(where), (str(k),), v))
    for text in overrides:
        parsed = parse_override(text, problems)
        if parsed is not None:
            parts, value = parsed
            assign(cfg, parts, string_override(cfg, parts, text, value), problems)
            settings.append(Setting(f"the override {text}", tuple(parts), value))
    try:
        out: TrainConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # ${oc.env:UNSET}, a value of the wrong type
        raise ConfigError([*problems, _resolve_problem(e)], source) from None
    if check:
        problems += check_config(out) + (data_path_problems(out) if check_paths else [])
        if not any(q.startswith("schedule.epochs:") for q in problems):  # a value refused
            problems += _length_problems(out.schedule, settings)  # already: said once
    if problems:
        raise ConfigError(problems, source)
    return out


def _resolve_problem(error: OmegaConfBaseException) -> str:
    """One line for a value OmegaConf could not resolve, named by its key: the first line of
    OmegaConf's message, without the ``full_key``/``object_type`` lines it adds below."""
    first = str(error).strip().splitlines()[:1] or [type(error).__name__]
    key = getattr(error, "full_key", None)
    return f"{key + ': ' if key else ''}cannot resolve the configuration: {first[0]}"


def _length_problems(schedule: ScheduleConfig, settings: Sequence[Setting]) -> list[str]:
    """An explicit ``schedule.epochs`` that ``schedule.steps`` would override
    (:func:`~.config_checks.ignored_epochs_problems`), named with the layers that set them.
    A ``schedule.steps`` set by a later layer than the epochs (``schedule.steps=20`` on a
    recipe that trains by epochs: a smoke run) overrides them on purpose and passes."""
    epochs, steps = ("schedule", "epochs"), ("schedule", "steps")
    by = last_set(settings, epochs)
    source = last_set(settings, steps)
    if by is not None and source is not None and _position(settings, source) > _position(
            settings, by):
        return []
    return ignored_epochs_problems(
        schedule, epochs_by=by.where if by else None,
        steps_from=source.where if source else None,
        beside_steps=by is not None and by.sets(steps))


def _position(settings: Sequence[Setting], setting: Setting) -> int:
    """Where ``setting`` (one of ``settings``, by identity) comes in the merge order."""
    return next(i for i, s in enumerate(settings) if s is setting)


def validate(cfg: TrainConfig) -> None:
    """Raise one ConfigError listing every problem in ``cfg`` (checks needing no environment)."""
    problems = check_config(cfg)
    if problems:
        raise ConfigError(problems)


def validate_launch(cfg: TrainConfig, *, world_size: int,
                    model_names: Sequence[str] | None = None) -> None:
    """Every check that needs the launch (``world_size``) but not the dataset, at once: the
    config's own (:func:`check_config`), the world size against the batch and strategy, the
    model registry, DeepSpeed being installed, its JSON (:func:`deepspeed_json_problems`).
    The trainer runs it before building or reading any data; one ConfigError lists them."""
    problems = (check_config(cfg)
                + check_environment(cfg, world_size=world_size, dataset_bands=None,
                                    model_names=model_names)
                + deepspeed_json_problems(cfg, world_size))
    if problems:
        raise ConfigError(problems)


def _run_bands(cfg: TrainConfig, dataset_bands: dict[str, list[str]],
               canonical: Callable[[str, str], str] | None) -> tuple[str, list[str]] | None:
    """(modality, the dataset's names of the bands the run reads), as the loader resolves
    them; None when the band checks already report a problem there."""
    modality = cfg.data.modality(sorted(dataset_bands))
    if modality is None or modality not in dataset_bands:
        return None
    have = dataset_bands[modality]
    asked = cfg.data.bands.get(modality)
    if not asked:
        return modality, list(have)
    lower = {b.lower(): b for b in have}
    names = []
    for b in asked:
        try:
            names.append(canonical(modality, b) if canonical else lower.get(b.lower(), b))
        except ValueError:
            return None
    return (modality, names) if all(n in have for n in names) else None


def _group_problems(cfg: TrainConfig, dataset_bands: dict[str, list[str]],
                    canonical: Callable[[str, str], str] | None) -> list[str]:
    """A grouped tokenizer's groups (``model.overrides.groups``: a mapping, a preset name, or
    absent for SatMAE's S2 groups) against the bands the run reads."""
    if cfg.model.tokenizer != "grouped":
        return []
    from eofm.models.tokenizers import GROUP_PRESETS, resolve_groups

    given = cfg.model.overrides.get("groups")
    where = ("model.overrides.groups" if given is not None
             else "model.tokenizer: grouped (default SatMAE S2 groups)")
    try:
        groups = resolve_groups(given)
    except ValueError as e:
        hint = suggest(given, list(GROUP_PRESETS)) if isinstance(given, str) else ""
        return [f"model.overrides.{e}{hint}"]
    run = _run_bands(cfg, dataset_bands, canonical)
    if run is None:
        return []
    modality, bands = run
    absent = [str(b) for members in groups.values() for b in members if b not in bands]
    if not absent:
        return []
    return [f"{where}: the groups name bands {absent} that this run does not read (its "
            f"{modality} bands: {bands}); add them to data.bands.{modality}, or give "
            f"model.overrides.groups of those bands"]


def validate_against(cfg: TrainConfig, *, world_size: int,
                     dataset_bands: dict[str, list[str]] | None,
                     canonical: Callable[[str, str], str] | None = None,
                     model_names: Sequence[str] | None = None) -> None:
    """Checks that need the launch and the dataset; one ConfigError lists every problem
    (:func:`validate_launch`'s, and the modalities, bands and grouped-tokenizer groups
    against the dataset).

    ``dataset_bands``: modality -> band names in the dataset (its manifest). ``canonical(modality,
    name)`` maps an accepted band spelling to the dataset's name (raising ValueError when
    unknown); without it names compare case-insensitively. ``model_names``: the registered
    encoders (default: ``eofm.models.list_models()``).
    """
    problems = check_config(cfg) + check_environment(
        cfg, world_size=world_size, dataset_bands=dataset_bands, canonical=canonical,
        model_names=model_names) + deepspeed_json_problems(cfg, world_size)
    if dataset_bands is not None:
        problems += _group_problems(cfg, dataset_bands, canonical)
    if problems:
        raise ConfigError(problems)


def micro_batch(cfg: Any, world_size: int) -> int:
    """Samples per rank per forward: ``data.batch_size`` (the global batch) over
    ``world_size x optim.accum_steps`` (pretraining's and fine-tuning's configs alike)."""
    return cfg.data.batch_size // (world_size * cfg.optim.accum_steps)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as plain nested dicts/lists/scalars (JSON- and ``weights_only``-safe)."""
    return dataclasses.asdict(cfg)


def save_resolved(cfg: TrainConfig, directory: str | Path) -> Path:
    """Write ``directory/config.yaml`` atomically (temp file, fsync, rename); returns its path.
    Credentials in URLs are left out (``***``)."""
    from eofm.data_shards.remote import without_credentials

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    with atomic_open(path, "w", encoding="utf-8") as f:  # .config.yaml.<pid>.tmp, removed
        # on failure; data.path=https://user:token@host/ds reads the data, but config.yaml
        # is a plain file beside the checkpoints that people copy and share
        yaml.safe_dump(without_credentials(to_dict(cfg)), f, sort_keys=False)
    return path
