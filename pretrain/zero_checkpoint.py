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
:class:`UnsafeCheckpointFile` naming it, before any of it runs.

DeepSpeed's universal loader restores only what the optimiser owns (it skips the module state
dict): :func:`load_engine` puts back the rest, frozen parameters (SoftCon's EMA target) and
buffers (its fp32 EMA shadow, BatchNorm statistics), from the model-state files
``ds_to_universal`` copies into the universal folder. The layout :func:`consolidate`
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
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .preemption import DEFAULT_SIGNALS, StopRequested, active_handler

__all__ = ["DS_MARKER", "UnsafeCheckpointFile", "consolidate", "deepspeed_layout", "load_engine",
           "refusal", "restore_unoptimised", "stage_name", "to_universal", "weights_only_loads"]

DS_MARKER = "COMPLETE"  # written into a folder once every rank has saved (or it is converted)
# what ends a conversion as a job's stop, not as a failure: the scheduler's, and Ctrl-C
STOP_SIGNALS: tuple[int, ...] = (*DEFAULT_SIGNALS, signal.SIGINT)

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


# torch's weights-only unpickler refusing a global, a function to call or a class to build (its
# messages in torch/_weights_only_unpickler.py): the file names code, so it is not just damaged
_REFUSED = re.compile(r"GLOBAL |Unsupported global|unrecognized function|allowlisted\s+via")
_LOADS_LOCK = threading.RLock()  # weights_only_loads: one thread at a time, re-entrant
_INSTALLED: list[Any] = []  # while it is in force: [its torch.load, the real one, entries]


def refusal(e: BaseException) -> str | None:
    """The line of a ``weights_only`` load error saying what the file names that it refused, or
    None when it refused nothing (a damaged or truncated file)."""
    why = next((x.strip() for x in str(e).splitlines() if _REFUSED.search(x)), None)
    if why is None:
        return None
    why = why.removeprefix("WeightsUnpickler error:").strip()
    return why.split(" Please use")[0].rstrip(".")  # torch's hint is to trust the file


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within it every ``torch.load`` (DeepSpeed's included, which asks for
    ``weights_only=False``) reads with ``weights_only=True`` and DeepSpeed's plain classes
    (:func:`_allowed`) allowed; a file naming a class or function outside them raises
    :class:`UnsafeCheckpointFile` naming it (a damaged file raises torch's own error).

    It replaces ``torch.load`` process-wide (DeepSpeed looks the function up at every call)
    under a module-wide lock held for its duration: another thread entering it waits until the
    first has left (a load elsewhere in the process meanwhile is made weights-only too). Entries
    in one thread, nested or overlapping in any order, share one replacement, put in by the
    first and taken out by the last to leave; it is taken out only if ``torch.load`` is still
    this replacement (one installed since is its installer's to undo)."""
    with _LOADS_LOCK:
        if not _INSTALLED:
            real = torch.load
            _INSTALLED.extend([_weights_only(real), real, 0])
            torch.load = _INSTALLED[0]  # type: ignore[assignment]
        _INSTALLED[2] += 1
        try:
            yield
        finally:
            _INSTALLED[2] -= 1
            if _INSTALLED[2] == 0:
                load, real, _ = _INSTALLED
                _INSTALLED.clear()
                if torch.load is load:
                    torch.load = real  # type: ignore[assignment]


def _weights_only(real: Any) -> Any:
    """``real`` (torch.load) made weights-only for :func:`weights_only_loads`."""
    allowed = _allowed()

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return real(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            why = refusal(e)
            if why is None:  # nothing refused: a damaged file, not a hostile one
                raise
            raise UnsafeCheckpointFile(
                f"{f}: refused: it pickles more than tensors and plain data, and loading it "
                f"could run code ({why}); resume only from checkpoints this project wrote, "
                f"or move the file's checkpoint away") from None

    return load


def _read(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True, mmap=True)`` with DeepSpeed's plain classes allowed; a
    file naming a class or function outside them raises :class:`UnsafeCheckpointFile`, any other
    failure ValueError (both name the file)."""
    try:
        with torch.serialization.safe_globals(_allowed()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UnsafeCheckpointFile:  # read under weights_only_loads: said already
        raise
    except Exception as e:
        refused = refusal(e)
        why = refused or (str(e).splitlines() or [""])[0]
        raise (UnsafeCheckpointFile if refused else ValueError)(
            f"{path}: cannot read this DeepSpeed file with torch.load(weights_only=True) "
            f"({type(e).__name__}: {why})") from None


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


def stage_boundary_advice(was_zero3: bool) -> str:
    """What to do about a DeepSpeed checkpoint written on the other side of the ZeRO-3
    boundary (its ``was_zero3``): the refusal's advice, as the ranks and the launch preflight
    give it."""
    return ("DeepSpeed cannot load it across that boundary, even through its universal format: "
            f"resume with runtime.zero_stage={3 if was_zero3 else '1 or 2'}, or start a new run "
            "from its weights (eofm-export, then model.init_from; the optimiser restarts)")


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
    injected. ``progress`` passes its output (progress bars) through to stderr as it comes.

    A conversion cut short by a stop (the subprocess killed by SIGTERM, SIGUSR1 or SIGINT,
    which a scheduler or Ctrl-C sends to the whole process group, or failing while this
    process's :class:`.preemption.PreemptionHandler` holds a stop) raises
    :class:`.preemption.StopRequested`, not a failure: the checkpoint is not damaged, and the
    requeued job converts it again. Any other failure is a RuntimeError naming ``folder``
    (:class:`UnsafeCheckpointFile` for a refused file); ``target`` is absent after either."""
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
        if (stop := _stopped_by(code)) is not None:
            raise StopRequested(f"{folder}: the conversion to DeepSpeed's universal format was "
                                f"cut short ({stop}); the requeued job converts it again")
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


def _stopped_by(code: int) -> str | None:
    """What stopped a conversion subprocess that exited with ``code`` (not 0): a stop signal
    that killed it, or the stop this process's handler holds; None for a failure."""
    if -code in STOP_SIGNALS:
        return f"ds_to_universal was killed by {signal.Signals(-code).name}"
    handler = active_handler()
    if handler is not None and handler.should_stop:
        return f"{handler.describe()}; ds_to_universal exited with {code}"
    return None


def _unoptimised(module: torch.nn.Module) -> tuple[dict[str, torch.nn.Parameter],
                                                   dict[str, torch.Tensor]]:
    """``(frozen, buffers)`` of ``module`` by state-dict name: the parameters DeepSpeed's
    optimiser does not own (no gradient; zero-element ones have nothing to restore), each once
    under its first name (DeepSpeed's name for it: ``engine.param_names``), and the persistent
    buffers."""
    from deepspeed.runtime.utils import is_optimized_parameter

    frozen = {n: p for n, p in module.named_parameters() if not is_optimized_parameter(p)
              and getattr(p, "ds_numel", p.numel()) > 0}
    params = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    buffers = {n: t for n, t in module.state_dict(keep_vars=True).items() if n not in params}
    return frozen, buffers


def _saved_value(saved: dict[str, Any], name: str, shape: tuple[int, ...], path: Path,
                 what: str) -> torch.Tensor:
    if name not in saved:
        raise ValueError(f"{path}: its module state holds no {what} {name!r}, which this model "
                         f"has; expected the model that wrote the checkpoint")
    t = saved[name]
    if tuple(t.shape) != shape:
        raise ValueError(f"{path}: {what} {name!r} has shape {tuple(t.shape)}, this model's is "
                         f"{shape}; expected the model that wrote the checkpoint")
    return t


def restore_unoptimised(engine: Any, folder: Path) -> list[str]:
    """Put back into ``engine.module`` what DeepSpeed's universal loader leaves as the fresh
    model's: every frozen parameter and buffer, from the model-state files of the DeepSpeed
    ``folder`` (read weights-only); the names restored.

    ZeRO-1/2: rank 0's ``mp_rank_00_model_states.pt`` holds the whole module state. ZeRO-3:
    every rank's ``zero_pp_rank_{r}_mp_rank_00_model_states.pt`` holds rank ``r``'s piece of
    each frozen parameter (``frozen_param_fragments``, concatenated in rank order, padding
    dropped) and the whole buffers (rank 0's are taken); the frozen parameters are set through
    ``GatheredParameters`` (modifier rank 0, repartitioned over this job's ranks). Every rank
    reads the same files and checks them before changing anything, so all raise or none does,
    and all run the same gathers in the same order (collective)."""
    module = engine.module
    frozen, buffers = _unoptimised(module)
    if not frozen and not buffers:
        return []
    zero3 = bool(engine.zero_optimization_partition_weights())
    paths = (_ranked(folder, _ZERO3_MODEL, "model-state") if zero3
             else [folder / "mp_rank_00_model_states.pt"])
    if not paths[0].is_file():
        raise ValueError(f"{paths[0]}: missing; it holds the frozen parameters and buffers a "
                         f"universal load must restore (ds_to_universal copies it)")
    models = [_read(p) for p in paths]
    saved = models[0].get("module") or {}
    values: dict[str, torch.Tensor] = {}
    for name, p in frozen.items():
        shape = tuple(getattr(p, "ds_shape", p.shape))
        if not zero3:
            values[name] = _saved_value(saved, name, shape, paths[0], "frozen parameter")
            continue
        pieces = []
        for path, m in zip(paths, models, strict=True):
            piece = (m.get("frozen_param_fragments") or {}).get(name)
            if piece is None:
                raise ValueError(f"{path}: frozen_param_fragments holds no piece of the frozen "
                                 f"parameter {name!r}, which this model has; expected the "
                                 f"model that wrote the checkpoint")
            pieces.append(piece.flatten())
        flat = torch.cat(pieces)
        if flat.numel() < _numel(shape):
            raise ValueError(f"{folder}: the frozen parameter {name!r} has {flat.numel()} "
                             f"values over {len(paths)} ranks' files, this model's shape "
                             f"{shape} needs {_numel(shape)}")
        values[name] = flat[:_numel(shape)].view(shape)
    for name, t in buffers.items():
        values[name] = _saved_value(saved, name, tuple(t.shape), paths[0], "buffer")
    with torch.no_grad():
        for name, t in buffers.items():
            t.copy_(values[name])
        for name, p in frozen.items():  # named_parameters' order: the same on every rank
            if hasattr(p, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    p.data.copy_(values[name])
            else:
                p.data.copy_(values[name])
    return sorted(values)


def load_engine(engine: Any, root: Path, tag: str, universal: bool) -> tuple[Any, Any]:
    """``engine.load_checkpoint`` of ``root/tag`` under :func:`weights_only_loads` (a file
    pickling more than plain data raises :class:`UnsafeCheckpointFile`); ``universal`` turns on
    DeepSpeed's ``checkpoint.load_universal`` for this one load (the engine reads it only while
    loading).

    DeepSpeed's universal load restores only the parameters its optimiser owns (it skips the
    module state dict): :func:`restore_unoptimised` then puts back the frozen parameters and
    buffers from the model-state files ``ds_to_universal`` copied into ``root/tag``.

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
    if loaded[0] is not None:
        restore_unoptimised(engine, Path(root) / tag)
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
