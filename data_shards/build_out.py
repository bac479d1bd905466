"""The ``--out`` folder of a shard or zarr build: what a build writes there
(:data:`SHARD_BUILD_FILES`, the writer parts folder :data:`PARTS`), the checks made before any
input is read (:func:`check_out_apart`: apart from every input; :func:`check_replaceable`:
``--overwrite`` replaces only a build's own files), clearing a dataset for ``--overwrite`` and
removing the folders a failed build made while they are empty."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

from .manifest import MANIFEST_NAME

if TYPE_CHECKING:
    from .build import BuildConfig

__all__ = ["PARTS", "SHARD_BUILD_FILES", "check_out_apart", "check_replaceable",
           "missing_folders", "prepare_out", "remove_if_empty"]

PARTS = ".parts"  # the writers' part files: what each wrote, merged into the manifest


# what a shard build writes into --out, and all --overwrite removes from it (with PARTS): the
# manifest, shards, and temporary files (a shard, manifest or part being written)
SHARD_BUILD_FILES = (MANIFEST_NAME, "shard-*.tar", "*.tmp")


def _written_by_shard_build(entry: Path) -> bool:
    """Whether ``entry`` (in a dataset folder) is one a shard build writes: a file named as
    in :data:`SHARD_BUILD_FILES`, or the writer parts folder :data:`PARTS`."""
    if entry.name == PARTS:
        return entry.is_dir() and not entry.is_symlink()
    return entry.is_file() and any(fnmatch(entry.name, p) for p in SHARD_BUILD_FILES)


def _shard_build_names() -> str:
    """What a shard build writes, for messages: ``manifest.json, shard-*.tar, ...``."""
    return f"{', '.join(SHARD_BUILD_FILES)} and {PARTS}/"


def _written_by_zarr_build(entry: Path) -> bool:
    """Whether ``entry`` (in a zarr store's folder) is one a zarr build writes: the group's
    ``zarr.json``, ``meta.jsonl`` or an array's folder (holding its own ``zarr.json``)."""
    from .zarr_store import META_NAME  # here: it imports zarr, which a shard build needs not

    if entry.name in ("zarr.json", META_NAME):
        return entry.is_file()
    return entry.is_dir() and not entry.is_symlink() and (entry / "zarr.json").is_file()


def _names(entries: Sequence[Path], n: int = 5) -> str:
    """The first ``n`` names of ``entries`` (folders with a trailing ``/``), sorted, and how
    many more there are."""
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_out_apart(cfg: BuildConfig) -> None:
    """Refuse an ``--out`` that is an input (a source or ``--seg-dir``) or lies inside one
    (paths compared resolved): the build would write among the raw files, and a later build of
    that input would read the dataset as input. An ``--out`` holding an input is not refused:
    an existing folder is written only with ``--overwrite``, which :func:`check_replaceable`
    refuses for a folder holding anything a build does not write."""
    out = Path(os.path.realpath(cfg.out))  # realpath: a symlink loop is left to the layouts
    inputs = [("input", s) for s in cfg.sources]
    if cfg.layout_options.seg_dir is not None:
        inputs.append(("--seg-dir", str(cfg.layout_options.seg_dir)))
    for what, given in inputs:
        src = Path(os.path.realpath(given))
        if out == src:
            got = (f"the {what} {given} itself (shards would be written among its files, "
                   "and --overwrite would delete them)")
        elif out.is_relative_to(src):
            got = (f"a folder inside the {what} {given} (a later build of it would read the "
                   "dataset as input)")
        else:
            continue
        raise ValueError(f"--out {cfg.out}: expected a folder apart from every input (neither "
                         f"an input nor inside one), got {got}")


def check_replaceable(cfg: BuildConfig) -> None:
    """Refuse ``--overwrite`` of an ``--out`` folder that holds anything a build does not
    write, before any input is read: a shard build replaces a dataset (a folder with a
    manifest) by removing only :data:`SHARD_BUILD_FILES` and :data:`PARTS`; a zarr build
    replaces the whole folder (:func:`.zarr_store.build_zarr`), so it must hold only a zarr
    store's or a shard dataset's files."""
    out = Path(cfg.out)
    if not cfg.overwrite or not out.is_dir():
        return
    if cfg.format == "zarr":
        def ours(e: Path) -> bool:
            return _written_by_zarr_build(e) or _written_by_shard_build(e)
        what = ("a zarr store's zarr.json, meta.jsonl and array folders, or a shard "
                f"dataset's {_shard_build_names()}")
    elif cfg.writer_id is None and (out / MANIFEST_NAME).exists():
        ours = _written_by_shard_build
        what = _shard_build_names()
    else:  # nothing is removed: a build continued, or one writer of several
        return
    foreign = [e for e in out.iterdir() if not ours(e)]
    if foreign:
        raise FileExistsError(f"--out {out}: --overwrite replaces only what `eofm-shard build` "
                              f"writes ({what}), but the folder also holds {_names(foreign)}; "
                              "expected a folder holding a dataset and nothing else: move "
                              "those away or choose another --out")


def _clear_dataset(cfg: BuildConfig, out: Path) -> None:
    """Remove the shard dataset in ``out`` (``--overwrite``): the manifest first (a dataset
    half removed is never listed as whole), then shards, temporary files and parts; the
    folder and anything else in it stay (:func:`check_replaceable` refuses such a folder)."""
    check_replaceable(cfg)  # again: the folder may have changed while the inputs were planned
    (out / MANIFEST_NAME).unlink()
    for entry in out.iterdir():
        if entry.name == PARTS:
            shutil.rmtree(entry)
        elif _written_by_shard_build(entry):
            entry.unlink()


def prepare_out(cfg: BuildConfig, out: Path) -> None:
    """Make ``out`` ready for this build: an existing dataset replaced only with
    ``--overwrite`` (:func:`_clear_dataset`), the folder made, dead temporary files removed."""
    if (out / MANIFEST_NAME).exists() and cfg.writer_id is None:
        if not cfg.overwrite:
            raise FileExistsError(f"{out}: a dataset is already there; pass --overwrite to "
                                  "replace it")
        _clear_dataset(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.writer_id is None:  # the only writer here: every temporary file is a dead write
        for tmp in out.glob("*.tmp"):
            tmp.unlink()
    # one writer of several (--writer-id, e.g. one per machine): the others may be writing
    # their *.tar.tmp now; run_writer clears this writer's own stale files


def missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, deepest first (what a build
    into ``out`` makes); empty when ``out`` exists."""
    return [p for p in (out, *out.parents) if not os.path.lexists(p)]


def remove_if_empty(made: Sequence[Path]) -> None:
    """Remove the folders ``made`` (:func:`missing_folders`, deepest first; an empty
    :data:`PARTS` in the first too) while each is empty: a build that failed or was
    interrupted leaves no empty folder behind; one holding anything (a finished writer's
    shards and part, for the re-run to reuse; another writer's files) stays, and so do the
    folders above it."""
    for folder in [made[0] / PARTS, *made] if made else []:
        try:
            folder.rmdir()
        except FileNotFoundError:  # never made (.parts) or gone
            continue
        except OSError:  # not empty
            return
