"""Value checks behind :mod:`eofm.pretrain.config`: each returns every problem it finds."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ScheduleConfig, TrainConfig

__all__ = ["LOSS_NORMS", "NO_STEP_LOSS_NORM", "check_config", "check_environment",
           "ignored_epochs_problems", "loss_norm_problems", "suggest"]

LOSS_NORMS = ("micro_batch", "step")  # optim.loss_norm
# objectives whose loss is not a sum over scored units, so optim.loss_norm=step cannot
# normalise it over the step: why, for the refusal (mae and selectivemae return loss_sum and
# loss_count; an objective registered elsewhere is checked when its first output comes)
NO_STEP_LOSS_NORM = {
    "satmaepp": "its loss adds a multi-scale L1 term averaged over each scale's own valid "
                "pixels to the masked MSE, not a sum over scored tokens",
    "softcon": "its contrastive loss compares every sample with the global batch, not a sum "
               "over scored units",
}


def suggest(name: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when a close option exists."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(problems: list[str], key: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        problems.append(f"{key}: expected one of {list(options)}, got {value!r}"
                        f"{suggest(value, options)}")


def compile_backend_problem(backend: str) -> str | None:
    """Why ``runtime.compile_backend`` cannot be used, or None: a backend torch does not know
    (``torch.compiler.list_backends(exclude_tags=())``). Checked with ``runtime.compile`` off
    too (a base YAML's backend is kept when one run turns compiling off, and turning it back
    on must not meet a misspelling); the default, inductor, is not looked up (no dynamo
    import)."""
    if backend == "inductor":
        return None
    import torch

    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        return (f"runtime.compile_backend: expected one of {backends}, got {backend!r}"
                f"{suggest(str(backend), backends)}")
    return None


def _positive(problems: list[str], key: str, value: float | None, *, zero: bool = False,
              optional: bool = False) -> None:
    if value is None:
        if not optional:
            problems.append(f"{key}: required, got null")
    elif value < 0 or (value == 0 and not zero):
        problems.append(f"{key}: expected {'>= 0' if zero else '> 0'}, got {value}")


def _unit(problems: list[str], key: str, value: float, *, low_open: bool, high_open: bool) -> None:
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        problems.append(f"{key}: expected a value in {interval}, got {value}")


def check_config(cfg: TrainConfig) -> list[str]:
    """Every problem in ``cfg`` that can be found without the environment or the dataset."""
    from eofm.models.adapt import INIT_MODES

    from .config import OBJECTIVES, PRECISIONS, STRATEGIES, TOKENIZERS

    p: list[str] = []
    d, m, o, op, s, r, lg = (cfg.data, cfg.model, cfg.objective, cfg.optim, cfg.schedule,
                             cfg.runtime, cfg.logging)
    if not d.path:
        p.append("data.path: required (a dataset folder or URL with manifest.json)")
    if d.modalities:
        extra = sorted(set(d.bands) - set(d.modalities))
        if extra:
            p.append(f"data.bands: modalities {extra} are not in data.modalities {d.modalities}")
    for mod, names in d.bands.items():
        if not names:
            p.append(f"data.bands.{mod}: empty band list (omit the modality to read all bands)")
        dups = sorted({b for b in names if names.count(b) > 1})
        if dups:
            p.append(f"data.bands.{mod}: duplicate bands {dups}")
    if d.build_from and d.build_args:
        p += _build_args_problems(d.build_from, d.path, d.build_args)
    if d.build_more and not d.build_from:
        p.append(f"data.build_more: {d.build_more} given without data.build_from (the first "
                 "raw input); set data.build_from")
    _positive(p, "data.crop_size", d.crop_size, optional=True)
    _unit(p, "data.jitter_gain", d.jitter_gain, low_open=False, high_open=True)
    _positive(p, "data.jitter_shift", d.jitter_shift, zero=True)
    _positive(p, "data.shuffle_buffer", d.shuffle_buffer, zero=True)
    if d.num_workers < -1:
        p.append(f"data.num_workers: expected >= 0, or -1 for auto, got {d.num_workers}")
    _positive(p, "data.batch_size", d.batch_size)
    if d.batch_size > 0 and op.accum_steps > 0 and d.batch_size % op.accum_steps:
        p.append(f"data.batch_size: the global batch {d.batch_size} is not divisible by "
                 f"optim.accum_steps={op.accum_steps}")
    if not m.name:
        p.append("model.name: required (see eofm.models.list_models())")
    _one_of(p, "model.tokenizer", m.tokenizer, TOKENIZERS)
    _one_of(p, "model.init_new_bands", m.init_new_bands, INIT_MODES)
    if m.init_from and (o.params or {}).get("weights"):
        p.append(f"model.init_from: {m.init_from!r} and objective.params.weights "
                 f"{o.params['weights']!r} both give starting weights; keep one")
    _positive(p, "model.img_size", m.img_size)
    p += _model_problems(cfg)
    _one_of(p, "objective.name", o.name, OBJECTIVES)
    _unit(p, "objective.mask_ratio", o.mask_ratio, low_open=True, high_open=True)
    for key in ("decoder_dim", "decoder_depth", "decoder_heads"):
        _positive(p, f"objective.{key}", getattr(o, key))
    if o.decoder_heads > 0 and o.decoder_dim % o.decoder_heads:
        p.append(f"objective.decoder_heads: {o.decoder_heads} does not divide "
                 f"objective.decoder_dim={o.decoder_dim}")
    p += _objective_param_problems(cfg)
    _positive(p, "optim.base_lr", op.base_lr)
    if len(op.betas) != 2 or not all(0 <= b < 1 for b in op.betas):
        p.append(f"optim.betas: expected two values in [0, 1), got {op.betas}")
    _positive(p, "optim.eps", op.eps)
    _positive(p, "optim.weight_decay", op.weight_decay, zero=True)
    _positive(p, "optim.grad_clip", op.grad_clip, optional=True)
    _positive(p, "optim.accum_steps", op.accum_steps)
    p += loss_norm_problems(cfg)
    if s.steps is None and s.epochs is None:
        p.append("schedule: set schedule.steps or schedule.epochs")
    _positive(p, "schedule.steps", s.steps, optional=True)
    _positive(p, "schedule.epochs", s.epochs, optional=True)
    _positive(p, "schedule.warmup_steps", s.warmup_steps, zero=True, optional=True)
    if s.steps and s.warmup_steps is not None and s.warmup_steps >= s.steps:
        p.append(f"schedule.warmup_steps: {s.warmup_steps} is not below schedule.steps={s.steps} "
                 f"(the whole run would be warmup: the lr never reaches its peak nor decays)")
    _unit(p, "schedule.warmup_fraction", s.warmup_fraction, low_open=False, high_open=True)
    _unit(p, "schedule.final_lr_ratio", s.final_lr_ratio, low_open=False, high_open=False)
    _one_of(p, "runtime.strategy", r.strategy, STRATEGIES)
    if r.strategy == "deepspeed" and r.zero_stage not in (1, 2, 3):
        p.append(f"runtime.zero_stage: DeepSpeed needs a ZeRO stage 1, 2 or 3, got {r.zero_stage}")
    if r.strategy != "deepspeed":  # only DeepSpeed reads them: refused rather than ignored
        for key, value in (("zero_stage", r.zero_stage), ("deepspeed_config", r.deepspeed_config)):
            if value is not None:
                p.append(f"runtime.{key}: {value!r} is read by runtime.strategy=deepspeed only, "
                         f"and this run's strategy is {r.strategy!r}; set "
                         f"runtime.strategy=deepspeed, or runtime.{key}=null")
    _one_of(p, "runtime.precision", r.precision, PRECISIONS)
    if (why := compile_backend_problem(r.compile_backend)) is not None:
        p.append(why)
    if r.async_checkpoint and r.strategy == "deepspeed":
        p.append("runtime.async_checkpoint: supported with the ddp, fsdp2 and single strategies "
                 "(DeepSpeed writes its own sharded checkpoints), got deepspeed")
    if not r.out_dir:
        p.append("runtime.out_dir: required")
    _positive(p, "runtime.keep_last_k", r.keep_last_k)
    _positive(p, "runtime.ckpt_every", r.ckpt_every, zero=True)
    _positive(p, "runtime.max_nonfinite_in_a_row", r.max_nonfinite_in_a_row)
    _positive(p, "runtime.max_minutes", r.max_minutes, optional=True)
    _positive(p, "logging.log_every", lg.log_every)
    _positive(p, "logging.preview_every", lg.preview_every, zero=True)
    _positive(p, "logging.preview_samples", lg.preview_samples)
    return p


def loss_norm_problems(cfg: TrainConfig) -> list[str]:
    """The problems of ``optim.loss_norm``: a value not in :data:`LOSS_NORMS`; ``step`` with
    DeepSpeed (its engine scales the loss by ``1 / accum_steps`` in ``engine.backward`` and
    averages ranks itself, so no step-wide count can normalise it); ``step`` with an objective
    of :data:`NO_STEP_LOSS_NORM`."""
    value = cfg.optim.loss_norm
    problems: list[str] = []
    _one_of(problems, "optim.loss_norm", value, LOSS_NORMS)
    if value != "step":
        return problems
    if cfg.runtime.strategy == "deepspeed":
        problems.append("optim.loss_norm: 'step' needs the ddp, fsdp2 or single strategy: "
                        "DeepSpeed owns the backward and scales every micro-step's loss by "
                        "1 / optim.accum_steps itself, so the step's global count of scored "
                        "tokens cannot normalise it; got runtime.strategy=deepspeed. Set "
                        "optim.loss_norm=micro_batch, or another runtime.strategy")
    name = cfg.objective.name
    if name in NO_STEP_LOSS_NORM:
        problems.append(f"optim.loss_norm: 'step' is not supported by objective {name!r}: "
                        f"{NO_STEP_LOSS_NORM[name]}; set optim.loss_norm=micro_batch (step "
                        f"works with mae and selectivemae)")
    return problems


def ignored_epochs_problems(schedule: ScheduleConfig, *, epochs_by: str | None,
                            steps_from: str | None, beside_steps: bool) -> list[str]:
    """``schedule.epochs`` set explicitly (``epochs_by``: the YAML file or override that set
    it last; None: the default) while ``schedule.steps`` is set too (``steps_from``), which
    decides the run length (:meth:`~.config.ScheduleConfig.resolve`): the epochs would be
    ignored without a word. An epochs of null asks for nothing and passes; so do epochs set
    in the same file as ``schedule.steps`` (``beside_steps``): that file shows both, and every
    saved ``config.yaml`` is one (it lists every field: a smoke run's ``steps: 20`` beside its
    recipe's ``epochs: 50``), so that a run relaunches from it."""
    if epochs_by is None or schedule.epochs is None or schedule.steps is None or beside_steps:
        return []
    return [f"schedule.epochs: set to {schedule.epochs:g} (by {epochs_by}) but "
            f"schedule.steps={schedule.steps} (from {steps_from or 'the defaults'}) decides "
            f"the run length and epochs would be ignored; add schedule.steps=null to train by "
            f"epochs, or drop schedule.epochs (or set schedule.epochs=null)"]


def _objective_param_problems(cfg: TrainConfig) -> list[str]:
    """Problems of ``objective.params`` that need no dataset, found at load time rather than
    when the objective is built (after the loader, possibly after a shard build; under
    torchrun, every rank's traceback): unknown keys, values of another kind and null where a
    value is needed (the objective's registered defaults), and the values its registered check
    refuses (a ratio out of range, a choice not among the allowed ones, a
    ``min_valid_fraction`` outside (0, 1]: 50 meant as a percent would score no token, a loss
    of 0 at every step), each named ``objective.params.<key>``
    (:func:`.objectives.base.objective_param_problems`); and the typed fields the objective
    does not read that are set (SoftCon with ``objective.mask_ratio``,
    :func:`.objectives.base.objective_field_problems`)."""
    from .objectives.base import (  # the package's __init__ registers every objective
        objective_field_problems,
        objective_param_problems,
    )

    o = cfg.objective
    return objective_param_problems(o.name, o.params or {}, cfg) + objective_field_problems(o)


# model.overrides keys the run passes to create_model itself, with the setting to use instead
RUN_OWNED_OVERRIDES = {"tokenizer": "model.tokenizer"}


def _model_problems(cfg: TrainConfig) -> list[str]:
    """Problems of ``model.overrides`` and ``model.img_size`` that the registry finds without
    building the model (it was built after the loader, possibly after a shard build): keys its
    factory does not take, common overrides of the wrong kind or range, a key the run sets
    itself (:data:`RUN_OWNED_OVERRIDES`), and an input size that is not a multiple of its
    patch size (``model.overrides.img_size`` replaces ``model.img_size``). An unregistered
    ``model.name`` is :func:`check_environment`'s to report."""
    from eofm.models.registry import (
        img_size_problem,
        list_models,
        override_hint,
        override_problems,
        unknown_overrides,
        valid_overrides,
    )

    m = cfg.model
    if m.name not in list_models():
        return []
    over = m.overrides or {}
    p: list[str] = []
    valid = [k for k in valid_overrides(m.name) if k not in RUN_OWNED_OVERRIDES]
    for key in unknown_overrides(m.name, over):
        hint = override_hint(key)
        p.append(f"model.overrides.{key}: {m.name} takes no such argument"
                 f"{suggest(key, valid)}{f'; {hint}' if hint else ''}; expected one of {valid}")
    for key, setting in RUN_OWNED_OVERRIDES.items():
        if key in over:
            p.append(f"model.overrides.{key}: the run sets it from {setting} "
                     f"({getattr(m, setting.split('.')[-1])!r}); set {setting} instead, got "
                     f"{over[key]!r}")
    kinds = override_problems(over)
    p += [f"model.overrides.{key}: {why}" for key, why in kinds.items()]
    where = "model.overrides.img_size" if "img_size" in over else "model.img_size"
    img = over.get("img_size", m.img_size)
    if "img_size" not in kinds and not (where == "model.img_size" and m.img_size <= 0) \
            and (why := img_size_problem(m.name, img)) is not None:
        p.append(f"{where}: {why}")
    return p


def _build_args_problems(source: str, out: str, args: Sequence[str]) -> list[str]:
    """``data.build_args`` as ``eofm-shard build`` would parse them: its refusal (an unknown
    flag, a bad value) as a problem now, not minutes into the launch on rank 0 alone."""
    import contextlib
    import io

    from eofm.data_shards.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(["build", source, "--out", out or "OUT", *map(str, args)])
    except SystemExit:
        why = err.getvalue().strip().splitlines()[-1:] or ["refused"]
        return [f"data.build_args: eofm-shard build refuses {list(args)}: "
                f"{why[0].split('error: ', 1)[-1]}"]
    return []


def check_environment(cfg: TrainConfig, *, world_size: int,
                      dataset_bands: dict[str, list[str]] | None,
                      canonical: Callable[[str, str], str] | None = None,
                      model_names: Sequence[str] | None = None) -> list[str]:
    """Every problem of ``cfg`` against the launch (world size), the dataset and the registry."""
    p: list[str] = []
    d, op, r = cfg.data, cfg.optim, cfg.runtime
    if world_size < 1:
        p.append(f"world_size: expected >= 1, got {world_size}")
    elif op.accum_steps > 0 and d.batch_size % (world_size * op.accum_steps):
        p.append(f"data.batch_size: the global batch {d.batch_size} is not divisible by "
                 f"world_size * optim.accum_steps = {world_size} * {op.accum_steps}"
                 + (" (world_size: the processes the launcher started; torchrun "
                    "--nproc_per_node=auto starts one per GPU, or one per CPU core on a machine "
                    "without GPUs: set NPROC for launch/*.sh or --nproc_per_node)"
                    if world_size > 1 else ""))
    if r.strategy == "single" and world_size > 1:
        p.append(f"runtime.strategy: 'single' runs one process, but world_size is {world_size}")
    if r.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        p.append("runtime.strategy: deepspeed is not installed (pip install 'eofm[deepspeed]')")
    if r.deepspeed_config and r.strategy == "deepspeed" and not Path(r.deepspeed_config).is_file():
        p.append(f"runtime.deepspeed_config: no such file {r.deepspeed_config!r}")
    if model_names is None:
        from eofm.models import list_models

        model_names = list_models()
    if cfg.model.name and cfg.model.name not in model_names:
        p.append(f"model.name: unknown model {cfg.model.name!r}"
                 f"{suggest(cfg.model.name, model_names)}")
    if dataset_bands is not None:
        p += _check_bands(cfg, dataset_bands, canonical)
    return p


def _check_bands(cfg: TrainConfig, dataset_bands: dict[str, list[str]],
                 canonical: Callable[[str, str], str] | None) -> list[str]:
    """Problems with the modalities and bands the config asks of the dataset."""
    p: list[str] = []
    have = sorted(dataset_bands)
    if len(cfg.data.modalities) > 1:
        p.append(f"data.modalities: pretraining reads one modality per run, got "
                 f"{cfg.data.modalities}; name one, or stack them into one input when building "
                 f"the shards (eofm-shard build --stack {','.join(cfg.data.modalities)})")
    elif cfg.data.modality(have) is None:
        p.append(f"data.modalities: the dataset has several modalities {have} and data.bands "
                 f"names {'none' if not cfg.data.bands else sorted(cfg.data.bands)}; name the one "
                 f"to pretrain on, e.g. data.modalities=[{have[0]}]")
    for mod in cfg.data.modalities:
        if mod not in dataset_bands:
            p.append(f"data.modalities: the dataset has no modality {mod!r} (it has {have})"
                     f"{suggest(mod, have)}")
    for mod, names in cfg.data.bands.items():
        if mod not in dataset_bands:
            if mod not in cfg.data.modalities:  # already reported above otherwise
                p.append(f"data.bands.{mod}: the dataset has no modality {mod!r} (it has {have})")
            continue
        lower = {b.lower(): b for b in dataset_bands[mod]}
        missing = []
        for b in names:
            try:
                name = canonical(mod, b) if canonical else lower.get(b.lower(), b)
            except ValueError:
                name = b
            if name not in dataset_bands[mod]:
                missing.append(f"{b!r}{suggest(b, dataset_bands[mod])}")
        if missing:
            p.append(f"data.bands.{mod}: the dataset has no bands {', '.join(missing)} "
                     f"(it has {dataset_bands[mod]})")
    return p
