"""runtime.compile keeps fixed-shape graphs: encoder and decoder blocks share one ``forward``
with different token counts, which must not make torch generalise the token axis."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eofm.models import create_model
from eofm.pretrain.objectives import MAE
from eofm.pretrain.strategy import compile_model


@pytest.mark.compiles
def test_encoder_and_decoder_blocks_compile_to_static_graphs(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    symbolic: list[bool] = []  # per compiled graph: does it take symbolic sizes?

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        symbolic.append(any(isinstance(v, torch.SymInt) for v in example_inputs)
                        or any(isinstance(s, torch.SymInt) for v in example_inputs
                               if isinstance(v, torch.Tensor) for s in v.shape))
        return gm.forward  # run the captured graph as is: no code generation

    compile_ = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile",
                        lambda self, **kw: compile_(self, **{**kw, "backend": backend}))
    torch._dynamo.reset()
    bands = ["B02", "B03", "B04"]
    obj = MAE(create_model("vit_test_patch8", bands=bands, img_size=32), bands,
              decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert compile_model(obj) == len(obj.encoder.blocks) + 1
    loss = obj(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))["loss"]
    assert torch.isfinite(loss)
    assert len(symbolic) == 2  # 4 of 16 tokens (+ CLS) through the encoder, 16 (+ CLS) decoded
    assert not any(symbolic), "a compiled block generalised its shapes (automatic dynamic)"
    torch._dynamo.reset()
