"""model.init_from (pretrain/encoders.run_encoder): continual pretraining from an eofm export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eofm.models import create_model, save_pretrained
from eofm.pretrain.config import ModelConfig
from eofm.pretrain.data import BandInfo
from eofm.pretrain.encoders import run_encoder

BANDS = ["B04", "B03", "B02"]


def _info() -> BandInfo:
    return BandInfo("s2", "sentinel2_l2a", BANDS, torch.tensor([665.0, 560.0, 490.0]),
                    torch.tensor([30.0, 35.0, 65.0]), 10.0, torch.zeros(3), torch.ones(3), {})


def test_an_export_with_tensors_the_run_has_no_place_for_is_refused(tmp_path: Path) -> None:
    """An export with layer scale and a learned position table, continued in an encoder built
    without them: its tensors used to be dropped with a warning, so the run started from
    another network; it is refused, naming the tensors and the model overrides to set."""
    torch.manual_seed(0)
    donor = create_model("vit_test_patch8", bands=BANDS, img_size=32, layer_scale_init=0.1,
                         learned_pos=True).eval()
    out = save_pretrained(donor, tmp_path / "donor")
    with pytest.raises(ValueError, match=r"model\.init_from .*donor: its tensors \['pos_table', "
                                         r"'blocks\.0\.ls1\.gamma'.*set model\.overrides "
                                         r"\{learned_pos: true, layer_scale_init: 0\.1\}"):
        run_encoder(ModelConfig(name="vit_test_patch8", img_size=32, init_from=str(out)), _info())
    over = {"learned_pos": True, "layer_scale_init": 1e-5}
    enc = run_encoder(ModelConfig(name="vit_test_patch8", img_size=32, init_from=str(out),
                                  overrides=over), _info()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.forward_features(x), donor.forward_features(x))
