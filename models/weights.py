"""Reading and loading an export's weights: safetensors in, a strict, explained load out.

:func:`read_weights` reads a ``model.safetensors`` (never a pickle); :func:`load_weights` loads
it into an encoder and refuses, in one error naming the file, every missing, unexpected or
mis-shaped tensor; a learned position table stored for another grid is resampled first.
:func:`load_export_weights` does the same as an export's ``config.json`` describes it.
:func:`read_weight_shapes` reads a file's tensor shapes from its header alone, and
:func:`check_weight_shapes` / :func:`check_export_shapes` refuse what those loads would refuse
from the shapes alone, against an encoder built on the meta device: so an export whose
config.json asks for a far larger model than its weights is refused before that model is
allocated (:func:`eofm.models.hub.build_checked_encoder`, which ``from_pretrained`` and
``eofm.finetune``'s ``load_encoder``/``load_finetuned`` build through).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from .contract import pair_size
from .pos_embed import resample_grid_table
from .vit import ViTEncoder

__all__ = ["LoadedState", "StateDiff", "check_export_shapes", "check_weight_shapes", "export_size",
           "load_export_weights", "load_weights", "read_weight_shapes", "read_weights",
           "state_differences"]

log = logging.getLogger(__name__)


class LoadedState(dict):
    """The tensors of a weights file (name -> tensor), with that file (``source``) for the
    errors about them (:func:`load_weights`) to name."""

    def __init__(self, tensors: Mapping[str, Tensor], source: str | Path) -> None:
        super().__init__(tensors)
        self.source = Path(source)


def read_weights(path: str | Path) -> LoadedState:
    """Every tensor of a safetensors file, on the CPU; a ValueError names a file that is not
    a complete safetensors file (truncated, corrupt, not safetensors) or cannot be read."""
    try:
        return LoadedState(load_file(str(path), device="cpu"), path)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a complete safetensors file (truncated or corrupt): "
                         f"{e}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the weights ({e.strerror or e})") from None


def read_weight_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a safetensors file, from its header alone (no tensor is
    read); a ValueError names a file that is not a complete safetensors file or cannot be read,
    as :func:`read_weights` does."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except SafetensorError as e:
        raise ValueError(f"{path}: not a complete safetensors file (truncated or corrupt): "
                         f"{e}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the weights ({e.strerror or e})") from None


class _Stored(NamedTuple):
    """A stored tensor known by its shape alone (from a file's header), as
    :func:`state_differences` compares it."""

    shape: tuple[int, ...]


class StateDiff(NamedTuple):
    """How a saved state dict differs from a module's: keys the module has that it lacks
    (``missing``), keys the module lacks (``unexpected``), and ``(key, saved shape, module
    shape)`` of tensors present in both with other shapes; each in its dict's order."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def state_differences(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> StateDiff:
    """Compare a saved state dict with a module's (``ours``): what a strict load would refuse
    (entries without a shape, such as extra state, are compared by name only)."""
    return StateDiff(
        missing=[k for k in ours if k not in saved],
        unexpected=[k for k in saved if k not in ours],
        shapes=[(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in ours.items()
                if k in saved and hasattr(v, "shape") and hasattr(saved[k], "shape")
                and tuple(saved[k].shape) != tuple(v.shape)])


def export_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """The input size (H, W) an export's weights were trained at: its contract's
    ``input_size``, else its ``model_args`` ``img_size``; None when it says neither."""
    size = (config.get("eofm_contract") or {}).get("input_size")
    size = size if size is not None else (config.get("model_args") or {}).get("img_size")
    return None if size is None else pair_size(size)


def _stored_grid(rows: int, size: tuple[int, int] | None, patch: int) -> tuple[int, int] | None:
    """The (Gh, Gw) grid of a stored (rows, D) position table: ``size`` // ``patch`` when it
    has that many cells, else a square grid when ``rows`` is a square; None otherwise."""
    if size is not None and (size[0] // patch) * (size[1] // patch) == rows:
        return size[0] // patch, size[1] // patch
    side = round(rows ** 0.5)
    return (side, side) if side * side == rows else None


def _resampled_grid(encoder: ViTEncoder, shape: Sequence[int],
                    trained_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The grid of a stored learned ``pos_table`` of ``shape`` when a load resamples it to
    ``encoder``'s grid (:func:`_resample_pos_table`); None when it is taken as it is (the
    same grid, no learned table here, or a grid that cannot be told: left to the checks)."""
    mine = getattr(encoder, "pos_table", None)
    if mine is None or len(shape) != 2 or shape[1] != mine.shape[1]:
        return None
    # by grid, not by shape: a table trained at 16x64 (grid 2x8) has the 16 rows of a 32x32
    # encoder's grid 4x4, and copied as it is, its rows would sit on other cells
    grid = _stored_grid(shape[0], trained_size, encoder.patch_size)
    return None if grid is None or grid == tuple(encoder.grid_size) else grid


def _resample_pos_table(encoder: ViTEncoder, own: dict[str, Tensor],
                        trained_size: tuple[int, int] | None, where: str) -> None:
    """A learned ``pos_table`` stored for another grid than ``encoder``'s (an export loaded at
    another ``img_size``) resampled in place to the encoder's grid, as the encoder itself
    resamples it for other inputs (bicubic, :func:`resample_grid_table`); logged. A table
    whose grid cannot be told is left for :func:`load_weights` to refuse."""
    table = own.get("pos_table")
    grid = None if table is None else _resampled_grid(encoder, tuple(table.shape), trained_size)
    if grid is None:
        return
    own["pos_table"] = resample_grid_table(table, grid, encoder.grid_size)
    log.info("%spos_table: the learned position table of grid %s resampled to this encoder's "
             "grid %s (img_size %s)", where, list(grid), list(encoder.grid_size),
             list(encoder.img_size))


def _split_extra(state: Mapping[str, Any], extra_state: Sequence[str]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the encoder's entries, those under the ``extra_state`` prefixes) of ``state``."""
    prefixes = set(extra_state)
    extra = {k: v for k, v in state.items() if k.split(".", 1)[0] in prefixes}
    return {k: v for k, v in state.items() if k not in extra}, extra


def _refuse_differences(encoder: ViTEncoder, own: Mapping[str, Any], *, strict: bool,
                        where: str, warn: bool = True) -> None:
    """The one ValueError naming every missing, unexpected (``strict``) and mis-shaped tensor
    of ``own`` against ``encoder`` (which may be on the meta device) and ``where`` they came
    from; non-strictly, the missing and unexpected ones are logged (``warn``) instead."""
    diff = state_differences(own, encoder.state_dict())
    missing, unexpected = sorted(diff.missing), sorted(diff.unexpected)
    shapes = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in diff.shapes]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes))
    if shapes or (strict and problems):
        raise ValueError(f"{where}the weights do not match the config's {encoder.model_name} "
                         f"(model_args {encoder.model_overrides}): " + "; ".join(problems))
    if problems and warn:
        log.warning("%sloading non-strictly: %s", where, "; ".join(problems))


def load_weights(encoder: ViTEncoder, state: Mapping[str, Tensor], *,
                 extra_state: Sequence[str] = (), strict: bool = True,
                 source: str | Path | None = None,
                 trained_size: int | Sequence[int] | None = None) -> dict[str, Tensor]:
    """Load ``state`` into ``encoder``; returns the tensors under the ``extra_state`` prefixes.

    Missing and unexpected tensors are refused (``strict``; otherwise logged) and shape
    mismatches always are, in one ValueError naming every tensor and the file they came from
    (``source``, default the one a :class:`LoadedState` remembers). A learned ``pos_table``
    (``learned_pos``) stored for another grid, as when an export is built at another
    ``img_size``, is resampled to the encoder's grid first (logged): its grid is
    ``trained_size`` (the export's input size, :func:`export_size`) // patch, or a square one.
    """
    source = source if source is not None else getattr(state, "source", None)
    where = f"{source}: " if source is not None else ""
    own, extra = _split_extra(state, extra_state)
    _resample_pos_table(encoder, own,
                        None if trained_size is None else pair_size(trained_size), where)
    _refuse_differences(encoder, own, strict=strict, where=where)
    encoder.load_state_dict(own, strict=False)
    return extra


def check_weight_shapes(encoder: ViTEncoder, shapes: Mapping[str, Sequence[int]], *,
                        extra_state: Sequence[str] = (), strict: bool = True,
                        source: str | Path | None = None,
                        trained_size: int | Sequence[int] | None = None) -> None:
    """Refuse, from the tensors' shapes alone (``shapes``: name -> shape, as
    :func:`read_weight_shapes` reads a file's header), what :func:`load_weights` with the same
    arguments would refuse, in its error; nothing is logged or loaded.

    ``encoder`` may be on the meta device (no memory behind it), so weights that do not fit
    the architecture a config asks for are refused before that architecture is allocated. A
    learned ``pos_table`` stored for another grid counts as resampled to the encoder's, as
    :func:`load_weights` resamples it.
    """
    where = f"{source}: " if source is not None else ""
    own, _ = _split_extra({k: _Stored(tuple(v)) for k, v in shapes.items()}, extra_state)
    table = own.get("pos_table")
    size = None if trained_size is None else pair_size(trained_size)
    if table is not None and _resampled_grid(encoder, table.shape, size) is not None:
        own["pos_table"] = _Stored(tuple(encoder.pos_table.shape))
    _refuse_differences(encoder, own, strict=strict, where=where, warn=False)


def load_export_weights(encoder: ViTEncoder, state: Mapping[str, Tensor],
                        config: Mapping[str, Any], **kwargs: Any) -> dict[str, Tensor]:
    """:func:`load_weights` of an export's ``state`` as its ``config`` describes it: its
    ``extra_state`` prefixes, and its trained input size (:func:`export_size`), so a learned
    position table is resampled for an encoder built at another size; ``kwargs``: the rest of
    :func:`load_weights`'s (``strict``, ``source``)."""
    return load_weights(encoder, state, extra_state=config.get("extra_state", ()),
                        trained_size=export_size(config), **kwargs)


def check_export_shapes(encoder: ViTEncoder, shapes: Mapping[str, Sequence[int]],
                        config: Mapping[str, Any], **kwargs: Any) -> None:
    """:func:`check_weight_shapes` of an export's stored ``shapes`` as its ``config`` describes
    them (as :func:`load_export_weights` loads them); ``kwargs``: ``strict``, ``source``."""
    check_weight_shapes(encoder, shapes, extra_state=config.get("extra_state", ()),
                        trained_size=export_size(config), **kwargs)
