"""Weight-decay groups of every objective, built by its registered builder: position, mask and
class tokens, norms and biases are not decayed; every other weight is (pretrain/optim.py's
param_groups with only what the modules declare in no_weight_decay(), nothing passed by hand)."""

from __future__ import annotations

import pytest
import torch

from eofm.pretrain.config import load_config
from eofm.pretrain.data import BandInfo
from eofm.pretrain.objectives import build_objective
from eofm.pretrain.optim import param_groups

S2 = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
TOKENS = {"mask_token", "cls_token", "pos_table"}  # trainable tokens and position tables
TINY = ["model.name=vit_test_patch8", "model.img_size=16", "data.path=unused"]
DECODER = ["objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2"]
CASES = {  # objective -> config overrides; together they cover every token kind
    "mae": [*DECODER, "model.overrides.learned_pos=true"],  # a trainable position table
    "satmaepp": [*DECODER, "model.tokenizer=grouped", "data.crop_size=64",
                 "objective.norm_pix_loss=false"],  # group codes, per-group heads, upsampler
    "selectivemae": DECODER,  # CrossMAE decoder
    "softcon": ["objective.params.proj_hidden_dim=32", "objective.params.proj_dim=16",
                "objective.params.pred_hidden_dim=32"],  # heads with BatchNorm, EMA target
}


def _info() -> BandInfo:
    c = len(S2)
    return BandInfo("s2", "s2_l1c", S2, torch.full((c,), 500.0), torch.full((c,), 20.0), 10.0,
                    torch.zeros(c), torch.ones(c), {b: {"mean": 0.0, "std": 1.0} for b in S2})


@pytest.mark.parametrize("objective", sorted(CASES))
def test_tokens_norms_and_biases_are_not_decayed(objective: str) -> None:
    cfg = load_config(None, [f"objective.name={objective}", *TINY, *CASES[objective]])
    torch.manual_seed(0)
    model = build_objective(cfg, _info())
    names = {id(p): n for n, p in model.named_parameters()}
    decay, plain = ({names[id(p)] for p in g["params"]} for g in param_groups(model, 0.05))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tokens = {n for n in trainable if n.rsplit(".", 1)[-1] in TOKENS}
    assert "encoder.cls_token" in tokens
    if objective != "softcon":
        assert "decoder.mask_token" in tokens
    if objective == "mae":
        assert "encoder.pos_table" in tokens
    assert tokens <= plain, f"tokens decayed: {sorted(tokens - plain)}"
    one_d = {n for n, p in trainable.items() if p.ndim <= 1}  # norms, biases
    assert any(".norm" in n for n in one_d) and any(n.endswith(".bias") for n in one_d)
    assert plain == tokens | one_d, f"also undecayed: {sorted(plain - tokens - one_d)}"
    assert decay == set(trainable) - plain and decay, "every other weight is decayed"
    assert all(trainable[n].ndim >= 2 for n in decay)
