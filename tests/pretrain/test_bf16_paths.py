"""Every objective trains under bf16 autocast as it does on a GPU, on the CPU.

``runtime.precision=bf16`` on the CPU runs the step under ``torch.autocast("cpu", bf16)`` as
the trainer does on CUDA. CPU autocast's op lists differ from CUDA's, though: on CUDA
layer norms, softmax, sums, logs, powers and the losses run in fp32 (so their outputs are fp32
where the CPU's stay bf16). :class:`CudaAutocastOps` makes CPU autocast follow CUDA's fp32
list, so a dtype clash that only CUDA's mix of bf16 and fp32 tensors would raise (an index
put, a scatter, a fp32 buffer fed bf16 values) shows up here. What it cannot show (kernels,
compile, NCCL) needs a GPU: see the GPU-marked tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from eofm.pretrain import distributed
from eofm.pretrain.config import load_config
from eofm.pretrain.strategy import Strategy
from eofm.pretrain.trainer import Trainer

# ops CUDA autocast runs in fp32 (torch's autocast_mode.cpp, "fp32" and "fp32_set_opt_dtype"
# lists) that CPU autocast leaves in the input's dtype
CUDA_FP32_OPS = frozenset({
    "layer_norm", "group_norm", "softmax", "log_softmax", "sum", "cumsum", "cumprod", "prod",
    "exp", "expm1", "log", "log2", "log10", "log1p", "pow", "__pow__", "rsqrt", "reciprocal",
    "norm", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss",
    "binary_cross_entropy_with_logits", "cosine_similarity", "logsumexp", "kl_div", "cdist",
    "softplus", "acos", "asin", "cosh", "sinh", "tan", "erfinv"})


def _fp32(a: Any) -> Any:
    if isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16):
        return a.float()
    if isinstance(a, (list, tuple)):
        return type(a)(_fp32(x) for x in a)
    return a


class CudaAutocastOps(TorchFunctionMode):
    """Within it, while CPU autocast is on, CUDA's fp32-list ops get fp32 inputs (so fp32
    outputs), as under ``torch.autocast("cuda", bf16)``; ``upcast`` names those that met bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.upcast: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in CUDA_FP32_OPS and "dtype" not in kwargs and torch.is_autocast_enabled("cpu"):
            if any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16
                   for a in (*args, *kwargs.values())):
                self.upcast.add(name)
            args, kwargs = _fp32(args), {k: _fp32(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def test_the_emulation_gives_cuda_dtypes() -> None:
    x = torch.randn(2, 8)
    w = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = w(x)
        assert h.dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(h, (8,)).dtype == torch.bfloat16  # the CPU's
        with CudaAutocastOps() as mode:
            assert torch.nn.functional.layer_norm(h, (8,)).dtype == torch.float32  # CUDA's
            assert h.softmax(-1).dtype == torch.float32 and h.sum().dtype == torch.float32
            assert w(x).dtype == torch.bfloat16  # matmuls stay bf16
    assert mode.upcast == {"layer_norm", "softmax", "sum"}
    assert torch.nn.functional.layer_norm(h.float(), (8,)).dtype == torch.float32


COMMON = """
optim: {{base_lr: 1.0e-3, scale_lr: false}}
schedule: {{steps: 2, warmup_steps: 1}}
runtime: {{out_dir: {out}, ckpt_every: 0, precision: bf16}}
logging: {{log_every: 1, progress: false, preview_every: 2, sample_keys: false}}
"""
DATA = ("data: {{path: {data}, bands: {{s2: [B02, B03, B04, B08]}}, shuffle_buffer: 20, "
        "num_workers: 0, batch_size: 8{crop}}}\n")
RUNS = {
    "mae": ("", "model: {name: vit_test_patch8, img_size: 32}\nobjective: {name: mae, "
                "norm_pix_loss: true, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}\n"),
    "mae_spectral": ("", "model: {name: vit_test_patch8, img_size: 32, tokenizer: spectral}\n"
                         "objective: {name: mae, decoder_dim: 32, decoder_depth: 1, "
                         "decoder_heads: 2}\n"),
    "selectivemae_pruned": (
        "", "model: {name: vit_test_patch8, img_size: 32}\nobjective: {name: selectivemae, "
            "mask_ratio: 0.85, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, params: "
            "{kept_mask_ratio: 0.25, prune_low_loss_ratio: 0.5}}\n"),
    "satmaepp": (", crop_size: 32",
                 "model: {name: vit_test_patch8, img_size: 16}\nobjective: {name: satmaepp, "
                 "norm_pix_loss: false, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2, "
                 "params: {num_scales: 2}}\n"),
    "softcon": (", crop_size: 32",
                "model: {name: vit_test_patch8, img_size: 32}\nobjective: {name: softcon, "
                "params: {proj_hidden_dim: 32, proj_dim: 16, pred_hidden_dim: 32, "
                "drop_ratio: 0.25}}\n"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_objective_trains_under_cuda_like_bf16(run: str, scene_tiles_32: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bf16 steps and a preview per objective under CUDA's autocast op policy: finite
    fp32 losses (the loss is never reduced in bf16), fp32 weights in the checkpoint."""
    crop, body = RUNS[run]
    cfg = tmp_path / f"{run}.yaml"
    cfg.write_text(DATA.format(data=scene_tiles_32, crop=crop) + body
                   + COMMON.format(out=tmp_path / "run"))
    losses: list[torch.dtype] = []
    forward_backward = Strategy.forward_backward

    def spy(self, fn, last):
        def record(m):
            loss = fn(m)
            losses.append(loss.dtype)
            return loss
        return forward_backward(self, record, last)

    monkeypatch.setattr(Strategy, "forward_backward", spy)
    try:
        with CudaAutocastOps() as mode:
            trainer = Trainer(load_config(str(cfg)))
            assert trainer.strategy.amp == torch.bfloat16
            assert trainer.fit() == 0
    finally:
        distributed.teardown()
    # the emulation was in force in the step (on a GPU the trainer runs CUDA's own autocast)
    assert "layer_norm" in mode.upcast or trainer.device.type == "cuda"
    assert losses == [torch.float32] * 2
    out = tmp_path / "run"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in recs)
    assert (out / "previews" / "step_000000002.png").is_file()
    ckpt = torch.load(out / "checkpoints" / "step_000000002.pt", weights_only=True)
    assert {v.dtype for v in ckpt["model"].values() if v.is_floating_point()} == {torch.float32}


def _not_bf16_exact(count: float) -> bool:
    """Whether bf16 cannot hold the integer ``count`` (so a bf16 count would be off)."""
    return float(torch.tensor(count).bfloat16()) != count


def _token_blocks(B: int, grid: int, patch: int, seed: int) -> torch.Tensor:
    """(B, grid*patch, grid*patch) validity: ~30% of the token cells nodata, whole cells."""
    cells = torch.rand(B, grid, grid, generator=torch.Generator().manual_seed(seed)) > 0.3
    return cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def test_reconstruction_counts_are_exact_under_bf16_autocast() -> None:
    """Under bf16 autocast the decoders' predictions are bf16; the losses' valid-pixel and
    scored-token counts must still be exact (float32): the same counts as without autocast,
    for MAE (norm_pix, nodata), SatMAE++'s masked MSE and SelectiveMAE. Each count is chosen
    so that bf16 cannot hold it."""
    from eofm.models import create_model
    from eofm.pretrain.objectives import MAE, SatMAEPP, SelectiveMAE

    bands = ["B02", "B03", "B04", "B08"]
    dec = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
    torch.manual_seed(0)
    enc = create_model("vit_test_patch8", bands=bands, img_size=128)  # 256 tokens
    x = torch.randn(2, 4, 128, 128)

    def both(run):
        with torch.no_grad():
            ref = run()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                amp = run()
        return ref, amp

    def same_count(ref: dict, amp: dict) -> None:  # a count bf16 cannot hold, kept exact
        count = ref["scored_tokens"].item()
        assert _not_bf16_exact(count), count
        assert amp["scored_tokens"].item() == count and amp["loss"].dtype == torch.float32

    mae = MAE(enc, bands, norm_pix_loss=True, **dec)
    valid = _token_blocks(2, 16, 8, seed=1)
    masks = mae.mask(2, x.device, torch.Generator().manual_seed(0))
    ref, amp = both(lambda: mae(x, valid, masks=masks))
    same_count(ref, amp)

    pp = SatMAEPP(enc, bands, num_scales=2, **dec)  # 256 x 256 crop
    crop = torch.randn(2, 4, 256, 256)
    valid = _token_blocks(2, 16, 16, seed=2)
    masks = pp.mask(2, x.device, torch.Generator().manual_seed(0))
    ref, amp = both(lambda: pp(crop, valid, masks=masks))
    same_count(ref, amp)

    sel = SelectiveMAE(enc, bands, mask_ratio=0.85, kept_mask_ratio=0.1, **dec)  # 25 targets
    x11 = torch.randn(11, 4, 128, 128)
    ids_keep, ids_target, _ = sel.select(x11, None, torch.Generator().manual_seed(0))
    ref, amp = both(lambda: sel(x11, selection=(ids_keep, ids_target)))
    assert ref["scored_tokens"].item() == 11 * 25 and _not_bf16_exact(11 * 25)
    assert amp["scored_tokens"].item() == 11 * 25 and amp["loss"].dtype == torch.float32
