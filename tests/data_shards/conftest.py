"""Fixtures shared by the data-shard tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions


@pytest.fixture(scope="session")
def ben(sample_data: Path, tmp_path_factory) -> Path:
    """Bundled BigEarthNet S1+S2 pairs, tiled 40 px -> 54 samples in shards of 7 (read only:
    tests that damage shards work on a copy)."""
    out = tmp_path_factory.mktemp("ds") / "ben"
    build(BuildConfig(str(sample_data / "bigearthnet"), str(out), shard_samples=7,
                      ingest=IngestOptions(tile=40), progress=False))
    return out
