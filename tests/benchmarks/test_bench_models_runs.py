"""bench_models: --compile as the trainer compiles, the MFU peak from the trainer's table, and
each in-process measurement free of the previous one's model."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch

TINY = dict(model="tiny", name="vit_tiny_patch8", img_size=32, patch=8, device="cpu", bf16=False,
            batch=2, warmup=1, iters=1, tokens=16, kept=None, threads=1, compile=False,
            peak_tflops=None, tokenizer="plain", backend="sdpa", mask_ratio=0.0)
TIMM = {**TINY, "model": "small", "name": "vit_small_patch16", "patch": 16, "tokenizer": "timm",
        "backend": "timm"}


def test_compile_uses_the_trainers_static_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime.compile=true compiles every block with dynamic=False (strategy.compile_model);
    with torch's default a second token count (mask 0.75 after mask 0) makes the token axis
    dynamic, so --compile measured other kernels than training runs. Module.compile is only
    recorded here (no compile: this is about what is asked of torch)."""
    import bench_models

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **kw: calls.append((type(self).__module__, kw)))
    for cfg in ({**TINY, "mask_ratio": 0.75}, TIMM):
        calls.clear()
        row = bench_models.measure({**cfg, "compile": True})
        model, _, _ = bench_models._build(dict(cfg))
        assert row["compiled"] is True
        assert len(calls) == len(model.blocks), (cfg["tokenizer"], calls)
        assert all(kw.get("dynamic") is False for _, kw in calls), (cfg["tokenizer"], calls)
    assert {m.split(".")[0] for m, _ in calls} == {"timm"}  # timm's own blocks, the last case


@pytest.mark.parametrize(("name", "tflops"), [("NVIDIA H100 NVL", 835.0),
                                              ("NVIDIA H100 PCIe", 756.0),
                                              ("NVIDIA H100 80GB HBM3", 989.4),
                                              ("NVIDIA GH200 480GB", 989.4),
                                              ("NVIDIA A100-SXM4-80GB", 312.0),
                                              ("NVIDIA L4", None)])
def test_mfu_peak_is_the_trainers(name: str, tflops: float | None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak comes from eofm.pretrain.metrics (an H100 NVL or PCIe is not an SXM)."""
    import bench_models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    got = bench_models.device_peak("cuda", True)
    assert (got if got is None else got / 1e12) == pytest.approx(tflops)
    assert bench_models.device_peak("cuda", True, 500.0) == 500e12  # --peak-tflops wins
    assert bench_models.device_peak("cuda", False) is None
    assert bench_models.device_peak("cpu", True) is None


def test_a_measurement_starts_with_the_previous_model_freed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every configuration runs in one process: a previous model still alive would be
    in the next one's peak memory. A model can outlive its measurement in a reference cycle
    (the first one in a process does, through a frame its step closure's cell is held in);
    each model here is put in one so that only a collection frees it."""
    import bench_models

    build = bench_models._build
    models: list[weakref.ref] = []
    alive_at_build: list[int] = []

    def tracking(cfg: dict) -> Any:
        alive_at_build.append(sum(r() is not None for r in models))
        model, kwargs, flops = build(cfg)
        model.__dict__["_cycle"] = [model]
        models.append(weakref.ref(model))
        return model, kwargs, flops

    monkeypatch.setattr(bench_models, "_build", tracking)
    gc.collect()
    gc.disable()  # only the measurement's own collection may free a cycle
    try:
        rows = [bench_models.measure(dict(TINY)) for _ in range(2)]
    finally:
        gc.enable()
    assert alive_at_build == [0, 0], alive_at_build
    assert rows[0]["peak_tflops"] is None and rows[0]["mfu"] is None  # no peak on CPU
