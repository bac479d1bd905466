"""Whether a checkpoint's saved state fits this job, and what a resume keeps of this job's own.

Used by every strategy's ``load`` (:mod:`eofm.pretrain.strategy`): model and optimiser state
compared with this job's before anything is restored (missing/unexpected keys, shapes, group
sizes), an optimiser state numbered by position re-keyed by parameter name for FSDP2, the
optimiser hyper-parameters set back to this job's config after a load restored the
checkpoint's, and a run folder holding the other kind of checkpoint (DeepSpeed vs plain)
refused, not silently ignored.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from . import distributed
from .checkpoint import CheckpointManager
from .config import ConfigError

log = logging.getLogger(__name__)


# Per-group settings a resume takes from this job's config, not from the checkpoint:
# optim.weight_decay, optim.betas, optim.eps, and the layer-wise lr multiplier ``lr_scale``
# (fine-tuning's optim.layer_decay: :func:`eofm.finetune.tasks.lrd_param_groups`; pretraining's
# groups have none, and a key a group lacks is left alone).
OPTIM_HPARAMS = ("weight_decay", "betas", "eps", "lr_scale")
SUMMARISED = {"lr_scale": "optim.layer_decay"}  # one value per layer: warned of as a count


def optimizer_hparams(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each parameter group's :data:`OPTIM_HPARAMS` (this job's, before a checkpoint's load
    restores the ones it was written with)."""
    return [{k: g[k] for k in OPTIM_HPARAMS if k in g} for g in groups]


def _plain(value: Any) -> Any:
    """A hyper-parameter as comparable plain numbers (betas: a tuple of floats)."""
    if isinstance(value, (list, tuple)):
        return tuple(float(v) for v in value)
    return float(value) if isinstance(value, (int, float, Tensor)) else value


def keep_configured_hparams(groups: list[dict[str, Any]], configured: list[dict[str, Any]]
                            ) -> list[str]:
    """Set each of ``groups`` back to its ``configured`` hyper-parameters
    (:func:`optimizer_hparams` taken before loading a checkpoint: ``Optimizer.load_state_dict``
    restores the checkpoint's own) and warn of each change, old -> new, as the schedule does
    (``schedules.Schedule.load_state_dict``): a resumed run follows its config's
    ``optim.weight_decay`` (decayed parameters; the exempt ones stay at 0), ``optim.betas``,
    ``optim.eps`` and, in fine-tuning, ``optim.layer_decay`` (each group's ``lr_scale``, which
    ``set_lr`` multiplies the lr by). Returns the changes ("key old -> new"), each once; the
    per-layer ``lr_scale`` as one "lr_scale of N of M group(s) (optim.layer_decay)"."""
    changed: list[str] = []
    counts = dict.fromkeys(SUMMARISED, 0)
    for group, want in zip(groups, configured, strict=True):
        for key, value in want.items():
            old = group.get(key)
            group[key] = value
            if _plain(old) == _plain(value):
                continue
            if key in counts:
                counts[key] += 1
                continue
            note = f"{key} {_plain(old)} -> {_plain(value)}"
            if note not in changed:
                changed.append(note)
    changed += [f"{key} of {n} of {len(groups)} group(s) ({SUMMARISED[key]})"
                for key, n in counts.items() if n]
    if changed:
        log.warning("the optimiser's hyper-parameters differ from the checkpoint's (%s): from "
                    "the resumed step on it uses this config's (optim.*)", ", ".join(changed))
    return changed


def keyed_by_name(saved: dict[str, Any], groups: list[dict[str, Any]], module: nn.Module
                  ) -> dict[str, Any]:
    """The optimiser state dict ``saved`` keyed by parameter names, as FSDP2's
    ``set_state_dict`` reads it (and ``get_state_dict`` writes it). One written by
    ``Optimizer.state_dict()`` (one process, DDP) numbers the parameters in group order
    instead, and ``set_state_dict`` would silently drop its moments; each number becomes the
    name of the parameter at the same place in this job's ``groups`` (the same grouping, as
    :meth:`eofm.pretrain.strategy.Strategy.fit_problems` checked), as
    ``Optimizer.load_state_dict`` matches them by position. A state keyed by names already is
    returned as it is."""
    saved_groups = saved["param_groups"]
    keys = [k for g in saved_groups for k in g["params"]]
    if all(isinstance(k, str) for k in keys):
        return saved
    names = {id(p): n for n, p in module.named_parameters()}
    ours = [p for g in groups for p in g["params"]]
    to_name = {k: names[id(p)] for k, p in zip(keys, ours, strict=True)}
    return {"state": {to_name[k]: v for k, v in saved.get("state", {}).items()},
            "param_groups": [{**g, "params": [to_name[k] for k in g["params"]]}
                             for g in saved_groups]}


def _listed(names: list[str]) -> str:
    """The first few of ``names``, and how many more."""
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def model_fit_problems(saved: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Keys missing from or unexpected in the checkpoint's model state dict ``saved``, and
    tensors whose shape differs from this job's ``ours`` (empty: a strict load fits)."""
    from eofm.models.hub import state_differences

    missing, unexpected, diff = state_differences(saved, ours)
    shapes = [f"{k} (checkpoint {list(a)}, this job {list(b)})" for k, a, b in diff]
    out = []
    if missing:
        out.append(f"model: {len(missing)} key(s) this job has are missing ({_listed(missing)})")
    if unexpected:
        out.append(f"model: {len(unexpected)} unexpected key(s) ({_listed(unexpected)})")
    if shapes:
        out.append(f"model: {len(shapes)} tensor(s) of another shape ({_listed(shapes)})")
    return out


def optimizer_fit_problems(saved: dict[str, Any], groups: list[dict[str, Any]]) -> list[str]:
    """How the checkpoint's optimiser state dict ``saved`` differs from this job's parameter
    ``groups``: the number of groups, their sizes, and per-parameter state (AdamW's moments)
    of another shape than the parameter it would be restored onto."""
    saved_groups = saved.get("param_groups")
    if not isinstance(saved_groups, list):
        return ["optimizer: expected 'param_groups' in its state dict"]
    have = [len(g["params"]) for g in saved_groups]
    want = [len(g["params"]) for g in groups]
    if have != want:
        return [f"optimizer: checkpoint has {len(have)} parameter group(s) of sizes {have}, "
                f"this job {len(want)} of sizes {want}"]
    per_param = saved.get("state", {})
    shapes = []
    for g_saved, g in zip(saved_groups, groups, strict=True):
        for key, p in zip(g_saved["params"], g["params"], strict=True):
            for name, v in per_param.get(key, {}).items():
                if isinstance(v, Tensor) and v.ndim > 0 and v.shape != p.shape:
                    shapes.append(f"{name} of parameter {key} (checkpoint {list(v.shape)}, "
                                  f"this job {list(p.shape)})")
    if shapes:
        return [f"optimizer: {len(shapes)} state tensor(s) of another shape ({_listed(shapes)})"]
    return []


def refuse_other_kind(manager: CheckpointManager, deepspeed: bool, strategy: str) -> None:
    """Refuse to resume (:class:`ConfigError`) when the run folder holds checkpoints of the
    other kind than this job's strategy writes: DeepSpeed folders for a ddp/fsdp2/single job,
    plain ``.pt`` files for a DeepSpeed one. Each kind reads only its own, so the job would
    otherwise start again from step 0 beside them (and later prune or outrank them).

    Collective (every rank calls it): rank 0 looks and broadcasts the names it found, so with
    node-local or lagging storage every rank still reaches the same verdict (no rank raising
    while another goes on into a collective and hangs), as :meth:`CheckpointManager.
    load_deepspeed` does with its tag list."""
    if deepspeed:
        kind, wrote, resume_with = ("plain", "the ddp, fsdp2 or single strategy",
                                    "runtime.strategy=ddp (or fsdp2/single)")
    else:
        kind, wrote, resume_with = ("DeepSpeed", "DeepSpeed",
                                    "runtime.strategy=deepspeed with its runtime.zero_stage")
    other = distributed.broadcast_object(  # rank 0's listing decides
        [p.name for _, p in manager.checkpoints()] if deepspeed else
        [p.name for _, p, done in manager.deepspeed_tags() if done])
    if not other:
        return
    raise ConfigError([
        f"runtime.strategy: {manager.directory} holds {len(other)} {kind} checkpoint(s) "
        f"({_listed(other)}) written by {wrote}; this job runs {strategy!r}, which cannot resume "
        f"them and would start again from step 0. Resume with {resume_with}; or start over: move "
        f"them away or set another runtime.out_dir (to keep the weights: eofm-export the run, then "
        f"model.init_from=EXPORT; the optimiser restarts)"])
