"""Which samples a fine-tuning run holds out for its test: ``data.test_path`` (classes aligned
with ``data.path``'s by name, no source image shared with it), or a share of ``data.path``'s
source images (all tiles of an image on one side unless ``data.group_tiles`` is false); how
results.json names them; and why a resume's held-out split differs when ``data.group_tiles``
alone explains it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import LabelledData, align_classes, check_test_images, same_pixels, tile_source
from .finetune_config import FinetuneDataConfig
from .resume_checks import split_fingerprint
from .task_data import Data
from .tasks import split_indices

__all__ = ["aligned_test_data", "check_test_bands", "group_tiles_problem", "held_out_split",
           "source_images", "test_source"]


def held_out_split(data: Data, task: str, d: FinetuneDataConfig
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of ``data.path``'s held-out split (:func:`.tasks.split_indices`,
    ``d.test_fraction``, ``d.seed``): whole source images with ``d.group_tiles`` (the
    :func:`.datasets.tile_source` of each key: all tiles of an image on one side), stratified
    by class for classification; tile by tile without."""
    labels = np.asarray(data.labels) if task == "classification" else None
    groups = [tile_source(k) for k in data.keys] if d.group_tiles else None
    return split_indices(len(data), d.test_fraction, d.seed, labels, groups)


def source_images(data: Data, idx: Sequence[int] | None = None) -> int:
    """How many source images the samples ``idx`` (default all) were tiled from (distinct
    :func:`.datasets.tile_source` of their keys; an untiled sample is its own image)."""
    keys = data.keys if idx is None else [data.keys[int(i)] for i in idx]
    return len({tile_source(k) for k in keys})


def aligned_test_data(train: Data, test: Data) -> Data:
    """``data.test_path``'s data with class and multi-label labels in ``data.path``'s class
    order, matched by name (:func:`.datasets.align_classes`, as eofm-probe --test-data);
    refused when it has classes the training data lacks, or, for per-pixel targets (class
    indices), when the class lists differ at all; then, as eofm-probe --test-data, when it
    shares any source image with the training data (:func:`.datasets.check_test_images`:
    the same dataset, a copy of it or a part of one)."""
    if isinstance(train, LabelledData) and isinstance(test, LabelledData):
        test = align_classes(train, test, test_flag="data.test_path", train_flag="data.path",
                             learner="the fine-tuned head")
    elif list(test.classes) != list(train.classes):
        raise ValueError(f"data.test_path {test.source}: classes {test.classes} differ from "
                         f"data.path {train.source}'s {train.classes}; per-pixel targets are "
                         "indices into the class list, so expected the same classes in the same "
                         "order (build both with one list: eofm-shard build --classes FILE)")
    check_test_images(train.keys, test.keys, train=f"data.path {train.source}",
                      test=f"data.test_path {test.source}", learner="the fine-tuned model",
                      instead="build the test set from other images, or omit data.test_path "
                              "to hold out data.test_fraction of data.path's images",
                      same_pixels=same_pixels(train, test))
    return test


def check_test_bands(train_bands: Sequence[str], test_bands: Sequence[str],
                     d: FinetuneDataConfig) -> None:
    """Refuse (ValueError) a ``data.test_path`` whose preprocessing feeds the encoder other
    bands (``test_bands``) than ``data.path``'s (``train_bands``): a spectral encoder takes
    whichever of its bands a dataset has, but the fine-tuned model (its head, its export) is
    trained for the training data's bands, and would be scored on others."""
    if list(train_bands) != list(test_bands):
        raise ValueError(f"data.test_path {d.test_path}: the encoder would be fed bands "
                         f"{list(test_bands)}, but data.path {d.path} feeds it "
                         f"{list(train_bands)}; expected a test set with the training data's "
                         "bands (the fine-tuned model is trained and exported for those)")


def test_source(d: FinetuneDataConfig, data: Data) -> str:
    """What the held-out samples are, for results.json and the card: ``d.test_path``, or
    ``d.path`` (read as ``data``) with the share held out, how (whole source images when the
    data is tiled and ``d.group_tiles``; tile by tile otherwise) and the seed."""
    if d.test_path:
        return d.test_path
    images = source_images(data)
    how = ("" if images == len(data) else
           f" of its {images} source images with all their tiles" if d.group_tiles else
           " of its tiles one by one (data.group_tiles false)")
    return f"{d.path} (held out {d.test_fraction:g}{how}, seed {d.seed})"


def group_tiles_problem(data: Data, task: str, d: FinetuneDataConfig, saved: dict[str, Any],
                        saved_split: Any, split: dict[str, Any], where: Path) -> str | None:
    """Why the held-out split of this run (``split``: :func:`.resume_checks.split_fingerprint`
    of ``data`` under ``d``) differs from the checkpoint's (``saved_split``, config ``saved``,
    in ``where``) when ``data.group_tiles`` alone explains it (the other setting reproduces the
    checkpoint's fingerprint); a checkpoint without the key (older versions) held out tile by
    tile. None otherwise."""
    data_cfg = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    then = bool(data_cfg.get("group_tiles", False))
    if (d.test_path or then == d.group_tiles or not isinstance(saved_split, dict)
            or saved_split == split):
        return None
    other = dataclasses.replace(d, group_tiles=then)
    try:
        train, test = held_out_split(data, task, other)
    except ValueError:
        return None
    if split_fingerprint(data, train, data, test) != saved_split:
        return None
    was = (repr(then) if "group_tiles" in data_cfg
           else "none (it predates the key and held out tiles one by one)")
    return (f"data.group_tiles: the checkpoint's run ({where}) had {was}, this one "
            f"{d.group_tiles!r}; it decides whether the tiles of one image are held out "
            f"together, so the held-out samples differ: resume with "
            f"data.group_tiles={str(then).lower()}, or start a new run in another --out")
