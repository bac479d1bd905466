"""The benchmark scripts (benchmarks/, not a package) import each other by file name: their
folder goes on sys.path for these tests (only these), as it is when a script runs."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _benchmarks_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/ first on sys.path for the test."""
    monkeypatch.syspath_prepend(str(BENCH))
