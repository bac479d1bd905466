"""The shared-memory check of the data loaders (data_shards/shared_memory.py)."""

from __future__ import annotations

import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from eofm.data_shards import shared_memory as S

Usage = namedtuple("Usage", "total used free")
MiB = 2**20


def _shm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, total: int, free: int) -> Path:
    """``tmp_path`` posing as a /dev/shm of ``total`` bytes with ``free`` free."""
    real = shutil.disk_usage

    def usage(path):
        return Usage(total, total - free, free) if Path(path) == tmp_path else real(path)

    monkeypatch.setattr(S.shutil, "disk_usage", usage)
    return tmp_path


def test_bytes_in_flight() -> None:
    # 8 ranks x (4 workers x prefetch 2 + 1) batches of 10 MiB
    assert S.loader_shm_bytes(10 * MiB, 4, 8) == 8 * 9 * 10 * MiB
    assert S.loader_shm_bytes(10 * MiB, 4, 1, prefetch_factor=4) == 17 * 10 * MiB
    assert S.loader_shm_bytes(10 * MiB, 0, 8) == 0  # no workers: no shared memory


def test_docker_default_shm_is_an_error_with_the_numbers_and_the_fix(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shm = _shm(monkeypatch, tmp_path, total=64 * MiB, free=64 * MiB)
    v = S.check_shared_memory(12 * MiB, workers=3, ranks_on_node=2, shm=shm)
    assert v is not None and v.level == "error"
    assert "2 rank(s) on this node x 7 batches in flight" in v.message
    assert "= 168 MiB of shared memory" in v.message and "64 MiB in all" in v.message
    assert "--shm-size=1g" in v.message and "data.num_workers" in v.message


def test_fits_in_total_but_not_in_free_is_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    shm = _shm(monkeypatch, tmp_path, total=1024 * MiB, free=100 * MiB)
    v = S.check_shared_memory(12 * MiB, workers=3, ranks_on_node=2, shm=shm)
    assert v is not None and v.level == "warning" and "100 MiB free of 1,024 MiB" in v.message
    assert S.check_shared_memory(12 * MiB, workers=3, ranks_on_node=1, shm=shm) is None  # 84
    assert S.check_shared_memory(12 * MiB, workers=0, ranks_on_node=2, shm=shm) is None


def test_no_shm_folder_means_no_verdict(tmp_path: Path) -> None:
    assert S.check_shared_memory(2**40, workers=8, ranks_on_node=8,
                                 shm=tmp_path / "absent") is None
