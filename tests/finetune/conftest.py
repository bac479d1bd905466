"""Fixtures of the fine-tuning and probe tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def write_other_eurosat(root: Path, classes: int = 3, per_class: int = 8, size: int = 16,
                        boost: int = 3000, seed: int = 1, tag: str = "other") -> Path:
    """A synthetic EuroSAT-layout folder as ``eurosat_folder`` writes (class N ``boost``
    brighter in band N + 1), but of other images: other pixels (``seed``) under other names
    (``root/ClassN/ClassN_<tag>_i.tif``), a held-out test set apart from an ``eurosat_folder``
    training set (one sharing its images' names is refused as the training data)."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"Class{c}").mkdir(parents=True)
        for i in range(per_class):
            t = rng.integers(500, 3000, (size, size, 13)).astype(np.uint16)
            t[..., c + 1] += boost
            tifffile.imwrite(root / f"Class{c}" / f"Class{c}_{tag}_{i}.tif", t,
                             photometric="minisblack", planarconfig="contig")
    return root


@pytest.fixture(scope="session")
def other_eurosat_folder() -> Callable[..., Path]:
    """:func:`write_other_eurosat`, for test modules (conftest is not imported by name)."""
    return write_other_eurosat
