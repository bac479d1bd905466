"""DeepSpeed ZeRO checkpoint folders: their layout, conversion to DeepSpeed's universal format
(for another world size), loading one into an engine, and consolidation to one plain fp32
state read without unpickling.

:func:`deepspeed_layout` tells how many ranks wrote a folder and whether it is ZeRO-3's;
:func:`to_universal` runs DeepSpeed's own ``ds_to_universal``; :func:`load_engine` loads a folder
(universal or not) into an engine, repairing what DeepSpeed's ZeRO-3 universal loader gets wrong.

DeepSpeed itself reads checkpoints with ``torch.load(weights_only=False)`` (its checkpoint
engine, universal loaders, ``ds_to_universal`` and ``zero_to_fp32``), which would run whatever
a file pickles. Nothing here lets it: :func:`consolidate` reads with ``weights_only=True`` and
allows only the four DeepSpeed classes its optimiser files hold (the two loss scalers, the ZeRO
stage enum and fragment addresses: plain data); :func:`load_engine` and :func:`to_universal`
run DeepSpeed's own loading with every ``torch.load`` made that same reader
(:func:`weights_only_loads`), so a file pickling anything else is refused with
:class:`UnsafeCheckpointFile` naming it, before any of it runs. The layout :func:`consolidate`
reassembles is DeepSpeed's:

- ZeRO-1/2: every rank saved one contiguous slice of each parameter group's flat fp32 master
  (``single_partition_of_fp32_groups``); the slices, concatenated in rank order, hold the
  group's parameters back to back in ``param_shapes`` order (with DeepSpeed's per-parameter
  alignment paddings where it recorded them), then padding.
- ZeRO-3: every parameter is cut into ``ceil(numel / world)`` pieces, one per rank, laid back
  to back in each rank's flat groups (``fp32_flat_groups``); a parameter is its pieces from
  every rank, concatenated, with the padding dropped.

Frozen parameters come from ``frozen_param_fragments`` (whole under ZeRO-1/2, one piece per
rank under ZeRO-3), buffers from the model-state file, and everything else in that file
(eofm's client state: config, contract, step, data position, ...) is returned beside them.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["DS_MARKER", "UnsafeCheckpointFile", "consolidate", "deepspeed_layout", "load_engine",
           "stage_name", "to_universal", "weights_only_loads"]

DS_MARKER = "COMPLETE"  # written into a folder once every rank has saved (or it is converted)

_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_00_model_states\.pt$")
_DEEPSPEED_KEYS = ("module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes",
                   "shared_params", "frozen_param_fragments", "lr_scheduler", "data_sampler",
                   "random_ltd", "sparse_tensor_module_names", "skipped_steps", "global_steps",
                   "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
                   "checkpoint_parallel_dimensions", "universal_checkpoint_info", "num_experts",
                   "ds_autoep_layers")


def _allowed() -> list[type]:
    """The DeepSpeed classes its optimiser files pickle: plain data, nothing that runs (none
    when DeepSpeed is not installed: then no file can hold them legitimately)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class UnsafeCheckpointFile(ValueError):
    """A checkpoint file pickles something ``torch.load(weights_only=True)`` refuses (a class
    outside the allowlist, a callable): not loaded, never fallen back past silently."""


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within it every ``torch.load`` (DeepSpeed's included, which asks for
    ``weights_only=False``) reads with ``weights_only=True`` and DeepSpeed's plain classes
    (:func:`_allowed`) allowed; a file naming a class or function outside them raises
    :class:`UnsafeCheckpointFile` naming it (a damaged file raises torch's own error).

    It replaces ``torch.load`` process-wide for its duration (DeepSpeed looks the function up
    at every call): nothing else in the process may load meanwhile (the trainer only resumes
    before training starts)."""
    real = torch.load
    allowed = _allowed()

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return real(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            lines = str(e).splitlines()
            why = next((x.strip() for x in lines if "GLOBAL" in x), None)
            if why is None:  # no refused class or function: a damaged file, not a hostile one
                raise
            why = why.split(" Please use")[0].rstrip(".")  # torch's hint is to trust the file
            raise UnsafeCheckpointFile(
                f"{f}: refused: it pickles more than tensors and plain data, and loading it "
                f"could run code ({why}); resume only from checkpoints this project wrote, or "
                f"move the file's checkpoint away") from None

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = real  # type: ignore[assignment]


def _read(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)`` with DeepSpeed's plain classes allowed."""
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        lines = str(e).splitlines() or [""]
        why = next((x.strip() for x in lines if "GLOBAL" in x), lines[0])
        raise ValueError(f"{path}: cannot read this DeepSpeed file with torch.load(weights_only="
                         f"True) ({type(e).__name__}: {why})") from None


def _ranked(folder: Path, pattern: re.Pattern[str], what: str) -> list[Path]:
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if not found:
        raise ValueError(f"{folder}: no DeepSpeed {what} files (is it a ZeRO checkpoint folder?)")
    ranks = [r for r, _ in found]
    if ranks != list(range(len(found))):
        raise ValueError(f"{folder}: DeepSpeed {what} files of ranks {ranks}; expected 0..."
                         f"{len(found) - 1} with none missing")
    return [p for _, p in found]


def _numel(shape: Any) -> int:
    return math.prod(shape)


def _zero12(groups: list[list[torch.Tensor]], shapes: list[dict[str, Any]],
            paddings: list[list[int]] | None, folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for g, group_shapes in enumerate(shapes):
        flat = torch.cat([rank_groups[g] for rank_groups in groups])
        offset = 0
        for i, (name, shape) in enumerate(group_shapes.items()):
            n = _numel(shape)
            if offset + n > flat.numel():
                raise ValueError(f"{folder}: parameter group {g} holds {flat.numel()} values, "
                                 f"fewer than its parameters need (at {name})")
            out[name] = flat[offset:offset + n].view(tuple(shape)).clone()
            offset += n + (paddings[g][i] if paddings else 0)
    return out


def _zero3(groups: list[list[torch.Tensor]], shapes: list[dict[str, Any]],
           folder: Path) -> dict[str, torch.Tensor]:
    world = len(groups)
    flats = [torch.cat(list(rank_groups)) for rank_groups in groups]
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in ((k, v) for d in shapes for k, v in d.items()):
        n = _numel(shape)
        piece = math.ceil(n / world)
        out[name] = torch.cat([f[offset:offset + piece] for f in flats])[:n].view(
            tuple(shape)).clone()
        offset += piece
    if offset != flats[0].numel():
        raise ValueError(f"{folder}: each rank holds {flats[0].numel()} values, the parameters "
                         f"account for {offset}; the files do not belong together")
    return out


def consolidate(folder: str | Path) -> dict[str, Any]:
    """The checkpoint in ``folder`` as ``{"model": fp32 state dict, **client state}``: the
    full-precision master weights of every rank, frozen parameters and buffers, plus what the
    trainer saved beside them (its resolved ``config``, ``contract``, ``step``, ...)."""
    folder = Path(folder)
    optim = [_read(p)["optimizer_state_dict"] for p in _ranked(folder, _OPTIM, "optimiser")]
    # DeepSpeed's BF16 optimiser (ZeRO-1 with bf16 weights and fp32 gradient accumulation)
    # records no stage; its flat fp32 partitions are laid out as ZeRO-1's
    stage = int(optim[0].get("zero_stage", 1))
    if stage == 3:
        models = [_read(p) for p in _ranked(folder, _ZERO3_MODEL, "model-state")]
    else:
        models = [_read(folder / "mp_rank_00_model_states.pt")]
    main = models[0]
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    groups = [list(o[key]) for o in optim]
    shapes = list(main["param_shapes"])
    if stage == 3:
        state = _zero3(groups, shapes, folder)
    else:
        state = _zero12(groups, shapes, optim[0].get("param_alignment_paddings"), folder)
    for name, shape in (main.get("frozen_param_shapes") or {}).items():
        pieces = [m["frozen_param_fragments"][name].flatten() for m in models]
        state[name] = torch.cat(pieces)[:_numel(shape)].view(tuple(shape)).float().clone()
    module = main.get("module") or {}
    for name in main.get("buffer_names") or []:
        if name in module:
            t = module[name]
            state[name] = t.float().clone() if t.is_floating_point() else t.clone()
    for alias, source in (main.get("shared_params") or {}).items():
        if source in state:
            state[alias] = state[source]
    client = {k: v for k, v in main.items() if k not in _DEEPSPEED_KEYS}
    return {"model": state, **client}


def stage_name(zero3: bool) -> str:
    """How messages name a layout: ZeRO-3, or ZeRO-1/2 (which share one)."""
    return "ZeRO-3" if zero3 else "ZeRO-1/2"


def deepspeed_layout(folder: Path) -> tuple[int, bool]:
    """``(ranks, zero3)`` of a DeepSpeed checkpoint folder: how many data-parallel ranks wrote
    it, and whether its weights are partitioned (ZeRO-3 writes one model-state file per rank;
    ZeRO-1 and 2 share one layout)."""
    return (len(list(folder.glob("*zero_pp_rank_*_optim_states.pt"))),  # one per rank
            any(folder.glob("zero_pp_rank_*_mp_rank_00_model_states.pt")))


def to_universal(folder: Path, target: Path, workers: int | None = None,
                 progress: bool = True) -> Path:
    """Convert one DeepSpeed checkpoint folder to DeepSpeed's universal format at ``target``
    with DeepSpeed's own ``ds_to_universal`` (into a temporary folder, marked complete and
    renamed when done, so ``target`` is whole or absent; the caller fsyncs its parent), run
    in a subprocess by :func:`_ds_to_universal_main`: its reads are weights-only too.
    Checkpoints saved without DeepSpeed's ``universal_checkpoint_info`` get the minimal one
    injected. ``progress`` passes its output (progress bars) through to stderr as it comes."""
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "eofm.pretrain.zero_checkpoint", "--input_folder",
           str(folder), "--output_folder", str(tmp), "--inject_missing_state",
           "--num_extract_workers", str(workers), "--num_merge_workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail: collections.deque[str] = collections.deque(maxlen=16)
    for chunk in iter(lambda: proc.stdout.read1(8192), b""):  # type: ignore[union-attr]
        text = chunk.decode(errors="replace")
        tail.append(text)
        if progress:
            sys.stderr.write(text)
            sys.stderr.flush()
    if (code := proc.wait()) != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = "".join(tail).replace("\r", "\n").strip().splitlines()[-5:]
        unsafe = [x for x in last if f"{UnsafeCheckpointFile.__name__}: " in x]
        if unsafe:  # a refused file: said as such (the caller does not fall back past it)
            raise UnsafeCheckpointFile(unsafe[-1].split(f"{UnsafeCheckpointFile.__name__}: ",
                                                         1)[1])
        raise RuntimeError(f"{folder}: DeepSpeed's ds_to_universal failed (exit {code}): "
                           + " | ".join(last))
    (tmp / DS_MARKER).write_text(f"{folder.name}\n")
    shutil.rmtree(target, ignore_errors=True)  # a dead earlier conversion
    os.replace(tmp, target)
    return target


def load_engine(engine: Any, root: Path, tag: str, universal: bool) -> tuple[Any, Any]:
    """``engine.load_checkpoint`` of ``root/tag`` under :func:`weights_only_loads` (a file
    pickling more than plain data raises :class:`UnsafeCheckpointFile`); ``universal`` turns on
    DeepSpeed's ``checkpoint.load_universal`` for this one load (the engine reads it only while
    loading).

    Two repairs after a universal load, both for DeepSpeed's ZeRO-3 universal loader: the
    parameter groups' settings (weight decay, layer-wise ``lr_scale``, betas, eps) come from the
    run's config and are put back (the loader gives every group the first group's settings,
    which would decay the norms, biases and tokens the config exempts); and each optimiser state
    gets its own ``step`` tensor (the loader shares one, which every group's step then
    advances, so the second group's Adam bias correction would run ahead)."""
    if not universal:
        with weights_only_loads():
            return engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    config = engine._config
    before = config.load_universal_checkpoint
    groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    config.load_universal_checkpoint = True
    try:
        with weights_only_loads():
            loaded = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                            load_lr_scheduler_states=True)
    finally:
        config.load_universal_checkpoint = before
    for group, settings in zip(engine.optimizer.param_groups, groups, strict=True):
        group.update(settings)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()
    return loaded


def _ds_to_universal_main() -> None:
    """DeepSpeed's ``ds_to_universal`` command line (its arguments) with every ``torch.load``
    weights-only (:func:`weights_only_loads`): what :func:`to_universal` runs. Its extraction
    workers are forked, so they inherit the weights-only ``torch.load``."""
    import multiprocessing

    from deepspeed.checkpoint import ds_to_universal

    multiprocessing.set_start_method("fork", force=True)
    with weights_only_loads():
        ds_to_universal.main(ds_to_universal.parse_arguments())


if __name__ == "__main__":
    _ds_to_universal_main()
