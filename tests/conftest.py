"""Shared fixtures: real data from ../shared/data (skipped when absent) and the bundled sample."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def bigearthnet_export(sample_data: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> tuple[Path, Path]:
    """(the bundled BigEarthNet patches as shards, a matching vit_test_patch8 export at 32 px
    with their S2 bands and statistics), built once per session; tests copy before changing."""
    import torch

    from eofm.data_shards.build import BuildConfig, build
    from eofm.finetune.datasets import open_labelled
    from eofm.models import InputContract, create_model, save_pretrained

    root = tmp_path_factory.mktemp("ben_export")
    build(BuildConfig(str(sample_data / "bigearthnet"), str(root / "ben"), progress=False))
    s2 = open_labelled(root / "ben", modality="s2", progress=False)
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in s2.bands}
    contract = InputContract(sensors=(s2.sensor,), bands=tuple(s2.bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(32, 32),
                             patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=s2.bands, img_size=32, contract=contract)
    return root / "ben", save_pretrained(enc, root / "enc")


@pytest.fixture(scope="session")
def bigearthnet_checkpoint(bigearthnet_export: tuple[Path, Path],
                           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretraining checkpoint file as eofm-pretrain writes it (model, config, contract) of
    :func:`bigearthnet_export`'s encoder, whose data.path is its BigEarthNet shards (no
    training run); tests copy before changing it."""
    import torch

    from eofm.models import from_pretrained
    from eofm.pretrain.config import load_config, to_dict

    data, export = bigearthnet_export
    encoder = from_pretrained(export)
    cfg = load_config(None, [f"data.path={data}", "data.modalities=[s2]",
                             "model.name=vit_test_patch8", "model.img_size=32",
                             "data.crop_size=32"])
    state = {"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             "config": to_dict(cfg), "contract": encoder.contract.to_dict(), "step": 1}
    path = tmp_path_factory.mktemp("ckpt") / "step_000000001.pt"
    torch.save(state, path)
    return path


# The tiny CPU pretraining run the trainer tests share: vit_test_patch8 on scene_tiles_32
# (4 bands, batch 16), deterministic; tiny_run_config merges each test's changes into it.
TINY_RUN: dict[str, Any] = {
    "data": {"bands": {"s2": ["B02", "B03", "B04", "B08"]}, "shuffle_buffer": 20,
             "num_workers": 0, "batch_size": 16},
    "model": {"name": "vit_test_patch8", "img_size": 32},
    "objective": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "optim": {"base_lr": 1.0e-3, "scale_lr": False},
    "schedule": {"steps": 14, "warmup_steps": 2},
    "runtime": {"deterministic": True, "ckpt_every": 0, "keep_last_k": 2},
    "logging": {"log_every": 1, "progress": False},
}


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, section by section (a non-dict value replaces)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


@pytest.fixture(scope="session")
def tiny_run_config(scene_tiles_32: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Callable[..., Path]:
    """``make(changes=None, name="tiny")``: write :data:`TINY_RUN` on ``scene_tiles_32`` with
    ``changes`` (nested dicts, e.g. ``{"schedule": {"steps": 4}}``) merged in; its path."""
    import yaml

    def make(changes: dict[str, Any] | None = None, name: str = "tiny") -> Path:
        cfg = _merged(_merged(TINY_RUN, {"data": {"path": str(scene_tiles_32)}}), changes or {})
        path = tmp_path_factory.mktemp(name) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    return make


def write_eurosat(root: Path, classes: int = 3, per_class: int = 8, size: int = 16,
                  boost: int = 3000, seed: int = 0, tag: str | None = None) -> Path:
    """A synthetic EuroSAT-layout folder (``root/ClassN/ClassN_i.tif``, 13 bands, seeded)
    whose class N is ``boost`` brighter in band N + 1: a task any probe can learn. ``seed``
    and ``tag`` (``ClassN_<tag>_i.tif``) make other images under other names: a held-out test
    set apart from a default training set (one sharing its images' names is refused as the
    training data)."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(seed)
    stem = "{c}_{i}" if tag is None else "{c}_" + tag + "_{i}"
    for c in range(classes):
        (root / f"Class{c}").mkdir(parents=True)
        for i in range(per_class):
            t = rng.integers(500, 3000, (size, size, 13)).astype(np.uint16)
            t[..., c + 1] += boost
            name = "Class" + stem.format(c=c, i=i) + ".tif"
            tifffile.imwrite(root / f"Class{c}" / name, t,
                             photometric="minisblack", planarconfig="contig")
    return root


@pytest.fixture(scope="session")
def eurosat_folder() -> Callable[..., Path]:
    """:func:`write_eurosat`, for test modules (conftest is not imported by name)."""
    return write_eurosat


def write_ben_multiband(sample: Path, root: Path):
    """The bundled BigEarthNet S2 patches built into ``root/ben`` and written as multi-band
    GeoTIFFs ``root/src/KEY.tif`` (bands in the build's order); their labelled data (``s2``)
    comes back, for tests to derive per-pixel targets (``--seg-dir``) from."""
    import numpy as np
    import tifffile

    from eofm.data_shards.build import BuildConfig, build
    from eofm.finetune.datasets import open_labelled

    build(BuildConfig(str(sample / "bigearthnet"), str(root / "ben"), progress=False))
    s2 = open_labelled(root / "ben", modality="s2", progress=False)
    (root / "src").mkdir()
    for i, key in enumerate(s2.keys):
        tifffile.imwrite(root / "src" / f"{key}.tif", np.moveaxis(s2.pixels(i), 0, -1),
                         photometric="minisblack", planarconfig="contig")
    return s2


@pytest.fixture(scope="session")
def ben_multiband() -> Callable[..., object]:
    """:func:`write_ben_multiband`, for test modules."""
    return write_ben_multiband


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tiny runs (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): small kernels gain nothing from two, and OpenMP
    threads that spin on a shared, busy CPU slow these runs down by an order of magnitude."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RANKS_TIMEOUT_S = 300  # what one start of forked ranks may take before it is killed


def _fork_safe() -> bool:
    """Whether ranks forked from this process can run autograd: not once CUDA is initialised,
    nor once ``torch.compile`` has compiled anything here (a backward after it leaves autograd
    threads that a forked child cannot use: "Unable to handle autograd's threading in
    combination with fork-based multiprocessing"; a test worker that ran a compile test, then
    a backward, then a rank test failed). Spawned ranks import everything again instead."""
    import torch
    from torch._dynamo.utils import counters

    return not torch.cuda.is_initialized() and not counters["frames"].get("total")


def _start_ranks(nprocs: int, worker: Callable[..., None], *args: object) -> None:
    """``worker(rank, port, *args)`` in ``nprocs`` processes that may rendezvous on a free
    local port: forked, reusing this process's imports (seconds per process, where a fresh
    interpreter imports torch and timm again), unless that is unsafe (:func:`_fork_safe`:
    spawned then). A rank's
    exception fails the caller; ranks still running after :data:`RANKS_TIMEOUT_S`, or when
    the caller is interrupted (pytest-timeout, Ctrl-C), are killed, never left behind (with
    what they started, when they lead a process group of their own)."""
    import os
    import signal
    import time

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    method = "fork" if _fork_safe() else "spawn"
    ctx = mp.start_processes(worker, args=(port, *args), nprocs=nprocs, start_method=method,
                             join=False)
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):  # raises when a rank failed
            if time.monotonic() > deadline:
                raise AssertionError(f"{getattr(worker, '__name__', worker)}: {nprocs} ranks "
                                     f"still running after {RANKS_TIMEOUT_S} s; killed")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                try:  # the rank's own process group (as_torchrun_rank): what it started too
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:  # a rank that made no group of its own
                    proc.kill()
                proc.join()


@pytest.fixture
def spawn_two_ranks() -> Callable[..., None]:
    """``run(worker, *args)``: ``worker(rank, port, *args)`` in two processes that rendezvous
    on a free local port (:func:`_start_ranks`)."""
    return lambda worker, *args: _start_ranks(2, worker, *args)


@pytest.fixture
def spawn_ranks() -> Callable[..., None]:
    """``run(nprocs, worker, *args)``: ``worker(rank, port, *args)`` in ``nprocs`` processes
    (:func:`_start_ranks`); ``pretrain/worker_run.py``'s ``as_torchrun_rank`` gives a worker
    the environment torchrun would."""
    return _start_ranks


def _refuse_connection(*args: object, **kwargs: object) -> None:
    raise AssertionError("a test tried to open a network connection")


@pytest.fixture
def checkpoint_saves(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Counter of ``CheckpointManager.save`` calls per step, from this point of the test
    (the saves still happen)."""
    from collections import Counter

    from eofm.pretrain.checkpoint import CheckpointManager

    saves: Counter[int] = Counter()
    save = CheckpointManager.save

    def counting(self: CheckpointManager, state: dict, step: int, *args: Any,
                 **kwargs: Any) -> Any:
        saves[step] += 1
        return save(self, state, step, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save", counting)
    return saves


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


# Modules of multi-process tests (torchrun, DeepSpeed, launch scripts: 20-90 s each) run first,
# so that the two xdist workers end on short tests instead of one waiting while the other
# finishes a long one. Whole modules move, in their own order, so module fixtures stay shared;
# the modules whose fixtures pretrain a run (~13 s) go too, so that one worker builds it (a
# module stolen half-way by the other worker builds it twice).
LONG_FIRST = ("pretrain/test_trainer.py", "pretrain/test_two_nodes.py",
              "pretrain/test_deepspeed_universal.py", "pretrain/test_equivalence.py",
              "test_credential_hygiene.py", "pretrain/test_softcon_resnet.py",
              "finetune/test_probe_curve.py", "finetune/test_export.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the :data:`LONG_FIRST` modules to the front and the tests marked ``compiles`` to
    the back (a stable sort: order otherwise kept). A worker that compiled in process can no
    longer fork ranks (:func:`_fork_safe`) and spawns them, importing torch and timm again in
    each (about 9 s of CPU per rank here): compiling last keeps the rank tests forking."""
    first = tuple(str(ROOT / "tests" / m) for m in LONG_FIRST)

    def place(item: pytest.Item) -> int:
        if item.get_closest_marker("compiles"):
            return 2
        return 0 if str(item.path) in first else 1

    items.sort(key=place)


@pytest.fixture(autouse=True)
def _compiles_only_when_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that compiles in this process without the ``compiles`` mark fails, naming the
    mark, so the ordering above stays true."""
    from torch._dynamo.utils import counters

    before = counters["frames"].get("total", 0)
    yield
    if counters["frames"].get("total", 0) != before and \
            request.node.get_closest_marker("compiles") is None:
        pytest.fail(f"{request.node.nodeid} compiled with torch.compile in the test process: "
                    "mark it @pytest.mark.compiles (such tests run last; see "
                    "pytest_collection_modifyitems)", pytrace=False)


def _write_eurosat(root: Path, classes: int = 2, per_class: int = 2, size: int = 8) -> Path:
    """A tiny EuroSAT-layout folder: ROOT/Class<c>/Class<c>_<i>.tif, (H, W, 13) uint16."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"Class{c}").mkdir(parents=True)
        for i in range(per_class):
            x = rng.integers(500, 3000, (size, size, 13)).astype(np.uint16)
            tifffile.imwrite(root / f"Class{c}" / f"Class{c}_{i}.tif", x,
                             photometric="minisblack", planarconfig="contig")
    return root


@pytest.fixture(scope="session")
def tiny_eurosat() -> Callable[..., Path]:
    """``make(root, classes=2, per_class=2, size=8)``: a tiny EuroSAT-layout folder of random
    13-band uint16 tiles at ``root`` (ROOT/Class<c>/Class<c>_<i>.tif); returns ``root``."""
    return _write_eurosat
