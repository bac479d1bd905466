"""Reading a pretraining checkpoint for export: finding a run's newest complete checkpoint,
loading it without unpickling code (``torch.load(weights_only=True)``, or a DeepSpeed ZeRO
folder consolidated to its fp32 master weights), refusing what is not a pretraining run's
checkpoint with the reason, and stripping DDP/compile wrapper prefixes from its keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from eofm.pretrain.checkpoint import DS_MARKER, CheckpointManager, looks_complete
from eofm.pretrain.zero_checkpoint import UnsafeCheckpointFile, consolidate, refusal

__all__ = ["ENCODER_PREFIX", "FINETUNE_SECTIONS", "PRETRAIN_SECTIONS", "WRAPPER_PREFIXES",
           "find_checkpoint", "load_checkpoint", "strip_wrappers"]

ENCODER_PREFIX = "encoder."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def find_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """The checkpoint itself (a ``step_*.pt`` file or a DeepSpeed ``step_*`` folder), or a run
    directory's newest complete one (of either kind, the newer step when both exist)."""
    path = Path(run_or_checkpoint)
    if path.is_file() or (path / DS_MARKER).is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such run directory or checkpoint file")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    manager = CheckpointManager(folder, rank=0)
    found = [(s, p) for s, p, done in manager.deepspeed_tags() if done][:1]
    if (plain := manager.latest()) is not None:
        found.append(next((s, p) for s, p in manager.checkpoints() if p == plain))
    if found:
        return max(found)[1]
    broken = [why for _, why in sorted(
        [(s, f"{p.name}: {_why_unreadable(p)}") for s, p in manager.checkpoints()]
        + [(s, f"{p.name}/: incomplete DeepSpeed checkpoint (no {DS_MARKER}: its write did not "
               f"finish)") for s, p, done in manager.deepspeed_tags() if not done],
        reverse=True)]  # newest first
    if broken:
        raise ValueError(f"{folder}: {len(broken)} checkpoint(s) found, none readable: "
                         f"{'; '.join(broken)}; nothing to export until the run has a "
                         f"complete checkpoint (restore them, or rerun the pretraining)")
    raise ValueError(f"{path}: no checkpoint found; expected RUN_DIR/checkpoints/step_*.pt or a "
                     "complete DeepSpeed RUN_DIR/checkpoints/step_*/ (a pretraining run "
                     "directory), or a checkpoint itself")


def _why_unreadable(path: Path) -> str:
    """Why a plain checkpoint file failed the completeness check, in a few words."""
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    return f"not a complete torch archive ({size} bytes: truncated or corrupt)"


def _load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file that looked complete, in one line:
    what it names that may not be unpickled, else torch's reason (never torch's advice to load
    it with ``weights_only=False``, which would run whatever code the file names)."""
    refused = refusal(e)
    if refused is not None:
        return (f"it names {refused}, which torch.load(weights_only=True) does not load (eofm "
                "never unpickles code); expected a checkpoint eofm-pretrain wrote")
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    why = m.group(1).strip() if m else (text.strip().splitlines() or [""])[0]
    if "weights_only" in why or "Weights only" in why:
        why = "damaged pickle data"
    return (f"cannot read the checkpoint with torch.load(weights_only=True) "
            f"({type(e).__name__}: {why}); the file is damaged or not an eofm checkpoint")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pretraining checkpoint read with ``torch.load(weights_only=True)`` (never unpickled);
    a DeepSpeed ZeRO folder is consolidated to its fp32 master weights the same way. A file
    that is not a complete torch archive is refused with the reason a run folder's broken
    checkpoints get (:func:`find_checkpoint`); an eofm-finetune checkpoint with where the
    fine-tuned model's own export is and how it loads (:func:`_refuse_other_configs`)."""
    file = Path(path)
    if file.is_file() and not looks_complete(file):
        raise ValueError(f"{path}: {_why_unreadable(file)}; expected a checkpoint eofm-pretrain "
                         "wrote (RUN_DIR/checkpoints/step_*.pt)")
    try:
        state = consolidate(path) if file.is_dir() else CheckpointManager.load(path)
    except UnsafeCheckpointFile:  # names what it refused already
        raise
    except Exception as e:  # any other failure to read is the same answer to the user
        raise ValueError(f"{path}: {_load_failure(e)}") from None
    missing = [k for k in ("model", "config") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not an eofm pretraining checkpoint; missing {missing} "
                         "(expected the dict eofm-pretrain writes)")
    _refuse_other_configs(Path(path), state["config"])
    return state


PRETRAIN_SECTIONS = ("model", "objective", "data")  # what encoder_from_checkpoint reads
FINETUNE_SECTIONS = ("task", "encoder")  # an eofm-finetune config's own sections


def _refuse_other_configs(path: Path, config: Any) -> None:
    """A ValueError for a checkpoint whose config is not a pretraining run's (the sections
    :data:`PRETRAIN_SECTIONS`): an eofm-finetune checkpoint (``task``/``encoder``) is named as
    one, with where its own export is and how it loads; anything else names what it lacks."""
    keys = set(config) if isinstance(config, Mapping) else set()
    missing = [k for k in PRETRAIN_SECTIONS if k not in keys]
    if not missing:
        return
    if set(FINETUNE_SECTIONS) <= keys:
        model = (path.parent.parent if path.parent.name == "checkpoints" else path.parent) \
            / "model"
        where = (f"its export is {model}" if model.is_dir() else
                 f"eofm-finetune writes it to {model} when the run finishes")
        raise ValueError(
            f"{path}: an eofm-finetune checkpoint (its config has {list(FINETUNE_SECTIONS)}, "
            f"not {list(PRETRAIN_SECTIONS)}); eofm-export exports pretraining runs. The "
            f"fine-tuned model is exported by eofm-finetune itself ({where}): load it with "
            f"eofm.finetune.finetuned.load_finetuned('{model}') (encoder and head), or its "
            f"encoder alone with eofm.models.from_pretrained('{model}')")
    raise ValueError(f"{path}: not an eofm pretraining checkpoint; its config lacks the "
                     f"sections {missing} (expected the config eofm-pretrain writes, with "
                     f"{list(PRETRAIN_SECTIONS)})")


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop DDP/compile prefixes from every key."""
    out = {}
    for k, v in state.items():
        while k.startswith(WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out
