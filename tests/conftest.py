"""Shared fixtures: real data from ../shared/data (skipped when absent) and the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "data_shards" / "sample"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The small real sample bundled with the project."""
    assert SAMPLE.is_dir(), f"bundled sample missing at {SAMPLE}"
    return SAMPLE
