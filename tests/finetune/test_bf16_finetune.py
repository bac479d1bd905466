"""eofm-finetune under bf16 autocast with CUDA's op policy, on the CPU: the dense heads and a
frozen multilabel probe-style head train, evaluate and export (the GPU default is bf16;
``runtime.precision=bf16`` makes the CPU run the same autocast, see
tests/pretrain/test_bf16_paths.py for :class:`CudaAutocastOps`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))
import test_finetune as _ft
from test_bf16_paths import CudaAutocastOps

from eofm.finetune.finetune import main
from eofm.pretrain import distributed as dist

_finetuner = _ft._finetuner
dense_data = _ft.dense  # test_finetune's fixture, renamed
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("task", ["segmentation", "regression"])
def test_dense_fine_tuning_under_cuda_like_bf16(dense_data, tmp_path: Path, task: str) -> None:
    extra = ["task.ignore_value=255"] if task == "segmentation" else []
    ft = _finetuner(dense_data, task, tmp_path / task, *extra, "runtime.precision=bf16",
                    "schedule.steps=3")
    try:
        with CudaAutocastOps() as mode:
            assert ft.strategy.amp == torch.bfloat16
            assert ft.fit() == 0
    finally:
        dist.teardown()
    assert mode.upcast or ft.device.type == "cuda"  # CUDA's fp32 ops met bf16 in the step
    recs = [json.loads(x) for x in (tmp_path / task / "metrics.jsonl").open()]
    assert all(np.isfinite(r["loss"]) for r in recs if "loss" in r)
    m = json.loads((tmp_path / task / "results.json").read_text())["metrics"]
    assert np.isfinite(m["miou" if task == "segmentation" else "rmse"])
    assert (tmp_path / task / "predictions.png").is_file()
    assert (tmp_path / task / "model" / "model.safetensors").is_file()


def test_multilabel_frozen_under_cuda_like_bf16(dense_data, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ml"
    with CudaAutocastOps():
        rc = main(["--encoder", str(dense_data["encoder"]), "--data", str(dense_data["seg"].parent / "ben"),
                   "--task", "multilabel", "--out", str(out), "schedule.steps=2",
                   "data.batch_size=2", "data.test_fraction=0.34", "encoder.freeze=frozen",
                   "logging.progress=false", "runtime.precision=bf16"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["metrics"]["micro_map"] <= 1
    assert results["eval_precision"] == "bf16"
