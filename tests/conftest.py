"""Shared fixtures: real data from ../shared/data (skipped when absent) and the bundled sample."""

from __future__ import annotations

import socket
from collections.abc import Callable
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


@pytest.fixture(scope="session")
def scene_tiles_32(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Sentinel-2 L1C scene built once as shards of 144 tiles of 32 px (what the
    tiny training runs read; built here, not by each module's run)."""
    from eofm.data_shards.cli import main as shard_main

    out = tmp_path_factory.mktemp("scene") / "s2_32"
    assert shard_main(["build", str(sample_data / "sentinel2_l1c_scene"), "--out", str(out),
                       "--quiet", "--tile", "32"]) == 0
    return out


@pytest.fixture
def spawn_two_ranks() -> Callable[..., None]:
    """``run(worker, *args)``: ``worker(rank, port, *args)`` in two processes that rendezvous
    on a free local port (forked, reusing the imported torch, unless CUDA is live)."""
    import torch
    import torch.multiprocessing as mp

    def run(worker: Callable[..., None], *args: object) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        method = "spawn" if torch.cuda.is_initialized() else "fork"
        mp.start_processes(worker, args=(port, *args), nprocs=2, start_method=method)

    return run


def _refuse_connection(*args: object, **kwargs: object) -> None:
    raise AssertionError("a test tried to open a network connection")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _refuse_connection)


@pytest.fixture
def offline_hub(no_network: None, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, str], None]:
    """``publish(folder, repo_id)``: put ``folder`` in an offline huggingface_hub cache under
    ``tmp_path`` as ``repo_id`` at ``main``, so Hub loaders find it without the network."""
    import shutil

    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def publish(folder: Path, repo_id: str) -> None:
        commit = "0123456789abcdef0123456789abcdef01234567"
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)

    return publish
