"""BatchNorm over several ranks in eofm-finetune (two forked gloo ranks, CPU).

The dense decoder's BatchNorm layers keep running statistics that each rank updates from its
own batches. The held-out evaluation scores a share of the test split on every rank; before,
every rank used its own statistics while the checkpoint and OUT/model hold rank 0's, so
results.json disagreed with the exported model (and a rerun of the finished run, which loads
rank 0's everywhere, printed another metric). Now every rank evaluates with rank 0's buffers:
results.json is what ``load_finetuned`` recomputes on the test split, a rerun repeats it, and
under DDP and FSDP2 alike every rank ends with the checkpoint's buffers.

The decision to use SyncBatchNorm (CUDA, several ranks, a BatchNorm layer that trains) and the
conversion itself are checked here too; the CUDA run itself needs GPUs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from eofm.data_shards.build import BuildConfig, build
from eofm.data_shards.ingest import IngestOptions
from eofm.data_shards.layouts import LayoutOptions
from eofm.finetune import load_finetuned
from eofm.finetune.features import apply_contract
from eofm.finetune.finetune_config import load_config
from eofm.finetune.held_out import held_out_split
from eofm.finetune.task_data import open_task_data, target_valid
from eofm.finetune.tasks import FinetuneModel, apply_freeze, input_valid
from eofm.models import InputContract, create_model, save_pretrained
from eofm.pretrain.checkpoint import CheckpointManager

pytestmark = pytest.mark.usefixtures("one_thread")

TILE = 32


@pytest.fixture(scope="module")
def ndvi(sample_data: Path, tmp_path_factory: pytest.TempPathFactory,
         ben_multiband: Callable[..., Any]) -> dict[str, Path]:
    """Real BigEarthNet S2 patches with their NDVI as a per-pixel regression target, built
    through `eofm-shard build --seg-dir` into 32 px tiles, and a test-size ViT export whose
    contract holds the data's statistics (its dense decoder has BatchNorm layers)."""
    root = tmp_path_factory.mktemp("multirank_bn")
    s2 = ben_multiband(sample_data, root)
    (root / "ndvi").mkdir()
    for i, key in enumerate(s2.keys):
        x = s2.pixels(i)
        red, nir = (x[s2.bands.index(b)].astype(np.float32) for b in ("B04", "B08"))
        tifffile.imwrite(root / "ndvi" / f"{key}.tif", (nir - red) / np.maximum(nir + red, 1.0))
    opts = LayoutOptions(sensor=s2.sensor, file_bands=s2.bands, seg_dir=root / "ndvi")
    build(BuildConfig(str(root / "src"), str(root / "reg"), layout="multiband",
                      layout_options=opts, ingest=IngestOptions(tile=TILE), progress=False))
    stats = {b: {k: s2.stats[b][k] for k in ("mean", "std")} for b in s2.bands}
    contract = InputContract(sensors=(s2.sensor,), bands=tuple(s2.bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(TILE, TILE),
                             patch_size=8)
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=s2.bands, img_size=TILE, contract=contract)
    return {"reg": root / "reg", "encoder": save_pretrained(enc, root / "encoder")}


def _config(data: Path, encoder: Path, out: Path, strategy: str):
    """A short full fine-tune of pixel regression, 4 samples per rank."""
    return load_config(None, ["schedule.steps=4", "schedule.warmup_fraction=0",
                              "optim.base_lr=2e-3", "optim.scale_lr=false",
                              "data.batch_size=8", "task.decoder_channels=16",
                              "data.augment=false", "encoder.drop_path=0",
                              "logging.progress=false", "runtime.ckpt_every=0",
                              f"runtime.strategy={strategy}"],
                       flags={"encoder.path": str(encoder), "data.path": str(data),
                              "task.kind": "regression", "runtime.out_dir": str(out)})


def _as_rank(rank: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of two on one node, one intra-op thread,
    a process group of its own (conftest's ranks kill it, with what it started, on a timeout)."""
    os.setpgrp()
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)


def _fit_and_gather(data: str, encoder: str, out: Path, strategy: str, tag: str) -> None:
    """Fine-tune (or, over a finished run, evaluate again) on every rank; rank 0 writes every
    rank's buffers after the run to ``out/buffers_{tag}.pt``."""
    from eofm.finetune.finetuner import Finetuner
    from eofm.pretrain import distributed as dist

    ft = Finetuner(_config(Path(data), Path(encoder), out, strategy))
    assert ft.fit() == 0
    mine = {k: v.detach().cpu().clone() for k, v in ft.strategy.module.named_buffers()}
    every = dist.all_gather_object(mine)
    if ft.env.rank == 0:
        torch.save(every, out / f"buffers_{tag}.pt")
    dist.barrier()


class _Said(logging.Handler):
    """Keeps the messages of the records it handles."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _worker(rank: int, port: int, data: str, encoder: str, root: str) -> None:
    """Rank ``rank`` of two: a DDP run (its warnings to ``root/warnings_rank{rank}.json``), the
    same run again once finished (re-evaluated from its checkpoint), and an FSDP2 run."""
    from eofm.pretrain import distributed as dist

    _as_rank(rank, port)
    base = Path(root)
    said = _Said()
    logging.getLogger("eofm.finetune").addHandler(said)
    try:
        _fit_and_gather(data, encoder, base / "ddp", "ddp", "first")
        (base / f"warnings_rank{rank}.json").write_text(json.dumps(said.messages))
        if rank == 0:
            (base / "first_results.json").write_text((base / "ddp" / "results.json").read_text())
        _fit_and_gather(data, encoder, base / "ddp", "ddp", "again")  # the finished run
        _fit_and_gather(data, encoder, base / "fsdp2", "fsdp2", "first")
    finally:
        dist.teardown()


def _dtensor_worker(rank: int, port: int, root: str) -> None:
    """Rank ``rank`` of two: a module's replicated DTensor, sharded DTensor and plain buffers
    (each rank's own values) through :func:`broadcast_buffers`, written to
    ``root/dtensor_rank{rank}.json``."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from eofm.finetune.rank_sync import broadcast_buffers

    _as_rank(rank, port)
    tdist.init_process_group("gloo")
    try:
        mesh = init_device_mesh("cpu", (2,))
        m, mine = nn.Module(), torch.full((4,), float(rank))
        m.register_buffer("replicated", DTensor.from_local(mine.clone(), mesh, [Replicate()]))
        m.register_buffer("sharded", DTensor.from_local(mine.clone(), mesh, [Shard(0)]))
        m.register_buffer("plain", mine.clone())
        assert broadcast_buffers(m) == 2
        got = {k: (v.to_local() if isinstance(v, DTensor) else v).tolist()
               for k, v in m.named_buffers()}
        (Path(root) / f"dtensor_rank{rank}.json").write_text(json.dumps(got))
    finally:
        tdist.destroy_process_group()


def _recomputed_rmse(run: Path) -> float:
    """RMSE of ``load_finetuned(run/model)`` on the run's held-out tiles, in target units."""
    cfg = load_config(run / "config.yaml")
    model = load_finetuned(run / "model")
    data = open_task_data(cfg.data.path, "regression", cfg.data.modality, cfg.data.s2_offset,
                          prefer_bands=model.contract.bands, progress=False)
    _, test_idx = held_out_split(data, "regression", cfg.data)
    pre = apply_contract(data, model.contract)
    xs = np.stack([data.pixels(i) for i in test_idx])
    ys = np.stack([data.target(i) for i in test_idx])
    with torch.no_grad():
        out = model(pre(xs), tuple(ys.shape[-2:])).double().numpy()
    valid = input_valid(xs, pre.index, pre.nodata).numpy() & target_valid(ys, None)
    return float(np.sqrt(((out - ys)[valid] ** 2).mean()))


def _buffers_match(run: Path, tag: str = "first") -> None:
    """Every rank ended the run ``tag`` with the same buffers, and they are the checkpoint's."""
    ranks = torch.load(run / f"buffers_{tag}.pt", weights_only=True)
    ckpt = CheckpointManager.load(CheckpointManager(run / "checkpoints", rank=0).latest())
    running = [k for k in ranks[0] if "running_" in k]
    assert running, "the dense decoder has no BatchNorm statistics to check"
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), f"{run.name}: rank 1's {k} is its own"
    for k in running:
        assert torch.equal(ckpt["model"][k].cpu(), ranks[0][k]), f"{run.name}: {k}"


def test_two_ranks_evaluate_with_the_checkpoints_batchnorm_statistics(
        ndvi: dict[str, Path], tmp_path: Path, spawn_two_ranks) -> None:
    spawn_two_ranks(_worker, str(ndvi["reg"]), str(ndvi["encoder"]), str(tmp_path))
    ddp, fsdp2 = tmp_path / "ddp", tmp_path / "fsdp2"
    for run, tag in ((ddp, "first"), (ddp, "again"), (fsdp2, "first")):
        _buffers_match(run, tag)
    first = json.loads((tmp_path / "first_results.json").read_text())["metrics"]["rmse"]
    again = json.loads((ddp / "results.json").read_text())["metrics"]["rmse"]
    assert again == pytest.approx(first, rel=1e-9), "the rerun of the finished run disagrees"
    assert _recomputed_rmse(ddp) == pytest.approx(first, rel=1e-5)
    records = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "test" in r] == [4]  # the rerun's replaced the first
    per_rank = [[m for m in json.loads((tmp_path / f"warnings_rank{r}.json").read_text())
                 if "BatchNorm statistics are per rank" in m] for r in (0, 1)]
    assert len(per_rank[0]) == 1 and not per_rank[1], per_rank  # gloo: said once, by rank 0
    assert "differ from one rank's at the same global batch" in per_rank[0][0]


def test_broadcast_buffers_handles_replicated_and_sharded_dtensors(
        tmp_path: Path, spawn_two_ranks) -> None:
    spawn_two_ranks(_dtensor_worker, str(tmp_path))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"dtensor_rank{rank}.json").read_text())
        assert got["replicated"] == [0.0] * 4 and got["plain"] == [0.0] * 4
        assert got["sharded"] == [float(rank)] * 4  # each rank's own part, left alone


# ---------------------------------------------------------------- SyncBatchNorm
def _resnet_model(freeze: str = "full", last_n: int = 0) -> FinetuneModel:
    """A ResNet-50 (BatchNorm throughout) with a segmentation decoder, frozen as asked."""
    bands = ["B02", "B03", "B04", "B08"]
    torch.manual_seed(0)
    stats = {b: {"mean": 0.0, "std": 1.0} for b in bands}
    contract = InputContract(sensors=("s2_l2a",), bands=tuple(bands), gsd=10.0, nodata=0.0,
                             normalisation="meanstd", stats=stats, input_size=(32, 32),
                             patch_size=32)
    enc = create_model("resnet50", bands=bands, img_size=32, contract=contract)
    model = FinetuneModel(enc, "segmentation", 3, decoder_channels=16,
                          encoder_kwargs={"bands": bands})
    apply_freeze(model, freeze, last_n)
    return model


def test_syncbatchnorm_only_with_cuda_several_ranks_and_a_training_batchnorm() -> None:
    from eofm.finetune.rank_sync import should_sync_batchnorm

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    model = _resnet_model()
    assert should_sync_batchnorm(cuda, 2, model)
    assert not should_sync_batchnorm(cpu, 2, model)  # gloo: no SyncBatchNorm
    assert not should_sync_batchnorm(cuda, 1, model)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4))
    assert not should_sync_batchnorm(cuda, 2, plain)  # no BatchNorm at all
    frozen = _resnet_model("frozen")
    frozen.head = nn.Identity()  # the decoder's BatchNorm layers gone: only frozen ones left
    assert not should_sync_batchnorm(cuda, 2, frozen)


def test_syncbatchnorm_conversion_keeps_keys_values_and_the_frozen_layers() -> None:
    from eofm.finetune.rank_sync import sync_batchnorm

    model = _resnet_model("last_n", 2)  # the stem's bn1 itself is a frozen module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = sync_batchnorm(model, torch.device("cuda", 0), 2)  # a conversion, no CUDA call
    kinds = {type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.SyncBatchNorm}
    after = synced.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    synced.train()
    assert synced.encoder.bn1 in synced._frozen and not synced.encoder.bn1.training
    assert not synced.encoder.layer1[0].bn1.training  # a frozen stage's BatchNorm
    assert synced.encoder.layer4[0].bn1.training and synced.head.training


def test_cpu_ranks_say_once_that_batchnorm_statistics_are_per_rank(
        caplog: pytest.LogCaptureFixture) -> None:
    from eofm.finetune.rank_sync import sync_batchnorm

    model = _resnet_model()
    with caplog.at_level(logging.WARNING, logger="eofm.finetune"):
        assert sync_batchnorm(model, torch.device("cpu"), 2) is model
        assert sync_batchnorm(model, torch.device("cpu"), 1) is model
    said = [r.getMessage() for r in caplog.records if "per rank" in r.getMessage()]
    assert len(said) == 1 and "differ from one rank's at the same global batch" in said[0]
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
