"""Observability: JSON lines, the throughput meter, memory/MFU helpers, rank-0-only outputs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from eofm.pretrain import metrics as M


def test_jsonl_appends_plain_lines_on_rank_zero_only(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "metrics.jsonl"
    with M.JsonlLogger(path) as log:  # rank 0 of a single process
        log.log({"step": 1, "loss": torch.tensor(0.5), "lr": 1e-4, "nan": float("nan")})
    with M.JsonlLogger(path) as log:  # a resumed run appends
        log.log({"step": 2, "loss": torch.tensor(float("inf")), "name": Path("x")})
    M.JsonlLogger(path, enabled=False).log({"step": 99})  # e.g. rank 1
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5, "lr": 1e-4, "nan": None},
                    {"step": 2, "loss": None, "name": "x"}]
    M.JsonlLogger(None).log({"step": 3})  # disabled: a no-op


def test_throughput_window(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 8.0, 8.0])
    monkeypatch.setattr(M.time, "perf_counter", lambda: next(clock))
    meter = M.Throughput(world_size=2, tokens_per_sample=10)  # t=0
    meter.start()  # t=0
    for loss in (2.0, 4.0):  # two steps of two micro-batches of 4 samples
        meter.data_wait(0.75, 4)
        meter.data_wait(0.25, 4)
        meter.step_done(loss=torch.tensor(loss), grad_norm=1.0)
    assert isinstance(meter._sums["loss"], torch.Tensor)  # no host sync before summary
    out = meter.summary()  # t=8
    assert out == {"loss": 3.0, "grad_norm": 1.0, "step_time": 4.0, "data_wait": 1.0,
                   "data_wait_share": 0.25, "samples_per_s": 4.0, "tokens_per_s": 40.0}
    assert meter.summary() == {}  # a fresh window
    assert M.Throughput().world_size == 1  # the job's world size by default


def test_memory_flops_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert M.peak_memory_mb("cpu") > 10
    assert M.peak_flops("cpu") is None and M.mfu(1e12, 1.0, "cpu") is None
    layer = nn.Linear(16, 32, bias=False)
    assert M.count_flops(lambda: layer(torch.randn(4, 16))) == 2 * 4 * 16 * 32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA H200", 989.4e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                       ("NVIDIA GeForce RTX 3090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d, n=name: n)
        assert M.peak_flops("cuda:0") == peak
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H200")
    assert M.mfu(989.4e12 * 0.5, 2.0, "cuda") == pytest.approx(0.25)


def test_rank_zero_only_outputs(tmp_path: Path) -> None:
    assert M.tensorboard_writer(tmp_path, enabled=False) is None
    assert isinstance(M.progress_bar(10, enabled=False), M.NullBar)
    bar = M.progress_bar(10, initial=4)  # rank 0 of a single process
    assert bar.n == 4
    bar.close()


def test_logging_of_a_program_that_set_none_up() -> None:
    """The command-line case: one stderr handler of ours, tagged with the rank, replaced (not
    added to) when called again; warnings only off rank 0."""
    root, eofm = logging.getLogger(), logging.getLogger("eofm")
    handlers, level, eofm_level = root.handlers[:], root.level, eofm.level
    try:
        root.handlers[:] = []
        M.setup_logging(rank=1)
        assert root.level == eofm.level == logging.WARNING and len(root.handlers) == 1
        assert "[rank 1]" in root.handlers[0].formatter._fmt
        M.setup_logging(rank=0)
        assert root.level == eofm.level == logging.INFO and len(root.handlers) == 1
        assert "[rank" not in root.handlers[0].formatter._fmt
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        eofm.setLevel(eofm_level)


def test_logging_a_program_set_up_itself_is_left_alone() -> None:
    """A notebook or an application that configured logging keeps its handlers, format and
    root level when it builds a Trainer (basicConfig(force=True) used to throw them away);
    eofm's own records still reach them at eofm's level."""
    root, eofm = logging.getLogger(), logging.getLogger("eofm")
    handlers, level, eofm_level = root.handlers[:], root.level, eofm.level
    records: list[logging.LogRecord] = []
    mine = logging.Handler()
    mine.emit = records.append  # type: ignore[method-assign]
    try:
        root.handlers[:] = [mine]
        root.setLevel(logging.ERROR)
        M.setup_logging(rank=0)
        assert root.handlers == [mine] and root.level == logging.ERROR
        logging.getLogger("eofm.pretrain.trainer").info("step 1")
        assert [r.getMessage() for r in records] == ["step 1"]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        eofm.setLevel(eofm_level)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_memory_and_peak() -> None:
    torch.cuda.reset_peak_memory_stats()
    x = torch.empty(64, 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB
    assert M.peak_memory_mb("cuda") >= 64
    del x
    name = torch.cuda.get_device_name(0)
    if "H100" in name or "H200" in name:
        assert M.peak_flops("cuda") is not None


def test_objective_scalar_outputs_are_picked_and_averaged() -> None:
    from eofm.pretrain.metrics import mean_outputs, scalar_outputs

    out = {"loss": torch.tensor(2.0, requires_grad=True), "loss_mse": torch.tensor(1.5),
           "pruned": 3, "mask": torch.ones(2, 4), "flag": True, "ids": torch.arange(3)}
    got = scalar_outputs(out)
    assert sorted(got) == ["loss_mse", "pruned"]
    names, means = mean_outputs([got, {"loss_mse": torch.tensor(0.5), "pruned": torch.tensor(1)},
                                 {"extra": torch.tensor(7.0)}])
    assert names == ["extra", "loss_mse", "pruned"]
    assert means is not None and means.tolist() == [7.0, 1.0, 2.0]
    assert mean_outputs([{}, {}]) == ([], None)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_is_the_process_own_not_its_parents() -> None:
    """A small process started by a large one reports its own peak, not its parent's (Linux
    keeps ``ru_maxrss`` across exec, so the parent's footprint would pass for the child's).
    The large parent is a subprocess of its own holding 1 GiB of ballast, not pytest (the
    child, importing torch, is ~0.5 GiB itself)."""
    child = "import eofm.pretrain.metrics as M; print(M.peak_rss_mb())"
    parent = (
        "import subprocess, sys\n"
        "ballast = b'\\x01' * 2**30  # written, so resident\n"
        f"out = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
        "text=True, check=True).stdout.split()[-1]\n"
        "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0]\n"
        "print(out, int(hwm.split()[1]) / 1024, len(ballast))\n")
    own, parent_peak, _ = map(float, subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, check=True).stdout.split())
    assert own < parent_peak - 300  # interpreter + torch, not the parent's ballast


def test_drop_after_keeps_earlier_records_and_lines_without_a_step(tmp_path) -> None:
    from eofm.pretrain.metrics import JsonlLogger

    path = tmp_path / "m.jsonl"
    with JsonlLogger(path, enabled=True) as log:
        for step in (1, 2, 3, 4):
            log.log({"step": step, "loss": 1.0 / step})
        log.log({"event": "note"})
        assert log.drop_after(2) == 2
        log.log({"step": 3, "loss": 0.5})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r.get("step") for r in lines] == [1, 2, None, 3] and lines[-1]["loss"] == 0.5
    with JsonlLogger(path, enabled=True) as log:
        assert log.drop_after(5) == 0  # nothing later: the file is left as it was
    assert path.read_text().count("\n") == 4 and not list(tmp_path.glob(".*.tmp"))
    assert JsonlLogger(None).drop_after(0) == 0
