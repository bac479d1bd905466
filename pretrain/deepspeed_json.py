"""Checks of a DeepSpeed JSON (``runtime.deepspeed_config``) against the run: eofm owns the
optimiser, the lr schedule, the precision, the batch and the clipping, so a JSON that sets
any of them otherwise (which the run would override without a word, or DeepSpeed would build
beside eofm's own) is a problem the config check reports with the field to set instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["DEEPSPEED_OFF_ALLOWED", "DEEPSPEED_RUN_OWNED", "deepspeed_json_problems"]


# sections of a DeepSpeed JSON that the run owns: an optimizer or scheduler there would be built
# and stepped by the engine beside eofm's AdamW and per-step lr; amp is apex mixed precision;
# fp16, bf16 (or its old name bfloat16) and torch_autocast are the precision, which the run sets
# from runtime.precision (DeepSpeedStrategy.ds_config) over whatever the JSON says
DEEPSPEED_RUN_OWNED = ("optimizer", "scheduler", "amp", "fp16", "bf16", "bfloat16",
                       "torch_autocast")
# of those, the ones whose section may stay when it is off ({"enabled": false}, or no "enabled":
# DeepSpeed's default is off): it asks for nothing the run does not decide itself (DeepSpeed's
# fp16/bf16 modes always off, torch_autocast on exactly when runtime.precision is bf16)
DEEPSPEED_OFF_ALLOWED = ("fp16", "bf16", "bfloat16", "torch_autocast")


def _deepspeed_owned_sections(ds: dict[str, Any]) -> list[str]:
    """The sections of the DeepSpeed JSON ``ds`` that the run owns (:data:`DEEPSPEED_RUN_OWNED`)
    and would replace: every one present, except a precision section that is off."""
    return [k for k in DEEPSPEED_RUN_OWNED
            if k in ds and not (k in DEEPSPEED_OFF_ALLOWED and _section_off(ds[k]))]


def _section_off(section: Any) -> bool:
    """Whether a DeepSpeed JSON section is switched off: an object whose ``enabled`` is false
    or absent (DeepSpeed's default for its precision sections)."""
    return isinstance(section, dict) and not section.get("enabled", False)


def _deepspeed_run_values(cfg: TrainConfig) -> list[tuple[str, Any, str]]:
    """``(DeepSpeed key, the value the run gives it, the eofm field it comes from)`` for the
    batch and clipping keys the run sets in the DeepSpeed JSON (``train_micro_batch_size_per_gpu``
    depends on the world size: :func:`_deepspeed_micro_batch_problem`)."""
    return [("train_batch_size", cfg.data.batch_size, "data.batch_size"),
            ("gradient_accumulation_steps", cfg.optim.accum_steps, "optim.accum_steps"),
            ("gradient_clipping", cfg.optim.grad_clip or 0.0, "optim.grad_clip")]


def _deepspeed_micro_batch_problem(cfg: TrainConfig, ds: dict[str, Any], path: Path,
                                   world_size: int) -> list[str]:
    """A ``train_micro_batch_size_per_gpu`` in the DeepSpeed JSON ``ds`` (read from ``path``)
    other than the run's micro-batch on ``world_size`` ranks (:func:`micro_batch`), which the
    run would override without a word. Nothing when the JSON has none or the global batch does
    not split evenly over the ranks (:func:`~.config_checks.check_environment` refuses that)."""
    from .config import micro_batch

    key = "train_micro_batch_size_per_gpu"
    if key not in ds or world_size < 1 or cfg.optim.accum_steps < 1:
        return []
    if cfg.data.batch_size % (world_size * cfg.optim.accum_steps):
        return []
    ours = micro_batch(cfg, world_size)
    if ds[key] == ours:
        return []
    return [f"runtime.deepspeed_config: {path} sets {key}={ds[key]!r}, but the run sets it from "
            f"data.batch_size / (world size x optim.accum_steps) ({cfg.data.batch_size} / "
            f"({world_size} x {cfg.optim.accum_steps}) = {ours}) and would override it; set "
            f"data.batch_size or optim.accum_steps instead and remove {key}"]


def deepspeed_json_problems(cfg: TrainConfig, world_size: int | None = None) -> list[str]:
    """Problems with ``runtime.deepspeed_config`` under the deepspeed strategy: not valid JSON,
    not a mapping, a ``zero_optimization.stage`` other than ``runtime.zero_stage``, a batch or
    clipping value other than the run's (:func:`_deepspeed_run_values`: the run would override
    it without a word), with ``world_size`` (the launch's ranks) a micro-batch other than the
    run's (:func:`_deepspeed_micro_batch_problem`), or a section the run owns
    (:data:`DEEPSPEED_RUN_OWNED`; a precision section that is off may stay:
    :func:`_deepspeed_owned_sections`) (a missing file is :func:`~.config_checks.check_environment`'s)."""
    r = cfg.runtime
    if r.strategy != "deepspeed" or not r.deepspeed_config:
        return []
    path = Path(r.deepspeed_config)
    if not path.is_file():
        return []
    try:
        ds = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"runtime.deepspeed_config: {path}: expected a DeepSpeed JSON file, cannot "
                f"read it ({e})"]
    if not isinstance(ds, dict):
        return [f"runtime.deepspeed_config: {path}: expected a JSON object, got "
                f"{type(ds).__name__}"]
    problems = []
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage is not None and stage != r.zero_stage:
        problems.append(f"runtime.deepspeed_config: {path} sets zero_optimization.stage={stage}, "
                        f"runtime.zero_stage is {r.zero_stage}; make them agree")
    for key, ours, source in _deepspeed_run_values(cfg):
        if key in ds and ds[key] != ours:
            problems.append(f"runtime.deepspeed_config: {path} sets {key}={ds[key]!r}, but the "
                            f"run sets it from {source} ({ours!r}) and would override it; set "
                            f"{source} instead and remove {key}")
    if world_size is not None:
        problems += _deepspeed_micro_batch_problem(cfg, ds, path, world_size)
    owned = _deepspeed_owned_sections(ds)
    if owned:  # DeepSpeed would build and step them beside eofm's own
        problems.append(f"runtime.deepspeed_config: {path} has {owned} section(s); eofm passes "
                        "its own AdamW (optim.*), sets the lr each step (schedule.*) and the "
                        "precision (runtime.precision): remove them")
    return problems
