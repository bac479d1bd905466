"""runtime.precision: which autocast dtype a run gets on which device."""

from __future__ import annotations

import pytest
import torch

from eofm.pretrain.config import load_config
from eofm.pretrain.strategy import autocast_dtype


@pytest.mark.parametrize(("precision", "device", "native", "want"), [
    ("auto", "cuda", True, torch.bfloat16),  # A100, H100, H200
    ("auto", "cuda", False, None),  # V100, T4: bf16 only emulated, fp32 instead
    ("bf16", "cuda", False, torch.bfloat16),  # asked for: the user's choice
    ("fp32", "cuda", True, None),
    ("auto", "cpu", True, None),
    ("bf16", "cpu", False, torch.bfloat16),
])
def test_auto_takes_bf16_only_where_the_gpu_computes_in_it(
        monkeypatch: pytest.MonkeyPatch, precision: str, device: str, native: bool,
        want: torch.dtype | None) -> None:
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation  # emulation is there on every CUDA GPU

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    cfg = load_config(None, ["data.path=/x", f"runtime.precision={precision}"], check=False)
    assert autocast_dtype(cfg, torch.device(device)) == want
    assert all(not e for e in asked)  # native support is what counts
