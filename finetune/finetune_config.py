"""Typed fine-tuning configuration: defaults <- YAML <- CLI flags <- ``key=value`` overrides.

The optimiser, schedule, runtime and logging sections are pretraining's (``eofm.pretrain.config``)
with fine-tuning defaults (MAE/SatMAE++ recipe: layer decay 0.75, drop path 0.2, mean pooling +
fc-norm); every problem is reported at once in one :class:`~eofm.pretrain.config.ConfigError`.
The settings of those sections that fine-tuning never reads (DeepSpeed's, TensorBoard, sample
keys, reconstruction pictures: :data:`NOT_READ`) are refused when they differ from their
defaults, not silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eofm.data_shards.s2_baseline import parse_mode as parse_s2_offset
from eofm.pretrain.config import (
    PRECISIONS,
    ConfigError,
    LoggingConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
)
from eofm.pretrain.config_checks import compile_backend_problem, suggest
from eofm.pretrain.config_layers import string_override

from .tasks import DENSE, FREEZE, POOLS, TASKS

STRATEGIES = ("ddp", "fsdp2", "single")  # DeepSpeed would replace the layer-decayed optimiser


@dataclass
class EncoderConfig:
    """The exported encoder and how much of it trains."""

    path: str = ""  # export folder or Hub repo id ORG/NAME (--encoder; required)
    freeze: str = "full"  # "frozen" | "last_n" | "full"
    last_n: int = 2  # blocks (ResNet: stages, 1..4) trained with freeze=last_n (+ the final
    # norm, unless pool avg leaves it unused)
    drop_path: float | None = None  # stochastic depth while fine-tuning; null: the
    # architecture's default (VIT_DROP_PATH = 0.2 for a ViT, as MAE/SatMAE++ fine-tune; none
    # for a ResNet, which has no stochastic depth and refuses a non-zero value)
    pool: str = "avg"  # classification features: "avg" (mean of the patch tokens before the
    # final norm, MAE's global pool; the head's fc-norm follows) | "token" (normed CLS)
    override_contract: bool = False  # accept data that breaks the contract (results list it)
    random_init: bool = False  # same architecture, fresh weights drawn from data.seed (a baseline)
    license: str = ""  # Hub licence id of the fine-tuned weights in OUT/model; empty: the
    # encoder's own (they derive from it), with its name and link when it is 'other'
    license_name: str = ""  # with license 'other': the licence's id, like my-license-1.0
    license_link: str = ""  # with license 'other': an http(s) URL of its text


@dataclass
class TaskConfig:
    """What is predicted, and the head that predicts it."""

    kind: str = "classification"  # classification | multilabel | segmentation | regression
    num_classes: int | None = None  # segmentation: null = the dataset's class list or max + 1
    # (refused when the values are sparse, e.g. 0, 1, 2 and 255: set task.ignore_value or
    # this); set, it must equal the number of classes the data names (if it names any)
    ignore_value: float | None = None  # segmentation/regression: target value of unlabelled
    # pixels (NaN always ignored); null for classification and multilabel
    dropout: float = 0.0  # head dropout
    decoder_channels: int = 128  # segmentation/regression decoder width
    standardise_targets: bool = True  # regression: train on (y - mean) / std of the train split


@dataclass
class FinetuneDataConfig:
    """Labelled data, the held-out split and batching."""

    path: str = ""  # labelled data (--data; required): eofm dataset or EuroSAT-layout folder
    test_path: str | None = None  # separate test set; null = hold out test_fraction of path
    test_fraction: float = 0.2  # held out for the final evaluation: that share of the
    # source images (of the samples with group_tiles false), per class for classification
    group_tiles: bool = True  # hold out whole images: the tiles of one image (keys
    # <image>_r<row>_c<col>, eofm-shard build --tile) all train or all test, as eofm-probe's
    # folds; false splits tile by tile (neighbouring, with --stride < --tile overlapping,
    # tiles on both sides: optimistic metrics; as eofm-probe --no-group-tiles)
    modality: str | None = None  # modality of a multi-modal dataset; null: the one holding
    #                              most of the encoder's bands (as eofm-probe picks it)
    s2_offset: str = "auto"  # raw folders: Sentinel-2 baseline offset, as eofm-shard --s2-offset
    #                           (shards/zarr: decided at their build; another value is refused)
    batch_size: int = 32  # GLOBAL batch per optimiser step
    eval_batch_size: int = 64  # per rank
    augment: bool = True  # random flips (and 90 degree turns of square tiles)
    seed: int = 0  # split, order, augmentation and head init


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """AdamW with layer-wise lr decay."""

    base_lr: float = 5e-4  # peak lr per 256 samples when scale_lr (MAE fine-tuning's blr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float = 0.75  # lr scale decay^(depth + 1 - layer); head and final norm: 1
    # (ResNet: stem 0, stages 1..4, depth 4)
    loss_norm: str = "micro_batch"  # not read by eofm-finetune (each micro-batch's loss is its
    # own mean): must stay micro_batch


@dataclass
class FinetuneScheduleConfig(ScheduleConfig):
    """Length and warmup + cosine schedule."""

    epochs: float | None = 20.0
    warmup_fraction: float = 0.1


@dataclass
class FinetuneRuntimeConfig(RuntimeConfig):
    """Pretraining's runtime section; the run folder has no default (--out). Fields declared
    again here only say what they mean for fine-tuning (the others keep pretraining's
    comments, which ``--print-config`` shows)."""

    strategy: str = "ddp"  # "ddp" | "fsdp2" | "single" (no DeepSpeed: it would replace the
    # layer-decayed optimiser)
    zero_stage: int | None = None  # not read by eofm-finetune (no DeepSpeed): must stay null
    deepspeed_config: str | None = None  # not read by eofm-finetune (no DeepSpeed): must stay
    # null
    out_dir: str = ""  # checkpoints, metrics.jsonl, config.yaml, results.json, model/
    resume_elastic: bool = False  # not needed by eofm-finetune, either value: a resume on
    # another world size always continues the data order exactly (random augmentation and
    # dropout draws start new streams, with a warning)


@dataclass
class FinetuneLoggingConfig(LoggingConfig):
    """Pretraining's logging section; eofm-finetune reads ``log_every``, ``jsonl`` and
    ``progress`` and refuses the others set to anything but their defaults
    (:data:`NOT_READ`)."""

    tensorboard: bool = False  # not read by eofm-finetune: must stay false
    sample_keys: bool = False  # not read by eofm-finetune: must stay false
    preview_every: int = 0  # not read by eofm-finetune (its pictures: OUT/confusion.png,
    # OUT/predictions.png): must stay 0
    preview_samples: int = 8  # not read by eofm-finetune: must stay 8


@dataclass
class FinetuneConfig:
    """The whole fine-tuning run."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    runtime: FinetuneRuntimeConfig = field(default_factory=FinetuneRuntimeConfig)
    logging: FinetuneLoggingConfig = field(default_factory=FinetuneLoggingConfig)


# settings of pretraining's sections that eofm-finetune never reads: refused when they differ
# from their defaults, rather than accepted and silently ignored
NOT_READ = ("runtime.zero_stage", "runtime.deepspeed_config", "logging.tensorboard",
            "logging.sample_keys", "logging.preview_every", "logging.preview_samples",
            "optim.loss_norm")


def _merge(cfg: DictConfig, prefix: str, values: Mapping[str, Any], problems: list[str]) -> None:
    """Set every leaf of ``values`` under ``prefix`` in ``cfg``; problems are collected."""
    for k, v in values.items():
        key = f"{prefix}{k}"
        parent = OmegaConf.select(cfg, prefix[:-1]) if prefix else cfg
        if k not in parent:
            problems.append(f"{key}: unknown key{suggest(str(k), list(parent.keys()))}")
        elif isinstance(v, Mapping) and isinstance(parent[k], DictConfig):
            _merge(cfg, f"{key}.", v, problems)
        else:
            try:
                OmegaConf.update(cfg, key, v, merge=True)
            except OmegaConfBaseException as e:
                problems.append(f"{key}: {str(e).splitlines()[0]}")


def check_finetune(cfg: FinetuneConfig) -> list[str]:
    """Every problem in ``cfg`` found without the data or the encoder."""
    p: list[str] = []
    e, t, d, o, s, r = cfg.encoder, cfg.task, cfg.data, cfg.optim, cfg.schedule, cfg.runtime
    for key, value, options in (("task.kind", t.kind, TASKS), ("encoder.freeze", e.freeze, FREEZE),
                                ("encoder.pool", e.pool, POOLS),
                                ("runtime.strategy", r.strategy, STRATEGIES),
                                ("runtime.precision", r.precision, PRECISIONS)):
        if value not in options:
            why = " (DeepSpeed would replace the layer-decayed optimiser)" \
                if value == "deepspeed" else suggest(str(value), options)
            p.append(f"{key}: expected one of {list(options)}, got {value!r}{why}")
    if (why := compile_backend_problem(r.compile_backend)) is not None:
        p.append(why)
    if e.license or e.license_name or e.license_link:
        from eofm.models.card import check_license
        from eofm.models.hub_licenses import check_license_terms

        try:
            if e.license:
                check_license(e.license)
        except ValueError as err:
            p.append(f"encoder.{err}")
        try:  # with encoder.license empty (the encoder's licence), the name and link are
            # checked against it once the encoder is read (finetune.check_encoder_license)
            check_license_terms(e.license or "other", e.license_name or None,
                                e.license_link or None)
        except ValueError as err:
            p.append(f"encoder.{err}")
    for key, value, flag in (("encoder.path", e.path, "--encoder"), ("data.path", d.path, "--data"),
                             ("runtime.out_dir", r.out_dir, "--out")):
        if not value:
            p.append(f"{key}: required ({flag})")
    try:
        parse_s2_offset(d.s2_offset)
    except ValueError as err:
        p.append(f"data.{err}")
    checks = [("encoder.last_n", e.last_n >= 1, ">= 1"),
              ("encoder.drop_path", e.drop_path is None or 0 <= e.drop_path < 1, "in [0, 1)"),
              ("task.num_classes", t.num_classes is None or t.num_classes >= 1, ">= 1 or null"),
              ("task.dropout", 0 <= t.dropout < 1, "in [0, 1)"),
              ("task.decoder_channels", t.decoder_channels >= 1, ">= 1"),
              ("data.batch_size", d.batch_size >= 1, ">= 1"),
              ("data.eval_batch_size", d.eval_batch_size >= 1, ">= 1"),
              ("data.test_fraction", 0 <= d.test_fraction < 1, "in [0, 1)"),
              ("optim.base_lr", o.base_lr > 0, "> 0"),
              ("optim.weight_decay", o.weight_decay >= 0, ">= 0"),
              ("optim.layer_decay", 0 < o.layer_decay <= 1, "in (0, 1]"),
              ("optim.accum_steps", o.accum_steps >= 1, ">= 1"),
              ("optim.betas", len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
               "two values in [0, 1)"),
              ("optim.grad_clip", o.grad_clip is None or o.grad_clip > 0, "> 0 or null"),
              ("schedule.steps", s.steps is None or s.steps >= 1, ">= 1 or null"),
              ("schedule.epochs", s.epochs is None or s.epochs > 0, "> 0 or null"),
              ("schedule.warmup_fraction", 0 <= s.warmup_fraction < 1, "in [0, 1)"),
              ("schedule.final_lr_ratio", 0 <= s.final_lr_ratio <= 1, "in [0, 1]"),
              ("optim.eps", o.eps > 0, "> 0"),
              ("runtime.max_minutes", r.max_minutes is None or r.max_minutes > 0,
               "> 0 or null"),
              ("runtime.keep_last_k", r.keep_last_k >= 1, ">= 1"),
              ("runtime.ckpt_every", r.ckpt_every >= 0, ">= 0"),
              ("logging.log_every", cfg.logging.log_every >= 1, ">= 1")]
    p += [f"{key}: expected {want}, got {_value(cfg, key)!r}" for key, ok, want in checks if not ok]
    p += _not_read_problems(cfg)
    if t.ignore_value is not None and t.kind in TASKS and t.kind not in DENSE:
        p.append(f"task.ignore_value: expected null with task.kind {t.kind!r} (it marks "
                 f"unlabelled pixels of {' and '.join(DENSE)} targets; a {t.kind} label has "
                 f"none), got {t.ignore_value!r}: remove it")
    if s.steps is None and s.epochs is None:
        p.append("schedule: set schedule.steps or schedule.epochs")
    if d.test_fraction == 0 and not d.test_path:
        p.append("data.test_fraction: 0 leaves nothing to evaluate; give data.test_path")
    return p


def _not_read_problems(cfg: FinetuneConfig) -> list[str]:
    """One problem per :data:`NOT_READ` setting that differs from its default, naming the
    default to set it back to."""
    defaults = FinetuneConfig()
    p = []
    for key in NOT_READ:
        value, default = _value(cfg, key), _value(defaults, key)
        if value != default:
            p.append(f"{key}: not supported by eofm-finetune (set it to "
                     f"{yaml.safe_dump(default).splitlines()[0]}), got {value!r}")
    return p


def _value(cfg: FinetuneConfig, key: str) -> Any:
    """``cfg.<key>`` for a dotted key."""
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                flags: Mapping[str, Any] | None = None) -> FinetuneConfig:
    """Defaults <- YAML ``path`` <- ``flags`` (dotted key -> value) <- ``key=value`` overrides;
    one ConfigError lists every problem."""
    problems: list[str] = []
    cfg = OmegaConf.structured(FinetuneConfig)
    if path is not None:
        try:
            node = OmegaConf.load(path)
        except (OSError, yaml.YAMLError, OmegaConfBaseException, ValueError) as e:
            raise ConfigError([f"{path}: cannot read the YAML file ({e})"]) from None
        if not isinstance(node, DictConfig):
            raise ConfigError([f"{path}: expected a mapping at the top level"])
        _merge(cfg, "", OmegaConf.to_container(node), problems)
    for key, value in (flags or {}).items():
        _merge(cfg, "", _nested(key, value), problems)
    for text in overrides:
        key, sep, _ = text.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {text!r}: expected key=value with a dotted key")
            continue
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([text]))
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            problems.append(f"override {text!r}: cannot parse the value ({e})")
            continue
        parts = key.strip().split(".")
        value: Any = parsed
        for p in parts:
            value = value[p] if isinstance(value, dict) and p in value else None
        _merge(cfg, "", _nested(key.strip(), string_override(cfg, parts, text, value)),
               problems)
    out: FinetuneConfig = OmegaConf.to_object(cfg)  # refused values were never set
    problems += check_finetune(out)
    if problems:
        raise ConfigError(problems, f"configuration{f' {path}' if path else ''}")
    return out


def _nested(key: str, value: Any) -> dict[str, Any]:
    """``'a.b', v`` -> ``{'a': {'b': v}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def to_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    """``cfg`` as plain nested dicts (JSON- and ``weights_only``-safe)."""
    return dataclasses.asdict(cfg)


__all__ = ["NOT_READ", "STRATEGIES", "EncoderConfig", "FinetuneConfig", "FinetuneDataConfig",
           "FinetuneLoggingConfig", "FinetuneOptimConfig", "FinetuneRuntimeConfig",
           "FinetuneScheduleConfig", "TaskConfig", "check_finetune", "load_config", "to_dict"]
