"""Is a held-out test set really held out? Source images shared with the training data.

A sample's source image is its key less a tile's ``_r<row>_c<col>`` (:func:`tile_source`); a
test set sharing any source image with the training data (the same path, a copy elsewhere, a
rebuild or re-tiling, a partial overlap) is refused by :func:`check_test_images`, which tells
images that merely reuse a file name (other pixels: :func:`same_pixels`) from reused images.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from eofm.data_shards.remote import redact

__all__ = ["check_test_images", "same_pixels", "tile_source"]

log = logging.getLogger(__name__)

_TILE_SUFFIX = re.compile(r"_r\d+_c\d+$")


def tile_source(key: str) -> str:
    """The source image of a tile key (``scene_r64_c0`` -> ``scene``); other keys unchanged."""
    return _TILE_SUFFIX.sub("", key)


def check_test_images(train_keys: Sequence[str], test_keys: Sequence[str], *, train: str,
                      test: str, learner: str, instead: str, shown: int = 3,
                      same_pixels: Callable[[str], bool] | None = None) -> None:
    """Refuse (ValueError) a held-out test set (``test_keys``, named ``test``: flag and path)
    sharing any source image with the training data (``train_keys``, named ``train``), an
    image being a key's :func:`tile_source` (keys, as :func:`eofm.finetune.resume_checks.split_fingerprint`
    hashes them, not paths): the same path, a copy elsewhere, a rebuild or re-tiling, a
    partial overlap; ``learner`` is who would be scored on them, ``instead`` the way out.

    ``same_pixels(key)`` (a key in both sets: are its pixels the same?) tells reused file names
    from reused images: an image whose keys are in both sets but whose pixels all differ
    (splits shipped as ``train/0001.tif`` and ``test/0001.tif``) is another image, noted in a
    warning; one with no key in both (re-tiled) still counts as shared."""
    seen = {tile_source(k) for k in train_keys}
    images = sorted({tile_source(k) for k in test_keys})
    shared = [s for s in images if s in seen]
    if same_pixels is not None and shared:
        both = sorted(set(train_keys) & set(test_keys))
        by_image: dict[str, list[str]] = {}
        for k in both:
            by_image.setdefault(tile_source(k), []).append(k)
        renamed = [s for s in shared
                   if by_image.get(s) and not any(same_pixels(k) for k in by_image[s])]
        if renamed:
            log.warning(redact(
                f"{test}: {len(renamed)} of its source images have the names of images in "
                f"{train} ({', '.join(repr(s) for s in renamed[:shown])}"
                f"{', ...' if len(renamed) > shown else ''}) but other pixels: taken as other "
                "images"))
            shared = [s for s in shared if s not in set(renamed)]
    if not shared:
        return
    more = ", ..." if len(shared) > shown else ""
    examples = ", ".join(repr(s) for s in shared[:shown]) + more
    raise ValueError(redact(
        f"{test}: expected a held-out test set of other images, got {len(shared)} of its "
        f"{len(images)} source images also in {train} ({examples}; images matched by sample "
        f"key, less a tile's _r<row>_c<col>, and by pixels where a key is in both): {learner} "
        f"would be scored on images seen in training; {instead}"))


def same_pixels(train: Any, test: Any) -> Callable[[str], bool]:
    """For :func:`check_test_images`: whether the sample of a key both datasets hold (anything
    with ``keys`` and ``pixels(i)``: labelled or dense data) has the same pixels in both."""
    at_train = {k: i for i, k in enumerate(train.keys)}
    at_test = {k: i for i, k in enumerate(test.keys)}
    return lambda k: bool(np.array_equal(train.pixels(at_train[k]), test.pixels(at_test[k])))
