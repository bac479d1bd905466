"""Previews of a ``runtime.compile`` model run eagerly: the no_grad preview forward does not
recompile the compiled blocks (a grad-mode guard failure each time, out of dynamo's budget)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounter

from eofm.data_shards.manifest import ModalityInfo
from eofm.pretrain.data import BandInfo
from eofm.pretrain.preview import ReconstructionPreview

BANDS = ["B02", "B03", "B04"]


class _Tiny(nn.Module):
    """A masked-image objective in miniature: one compiled block, a ``reconstruct`` hook."""

    def __init__(self, backend: CompileCounter) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, 3, 1))
        self.block.compile(backend=backend)

    def forward(self, x: Tensor, valid: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        return {"loss": (self.block(x) - x).square().mean()}

    def reconstruct(self, x: Tensor, valid: Tensor, generator: torch.Generator
                    ) -> dict[str, Tensor]:
        masked = (torch.rand(x.shape, generator=generator) < 0.5) & valid[:, None]
        return {"input": x, "valid": valid, "masked": masked,
                "reconstruction": torch.where(masked, self.block(x), x)}


@pytest.mark.compiles
def test_a_preview_does_not_recompile_the_compiled_blocks(tmp_path: Path) -> None:
    torch._dynamo.reset()
    counter = CompileCounter()
    model = _Tiny(counter)
    g = torch.Generator().manual_seed(0)
    x, valid = torch.randn(4, 3, 8, 8, generator=g), torch.ones(4, 8, 8, dtype=torch.bool)
    model(x, valid, g)["loss"].backward()  # a training step compiles the block once
    assert counter.frame_count == 1
    one = torch.ones(3)
    info = BandInfo("s2", "s2_l1c", BANDS, one, one, 10.0, torch.zeros(3), one, {})
    stored = ModalityInfo("s2_l1c", BANDS, "float32", [3, 8, 8], [None] * 3, 10.0,
                          {b: {"p2": -2.0, "p98": 2.0} for b in BANDS})
    preview = ReconstructionPreview(tmp_path, info, stored, samples=2, seed=0)
    preview.keep(x, valid, {})
    path = preview.write(model, step=1)
    assert path is not None and path.is_file() and model.training
    assert counter.frame_count == 1  # before the fix: 2 (grad_mode guard -> recompile)
    model(x, valid, g)["loss"].backward()  # training again: the first graph, still valid
    assert counter.frame_count == 1
    torch._dynamo.reset()
